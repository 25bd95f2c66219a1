"""The prediction log on real SQLite files: rows, drops under a blocked writer, retention, close, errors, SIGKILL.

A slow writer is made the honest way: another connection holds the database's write lock (``BEGIN IMMEDIATE``),
so the writer really waits inside SQLite, as it would behind any other writer.
"""

import contextlib
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from server.ids import new_prediction_ids
from server.observe.prediction_log import (
    DROP_REASONS,
    LoggedPrediction,
    PredictionEvent,
    PredictionLog,
    PredictionLogError,
)
from tests.prerequisites import REPO_ROOT

HOUSING_FEATURES = (
    "median_income",
    "house_age",
    "average_rooms",
    "average_bedrooms",
    "population",
    "average_occupancy",
    "latitude",
    "longitude",
)
IRIS_FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
SPECIES = ("setosa", "versicolor", "virginica")
LOGGER = "server.observe.prediction_log"


class Logs:
    """Prediction logs of one test, each on its own metrics registry; every one is closed at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "logs" / "predictions.db"
        self.opened: list[PredictionLog] = []
        self.metrics: dict[int, CollectorRegistry] = {}

    def start(self, **overrides: Any) -> PredictionLog:
        settings: dict[str, Any] = {
            "queue_size": 1000,
            "batch_rows": 100,
            "flush_seconds": 0.02,
            "max_age_seconds": None,
            "max_rows": None,
            "retention_interval_seconds": 3600.0,
        }
        settings.update(overrides)
        registry = CollectorRegistry()
        log = PredictionLog(self.path, metrics_registry=registry, **settings)
        self.opened.append(log)
        self.metrics[id(log)] = registry
        log.start()
        return log

    def value(self, log: PredictionLog, name: str, **labels: str) -> float:
        sample = self.metrics[id(log)].get_sample_value(name, labels)
        assert sample is not None, name
        return sample

    def written(self, log: PredictionLog) -> float:
        return self.value(log, "prediction_log_rows_written_total")

    def dropped(self, log: PredictionLog) -> dict[str, float]:
        counts = {reason: self.value(log, "prediction_log_dropped_total", reason=reason) for reason in DROP_REASONS}
        return {reason: count for reason, count in counts.items() if count}

    def close_all(self) -> None:
        for log in self.opened:
            assert log.close(timeout=30), "the writer thread did not stop"


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Logs]:
    opened = Logs(tmp_path)
    try:
        yield opened
    finally:
        opened.close_all()


def housing_event(rows: int, *, seed: int = 0, predicted_at: float | None = None, **fields: Any) -> PredictionEvent:
    inputs = np.random.default_rng(seed).uniform(-120.0, 40.0, size=(rows, len(HOUSING_FEATURES))).round(4)
    values: dict[str, Any] = {
        "service": "housing",
        "model": "CaliforniaHousingBestModel",
        "version": "3",
        "variant": "champion",
        "prediction_ids": new_prediction_ids(rows),
        "inputs": inputs,
        "feature_names": HOUSING_FEATURES,
        "outputs": inputs[:, 0] / 7.0,
        "output_names": ("median_house_value",),
        "latency_seconds": 0.00042,
        "request_id": f"request-{seed}",
        "routing_key": None,
        "predicted_at": time.time() if predicted_at is None else predicted_at,
    }
    values.update(fields)
    return PredictionEvent(**values)


def iris_event(rows: int, *, seed: int = 0, **fields: Any) -> PredictionEvent:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(3), size=rows)
    values: dict[str, Any] = {
        "service": "iris",
        "model": "IrisBestModel",
        "version": "2",
        "variant": "champion",
        "prediction_ids": new_prediction_ids(rows),
        "inputs": rng.uniform(0.1, 8.0, size=(rows, 4)),
        "feature_names": IRIS_FEATURES,
        "outputs": probabilities,
        "output_names": SPECIES,
        "latency_seconds": 0.0011,
        "request_id": f"iris-{seed}",
        "routing_key": f"user-{seed}",
        "predicted_at": time.time(),
    }
    values.update(fields)
    return PredictionEvent(**values)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll until ``condition`` holds; a liveness bound, not a measure of speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def table(path: Path, query: str = "SELECT * FROM predictions ORDER BY seq") -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(query).fetchall()


def expected_rows(event: PredictionEvent) -> list[LoggedPrediction]:
    outputs = event.outputs if event.outputs.ndim == 2 else event.outputs[:, np.newaxis]
    return [
        LoggedPrediction(
            prediction_id=prediction_id,
            logged_at=event.predicted_at,
            service=event.service,
            model=event.model,
            version=event.version,
            variant=event.variant,
            inputs=dict(zip(event.feature_names, event.inputs[row].tolist(), strict=True)),
            output=dict(zip(event.output_names, outputs[row].tolist(), strict=True)),
            latency_ms=event.latency_seconds * 1000.0,
            request_id=event.request_id,
            routing_key=event.routing_key,
        )
        for row, prediction_id in enumerate(event.prediction_ids)
    ]


def stored_predictions(path: Path) -> list[LoggedPrediction]:
    """Every row through plain sqlite3, in insertion order, its JSON parsed strictly."""
    return [
        LoggedPrediction(
            prediction_id=row["prediction_id"],
            logged_at=row["logged_at"],
            service=row["service"],
            model=row["model"],
            version=row["version"],
            variant=row["variant"],
            inputs=strict_json(row["inputs"]),
            output=strict_json(row["output"]),
            latency_ms=row["latency_ms"],
            request_id=row["request_id"],
            routing_key=row["routing_key"],
        )
        for row in table(path)
    ]


WAITS = frozenset({"wait"})
WAITS_AND_SIGNALS = frozenset({"wait", "set", "notify", "notify_all"})


@contextlib.contextmanager
def threading_calls(names: frozenset[str]) -> Iterator[list[str]]:
    """Record, in this thread, the calls to ``threading`` functions of these names (and ``time.sleep``).

    A bounded wait (a put with a timeout) returns in time too, and only a clock could tell it from no wait;
    a wake-up signal leaves no trace in the results. This tells both without a clock.
    """
    calls: list[str] = []

    def hook(frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        if event == "call" and code.co_name in names and code.co_filename == threading.__file__:
            calls.append(f"threading {code.co_name} from {frame.f_back.f_code.co_name if frame.f_back else '?'}")
        elif event == "c_call" and arg is time.sleep:
            calls.append("time.sleep")

    sys.setprofile(hook)
    try:
        yield calls
    finally:
        sys.setprofile(None)


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock: the log's writer waits inside SQLite."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")


def test_one_row_per_prediction_with_its_id_version_variant_inputs_and_output(logs: Logs) -> None:
    # Transactions of 2 rows cut the batches apart: every row must still be its own.
    log = logs.start(batch_rows=2)
    events = [
        housing_event(5, seed=1),
        housing_event(1, seed=2, routing_key="customer-7"),
        iris_event(1, seed=3),
        iris_event(3, seed=4, version="5", variant="challenger"),
    ]
    assert all(log.offer(event) for event in events)
    assert log.close(timeout=30)

    expected = [row for event in events for row in expected_rows(event)]
    assert [log.get(row.prediction_id) for row in expected] == expected
    assert log.get(new_prediction_ids(1)[0]) is None
    # The same rows through plain sqlite3: one per prediction, in order, with strict JSON objects.
    assert stored_predictions(log.path) == expected
    assert stored_predictions(log.path)[0].output == {"median_house_value": events[0].outputs[0]}
    assert logs.written(log) == 10
    assert logs.dropped(log) == {}


def test_every_finite_float_reads_back_exactly_whatever_its_magnitude_or_layout(logs: Logs) -> None:
    log = logs.start()
    awkward = [1e-05, 1e16, 5e-324, 1.7976931348623157e308, -0.0, 0.1 + 0.2, 123456789.00000001, -2.5e-300]
    rows = np.array([awkward, awkward[::-1], [7.0] * 8, np.random.default_rng(5).normal(size=8).tolist()])
    interleaved = np.zeros((4, 16))
    interleaved[:, ::2] = rows
    event = housing_event(4, inputs=interleaved[:, ::2], outputs=rows[:, 3].copy())  # a strided view, as handed over
    assert log.offer(event)
    assert log.close(timeout=30)
    stored = stored_predictions(log.path)
    assert stored == expected_rows(event)
    for row, logged in zip(rows, stored, strict=True):
        # Bit for bit, sign of zero included.
        assert np.array_equal(np.array(list(logged.inputs.values())).view(np.int64), row.view(np.int64))


def test_get_reads_from_another_thread_while_the_writer_runs(logs: Logs) -> None:
    log = logs.start()
    event = housing_event(3)
    log.offer(event)
    found: list[LoggedPrediction | None] = []

    def read() -> None:
        wait_until(lambda: log.get(event.prediction_ids[2]) is not None, "the row to be readable")
        found.append(log.get(event.prediction_ids[2]))

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert found == [expected_rows(event)[2]]


def test_get_without_a_database_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    log = PredictionLog(
        tmp_path / "predictions.db",
        queue_size=1,
        batch_rows=1,
        flush_seconds=1.0,
        max_age_seconds=None,
        max_rows=None,
        metrics_registry=CollectorRegistry(),
    )
    with pytest.raises(PredictionLogError, match="cannot read"):
        log.get("0192f3c4-5b6a-7d2e-8f01-23456789abcd")
    assert list(tmp_path.iterdir()) == []


def test_a_database_that_cannot_be_opened_fails_start(tmp_path: Path) -> None:
    log = PredictionLog(
        tmp_path,  # a folder, not a database file
        queue_size=1,
        batch_rows=1,
        flush_seconds=1.0,
        max_age_seconds=None,
        max_rows=None,
        metrics_registry=CollectorRegistry(),
    )
    with pytest.raises(PredictionLogError, match="cannot open"):
        log.start()
    assert log.close(timeout=1)


def test_a_blocked_writer_makes_offers_beyond_the_queue_drop_and_count_without_waiting(logs: Logs) -> None:
    # batch_rows=1: the writer takes the first event and goes straight to writing it, taking nothing more.
    log = logs.start(queue_size=4, batch_rows=1, busy_timeout_seconds=300.0)
    held = housing_event(2, seed=0)
    accepted = [housing_event(2, seed=seed) for seed in range(1, 5)]
    refused = [housing_event(2, seed=seed) for seed in range(5, 11)]
    results: list[bool] = []
    with write_lock_held(log.path):
        assert log.offer(held)
        wait_until(lambda: logs.value(log, "prediction_log_queue_events") == 0, "the writer to take the event")
        # The writer now waits for the lock; the queue has room for exactly 4 events.
        waits: list[str] = []

        def offer_all() -> None:
            with threading_calls(WAITS) as calls:
                results.extend(log.offer(event) for event in accepted + refused)
            waits.extend(calls)

        offers = threading.Thread(target=offer_all)
        offers.start()
        offers.join(timeout=60)
        assert not offers.is_alive(), "offer blocked behind the writer"
        # All of this while the writer is still blocked: nothing written, every refused row counted.
        assert results == [True] * 4 + [False] * 6
        assert waits == []
        assert logs.value(log, "prediction_log_queue_events") == 4
        assert logs.dropped(log) == {"queue_full": 12}
        assert logs.written(log) == 0
    wait_until(lambda: logs.written(log) == 10, "the queued rows to be written")
    stored = {row["prediction_id"] for row in table(log.path)}
    assert stored == {pid for event in [held, *accepted] for pid in event.prediction_ids}
    assert logs.dropped(log) == {"queue_full": 12}


def test_queued_rows_are_bounded_too_and_a_batch_larger_than_the_bound_is_taken_into_an_empty_queue(
    logs: Logs,
) -> None:
    log = logs.start(queue_size=100, queue_rows=10, batch_rows=1, busy_timeout_seconds=300.0)
    with write_lock_held(log.path):
        assert log.offer(held := housing_event(1, seed=0))
        wait_until(lambda: logs.value(log, "prediction_log_queue_events") == 0, "the writer to take the event")
        # The writer waits for the lock: 10 rows may queue, whatever the number of requests.
        large = housing_event(25, seed=1)  # alone in an empty queue: taken
        after_large = housing_event(1, seed=2)  # the queue holds 25 rows: refused
        assert (log.offer(large), log.offer(after_large)) == (True, False)
        assert logs.dropped(log) == {"queue_full": 1}
    wait_until(lambda: logs.written(log) == 26, "the queued rows to be written")
    # Written rows give their room back: 4 + 6 rows fit, one more row does not.
    with write_lock_held(log.path):
        assert log.offer(housing_event(1, seed=3))
        wait_until(lambda: logs.value(log, "prediction_log_queue_events") == 0, "the writer to take the event")
        fits = [housing_event(4, seed=4), housing_event(6, seed=5)]
        assert [log.offer(event) for event in fits] == [True, True]
        assert not log.offer(housing_event(1, seed=6))
        assert logs.dropped(log) == {"queue_full": 2}
    wait_until(lambda: logs.written(log) == 26 + 1 + 10, "the queued rows to be written")
    stored = {row["prediction_id"] for row in table(log.path)}
    assert set(held.prediction_ids) | set(large.prediction_ids) <= stored


def test_close_writes_everything_queued(logs: Logs) -> None:
    # Far below the wake-up threshold (100 events) and an hour before its next pass, the writer sleeps.
    log = logs.start(batch_rows=1000, flush_seconds=3600.0)
    events = [iris_event(3, seed=seed) for seed in range(50)]
    with threading_calls(WAITS_AND_SIGNALS) as calls:
        assert all(log.offer(event) for event in events)
    assert calls == []  # the offers neither waited nor woke the writer
    assert logs.written(log) == 0
    assert log.close(timeout=60)
    assert stored_predictions(log.path) == [row for event in events for row in expected_rows(event)]
    assert logs.written(log) == 150
    # Closed: nothing more is taken, and what is refused is counted.
    assert not log.offer(iris_event(2))
    assert logs.dropped(log) == {"closed": 2}


def test_a_filling_queue_wakes_the_writer_before_its_next_pass(logs: Logs) -> None:
    # The wake-up threshold is a transaction's worth of events (here 5) or half the queue, whichever is less.
    log = logs.start(queue_size=40, batch_rows=5, flush_seconds=3600.0)
    events = [housing_event(1, seed=seed) for seed in range(5)]
    assert all(log.offer(event) for event in events)
    wait_until(lambda: logs.written(log) == 5, "the writer to wake up")


def test_close_counts_what_it_could_not_write_in_time(logs: Logs) -> None:
    log = logs.start(queue_size=20, batch_rows=1, busy_timeout_seconds=300.0)
    with write_lock_held(log.path):
        assert log.offer(housing_event(1, seed=0))
        wait_until(lambda: logs.value(log, "prediction_log_queue_events") == 0, "the writer to take the event")
        assert all(log.offer(housing_event(2, seed=seed)) for seed in range(1, 11))
        # The writer is stuck behind the lock: close gives up on it and counts the queued rows.
        assert not log.close(timeout=0.2)
        assert logs.dropped(log) == {"close_timeout": 20}
    # Released, the writer finishes its transaction and stops on its own; a second close waits for it.
    assert log.close(timeout=30)
    assert logs.written(log) == 1
    assert logs.dropped(log) == {"close_timeout": 20}


def test_retention_by_age_deletes_old_rows_periodically(logs: Logs) -> None:
    log = logs.start(max_age_seconds=100.0, retention_interval_seconds=0.05)
    old = housing_event(5, seed=1, predicted_at=time.time() - 1000.0)
    recent = housing_event(3, seed=2)
    log.offer(old)
    log.offer(recent)
    wait_until(lambda: logs.written(log) == 8, "both events to be written")
    wait_until(lambda: logs.value(log, "prediction_log_retention_deleted_total") == 5, "the old rows to be deleted")
    assert [row["prediction_id"] for row in table(log.path)] == list(recent.prediction_ids)


def test_retention_by_rows_keeps_the_newest_and_catches_up_in_chunks(logs: Logs) -> None:
    first = logs.start()
    events = [housing_event(1, seed=seed) for seed in range(25)]
    assert all(first.offer(event) for event in events)
    assert first.close(timeout=30)
    # Reopened with a limit: the pass at start deletes 4 rows a transaction and goes on until 10 are left,
    # although the next periodic pass is an hour away.
    second = logs.start(max_rows=10, retention_chunk_rows=4, retention_interval_seconds=3600.0)
    wait_until(
        lambda: logs.value(second, "prediction_log_retention_deleted_total") == 15, "the oldest rows to be deleted"
    )
    newest = [event.prediction_ids[0] for event in events[-10:]]
    assert [row["prediction_id"] for row in table(second.path)] == newest


def test_a_write_error_is_counted_and_logged_once_and_the_writer_goes_on(
    logs: Logs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    log = logs.start(busy_timeout_seconds=0.05, error_log_interval_seconds=3600.0)
    log.offer(housing_event(2, seed=0))
    wait_until(lambda: logs.written(log) == 2, "the first rows")
    # First the table disappears under the writer...
    with contextlib.closing(sqlite3.connect(log.path)) as connection:
        connection.execute("DROP TABLE predictions")
    log.offer(housing_event(3, seed=1))
    wait_until(lambda: logs.value(log, "prediction_log_write_errors_total") == 1, "the first write error")
    # ...then another connection keeps the database locked for longer than the writer waits.
    with write_lock_held(log.path):
        log.offer(housing_event(4, seed=2))
        wait_until(lambda: logs.value(log, "prediction_log_write_errors_total") == 2, "the second write error")
    assert logs.dropped(log) == {"write_error": 7}
    # The writer is alive: a fresh connection recreated the table and the next rows are written.
    after = housing_event(5, seed=9)
    log.offer(after)
    wait_until(lambda: logs.written(log) == 7, "the rows after the errors")
    assert [row["prediction_id"] for row in table(log.path)] == list(after.prediction_ids)
    # Two errors within the interval: one line.
    errors = [record for record in caplog.records if record.name == LOGGER]
    assert len(errors) == 1
    assert "no such table" in errors[0].getMessage()


def test_a_malformed_event_is_dropped_alone(logs: Logs) -> None:
    log = logs.start(flush_seconds=3600.0)
    good = housing_event(2, seed=1)
    bad = housing_event(3, seed=2, feature_names=HOUSING_FEATURES[:5])
    assert log.offer(bad)
    assert log.offer(good)  # in the same transaction as the bad one
    assert log.close(timeout=30)
    assert [row["prediction_id"] for row in table(log.path)] == list(good.prediction_ids)
    assert logs.dropped(log) == {"malformed": 3}


def test_a_duplicate_id_is_counted_and_the_rest_of_its_transaction_written(logs: Logs) -> None:
    log = logs.start(flush_seconds=3600.0)
    first = housing_event(2, seed=1)
    second = housing_event(2, seed=2, prediction_ids=[first.prediction_ids[0], new_prediction_ids(1)[0]])
    log.offer(first)
    log.offer(second)
    assert log.close(timeout=30)
    assert len(table(log.path)) == 3
    assert logs.written(log) == 3
    assert logs.dropped(log) == {"duplicate": 1}
    kept = log.get(first.prediction_ids[0])
    assert kept is not None and kept.request_id == first.request_id


def test_non_finite_numbers_are_stored_as_null(logs: Logs) -> None:
    log = logs.start()
    inputs = np.array([[1.5, np.inf, np.nan, -0.0]])
    event = iris_event(1, inputs=inputs, outputs=np.array([[np.nan, 0.5, 0.5]]))
    log.offer(event)
    assert log.close(timeout=30)
    (row,) = table(log.path)
    assert strict_json(row["inputs"]) == dict(zip(IRIS_FEATURES, [1.5, None, None, -0.0], strict=True))
    assert strict_json(row["output"]) == {"setosa": None, "versicolor": 0.5, "virginica": 0.5}


# The child: writes through a PredictionLog as fast as it can (retention deleting too) until it is killed.
# Each output is twice the first input, so a row whose two JSON columns do not belong together shows.
KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from prometheus_client import CollectorRegistry
from server.ids import new_prediction_ids
from server.observe.prediction_log import PredictionEvent, PredictionLog

log = PredictionLog(Path(sys.argv[1]), queue_size=200, batch_rows=300, flush_seconds=0.01, max_age_seconds=None,
                    max_rows=20_000, retention_interval_seconds=0.2, retention_chunk_rows=500,
                    metrics_registry=CollectorRegistry())
log.start()
names = tuple(f"feature_{index}" for index in range(8))
rng = np.random.default_rng()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    inputs = rng.uniform(0, 100, size=(50, 8))
    log.offer(PredictionEvent("housing", "Model", "1", "champion", new_prediction_ids(50), inputs, names,
                              inputs[:, 0] * 2, ("value",), 0.001, "request", None, time.time()))
    time.sleep(0.0005)
"""


