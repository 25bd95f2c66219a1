"""Fast paths must give scikit-learn's answers bit for bit, or not be used at all."""

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from model_registry import LoadedArtifact
from model_registry.memory import InMemoryRegistry
from server.domain import LoadedModel
from server.execution import ModelRunner
from server.fast_paths import CompiledForest, CompiledLogistic, compile_fast_path, reproduces
from server.model_store import ModelSlot
from server.preparation import ModelPreparer
from server.runtime import PredictRuntime
from server.services import HOUSING, IRIS, ServiceSpec


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


def test_compiled_predictions_equal_scikit_learn_exactly(regressor):
    compiled = CompiledForest.from_estimator(regressor)
    assert compiled is not None
    rows = np.random.default_rng(1).normal(scale=2.0, size=(500, 8))
    assert np.array_equal(compiled.predict(rows), regressor.predict(rows))
    for one_row in rows[:20]:
        assert compiled.predict(one_row[None, :])[0] == regressor.predict(one_row[None, :])[0]


def test_values_exactly_on_a_threshold_go_the_same_way(regressor):
    compiled = CompiledForest.from_estimator(regressor)
    assert compiled is not None
    nodes = np.concatenate([p.nodes for iteration in regressor._predictors for p in iteration])
    splits = nodes[~nodes["is_leaf"].astype(bool)][:200]
    rows = np.zeros((len(splits), 8))
    rows[np.arange(len(splits)), splits["feature_idx"]] = splits["num_threshold"]
    assert np.array_equal(compiled.predict(rows), regressor.predict(rows))


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
    assert _prepared(HOUSING, regressor, small_batch_rows=16).small_batch_predict is not None
    assert _prepared(HOUSING, regressor, small_batch_rows=0).small_batch_predict is None


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
    assert prepared.small_batch_predict is not None
    assert np.array_equal(prepared.small_batch_predict(features[:16]), pipeline.predict_proba(features[:16]))


def test_a_built_server_gives_both_services_their_fast_paths(regressor, iris_data):
    from .conftest import running_server  # noqa: PLC0415

    features, target = iris_data
    registry = InMemoryRegistry()
    registry.register("CaliforniaHousingBestModel", regressor, alias="champion")
    pipeline = Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression(C=10, max_iter=1000))])
    registry.register("IrisBestModel", pipeline.fit(features, target), alias="champion")
    with running_server(registry) as server:
        assert server.store.get(ModelSlot.HOUSING).champion.small_batch_predict is not None
        assert server.store.get(ModelSlot.IRIS).champion.small_batch_predict is not None
