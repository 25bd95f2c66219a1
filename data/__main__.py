"""``python -m data [--output-dir DIR] [--offline]``: write the raw CSV files."""

import argparse
import sys
from pathlib import Path

from data.raw import DataUnavailableError, write_raw_datasets
from data.settings import DataSettings


def main(argv: list[str] | None = None) -> int:
    settings = DataSettings()
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    parser.add_argument(
        "--output-dir", type=Path, default=settings.output_dir, help="where to write the CSV files (%(default)s)"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        default=not settings.allow_download,
        help="never download: the housing data must already be in SCIKIT_LEARN_DATA",
    )
    args = parser.parse_args(argv)
    try:
        written = write_raw_datasets(args.output_dir, settings.scikit_learn_data, allow_download=not args.offline)
    except DataUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written.housing}")
    print(f"wrote {written.iris}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
