"""Shadow traffic: the challenger predicts on a copy of the champion's traffic, off the request path.

The request thread only offers a copy (non-blocking, to a bounded queue); one worker thread predicts with the
challenger through the same runner as requests, and records its latency and its disagreement with the
champion. When the queue is full the copy is dropped and counted, never waited for. Its answers are never
returned to anyone.

Metrics (labels ``model``, ``version``: the challenger's, ``variant``: "challenger"):

- ``model_shadow_duration_seconds``: the challenger's prediction time per request;
- regression: ``model_shadow_absolute_difference`` and ``model_shadow_relative_difference`` per row
  (|challenger - champion|, and that divided by |champion|);
- classification: ``model_shadow_agreement_total{agreed="true"|"false"}`` per row, and
  ``model_shadow_confusion_total{champion_class, challenger_class}``;
- ``model_shadow_dropped_total{model}``: copies not taken (queue full) or that failed.
"""

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
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
    ) -> None:
        """``runners`` and ``class_names`` by service key; a service with class names is a classifier."""
        self._runners = runners
        self._class_names = class_names
        self._queue: queue.Queue[ShadowCopy | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        labels = ["model", "version", "variant"]
        self.duration = Histogram(
            "model_shadow_duration_seconds",
            "Time the challenger took to predict a shadowed request, in seconds.",
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
        self.dropped = Counter(
            "model_shadow_dropped_total",
            "Shadow copies not predicted: the queue was full, or the challenger failed.",
            ["model"],
            registry=registry,
        )

    def offer(self, copy: ShadowCopy) -> bool:
        """Hand a copy over without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(copy)
        except queue.Full:
            self.dropped.labels(copy.challenger.description.ref.name).inc()
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):  # a worker this busy is joined below all the same
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (copy := self._queue.get()) is not None:
            try:
                self._shadow(copy)
            except Exception:
                logger.exception("shadow prediction of %s failed", copy.challenger.description.model_uri)
                self.dropped.labels(copy.challenger.description.ref.name).inc()

    def _shadow(self, copy: ShadowCopy) -> None:
        ref = copy.challenger.description.ref
        labels = (ref.name, ref.version, CHALLENGER)
        started = time.perf_counter()
        output = self._runners[copy.service].predict(copy.challenger, copy.values)
        self.duration.labels(*labels).observe(time.perf_counter() - started)
        names = self._class_names.get(copy.service)
        if not names:
            difference = np.abs(output - copy.champion_output)
            relative = difference / np.maximum(np.abs(copy.champion_output), np.finfo(np.float64).tiny)
            absolute_child, relative_child = self.absolute.labels(*labels), self.relative.labels(*labels)
            for value, ratio in zip(difference.tolist(), relative.tolist(), strict=True):
                absolute_child.observe(value)
                relative_child.observe(ratio)
            return
        champion_classes = np.argmax(copy.champion_output, axis=1).tolist()
        challenger_classes = np.argmax(output, axis=1).tolist()
        for champion_class, challenger_class in zip(champion_classes, challenger_classes, strict=True):
            agreed = champion_class == challenger_class
            self.agreement.labels(*labels, "true" if agreed else "false").inc()
            self.confusion.labels(*labels, names[champion_class], names[challenger_class]).inc()
