"""The compiled fast path must give scikit-learn's answers bit for bit, or not be used at all."""

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression

from server.compiled_trees import CompiledForest
from server.core import HousingEndpoint
from server.features import HOUSING_FEATURE_TABLE
from server.metrics import ModelMetrics
from server.model_store import ModelSlot, ModelStore
from server.registry import InMemoryModelRegistry
from server.runtime import PredictRuntime


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


def _endpoint(small_batch_rows: int) -> HousingEndpoint:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    return HousingEndpoint(
        ModelSlot.HOUSING,
        features=HOUSING_FEATURE_TABLE,
        store=ModelStore(),
        metrics=ModelMetrics(CollectorRegistry()),
        runtime=PredictRuntime(parallel_batch_rows=256),
        max_batch_size=100,
        small_batch_rows=small_batch_rows,
    )


def test_the_housing_endpoint_attaches_the_fast_path_only_when_enabled(regressor):
    model = InMemoryModelRegistry().add("CaliforniaHousingBestModel", "champion", regressor)
    assert _endpoint(small_batch_rows=16).prepare(model).small_batch_predict is not None
    assert _endpoint(small_batch_rows=0).prepare(model).small_batch_predict is None
