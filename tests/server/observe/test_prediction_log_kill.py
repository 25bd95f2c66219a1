"""SIGKILL of a real ``python -m server`` while its prediction log writes: the database it leaves passes
``PRAGMA integrity_check``, every row in it is whole and is one the server answered, with the inputs sent and
the value answered, and the answered predictions missing from it are no more than the queue could hold plus the
transaction being written (and the rows counted as dropped because the queue was full)."""

import json
import re
import signal
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from data.schema import HOUSING_TARGET
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc
from server.features import HOUSING_FEATURE_TABLE
from training.settings import TrainingSettings

from ...processes import Process, started
from ..conftest import wait_until

PORTS = re.compile(r"gRPC on port (\d+), metrics on port (\d+)")
HOUSING_SERVICE = "prediction.v1.HousingPredictor"
QUEUE_EVENTS = 6
BATCH_ROWS = 400
ROWS_PER_REQUEST = 400
CLIENTS = 2
# The writer must have committed this many rows before the kill, so that it is killed in full flow.
ROWS_BEFORE_KILL = 3 * BATCH_ROWS


@dataclass
class Answered:
    """What the server answered: prediction id -> (row sent, value answered)."""

    rows: dict[str, tuple[int, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def server_with_a_log(trained_registry: TrainingSettings, tmp_path: Path) -> Iterator[tuple[Process, Path]]:
    database = tmp_path / "predictions.db"
    env = {
        "PREDICTOR_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_TRACKING_URI": trained_registry.mlflow_tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_PREDICTION_LOG": "true",
        "PREDICTOR_PREDICTION_LOG_PATH": str(database),
        "PREDICTOR_PREDICTION_LOG_QUEUE_SIZE": str(QUEUE_EVENTS),
        "PREDICTOR_PREDICTION_LOG_BATCH_ROWS": str(BATCH_ROWS),
        "PREDICTOR_PREDICTION_LOG_FLUSH_SECONDS": "0.02",
    }
    with started("server", env) as process:
        yield process, database


def _metrics(port: int) -> dict[str, float]:
    """Each sample by name with its labels, e.g. ``prediction_log_dropped_total{reason=queue_full}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _behind(metrics_port: int) -> bool:
    """The writer has written a few transactions and has half its queue waiting: it is being outpaced."""
    samples = _metrics(metrics_port)
    written = samples.get("prediction_log_rows_written_total", 0.0)
    return written >= ROWS_BEFORE_KILL and samples.get("prediction_log_queue_events", 0.0) >= QUEUE_EVENTS // 2


def _inputs() -> tuple[np.ndarray, housing_pb2.HousingBatchRequest]:
    rows = np.tile(HOUSING_FEATURE_TABLE.example_row, (ROWS_PER_REQUEST, 1))
    rows[:, 0] = np.linspace(1.0, 10.0, ROWS_PER_REQUEST)  # median income: every row of a request differs
    names = HOUSING_FEATURE_TABLE.names
    request = housing_pb2.HousingBatchRequest(
        instances=[housing_pb2.HousingFeatures(**dict(zip(names, row, strict=True))) for row in rows.tolist()]
    )
    return rows, request


def _send(port: int, request: housing_pb2.HousingBatchRequest, answered: Answered, stop: threading.Event) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        while not stop.is_set():
            try:
                reply = stub.PredictBatch(request, timeout=10)
            except grpc.RpcError as error:
                answered.errors.append(f"{error.code()}: {error.details()}")
                return
            with answered.lock:
                for index, prediction in enumerate(reply.predictions):
                    answered.rows[prediction.prediction_id] = (index, prediction.median_house_value)


def test_sigkill_while_the_log_writes_leaves_whole_rows_and_loses_at_most_the_queue(
    server_with_a_log: tuple[Process, Path],
):
    process, database = server_with_a_log
    ports = process.wait_for(PORTS)
    grpc_port, metrics_port = int(ports.group(1)), int(ports.group(2))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        request = health_pb2.HealthCheckRequest(service=HOUSING_SERVICE)
        wait_until(lambda: health.Check(request, timeout=5).status == serving, "housing to serve", timeout=60)

    rows, batch = _inputs()
    answered, stop = Answered(), threading.Event()
    clients = [
        threading.Thread(target=_send, args=(grpc_port, batch, answered, stop), daemon=True) for _ in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: _behind(metrics_port), "the log's writer to fall behind the clients", timeout=30)
    finally:
        # No call in flight from here on: the drop counter scraped next is final, and what is answered is known.
        stop.set()
        for client in clients:
            client.join(timeout=15)
    assert not answered.errors, answered.errors[:3]
    before_kill = _metrics(metrics_port)
    # The writer was outpaced (half its queue waiting) a moment ago: it is killed with work in hand.
    assert before_kill["prediction_log_queue_events"] > 0, "the writer had caught up: the kill found it idle"
    process.process.send_signal(signal.SIGKILL)
    assert process.process.wait(timeout=10) == -signal.SIGKILL

    assert database.with_name(database.name + "-wal").exists(), "the log was closed, not killed"
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        logged = connection.execute(
            "SELECT seq, prediction_id, service, model, version, variant, inputs, output, latency_ms, request_id "
            "FROM predictions ORDER BY seq"
        ).fetchall()

    names = list(HOUSING_FEATURE_TABLE.names)
    for seq, prediction_id, service, model, version, variant, inputs, output, latency_ms, request_id in logged:
        assert prediction_id in answered.rows, f"row {seq}: {prediction_id} was never answered"
        index, value = answered.rows[prediction_id]
        assert (service, model, version, variant) == ("housing", "CaliforniaHousingBestModel", "1", "champion")
        decoded_inputs = json.loads(inputs)
        assert list(decoded_inputs) == names, f"row {seq}: {inputs}"
        assert list(decoded_inputs.values()) == rows[index].tolist(), f"row {seq}: not the row sent"
        assert json.loads(output) == {HOUSING_TARGET: value}, f"row {seq}: not the value answered"
        assert latency_ms > 0 and request_id
    assert len({row[1] for row in logged}) == len(logged)

    dropped = {name: value for name, value in before_kill.items() if name.startswith("prediction_log_dropped_total{")}
    queue_full = dropped.pop("prediction_log_dropped_total{reason=queue_full}", 0.0)
    assert not any(dropped.values()), dropped
    # Sharper, from the last scrape (no offer after it): what the writer held outside its queue then is at most
    # one transaction, plus one more that may have moved from the queue to the table while the scrape was read.
    queued_rows = before_kill["prediction_log_queue_events"] * ROWS_PER_REQUEST
    held = len(answered.rows) - queue_full - before_kill["prediction_log_rows_written_total"] - queued_rows
    assert held <= 2 * BATCH_ROWS, f"the writer held {held:.0f} rows outside its queue"
    lost = len(answered.rows) - len(logged)
    most = QUEUE_EVENTS * ROWS_PER_REQUEST + BATCH_ROWS
    assert lost - queue_full <= most, f"{lost} answered rows missing, {queue_full:.0f} dropped, at most {most}"
