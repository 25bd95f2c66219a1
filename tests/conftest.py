import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.database import DirectoryBasedExampleDatabase

# pytest_sessionstart is a hook: under CI a run with a prerequisite missing stops at its start.
from .prerequisites import HOUSING_DATA, REPO_ROOT, pytest_sessionstart, running_in_ci  # noqa: F401

# MLflow decides about telemetry when it is first imported, which happens while tests are collected.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# Idle OpenMP threads sleep instead of spinning: with servers and training sharing two cores, spinning
# threads turn a 2 s gradient-boosting fit into minutes. Read when scikit-learn's OpenMP runtime loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ("tests.suite_gate",)

# Property tests: in CI the same examples every run (derandomised, nothing read or written); locally the
# failing examples are kept in .hypothesis/ (git-ignored) and replayed first, so a failure seen once comes back.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile(
    "dev", database=DirectoryBasedExampleDatabase(REPO_ROOT / ".hypothesis" / "examples"), print_blob=True
)
hypothesis_settings.load_profile("ci" if running_in_ci() else "dev")


@pytest.fixture(scope="session")
def offline_data_home() -> Path:
    """scikit-learn's data home holding the California housing cache: tests never download."""
    return HOUSING_DATA.require()


# Imported after the environment is set: MLflow reads it on import.
import mlflow  # noqa: E402

from model_registry.mlflow import MlflowRegistry  # noqa: E402
from server.app import PredictionServer  # noqa: E402
from training.pipeline import train_housing, train_iris  # noqa: E402
from training.settings import TrainingSettings  # noqa: E402

from .server.conftest import running_server  # noqa: E402


@pytest.fixture(scope="session")
def trained_registry(
    tmp_path_factory: pytest.TempPathFactory, offline_data_home: Path, worker_id: str
) -> TrainingSettings:
    """A real MLflow SQLite registry holding both models, trained quickly on a sample of the real data.

    Trained once per run: the xdist workers share it (the first to ask trains it under a file lock, the others
    wait for it), since tests only read it; those that register versions or move aliases work on a copy
    (``registry_copy``). Training it took about 15 s of CPU, once per worker.
    """
    if worker_id == "master":  # no xdist: this process's own temporary folder
        return _train_registry(tmp_path_factory.mktemp("registry"), offline_data_home)
    root = tmp_path_factory.getbasetemp().parent / "trained-registry"  # the run's folder, above each worker's
    with (root.parent / "trained-registry.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        trained = root / "trained"
        if not trained.exists():
            shutil.rmtree(root, ignore_errors=True)  # what a worker that failed while training left
            root.mkdir()
            settings = _train_registry(root, offline_data_home)
            trained.touch()
            return settings
    return _registry_settings(root, offline_data_home)


def _registry_settings(root: Path, data_home: Path) -> TrainingSettings:
    return TrainingSettings(
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=root / "artifacts",
        data_dir=root / "data",
        scikit_learn_data=data_home,
        allow_download=False,
        max_rows=3000,
        housing_max_iter=60,
        housing_max_rmse=10.0,
        iris_min_accuracy=0.5,
    )


def _train_registry(root: Path, data_home: Path) -> TrainingSettings:
    settings = _registry_settings(root, data_home)
    train_housing(settings)
    train_iris(settings)
    # Training points mlflow's process-wide URIs at this registry and exports them as MLFLOW_TRACKING_URI and
    # MLFLOW_REGISTRY_URI; left there, every later settings object of the session would read them.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None restores the default, as documented
    mlflow.set_registry_uri(None)  # type: ignore[arg-type]
    return settings


@pytest.fixture(autouse=True)
def _mlflow_process_uris() -> Iterator[None]:
    """Undo what a test's training did to mlflow's process-wide URIs and their environment variables.

    Training points them at its own registry (and mlflow exports them into ``os.environ``); left behind, they
    would send a later test's registration to that registry, whichever test runs next in this worker.
    """
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]  # None restores the default
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def mlflow_server(trained_registry: TrainingSettings) -> Iterator[PredictionServer]:
    """One server over the trained registry, shared by the tests that only read from it."""
    with running_server(MlflowRegistry(trained_registry.mlflow_tracking_uri)) as server:
        yield server
