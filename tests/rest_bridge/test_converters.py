"""Pure conversions between the REST models and the protobuf messages, without a server."""

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from protos.prediction.v1 import housing_pb2, iris_pb2, model_pb2
from rest_bridge import converters, schemas

from .conftest import HOUSE, IRIS

VERSION = model_pb2.ModelVersion(name="IrisBestModel", version="3", alias="champion", run_id="abc")


def test_requests_carry_every_feature():
    message = converters.housing_features_to_proto(schemas.HousingFeatures(**HOUSE))
    assert {field.name: value for field, value in message.ListFields()} == HOUSE
    batch = converters.iris_batch_to_proto(schemas.IrisBatchRequest.model_validate({"instances": [IRIS, IRIS]}))
    assert [len(each.ListFields()) for each in batch.instances] == [4, 4]
    assert batch.instances[1].petal_width_cm == IRIS["petal_width_cm"]
    assert converters.iris_features_to_proto(schemas.IrisFeatures(**IRIS)) == iris_pb2.IrisFeatures(**IRIS)
    houses = converters.housing_batch_to_proto(schemas.HousingBatchRequest.model_validate({"instances": [HOUSE]}))
    assert houses == housing_pb2.HousingBatchRequest(instances=[housing_pb2.HousingFeatures(**HOUSE)])


def test_species_enum_maps_by_name():
    for proto_value, name in ((1, "setosa"), (2, "versicolor"), (3, "virginica")):
        assert converters.species_from_proto(proto_value) == schemas.IrisSpecies(name)
    with pytest.raises(converters.UnexpectedResponseError):
        converters.species_from_proto(iris_pb2.IRIS_SPECIES_UNSPECIFIED)


def test_iris_answers():
    probabilities = iris_pb2.SpeciesProbabilities(setosa=0.1, versicolor=0.6, virginica=0.3)
    single = converters.iris_prediction_from_proto(
        iris_pb2.IrisPrediction(
            species=iris_pb2.IRIS_SPECIES_VERSICOLOR,
            species_name="versicolor",
            probabilities=probabilities,
            confidence=0.6,
            model=VERSION,
        )
    )
    assert single.model_dump(mode="json") == {
        "species": "versicolor",
        "species_name": "versicolor",
        "probabilities": {"setosa": 0.1, "versicolor": 0.6, "virginica": 0.3},
        "confidence": 0.6,
        "model": {"name": "IrisBestModel", "version": "3", "alias": "champion", "run_id": "abc"},
    }
    classification = iris_pb2.IrisClassification(
        species=iris_pb2.IRIS_SPECIES_SETOSA, species_name="setosa", probabilities=probabilities, confidence=0.9
    )
    batch = converters.iris_batch_from_proto(
        iris_pb2.IrisBatchPrediction(classifications=[classification] * 2, model=VERSION)
    )
    assert [each.species for each in batch.classifications] == [schemas.IrisSpecies.SETOSA] * 2
    assert batch.model.version == "3"


def test_housing_answers():
    single = converters.housing_prediction_from_proto(
        housing_pb2.HousingPrediction(median_house_value=2.5, median_house_value_usd=250_000, model=VERSION)
    )
    assert (single.median_house_value, single.median_house_value_usd, single.model.run_id) == (2.5, 250_000, "abc")
    batch = converters.housing_batch_from_proto(
        housing_pb2.HousingBatchPrediction(
            predictions=[housing_pb2.HousingValue(median_house_value=value) for value in (1.0, 2.0)], model=VERSION
        )
    )
    assert [each.median_house_value for each in batch.predictions] == [1.0, 2.0]


def test_model_info():
    loaded_at = Timestamp()
    loaded_at.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    info = converters.model_info_from_proto(
        model_pb2.ModelInfo(
            model=VERSION,
            model_uri="models:/IrisBestModel/3",
            estimator="sklearn.pipeline.Pipeline",
            loaded_at=loaded_at,
            training_metrics={"accuracy": 0.97},
            features=[
                model_pb2.FeatureSpec(name="sepal_length_cm", unit="cm", minimum=0, maximum=100, exclusive_minimum=True)
            ],
            max_batch_size=1000,
        )
    )
    assert info.loaded_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert info.model_dump(mode="json")["loaded_at"] == "2026-01-02T03:04:05Z"
    assert info.training_metrics == {"accuracy": 0.97}
    assert (info.features[0].name, info.features[0].exclusive_minimum) == ("sepal_length_cm", True)
    assert info.max_batch_size == 1000
