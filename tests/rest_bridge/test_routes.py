"""Every route against the real prediction server (small in-memory models)."""

import re

import grpc
import pytest

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server.app import PredictionServer

from ..server.conftest import in_memory_registry, running_server
from .conftest import HOUSE, IRIS, bridge, columns, proto_json, rest_json, without_prediction_ids
from .scripted_server import PREDICTION_ID, ScriptedServer, model_info

pytestmark = pytest.mark.anyio

UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
PREDICT_ROUTES = [
    ("/predict/housing", HOUSE),
    ("/predict/housing/batch", {"instances": [HOUSE]}),
    ("/predict/iris", IRIS),
    ("/predict/iris/batch", {"instances": [IRIS]}),
    ("/predict/housing/columns", columns([HOUSE])),
    ("/predict/iris/columns", columns([IRIS])),
]
FLOWERS = [
    IRIS,
    {**IRIS, "petal_length_cm": 4.5, "petal_width_cm": 1.5},
    {**IRIS, "petal_length_cm": 6.0, "petal_width_cm": 2.5},
]


async def test_predict_iris(client):
    response = await client.post("/predict/iris", json=IRIS)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["species"] == body["species_name"] == "setosa"
    assert body["confidence"] == max(body["probabilities"].values())
    assert sum(body["probabilities"].values()) == pytest.approx(1)
    assert body["model"] == {
        "name": "IrisBestModel",
        "version": "2",
        "alias": "champion",
        "run_id": "",
        "variant": "champion",
    }
    assert UUID_TEXT.fullmatch(body["prediction_id"])


