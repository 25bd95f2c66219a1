"""MLflow plumbing of the training flow: experiments, the current champion, logging and registering a model."""

import warnings
from collections.abc import Mapping
from typing import Any

import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.types import ColSpec, Schema

from training.gate import GateDecision
from training.settings import TrainingSettings
from training.spec import FloatArray, ModelSpec

_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def connect(settings: TrainingSettings) -> MlflowClient:
    """A client on the settings' store, with mlflow's process-wide URIs pointed at it too.

    ``mlflow.sklearn.log_model`` and ``load_model`` only use the process-wide URIs (mlflow also exports
    them as ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` into ``os.environ``).
    """
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, name: str, settings: TrainingSettings) -> str:
    """The id of experiment ``name``, created if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = (settings.artifact_root / name).as_uri() if settings.tracking_store_is_local else None
    return str(client.create_experiment(name, artifact_location=location))


def champion_version(client: MlflowClient, model_name: str, alias: str) -> int | None:
    """The version that holds ``alias``, or None when the model or the alias does not exist yet."""
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        if exc.error_code == _NOT_FOUND:
            return None
        raise
    version = aliases.get(alias)
    return None if version is None else int(version)


def load_version(model_name: str, version: int) -> Any:
    """The estimator of one registered version, loaded exactly as the server loads it."""
    return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


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


def record_decision(
    client: MlflowClient, model_name: str, version: int, *, decision: GateDecision, alias: str, tags: Mapping[str, str]
) -> None:
    """Tag the new version (``tags`` and the gate's decision) and, if promoted, move the alias to it."""
    for key, value in {**tags, **decision.tags}.items():
        client.set_model_version_tag(model_name, str(version), key, value)
    if decision.promoted:
        client.set_registered_model_alias(model_name, alias, str(version))
