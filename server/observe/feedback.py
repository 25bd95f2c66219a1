"""Ground truth for logged predictions: stored beside the prediction log, joined with it, scored live.

A caller sends the true value (housing) or the true class (iris) for prediction ids it was given. Each item
gets its own outcome:

- ``RECORDED``: new label, stored and added to live quality;
- ``ALREADY_RECORDED``: the same label again (a retry): nothing changes, and it is not counted twice;
- ``NOT_FOUND``: no logged prediction has that id (never made, not logged, or deleted by retention);
- ``ALREADY_EXISTS``: the prediction already has a different label, which stays;
- ``INVALID_ARGUMENT``: the label does not fit the prediction's model (a species for a housing prediction, a
  non-finite value).

Labels live in table ``feedback`` of the prediction log's database (one row per prediction id, so a label
can never be recorded twice), written in one transaction per call through a connection of this store's own.
A prediction made a moment ago may still be queued for the log: when an id is not found, the log is flushed
once and the id looked up again. None of this runs on the request path.

Schema::

    CREATE TABLE feedback (
        prediction_id TEXT PRIMARY KEY,  -- a prediction id of table predictions
        label         REAL NOT NULL,     -- the true value, or the true class's index (iris: 0 setosa, ...)
        received_at   REAL NOT NULL      -- unix seconds
    );
"""

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from server.observe.prediction_log import PredictionLog
from server.observe.quality import LabelledPrediction, LiveQuality

logger = logging.getLogger(__name__)

FEEDBACK_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY,
    label         REAL NOT NULL,
    received_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_received_at ON feedback (received_at);
