"""Pure functions between the REST models (``rest_bridge.schemas``) and the protobuf messages.

Field names are identical on both sides, so requests go through ``model_dump()`` into the message
constructors; responses are read field by field, which is both explicit and the fastest path.
"""

from collections.abc import Mapping
from datetime import UTC

from protos.prediction.v1 import housing_pb2, iris_pb2, model_pb2
from rest_bridge import schemas

# The proto enum value for each REST species, and back. IRIS_SPECIES_UNSPECIFIED has no REST value.
SPECIES_TO_PROTO: Mapping[schemas.IrisSpecies, int] = {
    schemas.IrisSpecies.SETOSA: iris_pb2.IRIS_SPECIES_SETOSA,
    schemas.IrisSpecies.VERSICOLOR: iris_pb2.IRIS_SPECIES_VERSICOLOR,
    schemas.IrisSpecies.VIRGINICA: iris_pb2.IRIS_SPECIES_VIRGINICA,
}
SPECIES_FROM_PROTO: Mapping[int, schemas.IrisSpecies] = {value: species for species, value in SPECIES_TO_PROTO.items()}


class UnexpectedResponseError(ValueError):
    """The server answered with something the REST contract cannot express."""


def housing_features_to_proto(features: schemas.HousingFeatures) -> housing_pb2.HousingFeatures:
    return housing_pb2.HousingFeatures(**features.model_dump())


def housing_batch_to_proto(batch: schemas.HousingBatchRequest) -> housing_pb2.HousingBatchRequest:
    return housing_pb2.HousingBatchRequest(**batch.model_dump())


def iris_features_to_proto(features: schemas.IrisFeatures) -> iris_pb2.IrisFeatures:
    return iris_pb2.IrisFeatures(**features.model_dump())


def iris_batch_to_proto(batch: schemas.IrisBatchRequest) -> iris_pb2.IrisBatchRequest:
    return iris_pb2.IrisBatchRequest(**batch.model_dump())


def model_version_from_proto(message: model_pb2.ModelVersion) -> schemas.ModelVersion:
    return schemas.ModelVersion(name=message.name, version=message.version, alias=message.alias, run_id=message.run_id)


def housing_prediction_from_proto(message: housing_pb2.HousingPrediction) -> schemas.HousingPrediction:
    return schemas.HousingPrediction(
        median_house_value=message.median_house_value,
        median_house_value_usd=message.median_house_value_usd,
        model=model_version_from_proto(message.model),
    )


def housing_batch_from_proto(message: housing_pb2.HousingBatchPrediction) -> schemas.HousingBatchPrediction:
    return schemas.HousingBatchPrediction(
        predictions=[
            schemas.HousingValue(
                median_house_value=value.median_house_value, median_house_value_usd=value.median_house_value_usd
            )
            for value in message.predictions
        ],
        model=model_version_from_proto(message.model),
    )


def species_from_proto(value: int) -> schemas.IrisSpecies:
    try:
        return SPECIES_FROM_PROTO[value]
    except KeyError:
        raise UnexpectedResponseError(f"the server sent IrisSpecies {value}, which has no REST value") from None


def _probabilities(message: iris_pb2.SpeciesProbabilities) -> schemas.SpeciesProbabilities:
    return schemas.SpeciesProbabilities(
        setosa=message.setosa, versicolor=message.versicolor, virginica=message.virginica
    )


def iris_prediction_from_proto(message: iris_pb2.IrisPrediction) -> schemas.IrisPrediction:
    return schemas.IrisPrediction(
        species=species_from_proto(message.species),
        species_name=message.species_name,
        probabilities=_probabilities(message.probabilities),
        confidence=message.confidence,
        model=model_version_from_proto(message.model),
    )


def iris_batch_from_proto(message: iris_pb2.IrisBatchPrediction) -> schemas.IrisBatchPrediction:
    return schemas.IrisBatchPrediction(
        classifications=[
            schemas.IrisClassification(
                species=species_from_proto(each.species),
                species_name=each.species_name,
                probabilities=_probabilities(each.probabilities),
                confidence=each.confidence,
            )
            for each in message.classifications
        ],
        model=model_version_from_proto(message.model),
    )


def model_info_from_proto(message: model_pb2.ModelInfo) -> schemas.ModelInfo:
    return schemas.ModelInfo(
        model=model_version_from_proto(message.model),
        model_uri=message.model_uri,
        estimator=message.estimator,
        loaded_at=message.loaded_at.ToDatetime(tzinfo=UTC),
        training_metrics=dict(message.training_metrics),
        features=[
            schemas.FeatureSpec(
                name=spec.name,
                unit=spec.unit,
                minimum=spec.minimum,
                maximum=spec.maximum,
                exclusive_minimum=spec.exclusive_minimum,
            )
            for spec in message.features
        ],
        max_batch_size=message.max_batch_size,
    )
