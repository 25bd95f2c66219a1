import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# mlflow decides about telemetry when it is first imported, during collection and before pytest sets
# PYTEST_CURRENT_TEST (mlflow's own "testing" signal): without this it would try to reach the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow import MlflowClient

from data.raw import write_raw_datasets
from training.settings import TrainingSettings

MakeSettings = Callable[..., TrainingSettings]


@pytest.fixture(scope="session")
def raw_data_dir(tmp_path_factory: pytest.TempPathFactory, offline_data_home: Path) -> Path:
    """Raw CSV files written once for the session; tests only read them."""
    directory = tmp_path_factory.mktemp("raw")
    write_raw_datasets(directory, offline_data_home, allow_download=False)
    return directory


@pytest.fixture(scope="session")
def empty_registry_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with every migration applied, copied by each test.

    Migrating a fresh database takes about 3.5 s; copying this one takes milliseconds.
    """
    path = tmp_path_factory.mktemp("registry_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _restore_mlflow_uris(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Training points mlflow's process-wide URIs (and their environment variables) at the test registry.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None restores the default, as documented
    mlflow.set_registry_uri(None)  # type: ignore[arg-type]


@pytest.fixture
def make_settings(tmp_path: Path, empty_registry_db: Path, raw_data_dir: Path, offline_data_home: Path) -> MakeSettings:
    """Fast settings on a fresh registry in ``tmp_path``; keyword arguments override any field."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_registry_db, db)

    def make(**overrides: Any) -> TrainingSettings:
        fields: dict[str, Any] = {
            "mlflow_tracking_uri": f"sqlite:///{db}",
            "artifact_root": tmp_path / "artifacts",
            "data_dir": raw_data_dir,
            "scikit_learn_data": offline_data_home,
            "allow_download": False,
            "max_rows": 2000,
            "housing_max_iter": 50,
            "housing_max_rmse": 2.0,  # lets the cheap models of the gate tests through (RMSE 0.58 to 1.14)
        }
        return TrainingSettings(**(fields | overrides))

    return make
