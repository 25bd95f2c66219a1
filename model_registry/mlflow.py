"""The production registry: MLflow's model registry, on a SQLite file or behind an ``mlflow server``.

MLflow reports everything as ``MlflowException`` with an error code, and a database or network failure as
whatever sqlalchemy or requests raised; ``_translate`` is the one place that turns those into the adapter's
errors, so "the registry is down" is never mistaken for "no version has this alias".
"""

import importlib
import json
import logging
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from data.profile import PROFILE_ARTIFACT
from model_registry.base import (
    AliasConflictError,
    AliasNotFoundError,
    ArtifactError,
    LoadedArtifact,
    ModelNotFoundError,
    RegistryError,
    RegistryUnavailableError,
    VersionInfo,
    VersionNotFoundError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
# MLflow's error codes that mean "the registry answered: no such thing".
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})
# MLflow reads and writes the models' files with skops. Importing it looks up the module of each of about
# 1,300 numpy and scipy ufuncs by scanning every loaded module (skops.io._utils.whichmodule): 0.4 s while only
# scikit-learn is loaded, 1.9 s once MLflow and pandas are too. So entry points import it before MLflow.
SKOPS_MODULE = "skops.io"
# What this registry imports on first use (lazily: `import mlflow` costs over a second); pandas comes with MLflow.
MLFLOW_MODULES = (SKOPS_MODULE, "pandas", "mlflow", "mlflow.artifacts", "mlflow.models", "mlflow.sklearn")


def import_mlflow_without_pyarrow() -> None:
    """Import what this registry uses while pyarrow looks absent, so that Arrow is never loaded.

    pandas imports pyarrow whenever it is installed, and so does MLflow's HDFS artifact store; MLflow depends
    on pyarrow, so it always is installed. Nothing a registry call or a served model uses Arrow, and its
    libraries cost about 35 MB of RSS. A None entry in ``sys.modules`` makes those imports fail at once (both
    expect ImportError and go on without it). The entry is removed afterwards: scikit-learn takes
    ``"pyarrow" in sys.modules`` to mean that pyarrow is loaded, and anything that imports pyarrow later gets
    the real one. Call it before starting threads that could import something meanwhile.
    """
    if "pyarrow" in sys.modules:
        return
    sys.modules["pyarrow"] = None  # type: ignore[assignment]
    try:
        for module in MLFLOW_MODULES:
            importlib.import_module(module)
    finally:
        del sys.modules["pyarrow"]


