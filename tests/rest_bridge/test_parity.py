"""REST and gRPC give identical answers from the real MLflow-registered models."""

import grpc
import pytest

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server.app import PredictionServer
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE

from .conftest import HOUSE, IRIS, bridge, columns, proto_json, rest_json, without_prediction_ids

pytestmark = pytest.mark.anyio

HOUSES = [HOUSE, {spec.name: spec.example for spec in HOUSING_FEATURE_TABLE.specs}, {**HOUSE, "latitude": 34.05}]
FLOWERS = [
    IRIS,
    {spec.name: spec.example for spec in IRIS_FEATURE_TABLE.specs},
    {"sepal_length_cm": 6.7, "sepal_width_cm": 3.0, "petal_length_cm": 5.2, "petal_width_cm": 2.3},
]
SPECIES = {1: "setosa", 2: "versicolor", 3: "virginica"}


async def test_rest_and_grpc_agree_on_every_prediction(mlflow_server: PredictionServer):
    target = f"127.0.0.1:{mlflow_server.port}"
    with grpc.insecure_channel(target) as channel:
        iris = iris_pb2_grpc.IrisClassifierStub(channel)
        housing = housing_pb2_grpc.HousingPredictorStub(channel)
        flowers = [iris.Classify(iris_pb2.IrisFeatures(**flower)) for flower in FLOWERS]
        flower_batch = iris.ClassifyBatch(
            iris_pb2.IrisBatchRequest(instances=[iris_pb2.IrisFeatures(**each) for each in FLOWERS])
        )
        houses = [housing.Predict(housing_pb2.HousingFeatures(**house)) for house in HOUSES]
        house_batch = housing.PredictBatch(
            housing_pb2.HousingBatchRequest(instances=[housing_pb2.HousingFeatures(**each) for each in HOUSES])
        )
        flower_columns = iris.ClassifyColumns(iris_pb2.IrisColumns(**columns(FLOWERS)))
        house_columns = housing.PredictColumns(housing_pb2.HousingColumns(**columns(HOUSES)))
        infos = [stub.GetModelInfo(model_pb2.GetModelInfoRequest()) for stub in (housing, iris)]

    async with bridge(target) as client:
        for flower, classified in zip(FLOWERS, flowers, strict=True):
            rest = without_prediction_ids((await client.post("/predict/iris", json=flower)).json())
            assert rest == {**without_prediction_ids(proto_json(classified)), "species": SPECIES[classified.species]}
        rest = without_prediction_ids((await client.post("/predict/iris/batch", json={"instances": FLOWERS})).json())
        expected = without_prediction_ids(proto_json(flower_batch))
        for each, classification in zip(expected["classifications"], flower_batch.classifications, strict=True):
            each["species"] = SPECIES[classification.species]
        assert rest == expected

        for house, predicted in zip(HOUSES, houses, strict=True):
            rest = without_prediction_ids((await client.post("/predict/housing", json=house)).json())
            assert rest == without_prediction_ids(proto_json(predicted))
        batch = (await client.post("/predict/housing/batch", json={"instances": HOUSES})).json()
        assert without_prediction_ids(batch) == without_prediction_ids(proto_json(house_batch))

        # The columns routes: what the server's columns call answers, and value for value what the batch routes answer.
        rest_columns = (await client.post("/predict/iris/columns", json=columns(FLOWERS))).json()
        assert rest_columns == {
            **proto_json(flower_columns),
            "species": [SPECIES[each] for each in flower_columns.species],
            "prediction_ids": rest_columns["prediction_ids"],
        }
        assert len(set(rest_columns["prediction_ids"])) == len(FLOWERS)
        classified_batch = (await client.post("/predict/iris/batch", json={"instances": FLOWERS})).json()
        rows = classified_batch["classifications"]
        assert rest_columns["species"] == [each["species"] for each in rows]
        for species in ("setosa", "versicolor", "virginica"):
            assert rest_columns[species] == [each["probabilities"][species] for each in rows]
        assert rest_columns["confidence"] == [each["confidence"] for each in rows]
        assert rest_columns["setosa"] == [each.probabilities.setosa for each in flower_batch.classifications]
        assert rest_columns["model"] == classified_batch["model"]

        rest_houses = (await client.post("/predict/housing/columns", json=columns(HOUSES))).json()
        assert rest_houses == {**proto_json(house_columns), "prediction_ids": rest_houses["prediction_ids"]}
        assert len(set(rest_houses["prediction_ids"])) == len(HOUSES)
        for name in ("median_house_value", "median_house_value_usd"):
            assert rest_houses[name] == [each[name] for each in batch["predictions"]]
            assert rest_houses[name] == [getattr(each, name) for each in house_batch.predictions]  # bit for bit
        assert rest_houses["model"] == batch["model"]

        models = (await client.get("/models")).json()
    for rest_info, info in zip((models["housing"], models["iris"]), infos, strict=True):
        assert rest_info == rest_json(info)
        assert rest_info["registry_reachable"] is True
        assert rest_info["last_load_failure"] is None
    assert models["iris"]["model"]["run_id"]
    assert models["iris"]["training_metrics"]
