"""Fixtures that start real servers on 127.0.0.1 port 0."""

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from data.schema import HOUSING_FEATURES, IRIS_FEATURES
from model_registry import ModelRegistry
from model_registry.memory import InMemoryRegistry
from model_registry.mlflow import MlflowRegistry
from server.app import PredictionServer, build_server
from server.settings import ServerSettings
from training.settings import TrainingSettings


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample of the server's metrics registry, 0 while the series does not exist yet."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def server_settings(**overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "grace_seconds": 1.0,
        "max_workers": 4,
        # No shedding of calls that queued past max_queue_ms: an in-process server shares its GIL with the test and,
        # under CI, the cores with another test process, so a functional test's call may wait a second for a
        # worker; the admission tests set it, and process tests run the shipped default.
        "max_queue_ms": None,
        # Plaintext on loopback: admin calls are allowed without TLS here (tests of the refusal turn it off).
        "admin_allow_plaintext": True,
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


@pytest.fixture
def registry_copy(tmp_path: Path, trained_registry: TrainingSettings) -> TrainingSettings:
    db = tmp_path / "mlflow.db"
    # SQLite's backup API, not a file copy: it includes what a write-ahead log still holds.
    with (
        closing(sqlite3.connect(trained_registry.mlflow_tracking_uri.removeprefix("sqlite:///"))) as source,
        closing(sqlite3.connect(db)) as target,
    ):
        source.backup(target)
    return trained_registry.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{db}"})


@pytest.fixture
def retrain_env(registry_copy: TrainingSettings, offline_data_home: Path, tmp_path: Path) -> dict[str, str]:
    """What a retrain child needs: the data, cheap models, floors that let them through."""
    return {
        "PATH": os.environ["PATH"],
        "SCIKIT_LEARN_DATA": str(offline_data_home),
        "TRAINING_DATA_DIR": str(registry_copy.data_dir),
        "TRAINING_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "TRAINING_ALLOW_DOWNLOAD": "false",
        "TRAINING_MAX_ROWS": str(registry_copy.max_rows),
        "TRAINING_HOUSING_MAX_ITER": str(registry_copy.housing_max_iter),
        "TRAINING_HOUSING_MAX_RMSE": "10",
        "TRAINING_IRIS_MIN_ACCURACY": "0.5",
        "GRPC_VERBOSITY": "ERROR",
    }


def mlflow_server_on(uri: str, **overrides: object) -> AbstractContextManager[PredictionServer]:
    """A server on the registry at ``uri``; its settings name it too, so that retrain children write there."""
    return running_server(
        MlflowRegistry(uri),
        mlflow_tracking_uri=uri,
        mlflow_registry_uri=uri,
        **overrides,  # type: ignore[arg-type]
    )
