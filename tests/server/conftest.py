"""Fixtures that start real servers on 127.0.0.1 port 0."""

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from data.schema import HOUSING_FEATURES, IRIS_FEATURES
from model_registry import ModelRegistry
from model_registry.memory import InMemoryRegistry
from server.app import PredictionServer, build_server
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
        # Explicitly: mlflow exports the URIs it last used into the environment, which the settings would read.
        "mlflow_registry_uri": None,
        "prediction_log_path": Path(tempfile.gettempdir()) / "prediction-server-test-state" / "predictions.db",
        # Never the working directory's state/; `running_server` gives each server a fresh one.
        "state_dir": Path(tempfile.gettempdir()) / "prediction-server-test-state",
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


@contextmanager
def running_server(
    registry: ModelRegistry, *, child_env: Mapping[str, str] | None = None, **overrides: object
) -> Iterator[PredictionServer]:
    """A started server with its models loaded; ``overrides`` are settings, ``child_env`` that of retrains."""
    with tempfile.TemporaryDirectory(prefix="server-state-") as state_dir:
        overrides.setdefault("state_dir", state_dir)
        # A retrain started against an in-memory registry must write nowhere near the working directory.
        overrides.setdefault("retrain_workdir", state_dir)
        overrides.setdefault("mlflow_tracking_uri", f"sqlite:///{state_dir}/unused.db")
        overrides.setdefault("prediction_log_path", f"{state_dir}/predictions.db")
        server = build_server(server_settings(**overrides), registry, child_env=child_env)
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


def small_housing_model() -> LinearRegression:
    features = np.random.default_rng(0).uniform(1.0, 10.0, size=(100, 8))
    return LinearRegression().fit(features, features.mean(1))


def small_iris_model() -> LogisticRegression:
    data, target = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(data, target)


def in_memory_registry(*, housing: bool = True, iris: bool = True) -> InMemoryRegistry:
    """Small fitted estimators under the production names, for tests that shape their own server.

    Housing is version 1 of its model; iris version 2 (an unpromoted version 1 before it), both ``champion``.
    """
    registry = InMemoryRegistry()
    if housing:
        registry.register(
            "CaliforniaHousingBestModel", small_housing_model(), alias="champion", input_names=HOUSING_FEATURES
        )
    if iris:
        registry.register("IrisBestModel", small_iris_model(), input_names=IRIS_FEATURES)
        registry.register("IrisBestModel", small_iris_model(), alias="champion", input_names=IRIS_FEATURES)
    return registry
