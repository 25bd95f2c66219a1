"""Bad input is answered with 422 and the path of every bad field, never with a 5xx."""

import json

import pytest

from .conftest import HOUSE, IRIS, bridge, columns
from .scripted_server import SCRIPTED_AUTHORIZATION, ScriptedServer

pytestmark = pytest.mark.anyio


def _fields(response) -> list[str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["status"] == 422
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["request_id"] == response.headers["x-request-id"]
    return [each["field"] for each in error["details"]]


async def test_a_missing_field(client):
    body = {key: value for key, value in HOUSE.items() if key != "latitude"}
    response = await client.post("/predict/housing", json=body)
    assert _fields(response) == ["latitude"]
    assert response.json()["error"]["message"] == "latitude: Field required"


async def test_a_string_instead_of_a_number(client):
    assert _fields(await client.post("/predict/iris", json={**IRIS, "sepal_width_cm": "3.5"})) == ["sepal_width_cm"]
    assert _fields(await client.post("/predict/iris", json={**IRIS, "sepal_width_cm": True})) == ["sepal_width_cm"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_literals(client, literal: str):
    text = json.dumps(IRIS).replace("3.5", literal)
    response = await client.post("/predict/iris", content=text, headers={"content-type": "application/json"})
    assert _fields(response) == ["sepal_width_cm"]


async def test_out_of_range_values_in_a_batch_name_their_instance(client):
    houses = [HOUSE, {**HOUSE, "latitude": 50.0}, {**HOUSE, "longitude": -100.0, "population": -1}]
    response = await client.post("/predict/housing/batch", json={"instances": houses})
    assert _fields(response) == ["instances[1].latitude", "instances[2].population", "instances[2].longitude"]
    assert response.json()["error"]["message"].endswith("(and 2 more invalid fields)")


async def test_the_iris_minimum_is_exclusive(client):
    assert _fields(await client.post("/predict/iris", json={**IRIS, "petal_width_cm": 0})) == ["petal_width_cm"]


async def test_an_unknown_field_is_rejected(client):
    assert _fields(await client.post("/predict/iris", json={**IRIS, "colour": "blue"})) == ["colour"]
    batch = {"instances": [IRIS], "extra": 1}
    assert _fields(await client.post("/predict/iris/batch", json=batch)) == ["extra"]


async def test_an_empty_batch(client):
    assert _fields(await client.post("/predict/housing/batch", json={"instances": []})) == ["instances"]


async def test_a_batch_over_the_server_maximum(client):
    response = await client.post("/predict/housing/batch", json={"instances": [HOUSE] * 6})
    assert _fields(response) == ["instances"]
    assert "at most 5" in response.json()["error"]["message"]


async def test_columns_of_unequal_lengths_name_each_column_that_differs(scripted: ScriptedServer):
    calls = len(scripted.script.requests)
    body = columns([IRIS] * 6)
    body["petal_width_cm"] = body["petal_width_cm"][:5]
    body["sepal_width_cm"] = body["sepal_width_cm"][:2]
    async with bridge(scripted.target) as client:
        response = await client.post("/predict/iris/columns", json=body)
        houses = columns([HOUSE] * 2)
        houses["latitude"] = houses["latitude"] * 2
        longer = await client.post("/predict/housing/columns", json=houses)
    # As the server names them: each column whose length differs from the longest.
    assert response.json()["error"]["details"] == [
        {"field": "sepal_width_cm", "description": "has 2 values; the longest column has 6"},
        {"field": "petal_width_cm", "description": "has 5 values; the longest column has 6"},
    ]
    assert _fields(response) == ["sepal_width_cm", "petal_width_cm"]
    assert response.json()["error"]["message"] == (
        "sepal_width_cm: has 2 values; the longest column has 6 (and 1 more invalid field)"
    )
    # A longer column names every other one, which are all shorter than it.
    assert _fields(longer) == [name for name in HOUSE if name != "latitude"]
    assert len(scripted.script.requests) == calls, "refused before the server saw it"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", '"3.5"', "true", "null"])
async def test_a_bad_value_in_a_column_names_its_column_and_row(scripted: ScriptedServer, literal: str):
    calls = len(scripted.script.requests)
    text = json.dumps(columns([IRIS, IRIS, {**IRIS, "sepal_width_cm": 9.75}])).replace("9.75", literal)
    async with bridge(scripted.target) as client:
        response = await client.post(
            "/predict/iris/columns", content=text, headers={"content-type": "application/json"}
        )
    assert _fields(response) == ["sepal_width_cm[2]"]
    assert len(scripted.script.requests) == calls


async def test_out_of_range_values_in_columns_name_their_row(scripted: ScriptedServer):
    calls = len(scripted.script.requests)
    houses = [HOUSE, {**HOUSE, "latitude": 50.0}, {**HOUSE, "longitude": -100.0, "population": -1}]
    async with bridge(scripted.target) as client:
        response = await client.post("/predict/housing/columns", json=columns(houses))
        exclusive = await client.post("/predict/iris/columns", json=columns([{**IRIS, "petal_width_cm": 0}]))
    assert _fields(response) == ["population[2]", "latitude[1]", "longitude[2]"]
    assert response.json()["error"]["message"].endswith("(and 2 more invalid fields)")
    assert _fields(exclusive) == ["petal_width_cm[0]"]
    assert len(scripted.script.requests) == calls


async def test_a_missing_empty_or_unknown_column(client):
    missing = {name: values for name, values in columns([HOUSE]).items() if name != "latitude"}
    response = await client.post("/predict/housing/columns", json=missing)
    assert _fields(response) == ["latitude"]
    assert response.json()["error"]["message"] == "latitude: Field required"
    empty = {**columns([IRIS]), "petal_length_cm": []}
    assert _fields(await client.post("/predict/iris/columns", json=empty)) == ["petal_length_cm"]
    nothing: dict[str, list[float]] = {name: [] for name in IRIS}
    assert _fields(await client.post("/predict/iris/columns", json=nothing)) == list(IRIS)
    assert _fields(await client.post("/predict/iris/columns", json={**columns([IRIS]), "colour": ["blue"]})) == [
        "colour"
    ]
    assert _fields(await client.post("/predict/iris/columns", json={**columns([IRIS]), "petal_width_cm": 0.2})) == [
        "petal_width_cm"
    ]
    assert _fields(await client.post("/predict/iris/columns", json=[columns([IRIS])])) == [""]


async def test_more_column_rows_than_the_bridge_maximum(scripted: ScriptedServer):
    calls = len(scripted.script.requests)
    async with bridge(scripted.target) as client:
        too_many = await client.post("/predict/iris/columns", json=columns([IRIS] * 1001))
        most = await client.post("/predict/iris/columns", json=columns([IRIS] * 1000))
    assert _fields(too_many) == list(IRIS)
    assert "at most 1000" in too_many.json()["error"]["message"]
    assert len(scripted.script.requests) == calls + 1
    assert most.status_code == 200, most.text
    assert len(most.json()["species"]) == 1000


async def test_more_column_rows_than_the_server_maximum(client):
    response = await client.post("/predict/housing/columns", json=columns([HOUSE] * 6))
    assert _fields(response) == ["columns"]
    assert "at most 5" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ("{not json", "application/json"),
        (json.dumps(IRIS), "text/plain"),
        ("", "application/json"),
        ("[]", "application/json"),
    ],
)
async def test_a_body_that_is_not_a_json_object(client, content: str, content_type: str):
    response = await client.post("/predict/iris", content=content, headers={"content-type": content_type})
    assert _fields(response) == [""]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"sepal_length_cm": "\xff"}', "invalid start byte at offset 21 (the body must be UTF-8)"),
        (b"[" * 100_000, "nested too deeply"),
    ],
    ids=["not-utf-8", "nested-too-deeply"],
)
async def test_json_that_cannot_be_decoded_is_invalid_like_any_other(client, content: bytes, reason: str):
    # FastAPI answers these with a bare 400 of its own; every other bad body gets the 422.
    response = await client.post("/predict/iris", content=content, headers={"content-type": "application/json"})
    assert _fields(response) == [""]
    assert response.json()["error"]["message"] == f"request body: is not valid JSON: {reason}"


