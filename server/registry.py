"""Where models come from: a small registry abstraction over the MLflow model registry.

``ModelRegistry.load(name, alias)`` is the only way the server obtains a model. It is called explicitly
at start-up (and later by whatever moves models at run time), never at import time.
"""

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from server.domain import LoadedModel, ModelDescription, ModelVersionRef
from server.errors import ModelLoadError

logger = logging.getLogger(__name__)


class ModelRegistry(Protocol):
    """Resolves a registered model name and alias to a loaded, ready-to-predict model."""

    def load(self, name: str, alias: str) -> LoadedModel: ...


def describe_estimator(estimator: Any) -> str:
    cls = type(estimator)
    return f"{cls.__module__}.{cls.__qualname__}"


class MlflowModelRegistry:
    """The production registry: MLflow's, on a SQLite file or behind an ``mlflow server``."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        self._tracking_uri = tracking_uri
        self._registry_uri = registry_uri or tracking_uri

    def load(self, name: str, alias: str) -> LoadedModel:
        # Imported here: `import mlflow` costs over a second, and only loading needs it.
        import mlflow.sklearn  # noqa: PLC0415
        from mlflow import MlflowClient  # noqa: PLC0415
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        client = MlflowClient(tracking_uri=self._tracking_uri, registry_uri=self._registry_uri)
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise ModelLoadError(f"no version of {name!r} has alias {alias!r}") from exc
        # Load the resolved version, not the alias: the alias may move while we download, and the
        # answer must come from the version we report.
        model_uri = f"models:/{name}/{version.version}"
        try:
            mlflow.set_registry_uri(self._registry_uri)
            mlflow.set_tracking_uri(self._tracking_uri)
            estimator = mlflow.sklearn.load_model(model_uri)
        except Exception as exc:
            raise ModelLoadError(f"could not load {model_uri}: {exc}") from exc
        metrics: Mapping[str, float] = {}
        if version.run_id:
            try:
                metrics = dict(client.get_run(version.run_id).data.metrics)
            except MlflowException:
                logger.warning("run %s of %s is gone; serving without its metrics", version.run_id, model_uri)
        description = ModelDescription(
            ref=ModelVersionRef(name=name, version=str(version.version), alias=alias, run_id=version.run_id or ""),
            model_uri=model_uri,
            estimator=describe_estimator(estimator),
            loaded_at=datetime.now(UTC),
            training_metrics=metrics,
        )
        return LoadedModel(description=description, estimator=estimator)


class InMemoryModelRegistry:
    """A registry of already-fitted estimators, for fast unit tests of the core and the servicers."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], LoadedModel] = {}

    def add(self, name: str, alias: str, estimator: Any, version: str = "1", run_id: str = "") -> LoadedModel:
        description = ModelDescription(
            ref=ModelVersionRef(name=name, version=version, alias=alias, run_id=run_id),
            model_uri=f"models:/{name}/{version}",
            estimator=describe_estimator(estimator),
            loaded_at=datetime.now(UTC),
        )
        model = LoadedModel(description=description, estimator=estimator)
        self._models[(name, alias)] = model
        return model

    def load(self, name: str, alias: str) -> LoadedModel:
        try:
            return self._models[(name, alias)]
        except KeyError:
            raise ModelLoadError(f"no version of {name!r} has alias {alias!r}") from None
