"""Automated retrain triggers: when each fires, the cool-down, the pause switch, one retrain at a time.

The triggers drive a real ``RetrainRunner`` whose child is a stand-in for training (a script that sleeps and
exits), on a clock the test moves by hand; the quality and drift they read are the real monitors.
"""

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from data.profile import reference_profile
from data.schema import IRIS_FEATURES, IRIS_SPECIES
from model_registry.memory import InMemoryRegistry
from server.admin.operations import OperationStore, RetrainRunner
from server.admin.triggers import RetrainTriggers, TriggeredModel, TriggerSettings
from server.domain import Deployment, LoadedModel, ModelDescription, ModelVersionRef
from server.model_store import ModelSlot, ModelStore
from server.observe.drift import DriftMonitor
from server.observe.quality import LabelledPrediction, LiveQuality
from server.services import IRIS, SPEC_BY_SLOT

IRIS_MODEL = "IrisBestModel"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runner(tmp_path: Path):
    # Stands in for `python -m training`: takes a moment, then fails (the triggers only start operations).
    child = tmp_path / "child"
    child.write_text("#!/bin/sh\nsleep 0.3\nexit 3\n")
    child.chmod(0o755)
    retrainer = RetrainRunner(
        OperationStore(tmp_path / "state"),
        python_executable=str(child),
        child_env={},
        niceness=0,
        openmp_threads=1,
        workdir=tmp_path,
    )
    yield retrainer
    retrainer.stop(timeout=5)


def _champion(profile_rows: np.ndarray | None = None) -> LoadedModel:
    profile = None
    if profile_rows is not None:
        outputs = np.full((len(profile_rows), 3), 1 / 3)
        profile = reference_profile(profile_rows, outputs, IRIS_FEATURES, IRIS_SPECIES)
    ref = ModelVersionRef(IRIS_MODEL, "4", "champion", "run")
    description = ModelDescription(
        ref, f"models:/{IRIS_MODEL}/4", "test", datetime.now(UTC), training_metrics={"accuracy": 0.95}
    )
    return LoadedModel(description, estimator=None, reference_profile=profile)


def _triggers(runner, store, quality, clock, *, drift=None, **settings) -> tuple[RetrainTriggers, CollectorRegistry]:
    registry = InMemoryRegistry()
    registry.register(IRIS_MODEL, object(), alias="champion")
    metrics = CollectorRegistry()
    triggers = RetrainTriggers(
        TriggerSettings(**settings),
        {ModelSlot.IRIS: TriggeredModel(IRIS, IRIS_MODEL)},
        operations=runner,
        store=store,
        registry=registry,
        quality=quality,
        drift=drift,
        metrics_registry=metrics,
        clock=clock,
    )
    return triggers, metrics


def _wrong_labels(quality: LiveQuality, count: int) -> None:
    confident_setosa = (0.9, 0.05, 0.05)
    quality.record(
        [LabelledPrediction(IRIS_MODEL, "4", "champion", confident_setosa, 2.0, time.time()) for _ in range(count)]
    )


def _wait_idle(runner: RetrainRunner) -> None:
    deadline = time.monotonic() + 30
    while any(not operation.state.finished for operation in runner.list()):
        assert time.monotonic() < deadline, "the stand-in retrain did not finish"
        time.sleep(0.05)


def _fired(metrics: CollectorRegistry, trigger: str, outcome: str = "started") -> float:
    value = metrics.get_sample_value(
        "model_retrain_triggered_total", {"model": "iris", "trigger": trigger, "outcome": outcome}
    )
    return value or 0.0


def test_quality_fires_after_holding_for_its_time_then_waits_out_the_cool_down(runner):
    """After a firing, the condition is timed afresh; the cool-down only holds back a firing that is due."""
    store, clock = ModelStore(), Clock()
    store.put(ModelSlot.IRIS, Deployment(champion=_champion()))
    quality = LiveQuality({IRIS_MODEL: IRIS_SPECIES}, CollectorRegistry())
    triggers, metrics = _triggers(
        runner, store, quality, clock, quality_for_seconds=60, quality_min_labels=10, cooldown_seconds=600
    )
    _wrong_labels(quality, 9)
    clock.now += 100
    assert triggers.check() == []  # too few labels to judge
    _wrong_labels(quality, 1)
    assert triggers.check() == []  # degraded from now on
    clock.now += 59
    assert triggers.check() == []
    clock.now += 2
    (operation,) = triggers.check()
    assert (operation.model, operation.trigger) == ("iris", "quality")
    assert "live accuracy 0 of v4 over 10 labels" in operation.trigger_reason
    assert "training accuracy 0.95" in operation.trigger_reason
    _wait_idle(runner)

    clock.now += 100
    assert triggers.check() == []  # timed afresh from here
    clock.now += 200  # held 200 s, far beyond its 60 s, but the cool-down has 300 s to go
    assert triggers.check() == []
    clock.now += 301  # the cool-down is over, and the condition has held all along: it fires again
    assert [each.trigger for each in triggers.check()] == ["quality"]
    assert _fired(metrics, "quality") == 2
    assert len(runner.list()) == 2


