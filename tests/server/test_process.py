"""``python -m server`` as a real process: configured by environment, serving, stopping on SIGTERM."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.features import HOUSING_FEATURE_TABLE
from training.settings import TrainingSettings

from ..prerequisites import REPO_ROOT
from ..processes import Process, started
from .test_metrics import _scrape, _value

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
    # Both models loaded and answering without Arrow's libraries in memory (about 35 MB of RSS).
    mapped = Path(f"/proc/{server_process.process.pid}/maps").read_text()
    assert "pyarrow" not in mapped and "libarrow" not in mapped

    server_process.process.send_signal(signal.SIGTERM)
    assert server_process.process.wait(timeout=15) == 0
    server_process.wait_for(re.compile(r"received SIGTERM: shutting down"))
    server_process.wait_for(re.compile(r"server stopped"))
    server_process.wait_for(re.compile(r"/prediction.v1.IrisClassifier/Classify OK [0-9.]+ms request_id=e2e-7"))


# Calls that are genuinely slow with the real model: large batches through scikit-learn, one at a time
# (PREDICTOR_MAX_CONCURRENT_PREDICTIONS=1), so the later ones queue for the prediction slot.
DRAIN_CALLS = 10
ROWS_PER_CALL = 50_000
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def large_batch() -> housing_pb2.HousingBatchRequest:
    rows = np.tile(HOUSING_FEATURE_TABLE.example_row, (ROWS_PER_CALL, 1))
    rows[:, 0] = np.linspace(1.0, 10.0, ROWS_PER_CALL)  # median income: every row a different house
    names = HOUSING_FEATURE_TABLE.names
    return housing_pb2.HousingBatchRequest(
        instances=[housing_pb2.HousingFeatures(**dict(zip(names, row, strict=True))) for row in rows.tolist()]
    )


def _draining_server(trained_registry: TrainingSettings, grace_seconds: float) -> Process:
    env = {
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_GRACE_SECONDS": str(grace_seconds),
        # No fast path: every batch goes to scikit-learn, one call at a time, so the calls queue for seconds; and no
        # prediction log, whose writer would hold the GIL for seconds encoding their rows, delaying the signal's
        # handling and the health watch past the calls' ends.
        "PREDICTOR_SMALL_BATCH_ROWS": "0",
        "PREDICTOR_PREDICTION_LOG": "false",
        "PREDICTOR_MAX_CONCURRENT_PREDICTIONS": "1",
        "PREDICTOR_MAX_BATCH_SIZE": str(ROWS_PER_CALL),
        "PREDICTOR_MAX_WORKERS": str(DRAIN_CALLS + 4),
    }
    return Process(["-m", "server"], env)


def _wait_until_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while health.Check(health_pb2.HealthCheckRequest()).status != SERVING:
        assert time.monotonic() < deadline, "server never became SERVING"
        time.sleep(0.1)


def _start_calls_and_wait_until_in_flight(
    channel: grpc.Channel, metrics_port: int, request: housing_pb2.HousingBatchRequest
) -> "Sequence[grpc.Future[housing_pb2.HousingBatchPrediction]]":
    """DRAIN_CALLS batch calls, returned once the server has started every one of them (its own metrics)."""
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    calls = [
        stub.PredictBatch.future(request, timeout=120, metadata=(("x-request-id", f"drain-{n}"),))
        for n in range(DRAIN_CALLS)
    ]
    labels = {"grpc_service": "prediction.v1.HousingPredictor", "grpc_method": "PredictBatch", "grpc_type": "UNARY"}
    deadline = time.monotonic() + 60
    while _value(_scrape(metrics_port), "grpc_server_started_total", **labels) < DRAIN_CALLS:
        assert time.monotonic() < deadline, "the server never started every call"
        assert not any(call.done() for call in calls), "a call ended before the last one started: too fast to drain"
        time.sleep(0.05)
    return calls


def test_sigterm_drains_calls_in_flight_after_health_turns_not_serving_and_refuses_new_ones(
    trained_registry: TrainingSettings, large_batch: housing_pb2.HousingBatchRequest
):
    grace_seconds = 60.0
    server = _draining_server(trained_registry, grace_seconds)
    try:
        ports = server.wait_for(PORTS)
        target = f"127.0.0.1:{ports.group(1)}"
        with grpc.insecure_channel(target) as channel, grpc.insecure_channel(target) as watching:
            _wait_until_serving(channel)
            watch = health_pb2_grpc.HealthStub(watching).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == SERVING
            calls = _start_calls_and_wait_until_in_flight(channel, int(ports.group(2)), large_batch)

            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            # Watchers are told first, while every call is still being answered.
            assert next(watch).status == NOT_SERVING
            finished_when_not_serving = sum(call.done() for call in calls)
            watch.cancel()
            # Then the listener closes: a new client is refused while the calls drain.
            with grpc.insecure_channel(target) as newcomer:
                refused = _first_refusal(newcomer)
            finished_when_refused = sum(call.done() for call in calls)

            answers = [call.result(timeout=120) for call in calls]
            code = server.process.wait(timeout=max(1.0, grace_seconds - (time.monotonic() - signalled)))
    finally:
        server.kill()

    assert finished_when_not_serving < DRAIN_CALLS
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert finished_when_refused < DRAIN_CALLS
    assert [len(answer.predictions) for answer in answers] == [ROWS_PER_CALL] * DRAIN_CALLS
    assert {answer.model.version for answer in answers} == {"1"}
    assert code == 0
    log = "".join(server.lines)
    sigterm_at = log.index("received SIGTERM: shutting down")
    drained = re.findall(r"PredictBatch OK [\d.]+ms request_id=drain-\d", log[sigterm_at:])
    assert len(drained) >= 2, log
    assert log.index("server stopped") > sigterm_at


def _first_refusal(channel: grpc.Channel) -> grpc.StatusCode:
    """Call until refused (UNAVAILABLE). Calls made between NOT_SERVING and the listener closing are admitted
    (and answered) or, when they arrive as it closes, cancelled."""
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    house = housing_pb2.HousingFeatures(
        **dict(zip(HOUSING_FEATURE_TABLE.names, HOUSING_FEATURE_TABLE.example_row.ravel().tolist(), strict=True))
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stub.Predict(house, timeout=1)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                return error.code()
    raise AssertionError("new calls were never refused")


def test_calls_still_running_when_the_grace_ends_are_cut_and_the_process_exits_cleanly(
    trained_registry: TrainingSettings, large_batch: housing_pb2.HousingBatchRequest
):
    # A grace far shorter than the queued work (the calls above take seconds to drain): it is read and kept.
    server = _draining_server(trained_registry, grace_seconds=0.5)
    try:
        ports = server.wait_for(PORTS)
        with grpc.insecure_channel(f"127.0.0.1:{ports.group(1)}") as channel:
            _wait_until_serving(channel)
            calls = _start_calls_and_wait_until_in_flight(channel, int(ports.group(2)), large_batch)
            server.process.send_signal(signal.SIGTERM)
            codes = [_code_of(call) for call in calls]
            exit_code = server.process.wait(timeout=60)
    finally:
        server.kill()

    assert exit_code == 0
    assert codes.count(grpc.StatusCode.OK) < DRAIN_CALLS, codes
    # The server cancels what is left when the grace ends; the client sees its connection go.
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, codes
    server.wait_for(re.compile(r"server stopped"))


def _code_of(call: "grpc.Future[housing_pb2.HousingBatchPrediction]") -> grpc.StatusCode:
    try:
        call.result(timeout=120)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _serving_port(process: Process) -> int:
    port = int(process.wait_for(PORTS).group(1))
    process.wait_for(re.compile(r"housing serving CaliforniaHousingBestModel version 1"))
    return port


def test_two_server_processes_never_hand_out_the_same_prediction_id(trained_registry, tmp_path, large_batch):
    """100,000 predictions from two ``python -m server`` processes at once: every id unique, each log whole."""
    calls_per_server, rows = 50, 1000
    batch = housing_pb2.HousingBatchRequest(instances=large_batch.instances[:rows])

    def environment(name: str) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
            "PREDICTOR_HOST": "127.0.0.1",
            "PREDICTOR_PORT": "0",
            "PREDICTOR_METRICS_PORT": "0",
            "PREDICTOR_STATE_DIR": str(tmp_path / name / "state"),
            "PREDICTOR_PREDICTION_LOG_PATH": str(tmp_path / name / "predictions.db"),
            "PREDICTOR_ACCESS_LOG": "false",
        }

    ids: dict[str, list[str]] = {"a": [], "b": []}
    with started("server", environment("a")) as first, started("server", environment("b")) as second:
        ports = {"a": _serving_port(first), "b": _serving_port(second)}

        def predict(name: str) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{ports[name]}") as channel:
                stub = housing_pb2_grpc.HousingPredictorStub(channel)
                for _ in range(calls_per_server):
                    answer = stub.PredictBatch(batch, timeout=30)
                    ids[name].extend(each.prediction_id for each in answer.predictions)

        callers = [threading.Thread(target=predict, args=(name,)) for name in ids]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)
        for process in (first, second):
            process.process.send_signal(signal.SIGTERM)
            assert process.process.wait(timeout=15) == 0

    every = ids["a"] + ids["b"]
    assert len(every) == 2 * calls_per_server * rows
    assert len(set(every)) == len(every), "two processes handed out the same id"
    for name, made in ids.items():
        assert made == sorted(made), f"server {name}: ids are not increasing"  # UUIDv7 text sorts by time
        with closing(sqlite3.connect(tmp_path / name / "predictions.db")) as log:
            logged = {row[0] for row in log.execute("SELECT prediction_id FROM predictions")}
        assert logged == set(made)


# Eight threads that each allocate a few blocks at once, then glibc's count of malloc arenas ("heap" elements).
COUNT_ARENAS = """
import ctypes, os, sys, tempfile, threading
from server.__main__ import limit_malloc_arenas
if sys.argv[1] == "limited":
    limit_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
