"""Adaptive micro-batching: concurrent small requests for one model coalesce into one predict call.

There is no batching thread and no timer. Each coalescer holds a few run permits (one per prediction slot).
A request that finds a free permit predicts at once, alone: an idle server adds no wait. A request that finds
every permit taken queues; when a permit's holder has answered, it hands the permit to the oldest queued
request, which takes every queued request behind it (up to ``max_rows`` rows) and predicts them in one call.
So batches grow exactly when the model is the bottleneck, and requests wait no longer than the call ahead of
them. ``max_wait_seconds`` optionally holds a new batch open a little longer for more rows.

Guarantees, each tested in ``tests/server/test_batching.py``:

- each caller gets exactly the rows of its own request back, in its order;
- a request whose deadline passed while it queued is answered ``DeadlineExpiredError`` and is not computed;
- when the combined call fails, each request of the batch is predicted on its own, so a bad request fails
  alone and the others are answered;
- a permit always moves on or is returned, whatever the call raised, so no queued request waits forever.
"""

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.domain import FloatMatrix
from server.errors import DeadlineExpiredError
from server.metrics import BATCH_SIZE_BUCKETS

WAIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
Predict = Callable[[FloatMatrix], FloatMatrix]


class BatchingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Histogram(
            "model_microbatch_rows",
            "Rows per coalesced predict call of concurrent small requests (1: a request predicted alone).",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "model_microbatch_queue_wait_seconds",
            "Time a small request waited for its coalesced predict call to start, in seconds.",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.pending = Gauge(
            "model_microbatch_pending_requests",
            "Small requests queued for a coalesced predict call right now (all of the model's permits are busy).",
            ["model"],
            registry=registry,
        )
        self.expired = Counter(
            "model_requests_expired_total",
            "Requests answered DEADLINE_EXCEEDED because their deadline passed before the model was called.",
            ["model"],
            registry=registry,
        )


@dataclass(eq=False, slots=True)
class _Request:
    values: FloatMatrix
    deadline: float | None
    queued_at: float
    done: threading.Event = field(default_factory=threading.Event)
    output: FloatMatrix | None = None
    error: BaseException | None = None
    leads: bool = False
    """Set with ``done`` when the request is handed a permit rather than an answer."""

    def answer(self) -> FloatMatrix:
        if self.error is not None:
            raise self.error
        assert self.output is not None  # set together with done
        return self.output


class Coalescer:
    """Coalesces the small requests of one served model (one version as one variant)."""

    def __init__(
        self,
        predict: Predict,
        *,
        model: str,
        metrics: BatchingMetrics,
        permits: int,
        max_rows: int,
        max_wait_seconds: float = 0.0,
    ) -> None:
        self._predict = predict
        self._max_rows = max_rows
        self._max_wait = max_wait_seconds
        self._permits = permits
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._running = 0
        self._rows = metrics.rows.labels(model)
        self._queue_wait = metrics.queue_wait.labels(model)
        self._expired = metrics.expired.labels(model)
        self._pending = metrics.pending.labels(model)

    def predict(self, values: FloatMatrix, deadline: float | None) -> FloatMatrix:
        """The model's output for ``values``; ``deadline`` is on ``time.monotonic()``'s clock (None: none)."""
        request = _Request(values, deadline, time.monotonic())
        with self._lock:
            leading = self._running < self._permits
            if leading:
                self._running += 1
            else:
                self._queue.append(request)
                self._queued_rows += values.shape[0]
                self._pending.inc()
                self._arrived.notify()
        if not leading:
            # Woken with an answer from another request's batch, or with a permit to lead the next batch.
            request.done.wait()
            if not request.leads:
                return request.answer()
        self._lead(request)
        return request.answer()

    def _lead(self, leader: _Request) -> None:
        try:
            batch = self._take(leader)
            self._run(batch)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue.popleft()
                    self._queued_rows -= successor.values.shape[0]
                    self._pending.dec()
                    successor.leads = True
                    successor.done.set()
                else:
                    self._running -= 1

    def _take(self, leader: _Request) -> list[_Request]:
        batch = [leader]
        rows = leader.values.shape[0]
        with self._lock:
            if self._max_wait > 0:
                until = time.monotonic() + self._max_wait
                while rows + self._queued_rows < self._max_rows and (left := until - time.monotonic()) > 0:
                    self._arrived.wait(left)
            while self._queue and rows + self._queue[0].values.shape[0] <= self._max_rows:
                request = self._queue.popleft()
                self._queued_rows -= request.values.shape[0]
                self._pending.dec()
                rows += request.values.shape[0]
                batch.append(request)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        live = []
        for request in batch:
            if request.deadline is not None and request.deadline <= now:
                request.error = DeadlineExpiredError("the deadline passed before the model was called")
                self._expired.inc()
                self._finish(request)
            else:
                self._queue_wait.observe(now - request.queued_at)
                live.append(request)
        if not live:
            return
        if len(live) == 1:
            self._rows.observe(live[0].values.shape[0])
            self._predict_alone(live[0])
            return
        try:
            output = self._predict(np.concatenate([request.values for request in live]))
        except Exception:
            # One bad request must not fail the others: each is predicted on its own instead.
            for request in live:
                self._rows.observe(request.values.shape[0])
                self._predict_alone(request)
            return
        self._rows.observe(output.shape[0])
        start = 0
        for request in live:
            end = start + request.values.shape[0]
            request.output = output[start:end]
            start = end
            self._finish(request)

    def _predict_alone(self, request: _Request) -> None:
        try:
            request.output = self._predict(request.values)
        except Exception as exc:
            request.error = exc
        self._finish(request)

    @staticmethod
    def _finish(request: _Request) -> None:
        request.done.set()
