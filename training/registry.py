"""Registry plumbing of the training flow.

Experiments, runs and logging a model are MLflow's own API; reading the champion, loading it, tagging versions and
moving the alias go through the shared adapter (``model_registry``), so training and the server agree on what
"no champion yet" and "the registry is down" mean, and every alias move keeps the champion history.
"""

import warnings
from collections.abc import Mapping
from typing import Any

import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from model_registry import AliasNotFoundError, ModelNotFoundError, ModelRegistry
from model_registry.history import move_alias
from model_registry.mlflow import MlflowRegistry
from training.settings import TrainingSettings
from training.spec import FloatArray, ModelSpec


def connect(settings: TrainingSettings) -> MlflowClient:
    """A tracking client on the settings' stores, with mlflow's process-wide URIs pointed at them too.

    ``mlflow.sklearn.log_model`` registers through the process-wide registry URI only (mlflow also exports both
    URIs as ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` into ``os.environ``).
    """
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.registry_uri)


def adapter(settings: TrainingSettings) -> MlflowRegistry:
    """The shared registry adapter on the settings' stores."""
    return MlflowRegistry(settings.mlflow_tracking_uri, settings.registry_uri)


def experiment_id(client: MlflowClient, name: str, settings: TrainingSettings) -> str:
    """The id of experiment ``name``, created if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = (settings.artifact_root / name).as_uri() if settings.tracking_store_is_local else None
    return str(client.create_experiment(name, artifact_location=location))


def champion_version(registry: ModelRegistry, model_name: str, alias: str) -> int | None:
    """The version that holds ``alias``, or None when the model or the alias does not exist yet.

    ``RegistryUnavailableError`` propagates: an unreachable registry is not "no champion".
    """
    try:
        return int(registry.resolve(model_name, alias).version)
    except (AliasNotFoundError, ModelNotFoundError):
        return None


def load_version(registry: ModelRegistry, model_name: str, version: int) -> Any:
    """The estimator of one registered version, loaded exactly as the server loads it."""
    return registry.load(model_name, str(version)).estimator


def log_and_register(model: Any, spec: ModelSpec, x_example: FloatArray) -> int:
    """Log the fitted estimator to the active run and register it; returns the new version number.

    ``x_example`` is one row of features, saved with the model as its named input example.
    """
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in spec.features]),
        outputs=Schema([ColSpec(spec.target_type, spec.target)]),
    )
    example = dict(zip(spec.features, x_example.tolist(), strict=True))  # mlflow makes it a one-row frame
    with warnings.catch_warnings():
        # mlflow validates the example through pyfunc, which hands the estimator a named DataFrame; the
        # estimator is fitted on bare numpy on purpose (the server predicts on numpy), hence the warning.
        warnings.filterwarnings("ignore", message="X has feature names", category=UserWarning)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            # Explicit requirements: inferring them costs about 6 s per model.
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
            skops_trusted_types=list(spec.skops_trusted_types) or None,
            registered_model_name=spec.model_name,
        )
    if info.registered_model_version is None:
        raise MlflowException(f"mlflow did not register a version of {spec.model_name}")
    return int(info.registered_model_version)


def tag_version(registry: ModelRegistry, model_name: str, version: int, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        registry.set_version_tag(model_name, str(version), key, value)


def promote(registry: ModelRegistry, model_name: str, alias: str, version: int, *, expected: int | None) -> None:
    """Move ``alias`` to ``version`` if it still holds ``expected`` (None: unset), recording the version it leaves.

    Raises ``AliasConflictError``, and moves nothing, when another writer moved the alias meanwhile.
    """
    move_alias(registry, model_name, alias, str(version), expected=None if expected is None else str(expected))