start = threading.Barrier(8)
def allocate():
    start.wait()
    blocks = [libc.malloc(4096) for _ in range(100)]
    start.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(open(report.name).read().count("<heap nr="))
"""


def test_the_server_process_keeps_one_malloc_arena_per_core():
    cores = len(os.sched_getaffinity(0))
    environment = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}

    def arenas(mode: str) -> int:
        command = [sys.executable, "-c", COUNT_ARENAS, mode]
        return int(subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, check=True).stdout)

    assert arenas("limited") <= cores
    # glibc's default, for contrast: each of the eight threads takes an arena of its own.
    assert arenas("default") > cores


# The entry point itself, in a child, watched from a thread of its own: once start-up has frozen what it made,
# what the collector still walks, then SIGTERM.
WATCH_THE_COLLECTOR = """
import gc, json, os, signal, sys, threading, time
from server.__main__ import main
def watch():
    deadline = time.monotonic() + 60
    while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few calls' worth of objects made after the freeze
    seen = {"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects()), "enabled": gc.isenabled()}
    print(json.dumps(seen), file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
sys.exit(main())
"""


def test_the_served_process_keeps_its_start_up_objects_out_of_the_collectors_full_walks(
    trained_registry: TrainingSettings, tmp_path: Path
):
    environment = {
        **os.environ,
        "PREDICTOR_STATE_DIR": str(tmp_path / "state"),
        "PREDICTOR_PREDICTION_LOG_PATH": str(tmp_path / "predictions.db"),
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
    }
    command = [sys.executable, "-c", WATCH_THE_COLLECTOR]
    child = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=180, check=False
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert "iris serving IrisBestModel version 1" in child.stderr
    seen = json.loads(next(line for line in child.stderr.splitlines() if line.startswith('{"frozen"')))
    # Both models loaded: hundreds of thousands of objects that a full collection no longer walks, and the
    # collector running again for what serving makes.
    assert seen["frozen"] > 200_000, seen
    assert seen["tracked"] < seen["frozen"] / 10, seen
    assert seen["enabled"], seen
