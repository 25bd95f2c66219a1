"""``python -m training [--model housing|iris|all] [--max-rows N] [--skip-if-served]``: train and register."""

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from data.raw import DataError
from training.settings import TrainingSettings

MODELS = ("housing", "iris")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all", help="which model to train (%(default)s)")
    parser.add_argument("--max-rows", type=int, help="train on a random subset of at most N rows (quick runs)")
    parser.add_argument(
        "--skip-if-served", action="store_true", help="leave alone a model whose alias is already set in the registry"
    )
    args = parser.parse_args(argv)

    # mlflow decides about telemetry while it is imported and reads only the environment for it, so the
    # entry point sets the variable before the first mlflow import; settings cannot reach it in time.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from training.pipeline import TRAINERS, served_version  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    # mlflow gives its logger its own INFO handler; alembic logs every migration of a new database.
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    try:
        settings = TrainingSettings() if args.max_rows is None else TrainingSettings(max_rows=args.max_rows)
    except ValidationError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2

    failed = False
    for name in MODELS if args.model == "all" else (args.model,):
        if args.skip_if_served:
            model_name, version = served_version(settings, name)
            if version is not None:
                print(f"{model_name}: @{settings.alias} is already v{version}; not retrained (--skip-if-served)")
                continue
        try:
            outcome = TRAINERS[name](settings)
        except DataError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            failed = True
            continue
        print(outcome.summary())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