"""
_LOOKUP: Final = (
    "SELECT p.service, p.model, p.version, p.variant, p.output, f.label FROM predictions AS p "
    "LEFT JOIN feedback AS f ON f.prediction_id = p.prediction_id WHERE p.prediction_id = ?"
)
# Newest labels first, each looked up in the log by its id: CROSS JOIN keeps SQLite from the other order, a
# scan of every logged prediction (1.6 s per version at start-up with 5 million rows and no label at all).
_RECENT: Final = (
    "SELECT p.variant, p.output, f.label, f.received_at FROM feedback AS f "
    "CROSS JOIN predictions AS p ON p.prediction_id = f.prediction_id WHERE p.model = ? AND p.version = ? "
    "ORDER BY f.received_at DESC LIMIT ?"
)
FLUSH_SECONDS: Final = 2.0


class FeedbackOutcome(StrEnum):
    RECORDED = "recorded"
    ALREADY_RECORDED = "already_recorded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    INVALID_ARGUMENT = "invalid_argument"


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """The true label of one prediction: ``value`` for a regression, ``class_index`` for a classification."""

    prediction_id: str
    value: float | None = None
    class_index: int | None = None


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    prediction_id: str
    outcome: FeedbackOutcome
    message: str


class FeedbackUnavailableError(Exception):
    """The prediction log is off or cannot be read: no label can be joined with its prediction."""


class FeedbackStore:
    def __init__(
        self,
        log: PredictionLog,
        quality: LiveQuality,
        class_names: Mapping[str, Sequence[str]],
        registry: CollectorRegistry,
        *,
        busy_timeout_seconds: float = 5.0,
    ) -> None:
        """``class_names`` by service key ("iris"): a service with class names takes class labels."""
        self._log = log
        self._quality = quality
        self._class_names = class_names
        self._busy_timeout = busy_timeout_seconds
        self._lock = threading.Lock()  # one writing transaction of ours at a time
        self._schema_ready = False
        outcomes = Counter(
            "model_feedback_total",
            "Ground-truth labels received, by outcome (recorded, already_recorded, not_found, already_exists, "
            "invalid_argument).",
            ["outcome"],
            registry=registry,
        )
        self._outcomes = {outcome: outcomes.labels(outcome.value) for outcome in FeedbackOutcome}

    def submit(self, items: Sequence[FeedbackItem]) -> list[FeedbackResult]:
        """Record every item's label; one outcome per item, in order."""
        now = time.time()
        with self._lock, self._connect() as connection:
            results = self._submit(connection, items, now, flushed=False)
        for result in results:
            self._outcomes[result.outcome].inc()
        return results

    def restore(self, versions: Iterable[tuple[str, str]], limit: int) -> int:
        """Refill live quality with the newest ``limit`` labels of each (model, version); how many were found.

        Called once the served versions are known, with those: versions no longer served stay out of memory.
        """
        labelled: list[LabelledPrediction] = []
        try:
            with self._connect() as connection:
                for model, version in versions:
                    rows = connection.execute(_RECENT, (model, version, limit)).fetchall()
                    labelled += [
                        LabelledPrediction(model, version, variant, _output_values(output), label, received_at)
                        for variant, output, label, received_at in reversed(rows)
                    ]
        except (sqlite3.Error, FeedbackUnavailableError):
            logger.warning("could not read earlier feedback; live quality starts empty", exc_info=True)
            return 0
        self._quality.record(labelled)
        return len(labelled)

    def _submit(
        self, connection: sqlite3.Connection, items: Sequence[FeedbackItem], now: float, *, flushed: bool
    ) -> list[FeedbackResult]:
        results: list[FeedbackResult] = []
        labelled: list[LabelledPrediction] = []
        pending: dict[str, float] = {}  # labels of this call not committed yet: a repeated id within it
        missing: list[int] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for index, item in enumerate(items):
                result, accepted = self._one(connection, item, now, pending)
                if result.outcome is FeedbackOutcome.NOT_FOUND:
                    missing.append(index)
                if accepted is not None:
                    labelled.append(accepted)
                results.append(result)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self._quality.record(labelled)
        if missing and not flushed and self._log.flush(FLUSH_SECONDS):
            # Those ids may have been made a moment ago and still queued for the log: look once more.
            retried = self._submit(connection, [items[i] for i in missing], now, flushed=True)
            for index, result in zip(missing, retried, strict=True):
                results[index] = result
        return results

    def _one(
        self, connection: sqlite3.Connection, item: FeedbackItem, now: float, pending: dict[str, float]
    ) -> tuple[FeedbackResult, LabelledPrediction | None]:
        def result(outcome: FeedbackOutcome, message: str) -> FeedbackResult:
            return FeedbackResult(item.prediction_id, outcome, message)

        row = connection.execute(_LOOKUP, (item.prediction_id,)).fetchone()
        if row is None:
            return result(FeedbackOutcome.NOT_FOUND, "no logged prediction has this id"), None
        service, model, version, variant, output, stored = row
        label, problem = self._label(service, item)
        if label is None:
            return result(FeedbackOutcome.INVALID_ARGUMENT, problem), None
        earlier = pending.get(item.prediction_id, stored)
        if earlier is not None:
            if earlier == label:
                return result(FeedbackOutcome.ALREADY_RECORDED, "this label was already recorded"), None
            shown = self._shown(service, earlier)
            return result(FeedbackOutcome.ALREADY_EXISTS, f"the prediction already has another label ({shown})"), None
        connection.execute(
            "INSERT INTO feedback (prediction_id, label, received_at) VALUES (?, ?, ?)",
            (item.prediction_id, label, now),
        )
        pending[item.prediction_id] = label
        labelled = LabelledPrediction(model, version, variant, _output_values(output), label, now)
        return result(FeedbackOutcome.RECORDED, "recorded"), labelled

    def _label(self, service: str, item: FeedbackItem) -> tuple[float | None, str]:
        classes = self._class_names.get(service)
        if classes is None:
            if item.value is None or item.class_index is not None:
                return None, f"a {service} prediction takes a true value, not a class"
            if not math.isfinite(item.value):
                return None, "the true value must be a finite number"
            return float(item.value), ""
        if item.class_index is None or item.value is not None:
            return None, f"a {service} prediction takes a true class ({', '.join(classes)}), not a value"
        if not 0 <= item.class_index < len(classes):
            return None, f"unknown class; expected one of {', '.join(classes)}"
        return float(item.class_index), ""

    def _shown(self, service: str, label: float) -> str:
        classes = self._class_names.get(service)
        return f"{label:g}" if classes is None else classes[int(label)]

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        path = self._log.path
        if not path.exists():
            raise FeedbackUnavailableError(f"the prediction log {path} does not exist")
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=self._busy_timeout, isolation_level=None
        )
        try:
            if not self._schema_ready:
                connection.executescript(FEEDBACK_SCHEMA)
                self._schema_ready = True
            yield connection
        finally:
            connection.close()


def _output_values(output: str) -> tuple[float, ...]:
    decoded = json.loads(output)
    return tuple(float("nan") if value is None else float(value) for value in decoded.values())
