"""gRPC statuses become HTTP statuses through one table; every code is exercised against a real server."""

import grpc
import pytest

from rest_bridge.errors import HTTP_STATUS_BY_CODE, SERVER_ERROR_MESSAGES, bad_request_violations, http_status_for
from rest_bridge.schemas import ErrorResponse

from .conftest import HOUSE, IRIS, bridge, columns
from .scripted_server import SCRIPTED_AUTHORIZATION, VIOLATIONS, ScriptedServer

pytestmark = pytest.mark.anyio

EXPECTED_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 422,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
ERROR_CODES = [code for code in grpc.StatusCode if code != grpc.StatusCode.OK]


def test_the_table_maps_every_grpc_status_code():
    assert {code.name: status for code, status in HTTP_STATUS_BY_CODE.items()} == EXPECTED_STATUS
    assert set(HTTP_STATUS_BY_CODE) == set(grpc.StatusCode)


def test_an_unknown_code_is_a_generic_500():
    assert http_status_for("not a code") == 500  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ERROR_CODES, ids=lambda code: code.name)
async def test_each_upstream_status_becomes_its_http_status(scripted: ScriptedServer, code: grpc.StatusCode):
    async with bridge(scripted.target) as client:
        response = await client.post("/predict/iris", json=IRIS, headers={"X-Request-ID": f"abort-{code.name}"})
    assert response.status_code == EXPECTED_STATUS[code.name]
    error = ErrorResponse.model_validate_json(response.content).error
    assert error.status == response.status_code
    assert error.code == code.name
    assert error.request_id == f"abort-{code.name}"
    if response.status_code < 500:
        assert error.message == f"scripted {code.name}"
    else:
        assert "scripted" not in error.message
        assert error.message == SERVER_ERROR_MESSAGES.get(code, "internal error")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert [(each.field, each.description) for each in error.details] == [
            (violation.field, violation.description) for violation in VIOLATIONS
        ]
    else:
        assert error.details == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/predict/housing", HOUSE),
        ("POST", "/predict/housing/batch", {"instances": [HOUSE]}),
        ("POST", "/predict/iris/batch", {"instances": [IRIS]}),
        ("POST", "/predict/housing/columns", columns([HOUSE])),
        ("POST", "/predict/iris/columns", columns([IRIS])),
        ("GET", "/models", None),
        ("POST", "/retrain", {"model": "housing"}),
        ("GET", "/operations/abc", None),
        ("GET", "/operations", None),
        ("GET", "/models/iris/versions", None),
        ("PUT", "/models/iris/aliases/champion", {"version": "1"}),
        ("POST", "/models/iris/rollback", None),
    ],
    ids=lambda each: each if isinstance(each, str) and each.startswith("/") else "",
)
async def test_every_route_maps_upstream_errors(scripted: ScriptedServer, method: str, path: str, body: object):
    async with bridge(scripted.target) as client:
        headers = {"X-Request-ID": "abort-RESOURCE_EXHAUSTED", "authorization": SCRIPTED_AUTHORIZATION}
        response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize(
    ("method", "path", "grpc_method"),
    [
        ("POST", "/predict/iris", "prediction.v1.IrisClassifier/Classify"),
        ("POST", "/models/iris/rollback", "prediction.v1.ModelAdmin/Rollback"),
    ],
    ids=["predict", "admin"],
)
async def test_a_slow_server_gets_a_504_at_the_deadline(
    scripted: ScriptedServer, method: str, path: str, grpc_method: str
):
    body = IRIS if path == "/predict/iris" else None
    headers = {"X-Request-ID": "sleep-3", "authorization": SCRIPTED_AUTHORIZATION}
    async with bridge(scripted.target, upstream_timeout_seconds=0.2) as client:
        response = await client.request(method, path, json=body, headers=headers)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    assert f'bridge_upstream_errors_total{{grpc_code="DEADLINE_EXCEEDED",grpc_method="{grpc_method}"}} 1.0' in metrics


async def test_the_real_server_reports_invalid_batches_with_field_paths(client):
    response = await client.post("/predict/iris/batch", json={"instances": [IRIS] * 6})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["details"] == [{"field": "instances", "description": "holds 6 instances; at most 5 are allowed"}]


def test_undecodable_status_details_are_ignored():
    assert bad_request_violations([("grpc-status-details-bin", b"\xff\xff not a status")]) == []
    assert bad_request_violations([("other", b"")]) == []
    assert bad_request_violations(None) == []


async def test_the_real_server_reports_too_many_column_rows_as_columns(client):
    # Within the bridge's own limit (MAX_COLUMN_ROWS) but over this server's (5): the server's violation comes through.
    response = await client.post("/predict/iris/columns", json=columns([IRIS] * 6))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["details"] == [{"field": "columns", "description": "holds 6 rows; at most 5 are allowed"}]
