"""Fast paths must give scikit-learn's answers bit for bit, or not be used at all."""

import os
import threading

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from data.transforms import RotatedCoordinates
from model_registry import LoadedArtifact
from model_registry.memory import InMemoryRegistry
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.domain import LoadedModel
from server.execution import ModelRunner
from server.fast_paths import CompiledForest, CompiledLogistic, compile_fast_path, fast_path_any_size, reproduces
from server.forest_kernel import load_forest_kernel
from server.model_store import ModelSlot
from server.preparation import ModelPreparer
from server.runtime import PredictRuntime
from server.services import HOUSING, IRIS, ServiceSpec

from ..prerequisites import FOREST_KERNEL
from .conftest import channel_to, running_server


@pytest.fixture(scope="module")
def training_data():
    generator = np.random.default_rng(7)
    features = generator.normal(size=(2000, 8))
    target = features[:, 0] * 2 + np.sin(features[:, 1] * 3) + generator.normal(scale=0.1, size=2000)
    return features, target


@pytest.fixture(scope="module")
def regressor(training_data):
    features, target = training_data
    return HistGradientBoostingRegressor(max_iter=40, max_leaf_nodes=31, random_state=0).fit(features, target)


WALKS = [pytest.param(True, id="native kernel"), pytest.param(False, id="numpy walk")]


def _compiled(regressor: HistGradientBoostingRegressor, native: bool) -> CompiledForest:
    if native:
        FOREST_KERNEL.require()
    compiled = CompiledForest.from_estimator(regressor, native=native)
    assert compiled is not None
    assert compiled.any_size is native
    return compiled


@pytest.mark.parametrize("native", WALKS)
def test_compiled_predictions_equal_scikit_learn_exactly(regressor, native):
    compiled = _compiled(regressor, native)
    rows = np.random.default_rng(1).normal(scale=2.0, size=(500, 8))
    assert np.array_equal(compiled.predict(rows), regressor.predict(rows))
    for one_row in rows[:20]:
        assert compiled.predict(one_row[None, :])[0] == regressor.predict(one_row[None, :])[0]


@pytest.mark.parametrize("native", WALKS)
def test_values_exactly_on_a_threshold_go_the_same_way(regressor, native):
    compiled = _compiled(regressor, native)
    nodes = np.concatenate([p.nodes for iteration in regressor._predictors for p in iteration])
    splits = nodes[~nodes["is_leaf"].astype(bool)][:200]
    rows = np.zeros((len(splits), 8))
    rows[np.arange(len(splits)), splits["feature_idx"]] = splits["num_threshold"]
    assert np.array_equal(compiled.predict(rows), regressor.predict(rows))


# The kernel walks rows in blocks of 256: sizes on each side of a block's edge, and none at all.
@pytest.mark.parametrize("rows", [0, 1, 255, 256, 257, 1000, 2049])
def test_the_native_kernel_is_exact_for_any_number_of_rows_in_any_memory_layout(regressor, rows):
    compiled = _compiled(regressor, native=True)
    houses = np.random.default_rng(rows).normal(scale=2.0, size=(rows, 8))
    expected = regressor.predict(houses) if rows else np.empty(0)
    assert np.array_equal(compiled.predict(houses), expected)
    assert np.array_equal(compiled.predict(np.asfortranarray(houses)), expected)
    interleaved = np.full((rows, 16), np.nan)
    interleaved[:, ::2] = houses
    assert np.array_equal(compiled.predict(interleaved[:, ::2]), expected)  # a view, every other column


def test_rows_missing_a_column_the_trees_split_on_are_refused_not_read_past(regressor):
    compiled = _compiled(regressor, native=True)
    with pytest.raises(ValueError, match="at least 8 columns"):
        compiled.predict(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="at least 8 columns"):
        compiled.predict(np.zeros(8))


