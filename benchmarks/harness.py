"""What the latency benchmarks share: a server in a child process, health waits, timed rounds of calls."""

import contextlib
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PORTS = re.compile(r"gRPC on port (\d+), metrics on port (\d+)")


@dataclass(frozen=True)
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_port: int
    metrics_port: int


@contextmanager
def server_process(command: Sequence[str]) -> Iterator[ServerProcess]:
    """Start ``command`` (a server that logs its ports, as ``server.app`` does), yield it, stop it with SIGTERM."""
    process = subprocess.Popen(list(command), stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        ports = None
        for line in process.stderr:
            if found := PORTS.search(line):
                ports = int(found.group(1)), int(found.group(2))
                break
        if ports is None:
            raise SystemExit(f"the server did not start: {' '.join(command)}")
        # Keep reading its output, so that a chatty server never blocks on a full pipe.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield ServerProcess(process, *ports)
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_serving(channel: grpc.Channel, service: str, timeout: float = 120.0) -> None:
    """Until ``service`` reports SERVING (the ports are logged before the models are loaded)."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while health.Check(health_pb2.HealthCheckRequest(service=service)).status != health_pb2.HealthCheckResponse.SERVING:
        if time.monotonic() > deadline:
            raise SystemExit(f"{service} did not start serving within {timeout:.0f} s")
        time.sleep(0.05)


def timed_calls(
    call: Callable[[], object], seconds: float, concurrency: int, rate: float | None = None
) -> tuple[list[float], float]:
    """Run ``call`` from ``concurrency`` threads for ``seconds``: every latency, and the wall time.

    Back to back without ``rate``; with it, paced to ``rate`` calls per second in all (each thread keeps its own
    schedule and never sends early), so the machine is not saturated and latency is not queueing for the CPU.
    """
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    deadline = time.monotonic() + seconds
    spacing = None if rate is None else concurrency / rate

    def caller(mine: list[float]) -> None:
        due = time.monotonic()
        while time.monotonic() < deadline:
            if spacing is not None:
                due += spacing
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
            started = time.perf_counter()
            call()
            mine.append(time.perf_counter() - started)

    threads = [threading.Thread(target=caller, args=(each,)) for each in latencies]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [value for each in latencies for value in each], time.monotonic() - began


def production_housing_model(trees: int | None = None) -> Any:
    """The training pipeline's housing estimator (``trees`` overriding its tree count), fitted on the full data."""
    from sklearn.base import clone  # noqa: PLC0415
    from sklearn.datasets import fetch_california_housing  # noqa: PLC0415

    from training.housing import housing_spec  # noqa: PLC0415
    from training.settings import TrainingSettings  # noqa: PLC0415

    data = fetch_california_housing(download_if_missing=False)
    overrides = {} if trees is None else {"max_iter": trees}
    return clone(housing_spec(TrainingSettings(), overrides).estimator).fit(data.data, data.target)


def serve_until_sigterm(registry: Any, **settings: Any) -> None:
    """The child side of ``server_process``: a server on ``registry`` (loopback, free ports, scratch state and log),
    with ``settings`` overriding, until SIGTERM. It logs its ports, which ``server_process`` reads."""
    import logging  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from server.app import build_server  # noqa: PLC0415
    from server.settings import ServerSettings  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("server.app").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="bench-server-") as scratch:
        defaults: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "model_poll_seconds": 0,
            "access_log": False,
            "prediction_log_path": Path(scratch) / "predictions.db",
            "state_dir": Path(scratch) / "state",
        }
        server = build_server(ServerSettings(**(defaults | settings)), registry)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
        server.start()
        server.load_models()  # a service with no registered model stays NOT_SERVING; the others serve
        stop.wait()
        server.stop(grace=1.0)
