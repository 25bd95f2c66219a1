"""``scripts/serve_all.py`` (what ``make run`` ends in): server and bridge together, Ctrl-C stops both."""

import re
import socket
import time
from pathlib import Path

import httpx

from training.settings import TrainingSettings

from ..processes import Process

IRIS = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_server_and_bridge_run_together_and_ctrl_c_stops_both(trained_registry: TrainingSettings, tmp_path: Path):
    grpc_port, metrics_port, http_port = _free_port(), _free_port(), _free_port()
    env = {
        "PREDICTOR_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": str(grpc_port),
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": str(metrics_port),
        "PREDICTOR_GRACE_SECONDS": "2",
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(http_port),
        "BRIDGE_GRPC_TARGET": f"127.0.0.1:{grpc_port}",
    }
    stack = Process(["scripts/serve_all.py"], env, new_session=True)
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 90
        while True:
            assert stack.process.poll() is None, "".join(stack.lines)
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "never ready:\n" + "".join(stack.lines)
            time.sleep(0.2)
        answer = httpx.post(f"{base}/predict/iris", json=IRIS, timeout=10)
        assert answer.json()["species"] == "setosa"

        stack.interrupt_group()
        assert stack.process.wait(timeout=40) == 0, "".join(stack.lines)
        stack.wait_for(re.compile(r"server stopped"))
        stack.wait_for(re.compile(r"Application shutdown complete"))
    finally:
        stack.kill()
