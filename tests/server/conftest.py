"""Fixtures that start real servers on 127.0.0.1 port 0."""

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from server.app import PredictionServer, build_server
from server.registry import InMemoryModelRegistry, ModelRegistry
from server.settings import ServerSettings


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
    # No channel_ready_future: its polling thread can raise "Channel closed" after the test is done.
    # The server is already started, so the first call connects.
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


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
