"""Fixtures that start real servers on 127.0.0.1 port 0."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from server.app import PredictionServer, build_server
from server.registry import InMemoryModelRegistry, MlflowModelRegistry, ModelRegistry
from server.settings import ServerSettings
from training.pipeline import train_housing, train_iris
from training.settings import TrainingSettings


def server_settings(**overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "grace_seconds": 1.0,
        "max_workers": 4,
        "mlflow_tracking_uri": "sqlite:///unused.db",
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


@contextmanager
def running_server(registry: ModelRegistry, **overrides: object) -> Iterator[PredictionServer]:
    server = build_server(server_settings(**overrides), registry)
    server.start()
    try:
        server.load_models()
        yield server
    finally:
        server.stop(grace=0.5)


@contextmanager
def channel_to(server: PredictionServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory, offline_data_home: Path) -> TrainingSettings:
    """A real MLflow SQLite registry holding both models, trained quickly on a sample of the real data."""
    root = tmp_path_factory.mktemp("registry")
    settings = TrainingSettings(
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=root / "artifacts",
        data_dir=root / "data",
        scikit_learn_data=offline_data_home,
        allow_download=False,
        max_rows=3000,
        housing_max_iter=60,
        housing_max_rmse=10.0,
        iris_min_accuracy=0.5,
    )
    train_housing(settings)
    train_iris(settings)
    return settings


@pytest.fixture(scope="session")
def mlflow_server(trained_registry: TrainingSettings) -> Iterator[PredictionServer]:
    """One server over the trained registry, shared by the tests that only read from it."""
    with running_server(MlflowModelRegistry(trained_registry.mlflow_tracking_uri)) as server:
        yield server


@pytest.fixture
def channel(mlflow_server: PredictionServer) -> Iterator[grpc.Channel]:
    with channel_to(mlflow_server) as opened:
        yield opened


def in_memory_registry(*, housing: bool = True, iris: bool = True) -> InMemoryModelRegistry:
    """Small fitted estimators under the production names, for tests that shape their own server."""
    registry = InMemoryModelRegistry()
    if housing:
        rng = np.random.default_rng(0)
        features = rng.uniform(1.0, 10.0, size=(100, 8))
        registry.add("CaliforniaHousingBestModel", "champion", LinearRegression().fit(features, features.mean(1)))
    if iris:
        data, target = load_iris(return_X_y=True)
        registry.add("IrisBestModel", "champion", LogisticRegression(max_iter=500).fit(data, target), version="2")
    return registry
