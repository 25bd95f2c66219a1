"""Shadow traffic: the challenger predicts on a copy of the champion's traffic, off the request path.

The request thread only offers a copy: one append to a bounded deque, with no lock and no wake-up. One worker
thread wakes every ``interval_seconds``, takes everything queued, stacks the copies of each challenger into one
matrix (up to ``batch_rows`` rows) and predicts them with one call through the same runner as requests; then it
records the challenger's time and its disagreement with the champion, row by row. When the queue is full a copy
is dropped and counted, never waited for. Its answers are never returned to anyone.

Why batches on a timer rather than a queue the worker blocks on: a ``queue.Queue`` put wakes the worker for every
request, and each wake-up is a thread switch and a hand-over of the GIL that the request threads pay for (the
champion's single-row p50 rose about 10% with a worker predicting per copy); one call for many rows also costs
scikit-learn far less than one call per row. A copy waits at most one interval, which only delays a metric.

Metrics (labels ``model``, ``version``: the challenger's, ``variant``: "challenger"):

- ``model_shadow_duration_seconds``: the challenger's time per shadow batch (one call for the copies taken
  together); ``model_shadow_rows_total``: rows it predicted;
- regression: ``model_shadow_absolute_difference`` and ``model_shadow_relative_difference`` per row
  (|challenger - champion|, and that divided by |champion|);
- classification: ``model_shadow_agreement_total{agreed="true"|"false"}`` per row, and
  ``model_shadow_confusion_total{champion_class, challenger_class}``;
- ``model_shadow_dropped_total{model}``: copies not taken (queue full) or that failed.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.domain import FloatMatrix, LoadedModel
from server.execution import ModelRunner
from server.metrics import LATENCY_BUCKETS

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
DIFFERENCE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    service: str
    challenger: LoadedModel
    values: FloatMatrix
    champion_output: FloatMatrix


class ShadowRunner:
    def __init__(
        self,
        runners: Mapping[str, ModelRunner],
        class_names: Mapping[str, Sequence[str]],
        registry: CollectorRegistry,
        queue_size: int = 1000,
        *,
        interval_seconds: float = 0.05,
        batch_rows: int = 1000,
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        """``runners`` and ``class_names`` by service key; a service with class names is a classifier.

        ``thread_setup`` runs first on the worker thread: the same per-thread limits as the RPC workers (one
        OpenMP thread), or a challenger's scikit-learn calls would spin a thread team on the serving cores.
        """
        self._thread_setup = thread_setup
        self._runners = runners
        self._class_names = class_names
        self._queue_size = queue_size
        self._interval = interval_seconds
        self._batch_rows = batch_rows
        self._pending: deque[ShadowCopy] = deque()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        labels = ["model", "version", "variant"]
        self.duration = Histogram(
            "model_shadow_duration_seconds",
            "Time the challenger took to predict one shadow batch (the copies taken together), in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.absolute = Histogram(
            "model_shadow_absolute_difference",
            "Per row, |challenger - champion| of a shadowed regression (model units).",
            labels,
            buckets=DIFFERENCE_BUCKETS,
            registry=registry,
        )
        self.relative = Histogram(
            "model_shadow_relative_difference",
            "Per row, |challenger - champion| / |champion| of a shadowed regression.",
            labels,
            buckets=DIFFERENCE_BUCKETS,
            registry=registry,
        )
        self.agreement = Counter(
            "model_shadow_agreement_total",
            "Per row of a shadowed classification, whether the challenger chose the champion's class.",
            [*labels, "agreed"],
            registry=registry,
        )
        self.confusion = Counter(
            "model_shadow_confusion_total",
            "Per row of a shadowed classification, the champion's class against the challenger's.",
            [*labels, "champion_class", "challenger_class"],
            registry=registry,
        )
        self.rows = Counter(
            "model_shadow_rows_total", "Rows the challenger predicted on copies of traffic.", labels, registry=registry
        )
        self.dropped = Counter(
            "model_shadow_dropped_total",
            "Shadow copies not predicted: the queue was full, or the challenger failed.",
            ["model"],
            registry=registry,
        )

    def offer(self, copy: ShadowCopy) -> bool:
        """Hand a copy over without waiting; False (and counted) when the queue is full."""
        # len() and append() of a deque are atomic: the bound may be passed by a copy or two under a race.
        if len(self._pending) >= self._queue_size:
            self.dropped.labels(copy.challenger.description.ref.name).inc()
            return False
        self._pending.append(copy)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Predict what is still queued (for up to ``timeout``), then end the worker."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout)

    def _work(self) -> None:
        if self._thread_setup is not None:
            self._thread_setup()
        while True:
            stopping = self._stopping.wait(self._interval)
            while self._pending:
                self._predict_pending()
            if stopping:
                return

    def _predict_pending(self) -> None:
        """Take up to ``batch_rows`` queued rows and predict them, grouped by challenger version."""
        groups: dict[int, list[ShadowCopy]] = {}
        rows = 0
        while rows < self._batch_rows:
            try:
                copy = self._pending.popleft()
            except IndexError:
                break
            groups.setdefault(id(copy.challenger), []).append(copy)
            rows += len(copy.values)
        for copies in groups.values():
            try:
                self._shadow(copies)
            except Exception:
                challenger = copies[0].challenger
                logger.exception("shadow prediction of %s failed", challenger.description.model_uri)
                self.dropped.labels(challenger.description.ref.name).inc(len(copies))

    def _shadow(self, copies: list[ShadowCopy]) -> None:
        first = copies[0]
        ref = first.challenger.description.ref
        labels = (ref.name, ref.version, CHALLENGER)
        values = first.values if len(copies) == 1 else np.concatenate([copy.values for copy in copies])
        champion = (
            first.champion_output if len(copies) == 1 else np.concatenate([copy.champion_output for copy in copies])
        )
        started = time.perf_counter()
        output = self._runners[first.service].predict(first.challenger, values)
        self.duration.labels(*labels).observe(time.perf_counter() - started)
        self.rows.labels(*labels).inc(len(values))
        names = self._class_names.get(first.service)
        if not names:
            difference = np.abs(output - champion)
            relative = difference / np.maximum(np.abs(champion), np.finfo(np.float64).tiny)
            absolute_child, relative_child = self.absolute.labels(*labels), self.relative.labels(*labels)
            for value, ratio in zip(difference.tolist(), relative.tolist(), strict=True):
                absolute_child.observe(value)
                relative_child.observe(ratio)
            return
        champion_classes = np.argmax(champion, axis=1).tolist()
        challenger_classes = np.argmax(output, axis=1).tolist()
        for champion_class, challenger_class in zip(champion_classes, challenger_classes, strict=True):
            agreed = champion_class == challenger_class
            self.agreement.labels(*labels, "true" if agreed else "false").inc()
            self.confusion.labels(*labels, names[champion_class], names[challenger_class]).inc()
