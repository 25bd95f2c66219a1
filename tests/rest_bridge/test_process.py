"""End to end: ``python -m server`` and ``python -m rest_bridge`` as real processes, one request through."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

import httpx
import pytest

from rest_bridge import __main__ as bridge_main
from training.settings import TrainingSettings

from ..prerequisites import REPO_ROOT
from ..processes import started
from .conftest import IRIS

GRPC_PORT = re.compile(r"gRPC on port (\d+)")
HTTP_PORT = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def _request(url: str, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if body is None:
        return httpx.get(url, headers=headers, timeout=10)
    return httpx.post(url, json=body, headers=headers, timeout=10)


def test_bridge_and_server_processes_serve_a_request_and_stop_cleanly(trained_registry: TrainingSettings):
    server_env = {
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_GRACE_SECONDS": "2",
    }
    with started("server", server_env) as server:
        grpc_port = int(server.wait_for(GRPC_PORT).group(1))
        bridge_env = {
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": "0",
            "BRIDGE_GRPC_TARGET": f"127.0.0.1:{grpc_port}",
        }
        with started("rest_bridge", bridge_env) as bridge:
            base = f"http://127.0.0.1:{bridge.wait_for(HTTP_PORT).group(1)}"
            deadline = time.monotonic() + 60
            while _request(f"{base}/ready").status_code != 200:
                assert time.monotonic() < deadline, "the bridge never became ready:\n" + "".join(server.lines)
                time.sleep(0.1)

            response = _request(f"{base}/predict/iris", IRIS, {"X-Request-ID": "e2e-request-1"})
            assert response.status_code == 200, response.text
            assert response.json()["species"] == "setosa"
            assert response.json()["model"]["name"] == "IrisBestModel"
            assert response.headers["x-request-id"] == "e2e-request-1"
            response = _request(f"{base}/predict/iris", {**IRIS, "sepal_length_cm": -1})
            assert response.status_code == 422
            assert response.json()["error"]["details"][0]["field"] == "sepal_length_cm"

            assert bridge.terminate() == 0
            bridge.wait_for(re.compile(r'"POST /predict/iris" 200 [\d.]+ms id=e2e-request-1'))
            bridge.wait_for(re.compile(r"Application shutdown complete"))
        assert server.terminate() == 0
        server.wait_for(re.compile(r"server stopped"))
        server.wait_for(re.compile(r"/prediction.v1.IrisClassifier/Classify OK [\d.]+ms request_id=e2e-request-1"))


def test_a_signal_that_comes_while_the_bridge_stops_is_ignored(monkeypatch):
    # Ctrl-C under scripts/serve_all.py brings the terminal's SIGINT and, a moment later, serve_all's SIGTERM.
    # uvicorn re-raises the first once it has shut down; the second can land while that SystemExit unwinds the
    # event loop, and raising again there broke the loop's close and ended the bridge with 1.
    installed: dict[int, Callable[[int, FrameType | None], object]] = {}
    monkeypatch.setattr(signal, "signal", installed.__setitem__)
    with pytest.raises(SystemExit) as stopped:
        bridge_main._exit_cleanly(signal.SIGINT, None)
    assert stopped.value.code == 0
    assert set(installed) == {signal.SIGINT, signal.SIGTERM}
    for signum, handler in installed.items():
        handler(signum, None)  # neither raises nor exits


# The entry point itself, in a child, watched from a thread: once uvicorn serves, what the collector still walks.
WATCH_THE_COLLECTOR = """
import gc, json, os, signal, sys, threading, time
from rest_bridge.__main__ import main
def watch():
    deadline = time.monotonic() + 60
    while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    print(json.dumps({"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}), file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
main()
"""


def test_the_bridge_process_keeps_its_start_up_objects_out_of_the_collectors_full_walks():
    environment = {
        **os.environ,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": "0",
        "BRIDGE_GRPC_TARGET": "127.0.0.1:9",  # never called: the bridge starts without its server
    }
    command = [sys.executable, "-c", WATCH_THE_COLLECTOR]
    child = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(next(line for line in child.stderr.splitlines() if line.startswith('{"frozen"')))
    assert seen["frozen"] > 50_000, seen
    assert seen["tracked"] < seen["frozen"] / 4, seen
