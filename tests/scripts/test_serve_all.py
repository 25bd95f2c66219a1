"""``scripts/serve_all.py`` (what ``make run`` ends in): server and bridge together, Ctrl-C stops both."""

import re
import time
from pathlib import Path

import httpx

from training.settings import TrainingSettings

from ..processes import Process

IRIS = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
GRPC_PORT = re.compile(r"gRPC on port (\d+), metrics on port (\d+)")
HTTP_PORT = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def test_server_and_bridge_run_together_on_free_ports_and_ctrl_c_stops_both(
    trained_registry: TrainingSettings, tmp_path: Path
):
    # Every port 0: the server and the bridge bind free ones, and serve_all points the bridge at the server's.
    env = {
        "PREDICTOR_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_GRACE_SECONDS": "2",
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": "0",
    }
    stack = Process(["scripts/serve_all.py"], env, new_session=True)
    try:
        grpc_port = int(stack.wait_for(GRPC_PORT).group(1))
        base = f"http://127.0.0.1:{stack.wait_for(HTTP_PORT).group(1)}"
        deadline = time.monotonic() + 90
        while httpx.get(f"{base}/ready", timeout=5).status_code != 200:
            assert stack.process.poll() is None, "".join(stack.lines)
            assert time.monotonic() < deadline, "never ready:\n" + "".join(stack.lines)
            time.sleep(0.2)
        answer = httpx.post(f"{base}/predict/iris", json=IRIS, timeout=10)
        assert answer.json()["species"] == "setosa"
        stack.wait_for(re.compile(rf"bridging to gRPC target localhost:{grpc_port}$"))

        stack.interrupt_group()
        assert stack.wait(timeout=40) == 0, "".join(stack.lines)
        stack.wait_for(re.compile(r"server stopped"))
        stack.wait_for(re.compile(r"Application shutdown complete"))
    finally:
        stack.kill()
