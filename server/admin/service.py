"""The admin service's core, protocol-free: versions, aliases, rollback and retrain operations.

Admin writes to the registry; it never loads a model. After moving an alias it nudges the watcher, which is the
only thing that loads, so a change made here is served at once and hot reload and admin cannot disagree.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from model_registry import ModelRegistry, VersionInfo
from model_registry.history import move_alias, roll_back
from server.admin.operations import Operation
from server.domain import TrafficSplit
from server.errors import FeatureDisabledError, FieldViolation, InvalidInputError, PredictionNotFoundError
from server.lifecycle import SPLIT_TAG, ModelWatcher, WatchedModel, split_tag
from server.model_store import ModelSlot, ModelStore
from server.observe.drift import DriftMonitor, DriftReport
from server.observe.feedback import FeedbackItem, FeedbackResult, FeedbackStore
from server.observe.prediction_log import LoggedPrediction, PredictionLog
from server.observe.quality import LiveQuality, QualityReport

CHAMPION = "champion"
MAX_FEEDBACK_ITEMS = 1000


class RetrainOperations(Protocol):
    def start(
        self,
        model: str,
        hyperparameters: Mapping[str, float],
        max_rows: int | None,
        trigger: str = "manual",
        trigger_reason: str = "",
    ) -> Operation: ...

    def get(self, operation_id: str) -> Operation: ...

    def list(self, model: str | None = None) -> list[Operation]: ...


@dataclass(frozen=True, slots=True)
class VersionStatus:
    info: VersionInfo
    serving: bool
    """Whether this server answers with the version right now."""


@dataclass(frozen=True, slots=True)
class AliasChange:
    name: str
    alias: str
    version: str
    previous_version: str | None


class AutoRetrainSwitch(Protocol):
    """The automated retrain triggers, as admin sees them (``server.admin.triggers.RetrainTriggers``)."""

    def enabled(self, slot: ModelSlot) -> bool: ...

    def set_enabled(self, slot: ModelSlot, enabled: bool) -> None: ...

    @property
    def configured(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Monitoring:
    """What admin reads drift, quality and feedback from; any part may be off (None)."""

    drift: DriftMonitor | None = None
    quality: LiveQuality | None = None
    feedback: FeedbackStore | None = None
    triggers: AutoRetrainSwitch | None = None


class ModelAdmin:
    def __init__(
        self,
        registry: ModelRegistry,
        watcher: ModelWatcher,
        store: ModelStore,
        operations: RetrainOperations,
        prediction_log: PredictionLog | None = None,
        *,
        monitoring: Monitoring | None = None,
    ) -> None:
        self._monitoring = monitoring or Monitoring()
        self._prediction_log = prediction_log
        self._registry = registry
        self._watcher = watcher
        self._store = store
        self._operations = operations

    def model(self, key: str) -> WatchedModel:
        """The served model named by its service key ("housing") or its registered name."""
        for slot in self._watcher.slots:
            entry = self._watcher.watched(slot)
            if key in (slot.value, entry.name):
                return entry
        known = ", ".join(f"{slot.value!r}" for slot in self._watcher.slots)
        raise InvalidInputError(
            f"model: unknown model {key!r}; one of {known}", (FieldViolation("model", f"must be one of {known}"),)
        )

    def list_versions(self, key: str) -> tuple[str, list[VersionStatus]]:
        entry = self.model(key)
        served = self._serving_versions(entry.spec.slot)
        return entry.name, [VersionStatus(info, info.version in served) for info in self._registry.versions(entry.name)]

    def set_alias(
        self, key: str, alias: str, version: str, *, expected: str | None = None, compare: bool = False
    ) -> AliasChange:
        """Point ``alias`` at ``version``. With ``compare``, only if it is on ``expected`` now (None: not set)."""
        entry = self.model(key)
        _require("alias", alias)
        _require("version", version)
        if not compare:
            expected = self._registry.aliases(entry.name).get(alias)
        # Compare-and-set either way: a move by someone else between the read above and the write is refused.
        move_alias(self._registry, entry.name, alias, version, expected=expected)
        self._watcher.nudge()
        return AliasChange(entry.name, alias, version, expected)

    def rollback(self, key: str) -> AliasChange:
        entry = self.model(key)
        left, restored = roll_back(self._registry, entry.name, CHAMPION)
        self._watcher.nudge()
        return AliasChange(entry.name, CHAMPION, restored, left)

    def retrain(self, key: str, hyperparameters: Mapping[str, float], max_rows: int | None) -> Operation:
        entry = self.model(key)
        return self._operations.start(entry.spec.slot.value, hyperparameters, max_rows)

    def operation(self, operation_id: str) -> Operation:
        return self._operations.get(operation_id)

    def operations(self, key: str) -> Sequence[Operation]:
        slot = self.model(key).spec.slot.value if key else None
        return self._operations.list(slot)

    def set_traffic_split(self, key: str, challenger_percent: float, *, shadow: bool) -> tuple[str, TrafficSplit]:
        """Keep the split in the registry (so restarts and replicas agree) and serve it at once."""
        entry = self.model(key)
        if not math.isfinite(challenger_percent) or not 0.0 <= challenger_percent <= 100.0:
            description = f"must be between 0 and 100, got {challenger_percent}"
            raise InvalidInputError(
                f"challenger_percent: {description}", (FieldViolation("challenger_percent", description),)
            )
        split = TrafficSplit(challenger_percent=challenger_percent, shadow=shadow)
        self._registry.set_model_tag(entry.name, SPLIT_TAG, split_tag(split))
        self._watcher.nudge()
        return entry.name, split

    def prediction(self, prediction_id: str) -> LoggedPrediction:
        found = None if self._prediction_log is None else self._prediction_log.get(prediction_id)
        if found is None:
            reason = "the prediction log is off" if self._prediction_log is None else "it is not in the log"
            raise PredictionNotFoundError(f"prediction {prediction_id!r} not found: {reason}")
        return found

    def drift_report(self, key: str) -> tuple[str, DriftReport]:
        entry = self.model(key)
        drift = self._monitoring.drift
        if drift is None:
            raise FeatureDisabledError("drift measurement is off on this server (PREDICTOR_DRIFT=false)")
        return entry.name, drift.report(entry.spec.slot)

    def submit_feedback(self, items: Sequence[FeedbackItem]) -> list[FeedbackResult]:
        feedback = self._monitoring.feedback
        if feedback is None:
            raise FeatureDisabledError("feedback needs the prediction log, which is off on this server")
        if not items:
            raise InvalidInputError("items: at least one item is required", (FieldViolation("items", "is empty"),))
        if len(items) > MAX_FEEDBACK_ITEMS:
            description = f"holds {len(items)} items; at most {MAX_FEEDBACK_ITEMS} are allowed"
            raise InvalidInputError(f"items: {description}", (FieldViolation("items", description),))
        return feedback.submit(items)

    def quality(self, key: str) -> tuple[str, QualityReport]:
        entry = self.model(key)
        quality = self._monitoring.quality
        if quality is None:
            raise FeatureDisabledError("live quality needs the prediction log, which is off on this server")
        deployment = self._store.get(entry.spec.slot)
        served = [
            (model.description.ref.name, model.description.ref.version, variant, model.description.training_metrics)
            for variant, model in deployment.variants().items()
        ]
        return entry.name, quality.report(entry.spec.slot.value, served)

    def set_auto_retrain(self, key: str, *, enabled: bool) -> tuple[str, bool, tuple[str, ...]]:
        entry = self.model(key)
        triggers = self._require_triggers()
        triggers.set_enabled(entry.spec.slot, enabled)
        return entry.name, triggers.enabled(entry.spec.slot), triggers.configured

    def _require_triggers(self) -> AutoRetrainSwitch:
        if self._monitoring.triggers is None:
            raise FeatureDisabledError("this server has no automated retrain triggers")
        return self._monitoring.triggers

    def _serving_versions(self, slot: ModelSlot) -> set[str]:
        deployment = self._store.peek(slot)
        return set() if deployment is None else deployment.versions()


def _require(field: str, value: str) -> None:
    if not value:
        raise InvalidInputError(f"{field}: is required", (FieldViolation(field, "is required"),))
