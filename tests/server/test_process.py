"""``python -m server`` as a real process: configured by environment, serving, stopping on SIGTERM."""

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import iris_pb2, iris_pb2_grpc
from training.settings import TrainingSettings

from ..processes import Process, started

PORTS = re.compile(r"gRPC on port (\d+), metrics on port (\d+)")


@pytest.fixture
def server_process(trained_registry: TrainingSettings, tmp_path: Path) -> Iterator[Process]:
    env = {
        "PREDICTOR_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_GRACE_SECONDS": "3",
    }
    with started("server", env) as process:
        yield process


def test_server_process_serves_then_stops_cleanly_on_sigterm(server_process: Process):
    grpc_port = int(server_process.wait_for(PORTS).group(1))
    server_process.wait_for(re.compile(r"iris serving IrisBestModel version 1"))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "server never became SERVING"
            time.sleep(0.1)
        flower = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)
        answer = iris_pb2_grpc.IrisClassifierStub(channel).Classify(flower, metadata=(("x-request-id", "e2e-7"),))
        assert answer.model.version == "1"

    server_process.process.send_signal(signal.SIGTERM)
    assert server_process.process.wait(timeout=15) == 0
    server_process.wait_for(re.compile(r"received SIGTERM: shutting down"))
    server_process.wait_for(re.compile(r"server stopped"))
    server_process.wait_for(re.compile(r"/prediction.v1.IrisClassifier/Classify OK [0-9.]+ms request_id=e2e-7"))
