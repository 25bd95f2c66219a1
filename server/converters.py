"""Pure functions between protobuf messages and the core's domain types."""

import functools
import operator
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from data.schema import IRIS_SPECIES
from protos.prediction.v1 import housing_pb2, iris_pb2, model_pb2
from server.domain import (
    Deployment,
    FeatureBatch,
    HousingPredictions,
    IrisClassifications,
    LoadFailure,
    ModelVersionRef,
)
from server.errors import FieldViolation, InvalidInputError
from server.features import FeatureTable

DOLLARS_PER_UNIT = 100_000.0
# IrisSpecies enum values in the model's class order (setosa, versicolor, virginica).
SPECIES_ENUM = (iris_pb2.IRIS_SPECIES_SETOSA, iris_pb2.IRIS_SPECIES_VERSICOLOR, iris_pb2.IRIS_SPECIES_VIRGINICA)


def features_to_batch(messages: Sequence[Message], table: FeatureTable, *, is_batch: bool) -> FeatureBatch:
    """Read feature messages into a (rows, features) matrix; unset fields become NaN and are marked.

    Every field is read with one ``attrgetter`` call per message (about 2.5x faster than a getattr per field or
    ``ListFields()``). An unset field reads 0.0, so only rows holding a 0.0 are checked for presence.
    """
    names = table.names
    width = len(names)
    read = _field_reader(names)
    values = np.array([read(message) for message in messages], dtype=np.float64).reshape(len(messages), width)
    missing = None
    for row in np.flatnonzero((values == 0.0).any(axis=1)).tolist():
        message = messages[row]
        for column, name in enumerate(names):
            if values[row, column] == 0.0 and not message.HasField(name):
                if missing is None:
                    missing = np.zeros(values.shape, dtype=np.bool_)
                values[row, column] = np.nan
                missing[row, column] = True
    return FeatureBatch(values=values, missing=missing, is_batch=is_batch)


@functools.cache
def _field_reader(names: tuple[str, ...]) -> Callable[[Message], tuple[float, ...]]:
    return operator.attrgetter(*names)


def columns_to_batch(message: Message, table: FeatureTable) -> FeatureBatch:
    """Read a columns message (one repeated double per feature) into a (rows, features) matrix.

    Every column must have the same length; a column of another length than the longest is named.
    """
    columns = [getattr(message, name) for name in table.names]
    lengths = [len(column) for column in columns]
    rows = max(lengths)
    if min(lengths) != rows:
        violations = tuple(
            FieldViolation(name, f"has {length} values; the longest column has {rows}")
            for name, length in zip(table.names, lengths, strict=True)
            if length != rows
        )
        raise InvalidInputError(
            f"{violations[0].field}: {violations[0].description} (every column needs one value per row)", violations
        )
    values = np.empty((rows, len(columns)), dtype=np.float64)
    for index, column in enumerate(columns):
        values[:, index] = np.fromiter(column, dtype=np.float64, count=rows)
    return FeatureBatch(values=values, is_batch=True, columnar=True)


def housing_columns_to_proto(result: HousingPredictions) -> housing_pb2.HousingColumnsPrediction:
    values = np.asarray(result.values, dtype=np.float64)
    return housing_pb2.HousingColumnsPrediction(
        median_house_value=values.tolist(),
        median_house_value_usd=(values * DOLLARS_PER_UNIT).tolist(),
        prediction_ids=result.prediction_ids,
        model=model_version_to_proto(result.model, result.variant),
    )


def iris_columns_to_proto(result: IrisClassifications) -> iris_pb2.IrisColumnsPrediction:
    probabilities = np.asarray(result.probabilities, dtype=np.float64)
    best = np.argmax(probabilities, axis=1)
    return iris_pb2.IrisColumnsPrediction(
        species=np.asarray(SPECIES_ENUM)[best].tolist(),
        setosa=probabilities[:, 0].tolist(),
        versicolor=probabilities[:, 1].tolist(),
        virginica=probabilities[:, 2].tolist(),
        confidence=probabilities[np.arange(len(best)), best].tolist(),
        prediction_ids=result.prediction_ids,
        model=model_version_to_proto(result.model, result.variant),
    )


def model_version_to_proto(ref: ModelVersionRef, variant: str = "champion") -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        name=ref.name, version=ref.version, alias=ref.alias, run_id=ref.run_id, variant=variant
    )


