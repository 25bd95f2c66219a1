"""The prediction log: every prediction, one row each, in a SQLite database written off the request path.

The request thread hands over one ``PredictionEvent`` per request (a batch is one event, not one per row) with
``PredictionLog.offer``: an append to a bounded deque under a lock held for a few operations, about a
microsecond, never blocking. When the queue is full (``queue_size`` requests, or ``queue_rows`` rows) the event
is dropped and its rows counted in ``prediction_log_dropped_total{reason="queue_full"}``. An offer does not wake
the writer: the writer wakes every ``flush_seconds``, writes everything queued, and sleeps again, so a request
costs no thread switch and no hand-over of the GIL. Only a queue filling up (``batch_rows`` events, at most half
the queue, or half of ``queue_rows``) or ``close`` wakes it early. It turns the events into rows (inputs and
output as JSON objects) and inserts them with
``executemany`` in transactions of up to ``batch_rows`` rows. It also enforces retention, at start and every
``retention_interval_seconds``, deleting at most ``retention_chunk_rows`` rows per transaction: a large backlog
(a lowered ``max_rows``) is deleted chunk after chunk with the inserts in between, so it never stalls them.

The database is in WAL mode with ``synchronous=NORMAL``: a commit costs no fsync; a killed process loses what was
still queued and the transaction it was writing, and leaves a database that opens and passes ``PRAGMA
integrity_check`` (a power cut may also lose the last commits, never consistency). Readers (``get``) never block
the writer.

Schema (created when missing)::

    CREATE TABLE predictions (
        seq           INTEGER PRIMARY KEY,   -- insertion order (the rowid); retention by count keeps the highest
        prediction_id TEXT NOT NULL UNIQUE,  -- UUIDv7 (server.ids), as the response carried it
        logged_at     REAL NOT NULL,         -- unix seconds at which the prediction was made
        service       TEXT NOT NULL,         -- "housing", "iris"
        model         TEXT NOT NULL,         -- registered model name
        version       TEXT NOT NULL,         -- registered model version
        variant       TEXT NOT NULL,         -- "champion", "challenger"
        inputs        TEXT NOT NULL,         -- JSON object, feature name -> value
        output        TEXT NOT NULL,         -- JSON object, output name -> value
        latency_ms    REAL NOT NULL,         -- of the whole request: every row of a batch has the batch's latency
        request_id    TEXT NOT NULL,
        routing_key   TEXT                   -- NULL when the caller sent none
    );
    CREATE INDEX predictions_logged_at ON predictions (logged_at);

Why a rowid table with an explicit ``seq`` rather than ``WITHOUT ROWID`` keyed by ``prediction_id``:

- retention by count is ``DELETE ... WHERE seq <= max(seq) - max_rows``: ``max(seq)`` is one step down the
  table's B-tree and the rows to delete are a range at its start. Keyed by the id there is no cheap row count
  (``count(*)`` scans the table; an ``OFFSET`` walks an index entry by entry).
- rows hold two JSON objects, a few hundred bytes: above the ~200 bytes (1/20 of a 4 KiB page) beyond which the
  SQLite documentation says ``WITHOUT ROWID`` stops paying off.
- ``seq`` is declared (``INTEGER PRIMARY KEY``) rather than the implicit rowid, which ``VACUUM`` may renumber.

The price is the UNIQUE index on ``prediction_id``, a second B-tree per insert; UUIDv7 ids grow with time, so
its inserts land at the right edge of that B-tree, as do those of the table and of the ``logged_at`` index. New
rows always get ``seq`` above every row present, and only the oldest rows are deleted, so ``seq`` has no gaps
unless age retention removed a row out of order; a gap only ever makes count retention keep fewer rows, never
more than ``max_rows``.

Every row dropped is counted once in ``prediction_log_dropped_total``, by reason: ``queue_full`` (the writer is
behind), ``write_error`` (the transaction holding it failed: disk full, database locked for longer than
``busy_timeout_seconds``, table missing), ``closed`` (offered after ``close``), ``close_timeout`` (still queued
when ``close`` ran out of time), ``malformed`` (an event whose shapes disagree; a bug in the caller) and
``duplicate`` (an id already in the log). A write error is also counted in ``prediction_log_write_errors_total``
and logged at most once every ``error_log_interval_seconds``; the writer then reopens its connection (which
recreates a missing table) for the next transaction and never dies.
"""

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.domain import FloatMatrix