async def test_a_body_over_the_limit_is_refused_before_it_is_parsed(prediction_server):
    huge = b'{"instances": [' + b",".join([b'{"sepal_length_cm": 5.1}'] * 2000) + b"]}"
    async with bridge(f"127.0.0.1:{prediction_server.port}", max_body_bytes=16 * 1024) as client:
        declared = await client.post("/predict/iris/batch", content=huge, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "RESOURCE_EXHAUSTED"

        async def chunks():
            for start in range(0, len(huge), 4096):
                yield huge[start : start + 4096]

        streamed = await client.post(
            "/predict/iris/batch", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["request_id"] == streamed.headers["x-request-id"]
        assert (await client.post("/predict/iris", json={**IRIS})).status_code == 200


LONG_NAME = "m" * 129
ADMIN_HEADERS = {"authorization": SCRIPTED_AUTHORIZATION}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/models/bad%20name/versions", None, "model"),
        ("GET", f"/models/{LONG_NAME}/versions", None, "model"),
        ("GET", "/models/iris%0A/versions", None, "model"),
        ("POST", "/models/-iris/rollback", None, "model"),
        ("PUT", "/models/iris/aliases/1champion", {"version": "1"}, "alias"),
        ("PUT", "/models/iris/aliases/champion", {"version": "two"}, "version"),
        ("PUT", "/models/iris/aliases/champion", {"version": 2}, "version"),
        ("PUT", "/models/iris/aliases/champion", {"version": "2", "expected_version": "v1"}, "expected_version"),
        ("PUT", "/models/iris/aliases/champion", {"version": "2", "force": True}, "force"),
        ("PUT", "/models/iris/aliases/champion", None, ""),
        ("GET", "/operations/not.an.id", None, "id"),
        ("GET", "/operations?model=bad%20name", None, "model"),
        ("POST", "/retrain", {"hyperparameters": {}}, "model"),
        ("POST", "/retrain", {"model": "housing", "hyperparameters": {"max_iter": "200"}}, "hyperparameters.max_iter"),
        ("POST", "/retrain", {"model": "housing", "hyperparameters": {"max_iter": True}}, "hyperparameters.max_iter"),
        ("POST", "/retrain", {"model": "housing", "hyperparameters": {"bad name": 1}}, "hyperparameters.bad name"),
        ("POST", "/retrain", {"model": "housing", "max_rows": 10}, "max_rows"),
        ("POST", "/retrain", {"model": "housing", "max_rows": 2**32}, "max_rows"),
        ("POST", "/retrain", {"model": "housing", "max_rows": 100.5}, "max_rows"),
        ("POST", "/retrain", {"model": "housing", "max_rows": "100"}, "max_rows"),
        ("GET", "/operations?model=housing&modle=iris", None, "modle"),
        ("POST", "/retrain", {"model": "housing", "epochs": 3}, "epochs"),
    ],
)
async def test_bad_admin_input_is_refused_before_the_server_sees_it(
    scripted: ScriptedServer, method: str, path: str, body: object, field: str
):
    calls = len(scripted.script.requests)
    async with bridge(scripted.target) as client:
        response = await client.request(method, path, json=body, headers=ADMIN_HEADERS)
    assert _fields(response) == [field]
    assert len(scripted.script.requests) == calls