def test_a_forest_behind_rotated_coordinates_is_compiled_with_the_transform_and_stays_exact(training_data):
    features, target = training_data
    features = features.copy()
    features[:, 6] = 34 + features[:, 6]  # latitude-like
    features[:, 7] = -118 + features[:, 7]  # longitude-like
    pipeline = Pipeline(
        [("coordinates", RotatedCoordinates()), ("regressor", HistGradientBoostingRegressor(max_iter=30))]
    ).fit(features, target)
    fast = compile_fast_path(pipeline, "predict")
    assert fast is not None
    rows = features[:300] * np.random.default_rng(4).uniform(0.9, 1.1, size=(300, 8))
    assert np.array_equal(fast(rows), pipeline.predict(rows))
    assert fast(rows[:1])[0] == pipeline.predict(rows[:1])[0]
    # The transform is numpy over whole arrays: the composition takes every size when its forest does.
    assert fast_path_any_size(fast) is (load_forest_kernel() is not None)
    # Only known transforms run as they are; anything else in front of the forest stays on scikit-learn.
    scaled = Pipeline([("scale", MinMaxScaler()), ("regressor", HistGradientBoostingRegressor(max_iter=5))])
    assert compile_fast_path(scaled.fit(features, target), "predict") is None


def test_unsupported_estimators_stay_on_scikit_learn(training_data):
    features, target = training_data
    assert CompiledForest.from_estimator(LinearRegression().fit(features, target)) is None
    classifier = HistGradientBoostingClassifier(max_iter=5).fit(features, target > 0)
    assert CompiledForest.from_estimator(classifier) is None
    poisson = HistGradientBoostingRegressor(loss="poisson", max_iter=5).fit(features, np.abs(target))
    assert CompiledForest.from_estimator(poisson) is None
    categorical = HistGradientBoostingRegressor(max_iter=5, categorical_features=[0]).fit(
        np.column_stack([np.arange(2000) % 4, features[:, 1:]]), target
    )
    assert CompiledForest.from_estimator(categorical) is None


def _prepared(spec: ServiceSpec, estimator: object, small_batch_rows: int) -> LoadedModel:
    registry = InMemoryRegistry()
    version = registry.register(spec.slot.value, estimator)
    artifact: LoadedArtifact = registry.load(spec.slot.value, version)
    runner = ModelRunner(spec, PredictRuntime(parallel_batch_rows=256), small_batch_rows)
    return ModelPreparer(runner).prepare(artifact, "champion")


def test_housing_preparation_attaches_the_fast_path_only_when_enabled(regressor):
    assert _prepared(HOUSING, regressor, small_batch_rows=16).fast_path is not None
    assert _prepared(HOUSING, regressor, small_batch_rows=0).fast_path is None


@pytest.fixture(scope="module")
def iris_data():
    return load_iris(return_X_y=True)


@pytest.mark.parametrize(
    "steps",
    [
        [("scaler", StandardScaler()), ("classifier", LogisticRegression(C=10, max_iter=1000))],
        [("scaler", StandardScaler(with_mean=False)), ("classifier", LogisticRegression(max_iter=1000))],
        [("classifier", LogisticRegression(max_iter=1000))],
    ],
    ids=["standardised", "scaled-only", "bare"],
)
def test_logistic_probabilities_equal_scikit_learn_exactly(iris_data, steps):
    features, target = iris_data
    estimator = Pipeline(steps).fit(features, target) if len(steps) > 1 else steps[0][1].fit(features, target)
    fast_path = compile_fast_path(estimator, "predict_proba")
    assert fast_path is not None
    rows = np.random.default_rng(5).uniform(0.1, 9.0, size=(300, 4))
    assert reproduces(fast_path, estimator, "predict_proba", rows)
    assert reproduces(fast_path, estimator, "predict_proba", features)
    for one_row in rows[:20]:
        assert np.array_equal(fast_path(one_row[None, :]), estimator.predict_proba(one_row[None, :]))


def test_other_classifiers_stay_on_scikit_learn(iris_data):
    features, target = iris_data
    binary = LogisticRegression().fit(features, target == 0)
    assert CompiledLogistic.from_estimator(binary) is None
    min_max = Pipeline([("scaler", MinMaxScaler()), ("classifier", LogisticRegression(max_iter=1000))])
    assert CompiledLogistic.from_estimator(min_max.fit(features, target)) is None
    assert compile_fast_path(LogisticRegression(max_iter=1000).fit(features, target), "predict") is None


