"""HousingPredictor and IrisClassifier as a client sees them, over a real MLflow registry."""

import math

import grpc
import mlflow.sklearn
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server.app import PredictionServer
from training.settings import TrainingSettings

from .conftest import channel_to, in_memory_registry, running_server

HOUSE = {
    "median_income": 8.3252,
    "house_age": 41.0,
    "average_rooms": 6.984,
    "average_bedrooms": 1.024,
    "population": 322.0,
    "average_occupancy": 2.556,
    "latitude": 37.88,
    "longitude": -122.23,
}
FLOWERS = [
    {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2},
    {"sepal_length_cm": 6.4, "sepal_width_cm": 3.2, "petal_length_cm": 4.5, "petal_width_cm": 1.5},
    {"sepal_length_cm": 6.3, "sepal_width_cm": 3.3, "petal_length_cm": 6.0, "petal_width_cm": 2.5},
]


def _registry_model(settings: TrainingSettings, name: str):
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return mlflow.sklearn.load_model(f"models:/{name}@champion")


def _bad_request(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    violations = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        violations += [(v.field, v.description) for v in bad_request.field_violations]
    return violations


def test_predict_answers_with_the_registry_champion_and_names_its_version(channel, trained_registry):
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    prediction = stub.Predict(housing_pb2.HousingFeatures(**HOUSE))

    expected = _registry_model(trained_registry, "CaliforniaHousingBestModel").predict(np.array([list(HOUSE.values())]))
    # Exactly: the one-row path runs the compiled trees, which must match scikit-learn bit for bit.
    assert prediction.median_house_value == expected[0]
    assert prediction.median_house_value_usd == pytest.approx(expected[0] * 100_000, rel=1e-12)
    assert prediction.model.name == "CaliforniaHousingBestModel"
    assert prediction.model.version == "1"
    assert prediction.model.alias == "champion"
    assert len(prediction.model.run_id) == 32


def test_large_batches_match_the_registry_model_exactly(channel, trained_registry):
    generator = np.random.default_rng(3)
    rows = np.array([list(HOUSE.values())] * 40)
    rows[:, :6] *= generator.uniform(0.5, 1.5, size=(40, 6))  # vary all but the coordinates
    request = housing_pb2.HousingBatchRequest(
        instances=[housing_pb2.HousingFeatures(**dict(zip(HOUSE, row, strict=True))) for row in rows.tolist()]
    )
    batch = housing_pb2_grpc.HousingPredictorStub(channel).PredictBatch(request)
    expected = _registry_model(trained_registry, "CaliforniaHousingBestModel").predict(rows)
    assert [p.median_house_value for p in batch.predictions] == expected.tolist()


def test_predict_batch_keeps_request_order_and_matches_single_predictions(channel):
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    houses = [dict(HOUSE, median_income=income) for income in (1.5, 3.0, 6.0, 12.0)]
    batch = stub.PredictBatch(
        housing_pb2.HousingBatchRequest(instances=[housing_pb2.HousingFeatures(**house) for house in houses])
    )
    singles = [stub.Predict(housing_pb2.HousingFeatures(**house)).median_house_value for house in houses]
    assert [p.median_house_value for p in batch.predictions] == pytest.approx(singles, rel=1e-12)
    assert batch.model.version == "1"
    # Richer block groups are worth more: a sanity check that columns were not shuffled.
    assert singles[0] < singles[-1]


def test_classify_returns_species_probabilities_and_confidence(channel, trained_registry):
    stub = iris_pb2_grpc.IrisClassifierStub(channel)
    answers = [stub.Classify(iris_pb2.IrisFeatures(**flower)) for flower in FLOWERS]

    assert [a.species_name for a in answers] == ["setosa", "versicolor", "virginica"]
    assert [a.species for a in answers] == [
        iris_pb2.IRIS_SPECIES_SETOSA,
        iris_pb2.IRIS_SPECIES_VERSICOLOR,
        iris_pb2.IRIS_SPECIES_VIRGINICA,
    ]
    expected = _registry_model(trained_registry, "IrisBestModel").predict_proba(
        np.array([list(f.values()) for f in FLOWERS])
    )
    for answer, row in zip(answers, expected, strict=True):
        probabilities = [answer.probabilities.setosa, answer.probabilities.versicolor, answer.probabilities.virginica]
        assert probabilities == pytest.approx(row.tolist(), rel=1e-12)
        assert math.fsum(probabilities) == pytest.approx(1.0)
        assert answer.confidence == max(probabilities)
        assert answer.model.name == "IrisBestModel"
        assert answer.model.version == "1"


def test_classify_batch_answers_every_flower_from_one_version(channel):
    stub = iris_pb2_grpc.IrisClassifierStub(channel)
    batch = stub.ClassifyBatch(
        iris_pb2.IrisBatchRequest(instances=[iris_pb2.IrisFeatures(**flower) for flower in FLOWERS])
    )
    assert [c.species_name for c in batch.classifications] == ["setosa", "versicolor", "virginica"]
    assert batch.model.alias == "champion"


def test_model_info_describes_the_served_versions(channel):
    housing = housing_pb2_grpc.HousingPredictorStub(channel).GetModelInfo(model_pb2.GetModelInfoRequest())
    iris = iris_pb2_grpc.IrisClassifierStub(channel).GetModelInfo(model_pb2.GetModelInfoRequest())

    assert housing.model_uri == "models:/CaliforniaHousingBestModel/1"
    assert "HistGradientBoostingRegressor" in housing.estimator
    assert {"rmse", "mae", "r2"} <= set(housing.training_metrics)
    assert [f.name for f in housing.features][:2] == ["median_income", "house_age"]
    assert housing.features[0].unit == "tens of thousands of US dollars"
    assert housing.max_batch_size == 1000
    assert housing.loaded_at.seconds > 0
    assert iris.model.name == "IrisBestModel"
    assert {"accuracy", "macro_f1"} <= set(iris.training_metrics)


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (dict(HOUSE, median_income=math.nan), ("median_income", "must be a finite number, got nan")),
        (dict(HOUSE, population=math.inf), ("population", "must be a finite number, got inf")),
        (dict(HOUSE, latitude=51.5), ("latitude", "must be at least 32 and at most 42.5")),
        (dict(HOUSE, median_income=-1.0), ("median_income", "must be at least 0 and at most 50")),
        ({k: v for k, v in HOUSE.items() if k != "house_age"}, ("house_age", "is required but was not set")),
    ],
    ids=["nan", "infinite", "out-of-range", "negative", "missing"],
)
def test_bad_features_are_rejected_naming_the_field(channel, features, expected):
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(housing_pb2.HousingFeatures(**features))
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error.details()).startswith(f"{expected[0]}: {expected[1]}")
    [(field, description)] = _bad_request(error)
    assert field == expected[0]
    assert description.startswith(expected[1])


