"""``python -m server`` as a real process: configured by environment, serving, stopping on SIGTERM."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import iris_pb2, iris_pb2_grpc
from training.settings import TrainingSettings

from ..conftest import REPO_ROOT

PORTS = re.compile(r"gRPC on port (\d+), metrics on port (\d+)")


class ServerProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=REPO_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := pattern.search(line):
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern.pattern!r}:\n{''.join(self.lines)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def server_process(trained_registry: TrainingSettings, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_GRACE_SECONDS": "3",
    }
    process = ServerProcess(env)
    try:
        yield process
    finally:
        process.stop()


def test_server_process_serves_then_stops_cleanly_on_sigterm(server_process: ServerProcess):
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