def max_seq(path: Path, child: subprocess.Popen[bytes], stderr: Path) -> int:
    if child.poll() is not None:
        raise AssertionError(f"the writer child exited with {child.returncode}:\n{stderr.read_text()}")
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
        try:
            return int(connection.execute("SELECT coalesce(max(seq), 0) FROM predictions").fetchone()[0])
        except sqlite3.OperationalError:  # the child has not created the table yet
            return 0


def test_sigkill_while_writing_leaves_a_whole_database(logs: Logs, tmp_path: Path) -> None:
    path = logs.path
    written_before = 0
    for round_ in range(5):  # killed at five points, each time on the database the last kill left
        stderr = tmp_path / f"child-{round_}.err"
        with stderr.open("w") as errors:
            child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=REPO_ROOT, stderr=errors)
        try:
            target = written_before + 3000
            wait_until(lambda: max_seq(path, child, stderr) >= target, "the child to write rows")  # noqa: B023
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL, stderr.read_text()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
        # Killed, not closed: the write-ahead log was never checkpointed away.
        assert path.with_name(path.name + "-wal").exists()
        with contextlib.closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = table(path)
        assert rows
        names = [f"feature_{index}" for index in range(8)]
        for row in rows:
            inputs, output = strict_json(row["inputs"]), strict_json(row["output"])
            assert list(inputs) == names
            assert output == {"value": inputs["feature_0"] * 2}
        written_before = rows[-1]["seq"]
    # The database the kills left takes new rows.
    log = logs.start()
    event = housing_event(2)
    log.offer(event)
    assert log.close(timeout=30)
    assert log.get(event.prediction_ids[1]) == expected_rows(event)[1]