def housing_prediction_to_proto(result: HousingPredictions) -> housing_pb2.HousingPrediction:
    value = float(result.values[0])
    return housing_pb2.HousingPrediction(
        median_house_value=value,
        median_house_value_usd=value * DOLLARS_PER_UNIT,
        model=model_version_to_proto(result.model, result.variant),
        prediction_id=result.prediction_ids[0],
    )


def housing_batch_to_proto(result: HousingPredictions) -> housing_pb2.HousingBatchPrediction:
    return housing_pb2.HousingBatchPrediction(
        predictions=[
            housing_pb2.HousingValue(
                median_house_value=value, median_house_value_usd=value * DOLLARS_PER_UNIT, prediction_id=identifier
            )
            for value, identifier in zip(result.values.tolist(), result.prediction_ids, strict=True)
        ],
        model=model_version_to_proto(result.model, result.variant),
    )


def _classified(row: list[float]) -> dict[str, Any]:
    """The fields IrisPrediction and IrisClassification share, for one row of probabilities."""
    best = max(range(len(row)), key=row.__getitem__)
    return {
        "species": SPECIES_ENUM[best],
        "species_name": IRIS_SPECIES[best],
        "probabilities": iris_pb2.SpeciesProbabilities(setosa=row[0], versicolor=row[1], virginica=row[2]),
        "confidence": row[best],
    }


def iris_prediction_to_proto(result: IrisClassifications) -> iris_pb2.IrisPrediction:
    return iris_pb2.IrisPrediction(
        **_classified(result.probabilities[0].tolist()),
        model=model_version_to_proto(result.model, result.variant),
        prediction_id=result.prediction_ids[0],
    )


def iris_batch_to_proto(result: IrisClassifications) -> iris_pb2.IrisBatchPrediction:
    # One argmax for the batch (numpy picks the first of equal maxima, as _classified does) and keyword
    # construction: about 0.6x the time of building each classification through _classified.
    probabilities = result.probabilities
    classify, probability = iris_pb2.IrisClassification, iris_pb2.SpeciesProbabilities
    return iris_pb2.IrisBatchPrediction(
        classifications=[
            classify(
                species=SPECIES_ENUM[best],
                species_name=IRIS_SPECIES[best],
                probabilities=probability(setosa=row[0], versicolor=row[1], virginica=row[2]),
                confidence=row[best],
                prediction_id=identifier,
            )
            for row, best, identifier in zip(
                probabilities.tolist(), probabilities.argmax(axis=1).tolist(), result.prediction_ids, strict=True
            )
        ],
        model=model_version_to_proto(result.model, result.variant),
    )


def timestamp(moment: datetime) -> Timestamp:
    converted = Timestamp()
    converted.FromDatetime(moment)
    return converted


def load_failure_to_proto(failure: LoadFailure) -> model_pb2.LoadFailure:
    return model_pb2.LoadFailure(
        version=failure.version, reason=failure.reason, message=failure.message, failed_at=timestamp(failure.failed_at)
    )


def model_info_to_proto(
    deployment: Deployment,
    table: FeatureTable,
    max_batch_size: int,
    *,
    last_load_failure: LoadFailure | None = None,
    challenger_load_failure: LoadFailure | None = None,
    registry_reachable: bool = True,
) -> model_pb2.ModelInfo:
    description = deployment.champion.description
    challenger = deployment.challenger
    return model_pb2.ModelInfo(
        model=model_version_to_proto(description.ref),
        model_uri=description.model_uri,
        estimator=description.estimator,
        loaded_at=timestamp(description.loaded_at),
        training_metrics=dict(description.training_metrics),
        features=[
            model_pb2.FeatureSpec(
                name=spec.name,
                unit=spec.unit,
                minimum=spec.minimum,
                maximum=spec.maximum,
                exclusive_minimum=spec.exclusive_minimum,
            )
            for spec in table.specs
        ],
        max_batch_size=max_batch_size,
        last_load_failure=None if last_load_failure is None else load_failure_to_proto(last_load_failure),
        registry_reachable=registry_reachable,
        challenger=None if challenger is None else model_version_to_proto(challenger.description.ref, "challenger"),
        challenger_percent=deployment.challenger_percent,
        shadow=deployment.shadow,
        challenger_load_failure=(
            None if challenger_load_failure is None else load_failure_to_proto(challenger_load_failure)
        ),
        configured_challenger_percent=deployment.split.challenger_percent,
    )