logger = logging.getLogger(__name__)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS predictions (
    seq           INTEGER PRIMARY KEY,
    prediction_id TEXT NOT NULL UNIQUE,
    logged_at     REAL NOT NULL,
    service       TEXT NOT NULL,
    model         TEXT NOT NULL,
    version       TEXT NOT NULL,
    variant       TEXT NOT NULL,
    inputs        TEXT NOT NULL,
    output        TEXT NOT NULL,
    latency_ms    REAL NOT NULL,
    request_id    TEXT NOT NULL,
    routing_key   TEXT
);
CREATE INDEX IF NOT EXISTS predictions_logged_at ON predictions (logged_at);
"""
_COLUMNS = (
    "prediction_id, logged_at, service, model, version, variant, inputs, output, latency_ms, request_id, routing_key"
)
# OR IGNORE: one duplicate id (which UUIDv7 makes all but impossible) must not fail the whole transaction.
_INSERT = f"INSERT OR IGNORE INTO predictions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_SELECT = f"SELECT {_COLUMNS} FROM predictions WHERE prediction_id = ?"  # noqa: S608
_DELETE_OLDER = "DELETE FROM predictions WHERE seq IN (SELECT seq FROM predictions WHERE logged_at < ? LIMIT ?)"

WRITE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DROP_REASONS: Final = ("queue_full", "write_error", "closed", "close_timeout", "malformed", "duplicate")

Row = tuple[str, float, str, str, str, str, str, str, float, str, str | None]


class PredictionLogError(Exception):
    """The prediction log's database cannot be opened or read."""


class PredictionEvent(NamedTuple):
    """One request's predictions, as the request path hands them to observers (one event per request).

    A NamedTuple rather than a frozen dataclass: immutable all the same, and built in about a fifth of the time
    (a frozen dataclass sets each of the 13 fields through ``object.__setattr__``; measured 0.6 against 3.6 µs),
    which is most of what logging costs a request. Compare events field by field: ``==`` compares the arrays.

    ``inputs`` is the (rows, features) matrix in ``feature_names`` order; ``outputs`` is a vector (regression,
    one output name) or a (rows, outputs) matrix (class probabilities in ``output_names`` order). The arrays
    are not copied: the caller hands them over and must not modify them afterwards. Shapes are checked by the
    writer, not here, to keep the request path cheap; an event whose shapes disagree is dropped as
    ``malformed``. ``predicted_at`` is unix seconds (``time.time()``), stored as ``logged_at``.
    """

    service: str
    model: str
    version: str
    variant: str
    prediction_ids: Sequence[str]
    inputs: FloatMatrix
    feature_names: tuple[str, ...]
    outputs: FloatMatrix
    output_names: tuple[str, ...]
    latency_seconds: float
    request_id: str
    routing_key: str | None
    predicted_at: float


@dataclass(frozen=True, slots=True)
class LoggedPrediction:
    """One row of the log, decoded. A non-finite number was stored as JSON ``null`` and reads back as None."""

    prediction_id: str
    logged_at: float
    service: str
    model: str
    version: str
    variant: str
    inputs: Mapping[str, float | None]
    output: Mapping[str, float | None]
    latency_ms: float
    request_id: str
    routing_key: str | None


