"""Automated retraining: start the same Retrain operation an admin would, when a condition has held long enough.

Three triggers, each off unless configured, checked every ``check_seconds`` on a thread of their own:

- ``quality``: the champion's live quality metric (``ServiceSpec.quality_metric``: housing rmse, iris accuracy)
  is worse than the same held-out metric of its training run by more than ``quality_tolerance`` (relative: 0.1
  means rmse 10% above, accuracy 10% below), with at least ``quality_min_labels`` labels in the window,
  continuously for ``quality_for_seconds``;
- ``drift``: the champion's drift flag (any feature or output above the PSI threshold) held for
  ``drift_for_seconds``;
- ``schedule``: every ``schedule_seconds`` since the server started (or since the schedule last fired).

A firing trigger calls ``RetrainRunner.start`` with ``trigger`` set to its name and ``trigger_reason`` saying what
it saw, so the operation goes through the same champion gate and the same one-retrain-at-a-time rule as a
manual one. After a model's triggered retrain starts, none of its triggers fires again for ``cooldown_seconds``;
when a retrain is already running the trigger waits (its condition keeps counting) and tries at the next check.

An operator switches a model's triggers off, and back on, with ``SetAutoRetrain``: a registered-model tag
(``auto_retrain=off``), so every replica and every restart agrees. Manual retrains are never affected.

Metric: ``model_retrain_triggered_total{model, trigger, outcome}``, outcome ``started`` or ``busy`` (a retrain
was already running), ``failed`` (it could not be started).
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter

from model_registry import ModelRegistry, RegistryError
from server.admin.operations import Operation, RetrainAlreadyRunningError
from server.admin.service import RetrainOperations
from server.model_store import ModelSlot, ModelStore
from server.observe.drift import DriftMonitor, DriftStatus
from server.observe.quality import LiveQuality
from server.services import ServiceSpec

logger = logging.getLogger(__name__)

AUTO_RETRAIN_TAG = "auto_retrain"
PAUSED = "off"
CHAMPION = "champion"


class Trigger(StrEnum):
    QUALITY = "quality"
    DRIFT = "drift"
    SCHEDULE = "schedule"


@dataclass(frozen=True, slots=True)
class TriggerSettings:
    quality_for_seconds: float | None = None
    quality_tolerance: float = 0.1
    quality_min_labels: int = 100
    drift_for_seconds: float | None = None
    schedule_seconds: float | None = None
    cooldown_seconds: float = 3600.0
    check_seconds: float = 30.0

    @property
    def enabled(self) -> tuple[Trigger, ...]:
        configured = {
            Trigger.QUALITY: self.quality_for_seconds,
            Trigger.DRIFT: self.drift_for_seconds,
            Trigger.SCHEDULE: self.schedule_seconds,
        }
        return tuple(trigger for trigger, value in configured.items() if value is not None)


@dataclass(frozen=True, slots=True)
class TriggeredModel:
    spec: ServiceSpec
    name: str
    """Registered model name (where the pause tag lives)."""


class RetrainTriggers:
    def __init__(
        self,
        settings: TriggerSettings,
        models: Mapping[ModelSlot, TriggeredModel],
        *,
        operations: RetrainOperations,
        store: ModelStore,
        registry: ModelRegistry,
        quality: LiveQuality,
        drift: DriftMonitor | None,
        metrics_registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._models = models
        self._operations = operations
        self._store = store
        self._registry = registry
        self._quality = quality
        self._drift = drift
        self._clock = clock
        self._held_since: dict[tuple[ModelSlot, Trigger], float] = {}
        self._last_fired: dict[ModelSlot, float] = {}
        started = clock()
        self._next_scheduled = {slot: started + (settings.schedule_seconds or 0.0) for slot in models}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.triggered = Counter(
            "model_retrain_triggered_total",
            "Automated retrain triggers that fired, by model (service key), trigger (quality, drift, schedule) and "
            "outcome (started; busy: a retrain was already running; failed: it could not be started).",
            ["model", "trigger", "outcome"],
            registry=metrics_registry,
        )

    def start(self) -> None:
        if not self.settings.enabled:
            return
        logger.info("automated retrain triggers on: %s", ", ".join(self.settings.enabled))
        self._thread = threading.Thread(target=self._work, name="retrain-triggers", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def configured(self) -> tuple[str, ...]:
        return tuple(trigger.value for trigger in self.settings.enabled)

    def enabled(self, slot: ModelSlot) -> bool:
        """Whether the model's triggers are on (not paused by an operator); raises when the registry is down."""
        return self._registry.model_tags(self._models[slot].name).get(AUTO_RETRAIN_TAG) != PAUSED

    def set_enabled(self, slot: ModelSlot, enabled: bool) -> None:
        self._registry.set_model_tag(self._models[slot].name, AUTO_RETRAIN_TAG, "on" if enabled else PAUSED)

    def check(self) -> list[Operation]:
        """One pass over every model; the operations it started."""
        started = []
        for slot in self._models:
            try:
                operation = self._check(slot)
            except Exception:
                logger.exception("checking the retrain triggers of %s failed; trying again at the next check", slot)
                continue
            if operation is not None:
                started.append(operation)
        return started

    def _work(self) -> None:
        while not self._stopping.wait(self.settings.check_seconds):
            self.check()

    def _check(self, slot: ModelSlot) -> Operation | None:
        now = self._clock()
        due = self._due(slot, now)
        if due is None:
            return None
        trigger, reason = due
        last = self._last_fired.get(slot)
        if last is not None and now - last < self.settings.cooldown_seconds:
            return None
        try:
            if not self.enabled(slot):
                return None
        except RegistryError:
            logger.warning("the registry is unreachable: the %s trigger of %s waits for it", trigger, slot)
            return None
        try:
            operation = self._operations.start(slot.value, {}, None, trigger=trigger.value, trigger_reason=reason)
        except RetrainAlreadyRunningError:
            self.triggered.labels(slot.value, trigger.value, "busy").inc()
            return None
        except Exception:
            self.triggered.labels(slot.value, trigger.value, "failed").inc()
            raise
        self.triggered.labels(slot.value, trigger.value, "started").inc()
        self._last_fired[slot] = now
        if trigger is Trigger.SCHEDULE:
            self._next_scheduled[slot] = now + (self.settings.schedule_seconds or 0.0)
        # A condition must hold anew for its whole duration before it fires again.
        for each in Trigger:
            self._held_since.pop((slot, each), None)
        logger.warning("retrain %s of %s started by the %s trigger: %s", operation.id, slot, trigger, reason)
        return operation

    def _due(self, slot: ModelSlot, now: float) -> tuple[Trigger, str] | None:
        """The first trigger whose condition has held long enough, with what it saw."""
        settings = self.settings
        if settings.quality_for_seconds is not None:
            held = self._held(slot, Trigger.QUALITY, self._quality_degraded(slot), now, settings.quality_for_seconds)
            if held is not None:
                return Trigger.QUALITY, held
        if settings.drift_for_seconds is not None:
            held = self._held(slot, Trigger.DRIFT, self._drifted(slot), now, settings.drift_for_seconds)
            if held is not None:
                return Trigger.DRIFT, held
        if settings.schedule_seconds is not None and now >= self._next_scheduled[slot]:
            return Trigger.SCHEDULE, f"every {settings.schedule_seconds:g} s"
        return None

    def _held(self, slot: ModelSlot, trigger: Trigger, seen: str | None, now: float, needed: float) -> str | None:
        key = (slot, trigger)
        if seen is None:
            self._held_since.pop(key, None)
            return None
        since = self._held_since.setdefault(key, now)
        if now - since < needed:
            return None
        return f"{seen} for {now - since:.0f} s"

    def _quality_degraded(self, slot: ModelSlot) -> str | None:
        deployment = self._store.peek(slot)
        if deployment is None:
            return None
        spec = self._models[slot].spec
        ref = deployment.champion.description.ref
        metric = spec.quality_metric
        trained = deployment.champion.description.training_metrics.get(metric)
        labels, live = self._quality.live(ref.name, ref.version, CHAMPION)
        observed = live.get(metric)
        if trained is None or observed is None or labels < self.settings.quality_min_labels:
            return None
        tolerance = self.settings.quality_tolerance
        if spec.quality_higher_is_better:
            limit, worse = trained * (1 - tolerance), observed < trained * (1 - tolerance)
        else:
            limit, worse = trained * (1 + tolerance), observed > trained * (1 + tolerance)
        if not worse:
            return None
        return (
            f"live {metric} {observed:.4g} of v{ref.version} over {labels} labels is worse than its training "
            f"{metric} {trained:.4g} beyond the tolerance ({limit:.4g})"
        )

    def _drifted(self, slot: ModelSlot) -> str | None:
        if self._drift is None or self._store.peek(slot) is None:
            return None
        report = self._drift.report(slot)
        for version in report.versions:
            if version.variant == CHAMPION and version.status is DriftStatus.OK and version.drifted:
                columns = [column for column in (*version.features, *version.outputs) if column.drifted]
                shown = ", ".join(f"{column.name} PSI {column.psi:.3f}" for column in columns)
                return f"v{version.version} drifted ({shown}; threshold {report.threshold:g})"
        return None