async def test_a_non_finite_hyperparameter_is_refused(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        response = await client.post(
            "/retrain",
            content='{"model": "housing", "hyperparameters": {"learning_rate": NaN}}',
            headers={**ADMIN_HEADERS, "content-type": "application/json"},
        )
    assert _fields(response) == ["hyperparameters.learning_rate"]


async def test_a_hyperparameter_name_that_is_no_text_is_refused(scripted: ScriptedServer):
    # A lone surrogate is valid JSON but no UTF-8: protobuf could not encode it, which would be a 500.
    async with bridge(scripted.target) as client:
        response = await client.post(
            "/retrain",
            content='{"model": "housing", "hyperparameters": {"\\ud800": 1}}',
            headers={**ADMIN_HEADERS, "content-type": "application/json"},
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"].startswith("hyperparameters.")


FEEDBACK_ID = "0192f0c4-7b1e-7c3a-9d2e-4f5a6b7c8d9e"
LABELLED = {"prediction_id": FEEDBACK_ID, "value": 2.1}


def _feedback(*items: object) -> dict[str, object]:
    return {"items": list(items)}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (_feedback({"prediction_id": FEEDBACK_ID, "value": 2.1, "species": "setosa"}), ["items[0]"]),
        (_feedback({"prediction_id": FEEDBACK_ID}), ["items[0]"]),
        (_feedback(LABELLED, {"prediction_id": FEEDBACK_ID, "value": 1, "species": "virginica"}), ["items[1]"]),
        (_feedback({"prediction_id": FEEDBACK_ID, "value": None, "species": "setosa"}), ["items[0].value"]),
        (_feedback({"prediction_id": FEEDBACK_ID, "value": 2.1, "species": None}), ["items[0].species"]),
        (_feedback({"prediction_id": FEEDBACK_ID, "species": "rose"}), ["items[0].species"]),
        (_feedback({"prediction_id": FEEDBACK_ID, "species": "Setosa"}), ["items[0].species"]),
        (_feedback({"prediction_id": FEEDBACK_ID, "species": 1}), ["items[0].species"]),
        (_feedback({"prediction_id": FEEDBACK_ID, "value": "2.1"}), ["items[0].value"]),
        (_feedback({"prediction_id": FEEDBACK_ID, "value": True}), ["items[0].value"]),
        (_feedback({"prediction_id": "not-a-uuid", "value": 2.1}), ["items[0].prediction_id"]),
        (_feedback({"prediction_id": FEEDBACK_ID + "x", "value": 2.1}), ["items[0].prediction_id"]),
        (_feedback({"prediction_id": FEEDBACK_ID.replace("-", ""), "value": 2.1}), ["items[0].prediction_id"]),
        (_feedback({"prediction_id": FEEDBACK_ID + "\n", "value": 2.1}), ["items[0].prediction_id"]),
        (_feedback({"value": 2.1}), ["items[0].prediction_id"]),
        (_feedback({**LABELLED, "colour": "blue"}), ["items[0].colour"]),
        (_feedback(), ["items"]),
        (_feedback(*[LABELLED] * 1001), ["items"]),
        ({}, ["items"]),
        ({"items": LABELLED}, ["items"]),
        ({"items": [LABELLED], "extra": 1}, ["extra"]),
    ],
    ids=[
        "both labels",
        "no label",
        "both labels in the second item",
        "a null value",
        "a null species",
        "an unknown species",
        "a species in the wrong case",
        "a species by number",
        "a value as a string",
        "a value as a boolean",
        "a prediction id that is no uuid",
        "a prediction id with a tail",
        "a prediction id without dashes",
        "a prediction id with a newline",
        "no prediction id",
        "an unknown field of an item",
        "no items",
        "1001 items",
        "no items field",
        "items that are no list",
        "an unknown field",
    ],
)
async def test_bad_feedback_is_refused_before_the_server_sees_it(
    scripted: ScriptedServer, body: object, fields: list[str]
):
    calls = len(scripted.script.requests)
    async with bridge(scripted.target) as client:
        response = await client.post("/feedback", json=body, headers=ADMIN_HEADERS)
    assert _fields(response) == fields
    assert len(scripted.script.requests) == calls