def test_iris_preparation_attaches_the_fast_path_and_it_answers_the_same(iris_data):
    features, target = iris_data
    pipeline = Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression(C=10, max_iter=1000))])
    prepared = _prepared(IRIS, pipeline.fit(features, target), small_batch_rows=16)
    assert prepared.fast_path is not None
    assert np.array_equal(prepared.fast_path(features[:16]), pipeline.predict_proba(features[:16]))


def test_a_built_server_gives_both_services_their_fast_paths(regressor, iris_data):
    features, target = iris_data
    registry = InMemoryRegistry()
    registry.register("CaliforniaHousingBestModel", regressor, alias="champion")
    pipeline = Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression(C=10, max_iter=1000))])
    registry.register("IrisBestModel", pipeline.fit(features, target), alias="champion")
    with running_server(registry) as server:
        assert server.store.get(ModelSlot.HOUSING).champion.fast_path is not None
        assert server.store.get(ModelSlot.IRIS).champion.fast_path is not None


# Served answers, seen by a gRPC client of a real server: which path answered, and that it was exact.

FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.4, 3.2, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 5.1, 1.8]])


@pytest.fixture(scope="module")
def iris_pipeline(iris_data):
    features, target = iris_data
    pipeline = Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression(C=10, max_iter=1000))])
    return pipeline.fit(features, target)


def _houses(rows: int) -> np.ndarray:
    houses = np.tile(HOUSING.features.example_row, (rows, 1))
    houses[:, 0] = np.linspace(0.5, 14.5, rows)  # median income, across its whole accepted range
    return houses


def _house_messages(rows: np.ndarray) -> list[housing_pb2.HousingFeatures]:
    names = HOUSING.features.names
    return [housing_pb2.HousingFeatures(**dict(zip(names, row, strict=True))) for row in rows.tolist()]


def _flower_message(row: np.ndarray) -> iris_pb2.IrisFeatures:
    return iris_pb2.IrisFeatures(**dict(zip(IRIS.features.names, row.tolist(), strict=True)))


def _served(regressor, iris_pipeline) -> InMemoryRegistry:
    registry = InMemoryRegistry()
    registry.register("CaliforniaHousingBestModel", regressor, alias="champion")
    registry.register("IrisBestModel", iris_pipeline, alias="champion")
    return registry