async def test_predict_iris_batch_keeps_request_order(client):
    response = await client.post("/predict/iris/batch", json={"instances": FLOWERS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [each["species"] for each in body["classifications"]] == ["setosa", "versicolor", "virginica"]
    assert body["model"]["version"] == "2"


async def test_predict_housing(client):
    response = await client.post("/predict/housing", json=HOUSE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["median_house_value_usd"] == pytest.approx(body["median_house_value"] * 100_000)
    assert body["model"]["name"] == "CaliforniaHousingBestModel"


async def test_predict_housing_batch(client):
    houses = [HOUSE, {**HOUSE, "median_income": 1.5}]
    response = await client.post("/predict/housing/batch", json={"instances": houses})
    assert response.status_code == 200, response.text
    values = [each["median_house_value"] for each in response.json()["predictions"]]
    singles = [(await client.post("/predict/housing", json=house)).json()["median_house_value"] for house in houses]
    assert values == singles


async def test_predict_iris_columns_keeps_row_order(client):
    response = await client.post("/predict/iris/columns", json=columns(FLOWERS))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"species", "setosa", "versicolor", "virginica", "confidence", "prediction_ids", "model"}
    assert body["species"] == ["setosa", "versicolor", "virginica"]
    rows = list(zip(body["setosa"], body["versicolor"], body["virginica"], strict=True))
    assert body["confidence"] == [max(each) for each in rows]
    assert [sum(each) for each in rows] == pytest.approx([1, 1, 1])
    assert all(UUID_TEXT.fullmatch(each) for each in body["prediction_ids"])
    assert len(set(body["prediction_ids"])) == 3
    assert body["model"] == {
        "name": "IrisBestModel",
        "version": "2",
        "alias": "champion",
        "run_id": "",
        "variant": "champion",
    }


async def test_predict_housing_columns_answers_as_the_batch_route(client):
    houses = [HOUSE, {**HOUSE, "median_income": 1.5}, {**HOUSE, "latitude": 34.05}]
    response = await client.post("/predict/housing/columns", json=columns(houses))
    assert response.status_code == 200, response.text
    body = response.json()
    batch = (await client.post("/predict/housing/batch", json={"instances": houses})).json()
    assert body["median_house_value"] == [each["median_house_value"] for each in batch["predictions"]]
    assert body["median_house_value_usd"] == [each["median_house_value_usd"] for each in batch["predictions"]]
    assert body["model"] == batch["model"]
    assert len(set(body["prediction_ids"])) == 3
    assert all(UUID_TEXT.fullmatch(each) for each in body["prediction_ids"])


async def test_models_describes_both_services(client, prediction_server: PredictionServer):
    response = await client.get("/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["housing"]["model"]["name"] == "CaliforniaHousingBestModel"
    assert body["iris"]["model"]["version"] == "2"
    assert [feature["name"] for feature in body["iris"]["features"]] == list(IRIS)
    assert {feature["exclusive_minimum"] for feature in body["iris"]["features"]} == {True}
    assert {feature["exclusive_minimum"] for feature in body["housing"]["features"]} == {False}
    assert body["housing"]["max_batch_size"] == 5
    assert (body["housing"]["last_load_failure"], body["housing"]["registry_reachable"]) == (None, True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", body["iris"]["loaded_at"])
    with grpc.insecure_channel(f"127.0.0.1:{prediction_server.port}") as channel:
        direct = iris_pb2_grpc.IrisClassifierStub(channel).GetModelInfo(model_pb2.GetModelInfoRequest())
    assert body["iris"]["model_uri"] == direct.model_uri
    assert body["iris"]["estimator"] == direct.estimator


async def test_rest_and_grpc_give_identical_answers(client, prediction_server: PredictionServer):
    with grpc.insecure_channel(f"127.0.0.1:{prediction_server.port}") as channel:
        iris = iris_pb2_grpc.IrisClassifierStub(channel)
        housing = housing_pb2_grpc.HousingPredictorStub(channel)
        direct_flower = iris.Classify(iris_pb2.IrisFeatures(**FLOWERS[1]))
        direct_flowers = iris.ClassifyBatch(
            iris_pb2.IrisBatchRequest(instances=[iris_pb2.IrisFeatures(**each) for each in FLOWERS])
        )
        direct_house = housing.Predict(housing_pb2.HousingFeatures(**HOUSE))
        direct_houses = housing.PredictBatch(
            housing_pb2.HousingBatchRequest(instances=[housing_pb2.HousingFeatures(**HOUSE)] * 2)
        )

    flower = without_prediction_ids((await client.post("/predict/iris", json=FLOWERS[1])).json())
    expected = without_prediction_ids(proto_json(direct_flower))
    assert flower == {**expected, "species": "versicolor"}
    flowers = (await client.post("/predict/iris/batch", json={"instances": FLOWERS})).json()
    assert [each["probabilities"] for each in flowers["classifications"]] == [
        proto_json(each.probabilities) for each in direct_flowers.classifications
    ]
    house = (await client.post("/predict/housing", json=HOUSE)).json()
    assert without_prediction_ids(house) == without_prediction_ids(proto_json(direct_house))
    houses = (await client.post("/predict/housing/batch", json={"instances": [HOUSE, HOUSE]})).json()
    assert without_prediction_ids(houses) == without_prediction_ids(proto_json(direct_houses))


async def test_health_says_the_bridge_is_up_even_without_a_server():
    async with bridge("127.0.0.1:1") as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_every_service_serves(client):
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ready": True,
        "services": {"prediction.v1.HousingPredictor": "SERVING", "prediction.v1.IrisClassifier": "SERVING"},
    }


async def test_not_ready_when_a_model_failed_to_load():
    with running_server(in_memory_registry(housing=False)) as server:
        async with bridge(f"127.0.0.1:{server.port}") as client:
            response = await client.get("/ready")
            unavailable = await client.post("/predict/housing", json=HOUSE)
            iris = await client.post("/predict/iris", json=IRIS)
    assert response.status_code == 503
    assert response.json()["services"] == {
        "prediction.v1.HousingPredictor": "NOT_SERVING",
        "prediction.v1.IrisClassifier": "SERVING",
    }
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "UNAVAILABLE"
    assert iris.status_code == 200


async def test_not_ready_when_no_server_answers():
    async with bridge("127.0.0.1:1") as client:
        response = await client.get("/ready")
        predict = await client.post("/predict/iris", json=IRIS)
    assert response.status_code == 503
    assert set(response.json()["services"].values()) == {"UNAVAILABLE"}
    assert predict.status_code == 503
    error = predict.json()["error"]
    assert error["code"] == "UNAVAILABLE"
    assert "127.0.0.1" not in error["message"]


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_requests_latency_and_upstream_errors(client):
    for _ in range(3):
        assert (await client.post("/predict/iris", json=IRIS)).status_code == 200
    assert (await client.post("/predict/iris/batch", json={"instances": [IRIS] * 6})).status_code == 422
    assert (await client.get("/nowhere")).status_code == 404

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = {"route": "/predict/iris", "method": "POST", "status": "200"}
    assert _sample(text, "bridge_http_requests_total", **ok) == 3
    assert _sample(text, "bridge_http_request_duration_seconds_count", **ok) == 3
    assert _sample(text, "bridge_http_request_duration_seconds_bucket", **ok, le="10.0") == 3
    assert _sample(text, "bridge_http_requests_total", route="/predict/iris/batch", status="422") == 1
    assert _sample(text, "bridge_http_requests_total", route="unmatched", status="404") == 1
    assert (
        _sample(
            text,
            "bridge_upstream_errors_total",
            grpc_method="prediction.v1.IrisClassifier/ClassifyBatch",
            grpc_code="INVALID_ARGUMENT",
        )
        == 1
    )
    alias = await client.get("/metrics/prometheus")
    assert alias.status_code == 200
    assert _sample(alias.text, "bridge_http_requests_total", **ok) == 3
    assert _sample(alias.text, "bridge_http_requests_total", route="/metrics", method="GET", status="200") == 1


async def test_unknown_path_and_wrong_method_get_the_error_body(client):
    missing = await client.get("/predict/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    wrong = await client.get("/predict/iris")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "UNIMPLEMENTED"
    assert wrong.headers["allow"] == "POST"
    for response in (missing, wrong):
        assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


async def test_models_carries_every_field_of_model_info(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        response = await client.get("/models")
    assert response.status_code == 200, response.text
    assert response.json() == {"housing": rest_json(model_info("Housing")), "iris": rest_json(model_info("Iris"))}
    assert response.json()["iris"]["last_load_failure"]["reason"] == "warm_up"
    assert response.json()["iris"]["registry_reachable"] is False
    assert response.json()["iris"]["challenger"]["variant"] == "challenger"
    assert response.json()["iris"]["challenger_load_failure"]["reason"] == "signature"
    assert (response.json()["housing"]["challenger"], response.json()["housing"]["challenger_percent"]) == (None, 0)


async def test_prediction_ids_and_variant_come_through(client):
    iris = (await client.post("/predict/iris", json=IRIS)).json()
    again = (await client.post("/predict/iris", json=IRIS)).json()
    houses = [HOUSE, {**HOUSE, "median_income": 1.5}, {**HOUSE, "latitude": 34.05}]
    batch = await client.post("/predict/housing/batch", json={"instances": houses})
    assert batch.status_code == 200, batch.text
    ids = [each["prediction_id"] for each in batch.json()["predictions"]]
    assert all(UUID_TEXT.fullmatch(each) for each in [iris["prediction_id"], *ids])
    assert len({iris["prediction_id"], again["prediction_id"], *ids}) == 2 + len(houses), "ids are unique"
    assert iris["model"]["variant"] == batch.json()["model"]["variant"] == "champion"


@pytest.mark.parametrize(("path", "body"), PREDICT_ROUTES, ids=[path for path, _ in PREDICT_ROUTES])
async def test_the_routing_key_reaches_the_server_as_metadata(scripted: ScriptedServer, path: str, body: object):
    async with bridge(scripted.target) as client:
        keyed = await client.post(path, json=body, headers={"X-Routing-Key": "user-42"})
        assert keyed.status_code == 200, keyed.text
        assert scripted.script.metadata[-1]["x-routing-key"] == "user-42"
        longest = "k" * 256
        assert (await client.post(path, json=body, headers={"x-routing-key": longest})).status_code == 200
        assert scripted.script.metadata[-1]["x-routing-key"] == longest
        bare = await client.post(path, json=body)
        assert bare.status_code == 200, bare.text
        assert "x-routing-key" not in scripted.script.metadata[-1]


@pytest.mark.parametrize(
    "value",
    ["caf\u00e9".encode("latin-1"), b"a\x7fb", b"k" * 257, b""],
    ids=["non-ascii", "control", "too-long", "empty"],
)
async def test_a_routing_key_the_server_cannot_use_is_not_sent(scripted: ScriptedServer, value: bytes):
    async with bridge(scripted.target) as client:
        response = await client.post("/predict/iris", json=IRIS, headers=[(b"x-routing-key", value)])
    assert response.status_code == 200, response.text
    assert "x-routing-key" not in scripted.script.metadata[-1]


async def test_the_routing_key_goes_to_prediction_calls_only(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        assert (await client.get("/models", headers={"x-routing-key": "user-42"})).status_code == 200
    assert "x-routing-key" not in scripted.script.metadata[-1]


async def test_the_routing_key_is_an_optional_header_of_the_prediction_routes(client):
    schema = (await client.get("/openapi.json")).json()
    for path, _ in PREDICT_ROUTES:
        (parameter,) = [each for each in schema["paths"][path]["post"]["parameters"] if each["in"] == "header"]
        assert (parameter["name"], parameter["required"]) == ("X-Routing-Key", False)
        assert "x-routing-key" in parameter["description"]
    others = [
        each
        for path, operations in schema["paths"].items()
        if not path.startswith("/predict/")
        for operation in operations.values()
        for each in operation.get("parameters", [])
    ]
    assert not [each for each in others if each["name"].lower() == "x-routing-key"]


async def test_predictions_carry_every_field_from_the_scripted_server(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        iris = (await client.post("/predict/iris/batch", json={"instances": [IRIS, IRIS]})).json()
        house = (await client.post("/predict/housing", json=HOUSE)).json()
    assert [each["prediction_id"] for each in iris["classifications"]] == [PREDICTION_ID] * 2
    assert (house["prediction_id"], house["model"]["variant"]) == (PREDICTION_ID, "champion")


async def test_columns_reach_the_server_as_the_sent_lists(scripted: ScriptedServer):
    houses = [HOUSE, {**HOUSE, "median_income": 1.5, "house_age": 7}]
    async with bridge(scripted.target) as client:
        housing = await client.post("/predict/housing/columns", json=columns(houses))
        sent_houses = scripted.script.requests[-1]
        iris = await client.post("/predict/iris/columns", json=columns([IRIS, IRIS]))
        sent_flowers = scripted.script.requests[-1]
    assert housing.status_code == 200, housing.text
    assert sent_houses == housing_pb2.HousingColumns(**columns(houses))
    assert sent_flowers == iris_pb2.IrisColumns(**columns([IRIS, IRIS]))
    assert housing.json() == {
        "median_house_value": [2.0, 2.0],
        "median_house_value_usd": [200_000.0, 200_000.0],
        "prediction_ids": [PREDICTION_ID] * 2,
        "model": {"name": "Housing", "version": "7", "alias": "champion", "run_id": "run-7", "variant": "champion"},
    }
    assert iris.json() == {
        "species": ["virginica", "virginica"],
        "setosa": [0.1, 0.1],
        "versicolor": [0.2, 0.2],
        "virginica": [0.7, 0.7],
        "confidence": [0.7, 0.7],
        "prediction_ids": [PREDICTION_ID] * 2,
        "model": {"name": "Iris", "version": "7", "alias": "champion", "run_id": "run-7", "variant": "champion"},
    }


@pytest.mark.parametrize("path", ["/predict/housing/columns", "/predict/iris/columns"])
async def test_the_columns_routes_send_and_return_the_request_id(scripted: ScriptedServer, path: str):
    body = columns([HOUSE] if "housing" in path else [IRIS])
    async with bridge(scripted.target) as client:
        response = await client.post(path, json=body, headers={"X-Request-ID": "columns-trace.1"})
        generated = await client.post(path, json=body)
        refused = await client.post(path, json={**body, "extra": [1]}, headers={"X-Request-ID": "columns-bad.1"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "columns-trace.1"
    assert scripted.script.metadata[-2]["x-request-id"] == "columns-trace.1"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert scripted.script.metadata[-1]["x-request-id"] == generated.headers["x-request-id"]
    assert refused.status_code == 422
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"] == "columns-bad.1"
