"""Columnar batches: PredictColumns / ClassifyColumns answer exactly what the row-per-message batch calls do."""

from typing import Any

import grpc
import numpy as np
import pytest

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE
from server.model_store import ModelSlot
from server.preparation import sample_rows

from .conftest import channel_to, in_memory_registry, running_server
from .test_prediction_api import _bad_request


@pytest.fixture(scope="module")
def server():
    with running_server(in_memory_registry(), max_batch_size=500) as started:
        yield started


def _columns(message_type, table, rows: np.ndarray):
    return message_type(**{name: rows[:, index].tolist() for index, name in enumerate(table.names)})


def _instances(message_type, table, rows: np.ndarray) -> list[Any]:
    return [message_type(**dict(zip(table.names, row, strict=True))) for row in rows.tolist()]


def test_housing_columns_answer_as_the_batch_call_and_the_model_do(server):
    rows = sample_rows(HOUSING_FEATURE_TABLE, 300)
    with channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        columns = stub.PredictColumns(_columns(housing_pb2.HousingColumns, HOUSING_FEATURE_TABLE, rows))
        batch = stub.PredictBatch(
            housing_pb2.HousingBatchRequest(
                instances=_instances(housing_pb2.HousingFeatures, HOUSING_FEATURE_TABLE, rows)
            )
        )
    expected = server.store.get(ModelSlot.HOUSING).champion.estimator.predict(rows)
    assert list(columns.median_house_value) == expected.tolist()
    assert list(columns.median_house_value) == [each.median_house_value for each in batch.predictions]
    assert list(columns.median_house_value_usd) == [each.median_house_value_usd for each in batch.predictions]
    assert (columns.model.version, columns.model.variant) == (batch.model.version, "champion")
    assert len(columns.prediction_ids) == 300 and len(set(columns.prediction_ids)) == 300
    assert list(columns.prediction_ids) == sorted(columns.prediction_ids)


def test_iris_columns_answer_as_the_batch_call_does(server):
    rows = sample_rows(IRIS_FEATURE_TABLE, 120)
    with channel_to(server) as channel:
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        columns = stub.ClassifyColumns(_columns(iris_pb2.IrisColumns, IRIS_FEATURE_TABLE, rows))
        batch = stub.ClassifyBatch(
            iris_pb2.IrisBatchRequest(instances=_instances(iris_pb2.IrisFeatures, IRIS_FEATURE_TABLE, rows))
        )
    rows_of_batch = batch.classifications
    assert list(columns.species) == [each.species for each in rows_of_batch]
    assert list(columns.setosa) == [each.probabilities.setosa for each in rows_of_batch]
    assert list(columns.versicolor) == [each.probabilities.versicolor for each in rows_of_batch]
    assert list(columns.virginica) == [each.probabilities.virginica for each in rows_of_batch]
    assert list(columns.confidence) == [each.confidence for each in rows_of_batch]
    assert len(set(columns.prediction_ids)) == 120
    assert columns.model.version == batch.model.version == "2"


def _refused(call, request) -> list[tuple[str, str]]:
    with pytest.raises(grpc.RpcError) as refused:
        call(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return _bad_request(refused.value)


def test_bad_columns_are_refused_naming_the_column_and_row(server):
    rows = sample_rows(IRIS_FEATURE_TABLE, 6)
    with channel_to(server) as channel:
        classify = iris_pb2_grpc.IrisClassifierStub(channel).ClassifyColumns
        short = _columns(iris_pb2.IrisColumns, IRIS_FEATURE_TABLE, rows)
        del short.petal_width_cm[-1]
        assert _refused(classify, short) == [("petal_width_cm", "has 5 values; the longest column has 6")]

        bad = rows.copy()
        bad[3, 2] = np.nan
        bad[4, 0] = -1.0
        violations = _refused(classify, _columns(iris_pb2.IrisColumns, IRIS_FEATURE_TABLE, bad))
        assert [field for field, _ in violations] == ["petal_length_cm[3]", "sepal_length_cm[4]"]
        assert "finite" in violations[0][1]

        assert _refused(classify, iris_pb2.IrisColumns()) == [("columns", "must hold at least one row")]
        too_many = _columns(iris_pb2.IrisColumns, IRIS_FEATURE_TABLE, sample_rows(IRIS_FEATURE_TABLE, 501))
        assert _refused(classify, too_many) == [("columns", "holds 501 rows; at most 500 are allowed")]