def test_good_quality_never_fires_and_a_recovery_resets_the_clock(runner):
    store, clock = ModelStore(), Clock()
    store.put(ModelSlot.IRIS, Deployment(champion=_champion()))
    quality = LiveQuality({IRIS_MODEL: IRIS_SPECIES}, CollectorRegistry(), window_labels=10)
    triggers, _ = _triggers(runner, store, quality, clock, quality_for_seconds=60, quality_min_labels=10)
    right = [LabelledPrediction(IRIS_MODEL, "4", "champion", (0.9, 0.05, 0.05), 0.0, time.time())] * 10
    quality.record(right)
    for _ in range(5):
        clock.now += 100
        assert triggers.check() == []
    _wrong_labels(quality, 10)
    assert triggers.check() == []
    clock.now += 50
    quality.record(right)  # recovered before the 60 s were up
    assert triggers.check() == []
    _wrong_labels(quality, 10)
    clock.now += 20
    assert triggers.check() == []  # held 0 s, not 70
    assert runner.list() == []


def test_a_paused_model_does_not_fire_until_switched_back_on(runner):
    store, clock = ModelStore(), Clock()
    store.put(ModelSlot.IRIS, Deployment(champion=_champion()))
    quality = LiveQuality({IRIS_MODEL: IRIS_SPECIES}, CollectorRegistry())
    triggers, _ = _triggers(runner, store, quality, clock, quality_for_seconds=10, quality_min_labels=5)
    triggers.set_enabled(ModelSlot.IRIS, False)
    assert not triggers.enabled(ModelSlot.IRIS)
    _wrong_labels(quality, 5)
    triggers.check()
    clock.now += 1000
    assert triggers.check() == []
    triggers.set_enabled(ModelSlot.IRIS, True)
    assert [each.trigger for each in triggers.check()] == ["quality"]


def test_a_trigger_waits_while_a_retrain_is_running_and_counts_it_busy(runner):
    store, clock = ModelStore(), Clock()
    store.put(ModelSlot.IRIS, Deployment(champion=_champion()))
    quality = LiveQuality({IRIS_MODEL: IRIS_SPECIES}, CollectorRegistry())
    triggers, metrics = _triggers(runner, store, quality, clock, schedule_seconds=3600)
    manual = runner.start("iris", {}, None)  # the same one-at-a-time rule as an admin Retrain
    clock.now += 3600
    assert triggers.check() == []
    assert _fired(metrics, "schedule", "busy") == 1
    _wait_idle(runner)
    (scheduled,) = triggers.check()  # it tries again at the next check
    assert (scheduled.trigger, scheduled.trigger_reason) == ("schedule", "every 3600 s")
    assert [each.id for each in runner.list()] == [scheduled.id, manual.id]


def test_drift_held_on_the_champion_fires_naming_the_drifted_feature(runner):
    store, clock = ModelStore(), Clock()
    training = np.random.default_rng(0).normal(5.0, 1.0, size=(2000, 4))
    champion = _champion(training)
    store.put(ModelSlot.IRIS, Deployment(champion=champion))
    drift = DriftMonitor(store, SPEC_BY_SLOT, CollectorRegistry(), window_rows=500, min_rows=100)
    quality = LiveQuality({IRIS_MODEL: IRIS_SPECIES}, CollectorRegistry())
    triggers, metrics = _triggers(runner, store, quality, clock, drift=drift, drift_for_seconds=30)
    live = np.random.default_rng(1).normal(5.0, 1.0, size=(500, 4))
    drift.offer(champion, live, np.full((500, 3), 1 / 3))
    assert triggers.check() == []
    clock.now += 100
    assert triggers.check() == []  # no drift: nothing held

    shifted = live.copy()
    shifted[:, 2] += 2.0  # petal length, two standard deviations up
    drift.offer(champion, shifted, np.full((500, 3), 1 / 3))
    assert triggers.check() == []
    clock.now += 31
    (operation,) = triggers.check()
    assert operation.trigger == "drift"
    assert "petal_length_cm PSI" in operation.trigger_reason
    assert "sepal_length_cm" not in operation.trigger_reason
    assert _fired(metrics, "drift") == 1


def test_no_trigger_is_on_unless_configured(runner):
    triggers, _ = _triggers(runner, ModelStore(), LiveQuality({}, CollectorRegistry()), Clock())
    assert triggers.settings.enabled == ()
    triggers.start()  # starts no thread
    assert triggers.check() == []
    triggers.stop()