class MlflowRegistry:
    """``model_registry.ModelRegistry`` over MLflow. One client for the adapter's life (its engine is reused)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._client: Any = None
        self._client_lock = threading.Lock()
        # Compare-and-set is check-then-write in MLflow; this lock makes it atomic among this process's writers.
        self._alias_lock = threading.Lock()

    def _mlflow(self) -> Any:
        with self._client_lock:
            if self._client is None:
                # Imported here: `import mlflow` costs over a second, and only registry calls need it.
                from mlflow import MlflowClient  # noqa: PLC0415

                self._client = self._call(
                    _Subject("(connecting)"),
                    lambda: MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri),
                )
            return self._client

    def _call(self, subject: "_Subject", action: Callable[[], T]) -> T:
        try:
            return action()
        except RegistryError:
            raise
        except Exception as exc:
            raise _translate(exc, subject) from exc

    def resolve(self, name: str, alias: str) -> VersionInfo:
        client = self._mlflow()
        version = self._call(_Subject(name, alias=alias), lambda: client.get_model_version_by_alias(name, alias))
        return self._info(version, with_metrics=False)

    def version(self, name: str, version: str) -> VersionInfo:
        client = self._mlflow()
        return self._info(self._call(_Subject(name, version=version), lambda: client.get_model_version(name, version)))

    def versions(self, name: str) -> list[VersionInfo]:
        client = self._mlflow()
        model = self._call(_Subject(name), lambda: client.get_registered_model(name))
        found = self._call(_Subject(name), lambda: client.search_model_versions(f"name = '{_quoted(name)}'"))
        # A search's versions carry no aliases; the registered model has them all.
        aliases: dict[str, list[str]] = {}
        for alias, number in model.aliases.items():
            aliases.setdefault(str(number), []).append(alias)
        infos = (replace(self._info(each), aliases=tuple(sorted(aliases.get(str(each.version), [])))) for each in found)
        return sorted(infos, key=lambda info: int(info.version), reverse=True)

    def aliases(self, name: str) -> dict[str, str]:
        client = self._mlflow()
        return {
            alias: str(version)
            for alias, version in self._call(_Subject(name), lambda: client.get_registered_model(name)).aliases.items()
        }

    def load(self, name: str, version: str) -> LoadedArtifact:
        info = self.version(name, version)
        client = self._mlflow()
        where = f"{name} v{version}"
        download_uri = self._call(
            _Subject(name, version=version), lambda: client.get_model_version_download_uri(name, version)
        )
        with _scratch_dir() as scratch:
            try:
                import mlflow.artifacts  # noqa: PLC0415
                import mlflow.sklearn  # noqa: PLC0415
                from mlflow.models import Model  # noqa: PLC0415

                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=download_uri, dst_path=scratch, tracking_uri=self.tracking_uri
                )
                signature = Model.load(local).signature
                estimator = mlflow.sklearn.load_model(local)
                profile = self._reference_profile(info, scratch)
            except Exception as exc:
                if _is_connection_error(exc):
                    raise RegistryUnavailableError(f"the model registry is unreachable while loading {where}") from exc
                # Files missing from the artifact store, a corrupt or incompatible pickle: the version is broken.
                raise ArtifactError(f"the artifacts of {where} cannot be loaded: {exc}") from exc
        input_names = None
        if signature is not None and signature.inputs is not None:
            input_names = tuple(str(column) for column in signature.inputs.input_names())
        return LoadedArtifact(info=info, estimator=estimator, input_names=input_names, reference_profile=profile)

    def _reference_profile(self, info: VersionInfo, scratch: str) -> dict[str, Any] | None:
        """The run's profile document, or None when the run logged none (a version registered by hand)."""
        if not info.run_id:
            return None
        client = self._mlflow()
        try:
            names = {entry.path for entry in client.list_artifacts(info.run_id)}
        except Exception as exc:
            if _is_connection_error(exc):
                raise
            return None  # the run is gone: the version still serves, without a profile
        if PROFILE_ARTIFACT not in names:
            return None
        destination = Path(scratch) / "profile"
        destination.mkdir()
        path = client.download_artifacts(info.run_id, PROFILE_ARTIFACT, str(destination))
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError:
            logger.warning("%s v%s: its reference profile is not JSON; served without one", info.name, info.version)
            return None
        return document if isinstance(document, dict) else None

    def set_alias(self, name: str, alias: str, version: str, *, expected: str | None) -> None:
        client = self._mlflow()
        with self._alias_lock:
            current = self.aliases(name).get(alias)
            if current != expected:
                where = f"v{current}" if current is not None else "no version"
                raise AliasConflictError(
                    f"{name}@{alias} is on {where}, not {'v' + expected if expected else 'unset'} as expected", current
                )
            self.version(name, version)  # a clear VersionNotFoundError instead of MLflow's generic one
            self._call(_Subject(name, alias=alias), lambda: client.set_registered_model_alias(name, alias, version))

    def model_tags(self, name: str) -> dict[str, str]:
        client = self._mlflow()
        return dict(self._call(_Subject(name), lambda: client.get_registered_model(name)).tags)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        client = self._mlflow()
        self._call(_Subject(name), lambda: client.set_registered_model_tag(name, key, value))

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        client = self._mlflow()
        self._call(_Subject(name, version=version), lambda: client.set_model_version_tag(name, version, key, value))

    def _info(self, version: Any, *, with_metrics: bool = True) -> VersionInfo:
        metrics: dict[str, float] = {}
        run_id = str(version.run_id or "")
        if with_metrics and run_id:
            client = self._mlflow()
            try:
                metrics = dict(client.get_run(run_id).data.metrics)
            except Exception as exc:
                if _is_connection_error(exc):
                    raise _translate(exc, _Subject(str(version.name), version=str(version.version))) from exc
                logger.warning("run %s of %s v%s is gone; no metrics for it", run_id, version.name, version.version)
        return VersionInfo(
            name=str(version.name),
            version=str(version.version),
            run_id=run_id,
            created_at=datetime.fromtimestamp((version.creation_timestamp or 0) / 1000, UTC),
            aliases=tuple(version.aliases or ()),
            tags=dict(version.tags or {}),
            metrics=metrics,
        )


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the registry (its database, server or artifact proxy) could not be reached."""
    import requests  # noqa: PLC0415
    import sqlalchemy.exc  # noqa: PLC0415
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    if isinstance(
        exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | sqlalchemy.exc.OperationalError
    ):
        return True
    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        # The REST client wraps a refused connection as INTERNAL_ERROR "API request to ... failed with exception".
        return code == "TEMPORARILY_UNAVAILABLE" or (
            code == "INTERNAL_ERROR" and "failed with exception" in exc.message
        )
    return isinstance(exc, ConnectionError | TimeoutError)


@dataclass(frozen=True, slots=True)
class _Subject:
    """What a registry call was about, so that its error can name it."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name} v{self.version}"


def _translate(exc: BaseException, subject: _Subject) -> RegistryError:
    """The adapter's error for whatever MLflow, sqlalchemy or requests raised about ``subject``."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        message = str(exc.message)
        if code in _NOT_FOUND_CODES:
            if "Model Version" in message:
                return VersionNotFoundError(f"{subject} does not exist")
            return ModelNotFoundError(f"no registered model is named {subject.name!r}")
        if code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message:
            return AliasNotFoundError(f"no version of {subject.name!r} has alias {subject.alias!r}")
        if code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}:
            return RegistryError(f"the registry refused the request about {subject}: {message}")
    # Everything else (a refused connection, a locked or missing database, a 5xx) means we learned nothing.
    return RegistryUnavailableError(f"the model registry is unreachable ({type(exc).__name__} while reading {subject})")


@contextmanager
def _scratch_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="model-") as path:
        yield path