async def test_feedback_labels_are_exactly_one_and_at_most_1000(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        both = await client.post("/feedback", json=_feedback({**LABELLED, "species": "setosa"}), headers=ADMIN_HEADERS)
        too_many = await client.post("/feedback", json=_feedback(*[LABELLED] * 1001), headers=ADMIN_HEADERS)
        most = await client.post("/feedback", json=_feedback(*[LABELLED] * 1000), headers=ADMIN_HEADERS)
    assert both.json()["error"]["message"] == "items[0]: Exactly one of value (housing) or species (iris) should be set"
    assert "at most 1000" in too_many.json()["error"]["message"]
    assert most.status_code == 200, most.text
    assert len(most.json()["results"]) == 1000


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_a_non_finite_feedback_value_is_refused(scripted: ScriptedServer, literal: str):
    calls = len(scripted.script.requests)
    async with bridge(scripted.target) as client:
        response = await client.post(
            "/feedback",
            content=f'{{"items": [{{"prediction_id": "{FEEDBACK_ID}", "value": {literal}}}]}}',
            headers={**ADMIN_HEADERS, "content-type": "application/json"},
        )
    assert _fields(response) == ["items[0].value"]
    assert len(scripted.script.requests) == calls


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/drift/bad%20name", None, "model"),
        ("GET", f"/drift/{LONG_NAME}", None, "model"),
        ("GET", "/quality/-iris", None, "model"),
        ("GET", "/quality/iris%0A", None, "model"),
        ("PUT", "/models/bad%20name/auto-retrain", {"enabled": True}, "model"),
        ("PUT", "/models/iris/auto-retrain", {}, "enabled"),
        ("PUT", "/models/iris/auto-retrain", {"enabled": "false"}, "enabled"),
        ("PUT", "/models/iris/auto-retrain", {"enabled": 0}, "enabled"),
        ("PUT", "/models/iris/auto-retrain", {"enabled": None}, "enabled"),
        ("PUT", "/models/iris/auto-retrain", {"enabled": True, "triggers": ["drift"]}, "triggers"),
        ("PUT", "/models/iris/auto-retrain", None, ""),
    ],
)
async def test_bad_drift_quality_and_auto_retrain_input_is_refused(
    scripted: ScriptedServer, method: str, path: str, body: object, field: str
):
    calls = len(scripted.script.requests)
    async with bridge(scripted.target) as client:
        response = await client.request(method, path, json=body, headers=ADMIN_HEADERS)
    assert _fields(response) == [field]
    assert len(scripted.script.requests) == calls
