"""Data drift: live inputs and outputs of each served version, compared with its training profile.

The request thread only appends ``(model, inputs, outputs, time)`` to a deque (``DriftMonitor.offer``: an
O(1) append, well under a microsecond, no lock, no copy). A worker thread wakes every ``interval_seconds``,
moves what was offered into one fixed-size ring buffer per model version (the last ``window_rows`` rows), and
computes every column's population stability index against the version's reference profile
(``data.profile``). A version without a profile (registered by hand) keeps its window and is reported as
"no_reference_profile"; with fewer than ``min_rows`` rows in its window it is "insufficient_data". When more
than ``queue_events`` offers are waiting the newest are dropped and counted: the window is a sample anyway.

Windows belong to the versions being served: when a version stops being served (a promotion, a rollback),
its window and its series go with it.

Metrics (labels ``model``, ``version``; ``feature`` or ``output`` names the column):

- ``model_feature_psi`` / ``model_output_psi``: PSI of the column's window against the reference;
- ``model_feature_drift`` / ``model_output_drift``: 1 when that PSI exceeds the threshold;
- ``model_drift``: 1 when any column of the version drifted;
- ``model_drift_window_rows``: rows in the window; ``model_drift_reference_missing``: 1 without a profile;
- ``model_drift_dropped_total{model}``: rows offered but not taken (the worker was behind).

``report(slot)`` drains what is waiting, recomputes and refreshes the gauges, so the answer to
``GetDriftReport`` and the gauges right after it show the same numbers.
"""

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from data.profile import ColumnProfile
from server.domain import Deployment, FloatMatrix, LoadedModel, retired_models
from server.model_store import ModelSlot, ModelStore
from server.services import ServiceSpec

logger = logging.getLogger(__name__)


class DriftStatus(StrEnum):
    OK = "ok"
    INSUFFICIENT_DATA = "insufficient_data"
    NO_REFERENCE_PROFILE = "no_reference_profile"


@dataclass(frozen=True, slots=True)
class ColumnDrift:
    name: str
    psi: float
    drifted: bool


@dataclass(frozen=True, slots=True)
class VersionDrift:
    model: str
    version: str
    variant: str
    status: DriftStatus
    window_rows: int
    window_capacity: int
    oldest_at: float | None
    """Unix time of the oldest row in the window (None: empty)."""
    newest_at: float | None
    features: tuple[ColumnDrift, ...]
    outputs: tuple[ColumnDrift, ...]
    drifted: bool


@dataclass(frozen=True, slots=True)
class DriftReport:
    service: str
    threshold: float
    min_rows: int
    versions: tuple[VersionDrift, ...]


class _Window:
    """The last ``capacity`` rows of one version: inputs, outputs and arrival times, as ring buffers."""

    def __init__(self, capacity: int, features: int, outputs: int) -> None:
        self.inputs = np.empty((capacity, features))
        self.outputs = np.empty((capacity, outputs))
        self.times = np.empty(capacity)
        self.capacity = capacity
        self.position = 0
        self.rows = 0

    def add(self, inputs: FloatMatrix, outputs: FloatMatrix, at: float) -> None:
        count = len(inputs)
        if count >= self.capacity:  # only the newest rows fit
            inputs, outputs, count = inputs[-self.capacity :], outputs[-self.capacity :], self.capacity
        first = min(count, self.capacity - self.position)
        for target, source in ((self.inputs, inputs), (self.outputs, outputs)):
            target[self.position : self.position + first] = source[:first]
            target[: count - first] = source[first:]
        self.times[self.position : self.position + first] = at
        self.times[: count - first] = at
        self.position = (self.position + count) % self.capacity
        self.rows = min(self.capacity, self.rows + count)

    def filled(self) -> tuple[FloatMatrix, FloatMatrix, FloatMatrix]:
        return self.inputs[: self.rows], self.outputs[: self.rows], self.times[: self.rows]


_Key = tuple[str, str]  # (model name, version)


