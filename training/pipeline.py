"""The training flow shared by both models: raw data, fit, metrics, champion comparison, registration.

Each ``train_*`` call logs one MLflow run, registers one new model version and moves the settings' alias
to it only when the champion gate says so (see ``training.gate``).
"""

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from data.profile import PROFILE_ARTIFACT, ReferenceProfile, reference_profile
from data.raw import RawDatasets, load_housing, load_iris_raw, sha256_of, write_housing_csv, write_iris_csv
from model_registry import AliasConflictError, ModelRegistry
from training import registry
from training.gate import ChampionScore, GateDecision, decide
from training.housing import housing_spec
from training.iris import iris_spec
from training.outcome import TrainingOutcome
from training.settings import TrainingSettings
from training.spec import FloatArray, ModelSpec, Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    x_train: FloatArray
    x_test: FloatArray
    y_train: Target
    y_test: Target
    rows_available: int


def train_housing(settings: TrainingSettings, overrides: Mapping[str, float] | None = None) -> TrainingOutcome:
    """Train, log and register the housing regressor; writes the raw CSV first if it is missing.

    ``overrides`` replace hyperparameters (``training.hyperparameters.HOUSING``); bad ones raise
    ``HyperparameterError`` before anything is read or logged.
    """
    spec = housing_spec(settings, overrides)
    path = ensure_housing_csv(settings)
    x, y = load_housing(path)
    return train_model(spec, x, y, path, settings)


def train_iris(settings: TrainingSettings, overrides: Mapping[str, float] | None = None) -> TrainingOutcome:
    """Train, log and register the iris classifier; writes the raw CSV first if it is missing.

    ``overrides`` replace hyperparameters (``training.hyperparameters.IRIS``).
    """
    spec = iris_spec(settings, overrides)
    path = ensure_iris_csv(settings)
    x, y = load_iris_raw(path)
    return train_model(spec, x, y, path, settings)


Trainer = Callable[[TrainingSettings, Mapping[str, float] | None], TrainingOutcome]
SPECS: Mapping[str, Callable[[TrainingSettings], ModelSpec]] = {"housing": housing_spec, "iris": iris_spec}
TRAINERS: Mapping[str, Trainer] = {"housing": train_housing, "iris": train_iris}


def train_all(settings: TrainingSettings) -> list[TrainingOutcome]:
    return [train(settings, None) for train in TRAINERS.values()]


def served_version(settings: TrainingSettings, model: str) -> tuple[str, int | None]:
    """The registered name of ``model`` (a ``TRAINERS`` key) and the version holding the settings' alias."""
    name = SPECS[model](settings).model_name
    return name, registry.champion_version(registry.adapter(settings), name, settings.alias)


def ensure_housing_csv(settings: TrainingSettings) -> Path:
    path = RawDatasets.in_dir(settings.data_dir).housing
    if not path.exists():
        write_housing_csv(path, settings.scikit_learn_data, allow_download=settings.allow_download)
        logger.info("wrote %s", path)
    return path


def ensure_iris_csv(settings: TrainingSettings) -> Path:
    path = RawDatasets.in_dir(settings.data_dir).iris
    if not path.exists():
        write_iris_csv(path)
        logger.info("wrote %s", path)
    return path