class PredictionLog:
    """The log's database, its bounded queue and its one writer thread.

    ``offer`` may be called from any thread, before or after ``start`` (events wait in the queue), and returns
    False without blocking when the event is not taken. ``get`` may be called from any thread at any time.
    ``start`` is called once, by the owner, and ``close`` after it (again, to wait for a writer a first close
    left busy). An offer racing with ``close`` may be lost uncounted: close the log after the server has
    stopped taking requests.

    The memory the queue may hold is bounded by ``queue_rows`` rows (about 165 bytes each) when it is set, else by
    ``queue_size`` events of at most the largest batch each; one event larger than ``queue_rows`` is taken into an
    empty queue.
    ``busy_timeout_seconds`` is how long a transaction waits for another connection's write lock before it
    fails as a write error; ``error_log_interval_seconds`` spaces out the log lines about write errors.
    """

    def __init__(
        self,
        path: Path,
        *,
        queue_size: int,
        batch_rows: int,
        queue_rows: int | None = None,
        flush_seconds: float,
        max_age_seconds: float | None,
        max_rows: int | None,
        metrics_registry: CollectorRegistry,
        retention_interval_seconds: float = 60.0,
        retention_chunk_rows: int = 10_000,
        busy_timeout_seconds: float = 5.0,
        error_log_interval_seconds: float = 60.0,
    ) -> None:
        _require(queue_size >= 1, f"queue_size must be at least 1, got {queue_size}")
        _require(batch_rows >= 1, f"batch_rows must be at least 1, got {batch_rows}")
        _require(queue_rows is None or queue_rows >= 1, f"queue_rows must be at least 1 or None, got {queue_rows}")
        _require(flush_seconds > 0, f"flush_seconds must be positive, got {flush_seconds}")
        _require(
            max_age_seconds is None or max_age_seconds > 0, f"max_age_seconds must be positive, got {max_age_seconds}"
        )
        _require(max_rows is None or max_rows >= 1, f"max_rows must be at least 1 or None, got {max_rows}")
        _require(retention_interval_seconds > 0, "retention_interval_seconds must be positive")
        _require(retention_chunk_rows >= 1, "retention_chunk_rows must be at least 1")
        _require(busy_timeout_seconds >= 0, "busy_timeout_seconds must not be negative")
        self.path = path
        self._batch_rows = batch_rows
        self._flush_seconds = flush_seconds
        self._max_age_seconds = max_age_seconds
        self._max_rows = max_rows
        self._retention_interval = retention_interval_seconds
        self._retention_chunk = retention_chunk_rows
        self._busy_timeout = busy_timeout_seconds
        self._errors_log = _RateLimitedLog(error_log_interval_seconds)
        self._queue_size = queue_size
        # Rows queued, bounded too: a bound in requests alone lets large batches hold a lot of memory (1,000
        # queued 10,000-row batches are 1.6 GB). An event is taken into an empty queue whatever its size.
        self._queue_rows = queue_rows if queue_rows is not None else math.inf
        self._queued_rows = 0
        # The lock orders offers against each other and against close (so none slips in after close has
        # counted what is left); the writer's popleft needs no lock, it is atomic and only shortens the deque.
        self._events: deque[PredictionEvent] = deque()
        self._lock = threading.Lock()
        # Enough queued events for a full transaction, or half the queue: wake the writer before its tick.
        self._wake_events = max(1, min(batch_rows, queue_size // 2))
        self._wake_rows = self._queue_rows / 2
        self._wake = threading.Event()
        self._closing = False
        self._stop = threading.Event()
        self._drain_deadline = math.inf
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self._templates: dict[tuple[str, ...], str] = {}
        # flush(): events accepted so far, events the writer has taken, and how many of those are written.
        self._accepted_events = 0
        self._taken_events = 0
        self._finished_events = 0
        self._finished = threading.Condition()

        dropped = Counter(
            "prediction_log_dropped_total",
            "Predictions (rows) not written to the prediction log, by reason (queue_full, write_error, closed, "
            "close_timeout, malformed, duplicate).",
            ["reason"],
            registry=metrics_registry,
        )
        # Label children resolved once: the request path only increments.
        self._dropped = {reason: dropped.labels(reason) for reason in DROP_REASONS}
        self._dropped_full = self._dropped["queue_full"]
        self._dropped_closed = self._dropped["closed"]
        self._written = Counter(
            "prediction_log_rows_written_total",
            "Predictions (rows) committed to the prediction log.",
            registry=metrics_registry,
        )
        self._write_errors = Counter(
            "prediction_log_write_errors_total",
            "Prediction log transactions (inserts or retention deletes) that failed.",
            registry=metrics_registry,
        )
        self._write_seconds = Histogram(
            "prediction_log_write_seconds",
            "Time to write one prediction log transaction of up to batch_rows rows (waiting for the write lock, "
            "encoding, inserting, committing), in seconds.",
            buckets=WRITE_SECONDS_BUCKETS,
            registry=metrics_registry,
        )
        self._deleted = Counter(
            "prediction_log_retention_deleted_total",
            "Rows deleted from the prediction log by retention (maximum age or maximum rows).",
            registry=metrics_registry,
        )
        queued = Gauge(
            "prediction_log_queue_events",
            "Events (requests) waiting in the prediction log's queue, sampled when scraped.",
            registry=metrics_registry,
        )
        queued.set_function(self._events.__len__)

    def start(self) -> None:
        """Create the folders and the database if needed, open it and start the writer thread."""
        if self._thread is not None or self._closing:
            raise RuntimeError("a prediction log is started once")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = self._open()
        except (OSError, sqlite3.Error) as exc:
            raise PredictionLogError(f"cannot open the prediction log {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def offer(self, event: PredictionEvent) -> bool:
        """Queue one request's predictions for writing; False (and counted as dropped) when not taken."""
        rows = len(event.prediction_ids)
        with self._lock:
            accepted = (
                not self._closing
                and len(self._events) < self._queue_size
                and (self._queued_rows + rows <= self._queue_rows or not self._events)
            )
            if accepted:
                self._events.append(event)
                self._accepted_events += 1
                self._queued_rows += rows
                wake = len(self._events) >= self._wake_events or self._queued_rows >= self._wake_rows
        if accepted:
            if wake and not self._wake.is_set():
                self._wake.set()
            return True
        (self._dropped_closed if self._closing else self._dropped_full).inc(rows)
        return False

    def close(self, timeout: float) -> bool:
        """Stop taking events, write what is queued for up to ``timeout`` seconds, then close the database.

        Rows still queued when the time is up are counted as dropped (``close_timeout``). Returns False when the
        writer is still inside a transaction (waiting for a lock, at most ``busy_timeout_seconds``): it finishes
        that transaction, counts what it still holds and ends on its own; calling ``close`` again waits for it.
        """
        with self._lock:
            self._closing = True
        thread = self._thread
        if thread is not None:
            self._drain_deadline = time.monotonic() + timeout
            self._stop.set()
            self._wake.set()
            # The grace covers the transaction in progress when the deadline passes and the final close.
            thread.join(timeout + 1.0)
            if thread.is_alive():
                logger.warning("the prediction log writer is still busy %.1f s after close", timeout + 1.0)
        self._drop_queued("close_timeout")
        return thread is None or not thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """Wait until every event accepted before this call was written (or dropped); False after ``timeout``.

        For readers that must see a prediction made a moment ago (feedback on it); it wakes the writer early.
        """
        with self._lock:
            target = self._accepted_events
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._finished:
            while self._finished_events < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._finished.wait(remaining)
        return True

    def get(self, prediction_id: str) -> LoggedPrediction | None:
        """The logged row of one prediction, or None (never logged, dropped, deleted, or not written yet).

        Opens a short-lived connection of its own: callable from any thread, and in WAL mode a reader never
        waits for the writer nor makes it wait.
        """
        try:
            # mode=rw: never create an empty database where the log should be.
            with contextlib.closing(
                sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, timeout=self._busy_timeout)
            ) as connection:
                connection.execute("PRAGMA query_only = ON")
                row = connection.execute(_SELECT, (prediction_id,)).fetchone()
        except sqlite3.Error as exc:
            raise PredictionLogError(f"cannot read the prediction log {self.path}: {exc}") from exc
        if row is None:
            return None
        return LoggedPrediction(
            prediction_id=row[0],
            logged_at=row[1],
            service=row[2],
            model=row[3],
            version=row[4],
            variant=row[5],
            inputs=_decode_object(row[6]),
            output=_decode_object(row[7]),
            latency_ms=row[8],
            request_id=row[9],
            routing_key=row[10],
        )

    # The writer thread: everything below runs on it (and _open also once in start).

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False: start() opens the connection, the writer thread alone uses it afterwards.
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"the database refused WAL mode (journal mode {mode})")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.executescript(SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _run(self) -> None:
        pending = _Pending()
        retention_at = time.monotonic() if self._max_age_seconds is not None or self._max_rows is not None else math.inf
        busy = False  # work is known to be waiting: no sleep before the next pass
        while True:
            try:
                if not busy:
                    timeout = min(self._flush_seconds, retention_at - time.monotonic())
                    self._wake.wait(max(0.0, timeout))
                    self._wake.clear()
                stopping = self._stop.is_set()
                if stopping and time.monotonic() >= self._drain_deadline:
                    break
                self._take(pending)
                if pending.rows:
                    # A full transaction, or what arrived since the last pass: nothing waits for more.
                    self._write(pending.take(self._batch_rows))
                elif stopping:
                    break
                behind = False
                if not stopping and time.monotonic() >= retention_at:
                    behind = self._enforce_retention()
                    # A backlog is deleted one chunk per pass, with the inserts in between.
                    retention_at = time.monotonic() + (0.0 if behind else self._retention_interval)
                busy = bool(stopping or behind or pending.rows or self._events)
                if not pending.rows:
                    # Events leave the queue in order: every one taken so far is now written or dropped.
                    with self._finished:
                        self._finished_events = self._taken_events
                        self._finished.notify_all()
            except Exception:
                # Nothing may end this thread: every row it holds is counted, the error is logged.
                self._write_errors.inc()
                self._dropped["write_error"].inc(pending.rows)
                pending = _Pending()
                busy = False
                self._errors_log.exception("the prediction log writer failed unexpectedly")
                # A failure that repeats at once must not turn this thread into a busy loop.
                self._stop.wait(0.1)
        self._dropped["close_timeout"].inc(pending.rows)
        self._drop_queued("close_timeout")
        self._discard_connection()

    def _take(self, pending: "_Pending") -> None:
        """Move events from the queue to ``pending`` until it holds a transaction's rows or the queue is empty.

        Taking no more than one transaction's worth keeps the memory held bounded by the queue's size.
        """
        while pending.rows < self._batch_rows:
            try:
                event = self._events.popleft()
            except IndexError:
                return
            with self._lock:
                self._queued_rows -= len(event.prediction_ids)
            self._taken_events += 1
            self._accept(pending, event)

    def _accept(self, pending: "_Pending", event: PredictionEvent) -> None:
        rows = len(event.prediction_ids)
        try:
            outputs: set[tuple[int, ...]] = {(rows, len(event.output_names))}
            if len(event.output_names) == 1:
                outputs.add((rows,))
            well_formed = (
                rows > 0 and event.inputs.shape == (rows, len(event.feature_names)) and event.outputs.shape in outputs
            )
        except AttributeError:
            well_formed = False
        if not well_formed:
            self._dropped["malformed"].inc(rows)
            self._errors_log.error(
                "dropped a malformed prediction event of %s/%s: %d ids, inputs %s for features %s, outputs %s for %s",
                event.service,
                event.version,
                rows,
                getattr(event.inputs, "shape", None),
                event.feature_names,
                getattr(event.outputs, "shape", None),
                event.output_names,
            )
            return
        pending.add(event)

    def _write(self, chunk: tuple[list[tuple[PredictionEvent, int, int]], int]) -> None:
        slices, rows = chunk
        started = time.perf_counter()
        try:
            connection = self._connection or self._reopen()
            connection.execute("BEGIN IMMEDIATE")
            # The rows are encoded lazily, one at a time, while sqlite inserts: the GIL is released at every
            # insert, so a large transaction never holds it for long against the request threads.
            written = connection.executemany(_INSERT, self._rows(slices)).rowcount
            connection.execute("COMMIT")
        except Exception as exc:
            # Whatever failed (sqlite, or a bug while encoding), the transaction's rows are counted and the
            # connection is replaced: the next transaction starts from a fresh, consistent state.
            self._write_errors.inc()
            self._dropped["write_error"].inc(rows)
            if isinstance(exc, sqlite3.Error):
                self._errors_log.error("prediction log write of %d rows failed, rows dropped: %s", rows, exc)
            else:
                self._errors_log.exception("prediction log write of %d rows failed, rows dropped", rows)
            self._discard_connection()
            return
        self._write_seconds.observe(time.perf_counter() - started)
        self._written.inc(written)
        if written < rows:
            self._dropped["duplicate"].inc(rows - written)

    def _rows(self, slices: Iterable[tuple[PredictionEvent, int, int]]) -> Iterator[Row]:
        for event, first, end in slices:
            outputs = event.outputs[first:end]
            if outputs.ndim == 1:
                outputs = outputs[:, np.newaxis]
            latency_ms = event.latency_seconds * 1000.0
            inputs = self._encode(event.inputs[first:end], event.feature_names)
            output = self._encode(outputs, event.output_names)
            for prediction_id, inputs_json, output_json in zip(
                event.prediction_ids[first:end], inputs, output, strict=True
            ):
                yield (
                    prediction_id,
                    event.predicted_at,
                    event.service,
                    event.model,
                    event.version,
                    event.variant,
                    inputs_json,
                    output_json,
                    latency_ms,
                    event.request_id,
                    event.routing_key,
                )

    def _encode(self, matrix: FloatMatrix, names: tuple[str, ...]) -> Iterator[str]:
        """Each row as a JSON object of name -> value (``json.loads`` gives back exactly the same floats)."""
        if not np.isfinite(matrix).all():
            return (
                json.dumps(
                    {name: value if math.isfinite(value) else None for name, value in zip(names, row, strict=True)}
                )
                for row in matrix.tolist()
            )
        template = self._templates.get(names)
        if template is None:
            fields = ", ".join(f"{json.dumps(name).replace('%', '%%')}: %s" for name in names)
            template = self._templates.setdefault(names, "{" + fields + "}")
        # orjson writes every number of the matrix in one call, each the shortest text that reads back as the same
        # float (as repr does, in JSON's exponent form: 1e-5 for repr's 1e-05), about 5x faster than a repr per
        # value; the rows of "[[a,b],[c,d]]" are then cut apart and their numbers put under their names.
        numbers = orjson.dumps(np.ascontiguousarray(matrix), option=orjson.OPT_SERIALIZE_NUMPY).decode()
        return (template % tuple(row.split(",")) for row in numbers[2:-2].split("],["))

    def _enforce_retention(self) -> bool:
        """Delete up to one chunk of rows past the maximum age and one past the maximum count; True if more remain."""
        deleted = 0
        behind = False
        try:
            connection = self._connection or self._reopen()
            connection.execute("BEGIN IMMEDIATE")
            if self._max_age_seconds is not None:
                cutoff = time.time() - self._max_age_seconds
                count = connection.execute(_DELETE_OLDER, (cutoff, self._retention_chunk)).rowcount
                deleted += count
                behind = count >= self._retention_chunk
            if self._max_rows is not None:
                oldest, newest = connection.execute("SELECT min(seq), max(seq) FROM predictions").fetchone()
                if newest is not None:
                    cutoff_seq = newest - self._max_rows
                    bound = min(cutoff_seq, oldest + self._retention_chunk - 1)
                    if bound >= oldest:
                        deleted += connection.execute("DELETE FROM predictions WHERE seq <= ?", (bound,)).rowcount
                        behind = behind or bound < cutoff_seq
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            self._write_errors.inc()
            self._errors_log.error("prediction log retention failed: %s", exc)
            self._discard_connection()
            return False
        self._deleted.inc(deleted)
        return behind

    def _reopen(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = self._open()
        return self._connection

    def _discard_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(sqlite3.Error):
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            connection.close()

    def _drop_queued(self, reason: str) -> None:
        counter = self._dropped[reason]
        # Bounded: once closing, nothing is added, and the queue holds at most its size.
        for _ in range(self._queue_size):
            try:
                event = self._events.popleft()
            except IndexError:
                return
            with self._lock:
                self._queued_rows -= len(event.prediction_ids)
            counter.inc(len(event.prediction_ids))


class _Pending:
    """Events taken from the queue and not written yet; a transaction may end in the middle of an event."""

    def __init__(self) -> None:
        self._events: deque[tuple[PredictionEvent, int]] = deque()
        self.rows = 0

    def add(self, event: PredictionEvent) -> None:
        self._events.append((event, 0))
        self.rows += len(event.prediction_ids)

    def take(self, limit: int) -> tuple[list[tuple[PredictionEvent, int, int]], int]:
        """Up to ``limit`` rows, oldest first, as (event, first row, end row) slices, and their number."""
        slices: list[tuple[PredictionEvent, int, int]] = []
        taken = 0
        while self._events and taken < limit:
            event, first = self._events[0]
            end = min(len(event.prediction_ids), first + limit - taken)
            slices.append((event, first, end))
            taken += end - first
            if end == len(event.prediction_ids):
                self._events.popleft()
            else:
                self._events[0] = (event, end)
        self.rows -= taken
        return slices, taken


class _RateLimitedLog:
    """Error lines at most once per interval, each saying how many were held back since the last one."""

    def __init__(self, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._next = -math.inf
        self._suppressed = 0

    def error(self, message: str, *args: object) -> None:
        self._emit(False, message, *args)

    def exception(self, message: str, *args: object) -> None:
        self._emit(True, message, *args)

    def _emit(self, with_traceback: bool, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        if self._suppressed:
            message += f" ({self._suppressed} similar errors not logged since the last one)"
            self._suppressed = 0
        logger.error(message, *args, exc_info=with_traceback)


def _decode_object(text: str) -> dict[str, float | None]:
    decoded = json.loads(text)
    if not isinstance(decoded, dict):
        raise PredictionLogError(f"a logged JSON column is not an object: {text[:80]!r}")
    return decoded


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
