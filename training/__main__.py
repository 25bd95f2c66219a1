"""``python -m training [--model housing|iris|all] [--max-rows N] [--param NAME=VALUE ...] [--result-file PATH]``.

Train and register; ``--skip-if-served`` leaves alone a model whose alias is already set.
"""

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from data.raw import DataError
from model_registry import RegistryError
from model_registry.mlflow import SKOPS_MODULE
from training.hyperparameters import HYPERPARAMETERS, HyperparameterError, validate_overrides
from training.outcome import write_outcome
from training.settings import TrainingSettings

MODELS = ("housing", "iris")


class UsageError(ValueError):
    """A command line that asks for something impossible; reported with exit code 2."""


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Train and register what the command line asks; the exit code. ``own_process``: the call is the whole
    process (``python -m training``), so start-up may tune the garbage collector for it (``_settle_imports``)."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        epilog=_allowed_parameters(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all", help="which model to train (%(default)s)")
    parser.add_argument("--max-rows", type=int, help="train on a random subset of at most N rows (quick runs)")
    parser.add_argument(
        "--skip-if-served", action="store_true", help="leave alone a model whose alias is already set in the registry"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one hyperparameter of the --model (repeatable; the allowed ones are listed below)",
    )
    parser.add_argument(
        "--result-file", type=Path, metavar="PATH", help="write the outcome of the --model as JSON to PATH"
    )
    args = parser.parse_args(argv)

    try:
        overrides = _overrides(args.model, args.param)
        if args.result_file is not None and args.model == "all":
            raise UsageError("--result-file needs one --model (housing or iris), not all")
    except (UsageError, HyperparameterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # mlflow decides about telemetry while it is imported and reads only the environment for it, so the
    # entry point sets the variable before the first mlflow import; settings cannot reach it in time.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if own_process:
        gc.disable()  # while importing: see _settle_imports
    importlib.import_module(SKOPS_MODULE)  # first, while few modules are loaded: see SKOPS_MODULE
    from training.pipeline import TRAINERS, served_version  # noqa: PLC0415

    if own_process:
        _settle_imports()

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
        try:
            if args.skip_if_served:
                model_name, version = served_version(settings, name)
                if version is not None:
                    print(f"{model_name}: @{settings.alias} is already v{version}; not retrained (--skip-if-served)")
                    continue
            outcome = TRAINERS[name](settings, overrides)
        except (DataError, RegistryError) as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            failed = True
            continue
        if args.result_file is not None:
            write_outcome(args.result_file, outcome)
        print(outcome.summary())
    return 1 if failed else 0


def _overrides(model: str, assignments: Sequence[str]) -> dict[str, int | float]:
    """``--param NAME=VALUE`` arguments, checked against the allow-list of ``model``."""
    if not assignments:
        return {}
    if model == "all":
        raise UsageError("--param needs one --model (housing or iris), not all")
    values: dict[str, float] = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UsageError(f"--param {assignment!r}: expected NAME=VALUE")
        if name in values:
            raise UsageError(f"--param {name} is given twice")
        try:
            values[name] = float(text)
        except ValueError:
            raise UsageError(f"--param {assignment!r}: {text.strip()!r} is not a number") from None
    return validate_overrides(model, values)


def _allowed_parameters() -> str:
    lines = ["hyperparameters --param may set:"]
    for model, parameters in HYPERPARAMETERS.items():
        lines.append(f"  {model}:")
        lines.extend(f"    {entry.name}: {entry.allowed}. {entry.doc}" for entry in parameters.values())
    return "\n".join(lines)


def _settle_imports() -> None:
    """Freeze what the imports made out of the cyclic garbage collector's sight, then switch it back on.

    MLflow, scikit-learn and pandas leave about 300,000 objects that live until the exit. The collector was
    off while they were imported (its collections there find almost nothing); frozen, its full collections
    no longer walk them over and over while the model trains and is logged, nor once more at the exit. An iris
    retrain child took 7.6-8.3 s instead of 10.8-11.0 s (2 runs each). A process this short leaves the little
    garbage of its imports to the exit.
    """
    gc.freeze()
    gc.enable()


if __name__ == "__main__":
    sys.exit(main(own_process=True))