def test_a_bad_instance_in_a_batch_is_named_by_index_and_nothing_is_predicted(channel):
    stub = iris_pb2_grpc.IrisClassifierStub(channel)
    flowers = [iris_pb2.IrisFeatures(**flower) for flower in FLOWERS]
    flowers[1].ClearField("petal_width_cm")
    flowers[2].sepal_width_cm = -3.0
    with pytest.raises(grpc.RpcError) as raised:
        stub.ClassifyBatch(iris_pb2.IrisBatchRequest(instances=flowers))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in _bad_request(raised.value)] == [
        "instances[1].petal_width_cm",
        "instances[2].sepal_width_cm",
    ]


def test_empty_batch_is_invalid(channel):
    with pytest.raises(grpc.RpcError) as raised:
        housing_pb2_grpc.HousingPredictorStub(channel).PredictBatch(housing_pb2.HousingBatchRequest())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request(raised.value) == [("instances", "must hold at least one instance")]


def test_batch_over_the_configured_maximum_is_invalid():
    with running_server(in_memory_registry(), max_batch_size=3) as server, channel_to(server) as channel:
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        request = iris_pb2.IrisBatchRequest(instances=[iris_pb2.IrisFeatures(**FLOWERS[0])] * 4)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ClassifyBatch(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _bad_request(raised.value) == [("instances", "holds 4 instances; at most 3 are allowed")]
        del request.instances[3]
        assert len(stub.ClassifyBatch(request).classifications) == 3


def test_server_keeps_serving_after_bad_requests(mlflow_server: PredictionServer):
    with channel_to(mlflow_server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        for _ in range(20):
            with pytest.raises(grpc.RpcError):
                stub.Predict(housing_pb2.HousingFeatures())
        assert stub.Predict(housing_pb2.HousingFeatures(**HOUSE)).median_house_value > 0