class CallCounter:
    """Wraps a method, counting its calls and changing nothing else."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def counted(instance, *args, **kwargs):
            self.calls += 1
            return original(instance, *args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def _one_ulp_up(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> CallCounter:
    """A tampered fast path: every answer one ulp above the true one. Counts its calls too."""
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda instance, values: np.nextafter(original(instance, values), np.inf))
    return CallCounter(monkeypatch, owner, name)


def test_a_fast_path_that_disagrees_with_scikit_learn_is_refused_and_scikit_learn_answers(
    regressor, iris_pipeline, monkeypatch
):
    tampered_forest = _one_ulp_up(monkeypatch, CompiledForest, "predict")
    tampered_logistic = _one_ulp_up(monkeypatch, CompiledLogistic, "predict_proba")
    with running_server(_served(regressor, iris_pipeline)) as server, channel_to(server) as channel:
        assert tampered_forest.calls > 0 and tampered_logistic.calls > 0, "the proof at load never ran"
        proved = tampered_forest.calls, tampered_logistic.calls
        housing = housing_pb2_grpc.HousingPredictorStub(channel)
        iris = iris_pb2_grpc.IrisClassifierStub(channel)
        houses = _houses(server.settings.small_batch_rows)

        one = housing.Predict(_house_messages(houses[:1])[0]).median_house_value
        batch = housing.PredictBatch(housing_pb2.HousingBatchRequest(instances=_house_messages(houses)))
        flower = iris.Classify(_flower_message(FLOWERS[0])).probabilities

    assert one == regressor.predict(houses[:1])[0]
    assert [value.median_house_value for value in batch.predictions] == regressor.predict(houses).tolist()
    assert [flower.setosa, flower.versicolor, flower.virginica] == iris_pipeline.predict_proba(FLOWERS[:1])[0].tolist()
    assert (tampered_forest.calls, tampered_logistic.calls) == proved, "a refused fast path answered a request"


@pytest.mark.parametrize("native", WALKS)
def test_requests_are_answered_by_the_fast_paths_and_not_by_scikit_learn_up_to_their_size_limit(
    regressor, iris_pipeline, monkeypatch, native
):
    if native:
        FOREST_KERNEL.require()
    else:  # a server installed without a C compiler
        monkeypatch.setattr("server.fast_paths.load_forest_kernel", lambda: None)
    compiled_forest = CallCounter(monkeypatch, CompiledForest, "predict")
    compiled_logistic = CallCounter(monkeypatch, CompiledLogistic, "predict_proba")
    boosting = CallCounter(monkeypatch, HistGradientBoostingRegressor, "predict")
    pipeline = CallCounter(monkeypatch, Pipeline, "predict_proba")
    with running_server(_served(regressor, iris_pipeline)) as server, channel_to(server) as channel:
        assert server.store.get(ModelSlot.HOUSING).champion.fast_path_any_size is native
        assert server.store.get(ModelSlot.IRIS).champion.fast_path_any_size is False
        housing = housing_pb2_grpc.HousingPredictorStub(channel)
        iris = iris_pb2_grpc.IrisClassifierStub(channel)
        limit = server.settings.small_batch_rows
        assert limit > 1
        counters = (compiled_forest, compiled_logistic, boosting, pipeline)
        for counter in counters:  # the proof and the warm-up at load used both paths
            counter.calls = 0

        housing.Predict(_house_messages(_houses(1))[0])
        housing.PredictBatch(housing_pb2.HousingBatchRequest(instances=_house_messages(_houses(limit))))
        iris.Classify(_flower_message(FLOWERS[0]))
        iris.ClassifyBatch(iris_pb2.IrisBatchRequest(instances=[_flower_message(row) for row in FLOWERS]))
        assert [counter.calls for counter in counters] == [2, 2, 0, 0]

        # Past the limit: the native kernel still answers housing; the numpy walk and the logistic path do not.
        large = _houses(limit + 1)  # and below PREDICTOR_SPLIT_BATCH_ROWS: one call, on the request's thread
        answers = housing.PredictBatch(housing_pb2.HousingBatchRequest(instances=_house_messages(large)))
        iris.ClassifyBatch(
            iris_pb2.IrisBatchRequest(instances=[_flower_message(FLOWERS[n % 4]) for n in range(limit + 1)])
        )
        assert [counter.calls for counter in counters] == ([3, 2, 0, 1] if native else [2, 2, 1, 1])
    assert [answer.median_house_value for answer in answers.predictions] == regressor.predict(large).tolist()


def test_a_large_batch_on_the_native_kernel_is_split_over_the_cores_and_the_part_threads_stop_with_the_server(
    regressor, iris_pipeline, monkeypatch
):
    FOREST_KERNEL.require()
    threads: list[str] = []
    original = CompiledForest.predict

    def recorded(instance: CompiledForest, values: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return original(instance, values)

    monkeypatch.setattr(CompiledForest, "predict", recorded)
    with running_server(_served(regressor, iris_pipeline)) as server, channel_to(server) as channel:
        split_rows = server.settings.split_batch_rows
        assert split_rows is not None
        housing = housing_pb2_grpc.HousingPredictorStub(channel)
        large = _houses(split_rows)
        threads.clear()
        answers = housing.PredictBatch(housing_pb2.HousingBatchRequest(instances=_house_messages(large)))
        split = list(threads)
        threads.clear()
        housing.PredictBatch(housing_pb2.HousingBatchRequest(instances=_house_messages(large[:-1])))
        whole = list(threads)
        (part_pool,) = [pool for pool in server.executors if pool._thread_name_prefix == "part"]
    assert [answer.median_house_value for answer in answers.predictions] == regressor.predict(large).tolist()
    cores = len(os.sched_getaffinity(0))
    assert len(split) == cores and len({name.split("_")[0] for name in split}) == min(cores, 2), split
    assert len(whole) == 1, "a batch below PREDICTOR_SPLIT_BATCH_ROWS was split"
    assert part_pool._shutdown