class DriftMonitor:
    def __init__(
        self,
        store: ModelStore,
        services: Mapping[ModelSlot, ServiceSpec],
        registry: CollectorRegistry,
        *,
        window_rows: int = 1000,
        threshold: float = 0.2,
        min_rows: int = 100,
        interval_seconds: float = 10.0,
        queue_events: int = 10000,
    ) -> None:
        self._store = store
        self._services = services
        self._window_rows = window_rows
        self.threshold = threshold
        self._min_rows = min_rows
        self._interval = interval_seconds
        self._queue_events = queue_events
        self._pending: deque[tuple[LoadedModel, FloatMatrix, FloatMatrix, float]] = deque()
        self._windows: dict[_Key, _Window] = {}
        # Versions swapped out, whose calls still in flight at the swap may offer rows afterwards: dropped.
        self._retired: set[_Key] = set()
        # Serialises the worker, reports and retirement; the request path never takes it.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        version = ["model", "version"]
        self.feature_psi = Gauge(
            "model_feature_psi",
            "Population stability index of a feature's live window against the version's training profile.",
            [*version, "feature"],
            registry=registry,
        )
        self.output_psi = Gauge(
            "model_output_psi",
            "Population stability index of an output column's live window against the version's training profile.",
            [*version, "output"],
            registry=registry,
        )
        self.feature_drift = Gauge(
            "model_feature_drift",
            "1 when the feature's PSI is above the drift threshold.",
            [*version, "feature"],
            registry=registry,
        )
        self.output_drift = Gauge(
            "model_output_drift",
            "1 when the output column's PSI is above the drift threshold.",
            [*version, "output"],
            registry=registry,
        )
        self.drift = Gauge(
            "model_drift", "1 when any input or output column of the version drifted.", version, registry=registry
        )
        self.window_rows = Gauge(
            "model_drift_window_rows", "Live rows in the version's drift window.", version, registry=registry
        )
        self.reference_missing = Gauge(
            "model_drift_reference_missing",
            "1 for a served version without a reference profile (drift cannot be measured).",
            version,
            registry=registry,
        )
        self.dropped = Counter(
            "model_drift_dropped_total", "Rows offered to the drift window but not taken.", ["model"], registry=registry
        )
        store.subscribe(self._deployment_changed)

    def offer(self, model: LoadedModel, inputs: FloatMatrix, outputs: FloatMatrix) -> None:
        """Hand over a request's rows without waiting (the request path: one deque append)."""
        if len(self._pending) >= self._queue_events:
            self.dropped.labels(model.description.ref.name).inc(len(inputs))
            return
        self._pending.append((model, inputs, outputs, time.time()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="drift", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def report(self, slot: ModelSlot) -> DriftReport:
        """The drift of every version ``slot`` serves, from every row offered so far."""
        deployment = self._store.get(slot)
        with self._lock:
            self._drain()
            versions = tuple(self._measure(model, variant) for variant, model in deployment.variants().items())
        return DriftReport(slot.value, self.threshold, self._min_rows, versions)

    def _work(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.refresh()
            except Exception:
                logger.exception("drift measurement failed; trying again in %.0f s", self._interval)

    def refresh(self) -> None:
        """Take what was offered and update every served version's gauges."""
        for slot in self._services:
            if self._store.peek(slot) is not None:  # a slot with nothing loaded has nothing to measure
                self.report(slot)

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            model, inputs, outputs, at = pending.popleft()
            ref = model.description.ref
            key = (ref.name, ref.version)
            if key in self._retired:
                continue
            window = self._windows.get(key)
            if window is None:
                outputs_width = 1 if outputs.ndim == 1 else outputs.shape[1]
                window = self._windows[key] = _Window(self._window_rows, inputs.shape[1], outputs_width)
            window.add(inputs, outputs.reshape(len(outputs), -1), at)

    def _measure(self, model: LoadedModel, variant: str) -> VersionDrift:
        ref = model.description.ref
        key = (ref.name, ref.version)
        window = self._windows.get(key)
        inputs, outputs, times = window.filled() if window is not None else (np.empty((0, 0)),) * 3
        rows = len(times)
        profile = model.reference_profile
        features: tuple[ColumnDrift, ...] = ()
        output_columns: tuple[ColumnDrift, ...] = ()
        if profile is None:
            status = DriftStatus.NO_REFERENCE_PROFILE
        elif rows < self._min_rows:
            status = DriftStatus.INSUFFICIENT_DATA
        else:
            status = DriftStatus.OK
            features = self._columns(profile.features, inputs)
            output_columns = self._columns(profile.outputs, outputs)
        drifted = any(column.drifted for column in (*features, *output_columns))
        self._export(ref.name, ref.version, profile is None, rows, features, output_columns, drifted)
        return VersionDrift(
            model=ref.name,
            version=ref.version,
            variant=variant,
            status=status,
            window_rows=rows,
            window_capacity=self._window_rows,
            oldest_at=float(times.min()) if rows else None,
            newest_at=float(times.max()) if rows else None,
            features=features,
            outputs=output_columns,
            drifted=drifted,
        )

    def _columns(self, reference: Mapping[str, ColumnProfile], values: FloatMatrix) -> tuple[ColumnDrift, ...]:
        columns = []
        for index, (name, column) in enumerate(reference.items()):
            psi = column.psi(values[:, index])
            columns.append(ColumnDrift(name, psi, psi > self.threshold))
        return tuple(columns)

    def _export(  # noqa: PLR0917 - the gauges of one version, set together
        self,
        name: str,
        version: str,
        missing: bool,
        rows: int,
        features: tuple[ColumnDrift, ...],
        outputs: tuple[ColumnDrift, ...],
        drifted: bool,
    ) -> None:
        self.window_rows.labels(name, version).set(rows)
        self.reference_missing.labels(name, version).set(1 if missing else 0)
        self.drift.labels(name, version).set(1 if drifted else 0)
        for column in features:
            self.feature_psi.labels(name, version, column.name).set(column.psi)
            self.feature_drift.labels(name, version, column.name).set(1 if column.drifted else 0)
        for column in outputs:
            self.output_psi.labels(name, version, column.name).set(column.psi)
            self.output_drift.labels(name, version, column.name).set(1 if column.drifted else 0)

    def _deployment_changed(self, slot: ModelSlot, old: Deployment | None, new: Deployment | None) -> None:
        retired = retired_models(old, new)
        with self._lock:
            # Drained before anything changes: the queued rows of versions retired now go into their windows,
            # which then go, and rows offered for a version returning now while it was out are dropped. Left
            # in the queue, either would make a retired window again (in memory for good, or back in a rollback).
            self._drain()
            if new is not None:
                self._retired.difference_update(new.served())
            for model in retired:
                self._retire(model)

    def _retire(self, model: LoadedModel) -> None:
        ref = model.description.ref
        key = (ref.name, ref.version)
        self._windows.pop(key, None)
        self._retired.add(key)
        for gauge in (self.window_rows, self.reference_missing, self.drift):
            with contextlib.suppress(KeyError):
                gauge.remove(ref.name, ref.version)
        profile = model.reference_profile
        if profile is None:
            return
        for gauges, columns in (
            ((self.feature_psi, self.feature_drift), profile.features),
            ((self.output_psi, self.output_drift), profile.outputs),
        ):
            for gauge in gauges:
                for column in columns:
                    with contextlib.suppress(KeyError):
                        gauge.remove(ref.name, ref.version, column)