def train_model(
    spec: ModelSpec, x: FloatArray, y: Target, data_path: Path, settings: TrainingSettings
) -> TrainingOutcome:
    """Fit ``spec.estimator`` on ``x``/``y``, log and register it, and apply the champion gate."""
    client = registry.connect(settings)
    models = registry.adapter(settings)
    experiment_id = registry.experiment_id(client, spec.experiment_name, settings)
    split = split_rows(x, y, spec, settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=spec.kind) as run:
        mlflow.set_tags({"model_kind": spec.kind, "registered_model_name": spec.model_name})
        if spec.overrides:
            mlflow.set_tag("hyperparameter_overrides", json.dumps(dict(spec.overrides), sort_keys=True))
        mlflow.log_params(
            {
                **spec.params,
                "random_seed": settings.random_seed,
                "test_size": settings.test_size,
                "max_rows": settings.max_rows,
                "rows_available": split.rows_available,
                "rows_used": len(split.y_train) + len(split.y_test),
                "train_rows": len(split.y_train),
                "test_rows": len(split.y_test),
                "data_file": data_path.name,
                "data_sha256": sha256_of(data_path),
            }
        )
        logger.info("fitting %s on %d rows", spec.kind, len(split.y_train))
        model = clone(spec.estimator)
        started = time.perf_counter()
        model.fit(split.x_train, split.y_train)
        fit_seconds = time.perf_counter() - started
        _check_classes(model, spec)

        metrics: dict[str, float] = {}
        if spec.cross_validate is not None:
            metrics |= spec.cross_validate(spec.estimator, split.x_train, split.y_train)
        metrics |= spec.score(model, split.x_test, split.y_test)
        # Only this model's own figures are run metrics (the server reports them as the version's);
        # the champion's scores on the same rows go into the decision's reason.
        mlflow.log_metrics({**metrics, "fit_seconds": fit_seconds})
        # What the server measures drift against: the training rows and the model's answers on them.
        mlflow.log_dict(training_profile(model, spec, split.x_train).to_json(), PROFILE_ARTIFACT)

        champion = _score_champion(models, spec, settings.alias, split)
        decision = decide(metrics, champion, spec.rules)
        version = registry.log_and_register(model, spec, split.x_train[0])
        version_tags: dict[str, str] = {"model_kind": spec.kind}
        if spec.class_names:
            version_tags["class_names"] = ",".join(spec.class_names)
        # Tagged before the alias moves: a server that loads the new champion at once finds its class names.
        registry.tag_version(models, spec.model_name, version, version_tags | decision.tags)
        if decision.promoted:
            decision = _promote(
                models, spec.model_name, settings.alias, version=version, champion=champion, decision=decision
            )
        gate_tags = decision.tags
        if champion is not None:
            gate_tags["champion_gate_compared_version"] = str(champion.version)
        mlflow.set_tags(gate_tags)
        logger.info("%s v%d %s: %s", spec.model_name, version, decision.label, decision.reason)
    return TrainingOutcome(
        kind=spec.kind,
        model_name=spec.model_name,
        version=version,
        run_id=run.info.run_id,
        metrics=metrics,
        promoted=decision.promoted,
        reason=decision.reason,
        alias=settings.alias,
        champion_version=None if champion is None else champion.version,
        champion_metrics={} if champion is None else dict(champion.metrics),
    )


def _promote(
    models: ModelRegistry,
    name: str,
    alias: str,
    *,
    version: int,
    champion: ChampionScore | None,
    decision: GateDecision,
) -> GateDecision:
    """Move the alias from the champion the candidate beat; the refusal, when another writer moved it meanwhile."""
    compared = None if champion is None else champion.version
    try:
        registry.promote(models, name, alias, version, expected=compared)
    except AliasConflictError as exc:
        was = "there was none" if compared is None else f"it was v{compared}"
        moved = "was removed" if exc.current is None else f"moved to v{exc.current}"
        refused = GateDecision(
            False, f"the champion {moved} during training ({was} when compared); not promoted: {decision.reason}"
        )
        registry.tag_version(models, name, version, refused.tags)
        return refused
    return decision


def split_rows(x: FloatArray, y: Target, spec: ModelSpec, settings: TrainingSettings) -> Split:
    """The held-out split, after an optional random subset of ``settings.max_rows`` rows.

    Without ``max_rows`` this is the standard split (``train_test_split`` with the settings' test size and
    seed), so every full-data run of one seed holds out the same rows and champions compare fairly.
    """
    rows_available = len(y)
    if settings.max_rows is not None and settings.max_rows < rows_available:
        keep = np.random.default_rng(settings.random_seed).choice(rows_available, settings.max_rows, replace=False)
        x, y = x[keep], y[keep]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=settings.test_size, random_state=settings.random_seed, stratify=y if spec.stratify else None
    )
    return Split(x_train, x_test, y_train, y_test, rows_available)


def training_profile(model: Any, spec: ModelSpec, x_train: FloatArray) -> ReferenceProfile:
    """The reference profile of the training rows and of the fitted model's outputs on them.

    Outputs are what the server sees: the prediction of a regressor, each class's probability of a classifier.
    """
    if spec.class_names:
        outputs, output_names = np.asarray(model.predict_proba(x_train)), spec.class_names
    else:
        outputs, output_names = np.asarray(model.predict(x_train)), (spec.target,)
    return reference_profile(x_train, outputs.astype(np.float64), spec.features, output_names)


def _score_champion(models: ModelRegistry, spec: ModelSpec, alias: str, split: Split) -> ChampionScore | None:
    version = registry.champion_version(models, spec.model_name, alias)
    if version is None:
        return None
    champion = registry.load_version(models, spec.model_name, version)
    return ChampionScore(version=version, metrics=spec.score(champion, split.x_test, split.y_test))


def _check_classes(model: Any, spec: ModelSpec) -> None:
    # The server maps predict_proba columns to class names by position.
    if spec.class_names and list(model.classes_) != list(range(len(spec.class_names))):
        raise ValueError(
            f"{spec.model_name} learned classes {list(model.classes_)}, expected 0..{len(spec.class_names) - 1}"
        )
