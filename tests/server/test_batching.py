"""Micro-batching: concurrent small requests coalesce, each caller gets its own rows, deadlines and failures stay
per request; and a real server coalesces for the versions its preparation chose."""

import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from data.schema import HOUSING_FEATURES, IRIS_FEATURES
from model_registry.memory import InMemoryRegistry
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc
from server.batching import BatchingMetrics, Coalescer
from server.errors import DeadlineExpiredError
from server.execution import ModelRunner
from server.preparation import ModelPreparer
from server.runtime import PredictRuntime
from server.services import HOUSING, IRIS
from tests.server.conftest import channel_to, running_server, sample, small_housing_model, wait_until
from tests.server.estimators import GatedRegressor


class RecordingModel:
    """Answers 10 x the first column of every row; holds its first call until released; records every call."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.first_entered = threading.Event()
        self.release = threading.Event()
        self._fail_on = fail_on

    def __call__(self, values: np.ndarray) -> np.ndarray:
        self.calls.append(values.copy())
        if len(self.calls) == 1:
            self.first_entered.set()
            assert self.release.wait(timeout=30), "never released"
        if self._fail_on is not None and (values[:, 0] == self._fail_on).any():
            raise ValueError("a row this model cannot take")
        return values[:, 0] * 10.0


def _coalescer(model: Callable[[np.ndarray], np.ndarray], **overrides: float) -> tuple[Coalescer, CollectorRegistry]:
    registry = CollectorRegistry()
    settings: dict[str, float] = {"permits": 1, "max_rows": 64, "max_wait_seconds": 0.0} | overrides
    coalescer = Coalescer(
        model,
        model="m",
        metrics=BatchingMetrics(registry),
        permits=int(settings["permits"]),
        max_rows=int(settings["max_rows"]),
        max_wait_seconds=settings["max_wait_seconds"],
    )
    return coalescer, registry


def _rows(first: float, count: int = 1) -> np.ndarray:
    return np.column_stack([np.arange(first, first + count, dtype=np.float64), np.zeros(count)])


def _queue_behind_a_busy_call(
    coalescer: Coalescer, model: RecordingModel, requests: list[tuple[np.ndarray, float | None]]
) -> tuple[futures.Future[np.ndarray], list[futures.Future[np.ndarray]]]:
    """Start one call that holds the only permit, queue ``requests`` behind it, then release it."""
    pool = futures.ThreadPoolExecutor(max_workers=len(requests) + 1)
    busy = pool.submit(coalescer.predict, _rows(0.0), None)
    assert model.first_entered.wait(timeout=10)
    queued = [pool.submit(coalescer.predict, values, deadline) for values, deadline in requests]
    wait_until(lambda: coalescer._queued_rows == sum(len(values) for values, _ in requests), "every request queued")
    model.release.set()
    pool.shutdown(wait=True)
    return busy, queued


def test_requests_queued_behind_a_busy_call_are_predicted_in_one_call_each_getting_its_own_rows():
    model = RecordingModel()
    coalescer, registry = _coalescer(model)
    requests: list[tuple[np.ndarray, float | None]] = [(_rows(100.0 * n, n), None) for n in range(1, 6)]

    busy, queued = _queue_behind_a_busy_call(coalescer, model, requests)

    assert busy.result().tolist() == [0.0]
    for (values, _), answer in zip(requests, queued, strict=True):
        assert answer.result().tolist() == (values[:, 0] * 10.0).tolist()
    assert [len(call) for call in model.calls] == [1, 15]
    assert sample(registry, "model_microbatch_rows_count", model="m") == 2
    assert sample(registry, "model_microbatch_rows_bucket", model="m", le="10.0") == 1  # the first call
    assert sample(registry, "model_microbatch_queue_wait_seconds_count", model="m") == 6


def test_an_idle_coalescer_predicts_at_once_and_alone():
    model = RecordingModel()
    model.release.set()
    coalescer, _ = _coalescer(model, max_wait_seconds=0.0)
    assert coalescer.predict(_rows(3.0), None).tolist() == [30.0]
    assert coalescer.predict(_rows(4.0, 2), None).tolist() == [40.0, 50.0]
    assert [len(call) for call in model.calls] == [1, 2]


def test_a_batch_carries_at_most_max_rows():
    model = RecordingModel()
    coalescer, _ = _coalescer(model, max_rows=4)
    requests: list[tuple[np.ndarray, float | None]] = [(_rows(float(n)), None) for n in range(1, 10)]

    _, queued = _queue_behind_a_busy_call(coalescer, model, requests)

    assert [answer.result().tolist() for answer in queued] == [[n * 10.0] for n in range(1, 10)]
    assert [len(call) for call in model.calls] == [1, 4, 4, 1]


def test_a_request_whose_deadline_passed_while_it_queued_is_refused_and_not_computed():
    model = RecordingModel()
    coalescer, registry = _coalescer(model)
    expired = time.monotonic() - 1.0
    requests: list[tuple[np.ndarray, float | None]] = [(_rows(7.0), expired), (_rows(8.0), None)]

    _, (late, on_time) = _queue_behind_a_busy_call(coalescer, model, requests)

    with pytest.raises(DeadlineExpiredError):
        late.result()
    assert on_time.result().tolist() == [80.0]
    assert all(7.0 not in call[:, 0] for call in model.calls)
    assert sample(registry, "model_requests_expired_total", model="m") == 1


def test_a_request_the_model_fails_on_fails_alone_and_the_permit_moves_on():
    model = RecordingModel(fail_on=13.0)
    coalescer, _ = _coalescer(model)
    requests: list[tuple[np.ndarray, float | None]] = [(_rows(float(n)), None) for n in (11, 12, 13, 14)]

    _, queued = _queue_behind_a_busy_call(coalescer, model, requests)

    with pytest.raises(ValueError, match="cannot take"):
        queued[2].result()
    assert [queued[n].result().tolist() for n in (0, 1, 3)] == [[110.0], [120.0], [140.0]]
    # The combined call failed, then each request was predicted on its own.
    assert [len(call) for call in model.calls] == [1, 4, 1, 1, 1, 1]
    # The permit came back: the next request predicts at once.
    assert coalescer.predict(_rows(15.0), None).tolist() == [150.0]
    assert coalescer._running == 0


def test_max_wait_holds_a_new_batch_open_for_more_requests():
    model = RecordingModel()
    model.release.set()
    coalescer, _ = _coalescer(model, permits=1, max_wait_seconds=0.5, max_rows=3)
    with futures.ThreadPoolExecutor(max_workers=3) as pool:
        answers = [pool.submit(coalescer.predict, _rows(float(n)), None) for n in (1, 2, 3)]
        assert [answer.result(timeout=10).tolist() for answer in answers] == [[10.0], [20.0], [30.0]]
    # The first request waited for the others (the batch filled before the half second was up).
    assert sorted(len(call) for call in model.calls) in ([1, 2], [3])
    assert len(model.calls[0]) > 1


def _iris_preparer(mode: str) -> ModelPreparer:
    runtime = PredictRuntime(None)
    return ModelPreparer(ModelRunner(IRIS, runtime, small_batch_rows=32), mode)  # type: ignore[arg-type]


def _prepared(estimator: object, mode: str) -> bool:
    registry = InMemoryRegistry()
    registry.register("IrisBestModel", estimator, alias="champion", input_names=IRIS_FEATURES)
    artifact = registry.load("IrisBestModel", registry.resolve("IrisBestModel", "champion").version)
    return _iris_preparer(mode).prepare(artifact, "champion").coalesce


def test_preparation_coalesces_a_forest_but_not_a_model_whose_fast_path_costs_the_same_per_row():
    data, target = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1).fit(data, target)
    linear = LogisticRegression(max_iter=500).fit(data, target)
    assert _prepared(forest, "auto") is True
    assert _prepared(linear, "auto") is False
    assert _prepared(linear, "on") is True
    assert _prepared(forest, "off") is False


class GatedEcho(GatedRegressor):
    """A GatedRegressor that answers each row's first feature, so every caller's answer is its own."""

    def predict(self, values: np.ndarray) -> np.ndarray:
        super().predict(values)
        return values[:, 0].copy()


def _housing_row(median_income: float) -> housing_pb2.HousingFeatures:
    """A valid row (the service's example) whose first feature, median income, is ``median_income``."""
    row = dict(zip(HOUSING_FEATURES, HOUSING.features.example_row[0].tolist(), strict=True))
    return housing_pb2.HousingFeatures(**(row | {"median_income": median_income}))


HOUSING_MODEL = {"model": "CaliforniaHousingBestModel"}


def test_a_real_server_coalesces_queued_single_rows_skips_an_expired_one_and_answers_each_caller_its_own_row():
    model = GatedEcho()
    registry = InMemoryRegistry()
    registry.register("CaliforniaHousingBestModel", model, alias="champion", input_names=HOUSING_FEATURES)
    with (
        running_server(registry, microbatch="on", max_workers=8, max_concurrent_predictions=1) as server,
        channel_to(server) as channel,
    ):
        metrics = server.metrics_registry
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        model.gated = True
        with futures.ThreadPoolExecutor(max_workers=8) as pool:
            first = pool.submit(stub.Predict, _housing_row(1.0), timeout=30)
            assert model.entered.acquire(timeout=10)
            rest = [pool.submit(stub.Predict, _housing_row(2.0 + n), timeout=30) for n in range(6)]
            pending = "model_microbatch_pending_requests"
            wait_until(lambda: sample(metrics, pending, **HOUSING_MODEL) == 6, "six requests queued behind one")
            late = pool.submit(stub.Predict, _housing_row(14.0), timeout=0.5)
            wait_until(lambda: sample(metrics, pending, **HOUSING_MODEL) == 7, "a seventh queued")
            with pytest.raises(grpc.RpcError) as refused:
                late.result()
            model.gated = False
            model.release.set()
            answers = [first.result(), *(each.result() for each in rest)]
        assert [answer.median_house_value for answer in answers] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        assert len({answer.prediction_id for answer in answers}) == 7
        # One call for the first request, one for the six queued behind it; the expired one was never computed.
        assert sample(metrics, "model_microbatch_rows_count", **HOUSING_MODEL) == 2
        assert sample(metrics, "model_microbatch_rows_bucket", le="5.0", **HOUSING_MODEL) == 1
        assert sample(metrics, "model_requests_expired_total", **HOUSING_MODEL) == 1
        assert sample(metrics, pending, **HOUSING_MODEL) == 0
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("mode", ["off", "on"])
def test_a_real_server_answers_concurrent_single_rows_exactly_with_coalescing_on_or_off(mode):
    registry = InMemoryRegistry()
    registry.register(
        "CaliforniaHousingBestModel", small_housing_model(), alias="champion", input_names=HOUSING_FEATURES
    )
    with running_server(registry, microbatch=mode, max_workers=8) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        with futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(
                pool.map(lambda n: stub.Predict(_housing_row(1.0 + n), timeout=30).median_house_value, range(40))
            )
        rows = np.repeat(HOUSING.features.example_row, 40, axis=0)
        rows[:, 0] = 1.0 + np.arange(40.0)
        expected = small_housing_model().predict(rows)
        assert answers == expected.tolist()
        calls = sample(server.metrics_registry, "model_microbatch_rows_count", **HOUSING_MODEL)
        assert calls == 0 if mode == "off" else 0 < calls <= 40
