from datetime import UTC, datetime

import numpy as np
import pytest

from protos.prediction.v1 import housing_pb2, iris_pb2
from server import converters
from server.domain import (
    Deployment,
    HousingPredictions,
    IrisClassifications,
    LoadedModel,
    ModelDescription,
    ModelVersionRef,
)
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE

REF = ModelVersionRef(name="IrisBestModel", version="4", alias="champion", run_id="r1")


def test_complete_messages_become_a_matrix_in_model_column_order_without_a_missing_mask():
    message = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)
    batch = converters.features_to_batch([message, message], IRIS_FEATURE_TABLE, is_batch=True)
    assert batch.values.tolist() == [[5.1, 3.5, 1.4, 0.2]] * 2
    assert batch.missing is None
    assert batch.is_batch


def test_explicit_zero_is_present_and_unset_is_missing():
    message = housing_pb2.HousingFeatures(median_income=0.0, latitude=34.0)
    batch = converters.features_to_batch([message], HOUSING_FEATURE_TABLE, is_batch=False)
    assert batch.values[0, 0] == 0.0
    assert batch.missing is not None
    assert batch.missing[0].tolist() == [False, True, True, True, True, True, False, True]
    assert np.isnan(batch.values[0, 1])


def test_housing_predictions_carry_both_units_and_the_model_version():
    result = HousingPredictions(np.array([2.5, 0.15]), REF, "challenger", ["id-a", "id-b"])
    single = converters.housing_prediction_to_proto(result)
    assert single.median_house_value == 2.5
    assert single.median_house_value_usd == 250_000.0
    assert (single.model.version, single.model.variant, single.prediction_id) == ("4", "challenger", "id-a")
    batch = converters.housing_batch_to_proto(result)
    assert [p.median_house_value_usd for p in batch.predictions] == pytest.approx([250_000.0, 15_000.0])
    assert [p.prediction_id for p in batch.predictions] == ["id-a", "id-b"]
    assert batch.model.run_id == "r1"


def test_iris_classification_picks_the_most_probable_species():
    result = IrisClassifications(np.array([[0.1, 0.2, 0.7], [0.8, 0.15, 0.05]]), REF, "champion", ["a", "b"])
    single = converters.iris_prediction_to_proto(result)
    assert single.species == iris_pb2.IRIS_SPECIES_VIRGINICA
    assert single.species_name == "virginica"
    assert single.confidence == 0.7
    assert single.probabilities.versicolor == 0.2
    batch = converters.iris_batch_to_proto(result)
    assert [c.species_name for c in batch.classifications] == ["virginica", "setosa"]
    assert [c.prediction_id for c in batch.classifications] == ["a", "b"]
    assert single.prediction_id == "a"
    assert batch.model.name == "IrisBestModel"


def test_model_info_lists_features_with_units_and_bounds():
    loaded_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    description = ModelDescription(REF, "models:/IrisBestModel/4", "x.Y", loaded_at, {"accuracy": 0.97})
    deployment = Deployment(champion=LoadedModel(description, estimator=None))
    info = converters.model_info_to_proto(deployment, IRIS_FEATURE_TABLE, 500)
    assert not info.HasField("challenger")
    assert info.loaded_at.ToDatetime(tzinfo=UTC) == loaded_at
    assert dict(info.training_metrics) == {"accuracy": 0.97}
    assert [f.name for f in info.features] == list(IRIS_FEATURE_TABLE.names)
    assert info.features[0].unit == "cm"
    assert info.features[0].exclusive_minimum
    assert info.max_batch_size == 500
