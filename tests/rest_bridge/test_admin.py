"""The admin routes: against the real server (in-memory registry, an admin token) and the scripted one."""

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import grpc
import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris

from data.profile import reference_profile
from data.schema import IRIS_FEATURES, IRIS_SPECIES
from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, iris_pb2
from rest_bridge.schemas import ErrorResponse
from server.app import PredictionServer

from ..server.conftest import in_memory_registry, running_server, small_iris_model
from .conftest import HOUSE, IRIS, bridge, fake_training, rest_json
from .scripted_server import (
    MISMATCHED_ID,
    OPERATION_ID,
    PREDICTION_ID,
    RELABELLED_ID,
    RETRIED_ID,
    SCRIPTED_AUTHORIZATION,
    UNKNOWN_ID,
    ScriptedServer,
    drift_report,
    finished_operation,
    logged_prediction,
    model_quality,
    registered_versions,
)

pytestmark = pytest.mark.anyio

T = TypeVar("T")
TOKEN = "s3cret-7f3a9c"  # noqa: S105 - a test token, distinctive so that the log test finds any copy of it
AUTHORIZED = {"authorization": f"Bearer {TOKEN}"}
WRONG = {"authorization": "Bearer wrong-c0ffee"}
UNKNOWN_OPERATION = "ffffffffffffffffffffffffffffffff"
UNKNOWN_PREDICTION = "00000000-0000-7000-8000-000000000000"
# One call per admin route, none of which changes the registry whatever the answer; and what each gets from the
# real server with the right token (proof that the servicer ran: a refusal of the call itself, not of the token).
ROUTES: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("POST", "/retrain", {"model": "housing", "hyperparameters": {"nope": 1}}, 422),
    ("GET", f"/operations/{UNKNOWN_OPERATION}", None, 404),
    ("GET", "/operations?model=housing", None, 200),
    ("GET", "/models/iris/versions", None, 200),
    ("PUT", "/models/iris/aliases/champion", {"version": "2", "expected_version": "2"}, 200),
    ("POST", "/models/housing/rollback", None, 400),
    ("PUT", "/models/penguins/traffic", {"challenger_percent": 10, "shadow": True}, 422),
    ("GET", f"/predictions/{UNKNOWN_PREDICTION}", None, 404),
    ("GET", "/drift/iris", None, 200),
    # Feedback for no logged prediction: the call succeeds, its one item is NOT_FOUND, nothing is recorded.
    ("POST", "/feedback", {"items": [{"prediction_id": UNKNOWN_PREDICTION, "value": 1.5}]}, 200),
    ("GET", "/quality/iris", None, 200),
    # Enabled is where automated retraining starts: switching it on again moves nothing.
    ("PUT", "/models/iris/auto-retrain", {"enabled": True}, 200),
]
ROUTE_IDS = [f"{method} {path.split('?')[0]}" for method, path, _, _ in ROUTES]
# A retrain child that waits for a `release` file next to it (at most a minute), then fails like a crashed training.
WAITING_TRAINING = """\
import pathlib, sys, time
release = pathlib.Path(__file__).with_name("release")
deadline = time.monotonic() + 60
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
print("fake training: nothing trained")
sys.exit(3)
"""


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictionServer]:
    """A server with an admin token; the tests that share it never change its registry."""
    workdir = fake_training(tmp_path_factory.mktemp("retrain"))
    with running_server(in_memory_registry(), admin_token=TOKEN, retrain_workdir=workdir) as server:
        yield server


@pytest.fixture(scope="module")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictionServer]:
    """A server with no admin token configured: admin calls are off."""
    workdir = fake_training(tmp_path_factory.mktemp("retrain"))
    with running_server(in_memory_registry(), retrain_workdir=workdir) as server:
        yield server


def _target(server: PredictionServer) -> str:
    return f"127.0.0.1:{server.port}"


async def _send(
    client: httpx.AsyncClient, method: str, path: str, body: object = None, headers: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


def _error(response: httpx.Response, status: int, code: str) -> str:
    """The message of the one error body, after checking its status, code and request id."""
    assert response.status_code == status, response.text
    error = ErrorResponse.model_validate_json(response.content).error
    assert (error.status, error.code) == (status, code)
    assert error.request_id == response.headers["x-request-id"]
    assert error.message
    return error.message


async def _eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something; the server swaps versions in the background."""
    deadline = time.monotonic() + timeout
    while (result := await check()) is None:
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await anyio.sleep(0.05)
    return result


def _direct(server: PredictionServer) -> tuple[grpc.Channel, admin_pb2_grpc.ModelAdminStub]:
    channel = grpc.insecure_channel(_target(server))
    return channel, admin_pb2_grpc.ModelAdminStub(channel)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_the_token_decides_on_every_route(
    admin_server: PredictionServer, closed_server: PredictionServer, route: tuple[str, str, object, int]
):
    method, path, body, accepted = route
    async with bridge(_target(admin_server)) as client:
        _error(await _send(client, method, path, body), 401, "UNAUTHENTICATED")
        _error(await _send(client, method, path, body, WRONG), 401, "UNAUTHENTICATED")
        # Not a header the server recognises as a bearer token: refused the same way.
        _error(await _send(client, method, path, body, {"authorization": TOKEN}), 401, "UNAUTHENTICATED")
        right = await _send(client, method, path, body, AUTHORIZED)
    assert right.status_code == accepted, right.text
    assert right.json().get("error", {}).get("code") not in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    async with bridge(_target(closed_server)) as client:
        _error(await _send(client, method, path, body, AUTHORIZED), 403, "PERMISSION_DENIED")


async def test_refusals_are_counted_as_upstream_errors(admin_server: PredictionServer):
    async with bridge(_target(admin_server)) as client:
        await client.get("/models/iris/versions", headers=WRONG)
        metrics = (await client.get("/metrics")).text
    assert (
        'bridge_upstream_errors_total{grpc_code="UNAUTHENTICATED",'
        'grpc_method="prediction.v1.ModelAdmin/ListModelVersions"} 1.0' in metrics
    )


async def test_versions_show_their_aliases_and_which_one_is_served(admin_server: PredictionServer):
    async with bridge(_target(admin_server)) as client:
        response = await client.get("/models/iris/versions", headers=AUTHORIZED)
        by_name = await client.get("/models/IrisBestModel/versions", headers=AUTHORIZED)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "IrisBestModel"
    assert [(each["version"], each["aliases"], each["serving"]) for each in body["versions"]] == [
        ("2", ["champion"], True),
        ("1", [], False),
    ]
    assert by_name.json() == body
    channel, stub = _direct(admin_server)
    with channel:
        direct = stub.ListModelVersions(
            admin_pb2.ListModelVersionsRequest(model="iris"), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert body == rest_json(direct)


async def test_a_promotion_is_served_and_shown():
    with running_server(in_memory_registry(), admin_token=TOKEN) as server:
        async with bridge(_target(server)) as client:
            moved = await client.put(
                "/models/iris/aliases/champion", json={"version": "1", "expected_version": "2"}, headers=AUTHORIZED
            )
            assert moved.status_code == 200, moved.text
            assert moved.json() == {
                "name": "IrisBestModel",
                "alias": "champion",
                "version": "1",
                "previous_version": "2",
            }

            async def served() -> dict[str, Any] | None:
                iris = (await client.get("/models")).json()["iris"]
                return iris if iris["model"]["version"] == "1" else None

            iris = await _eventually(served, "GET /models shows iris v1")
            versions = (await client.get("/models/iris/versions", headers=AUTHORIZED)).json()["versions"]
    assert iris["model"]["alias"] == "champion"
    assert iris["last_load_failure"] is None
    assert [(each["version"], each["aliases"], each["serving"]) for each in versions] == [
        ("2", [], False),
        ("1", ["champion"], True),
    ]


async def test_a_stale_compare_and_set_is_409_and_moves_nothing(admin_server: PredictionServer):
    async with bridge(_target(admin_server)) as client:
        stale = await client.put(
            "/models/iris/aliases/champion", json={"version": "1", "expected_version": "1"}, headers=AUTHORIZED
        )
        message = _error(stale, 409, "ABORTED")
        unset_only = await client.put(
            "/models/iris/aliases/champion", json={"version": "1", "expected_version": ""}, headers=AUTHORIZED
        )
        _error(unset_only, 409, "ABORTED")
        versions = (await client.get("/models/iris/versions", headers=AUTHORIZED)).json()["versions"]
    assert "IrisBestModel@champion is on 2" in message
    assert [each["aliases"] for each in versions] == [["champion"], []]


async def test_a_rollback_after_a_promotion_goes_back():
    with running_server(in_memory_registry(), admin_token=TOKEN) as server:
        async with bridge(_target(server)) as client:
            promoted = await client.put("/models/iris/aliases/champion", json={"version": "1"}, headers=AUTHORIZED)
            assert promoted.json()["previous_version"] == "2"
            back = await client.post("/models/iris/rollback", headers=AUTHORIZED)
            assert back.status_code == 200, back.text
            assert back.json() == {
                "name": "IrisBestModel",
                "alias": "champion",
                "version": "2",
                "previous_version": "1",
            }

            async def serves_two() -> bool | None:
                return (await client.get("/models")).json()["iris"]["model"]["version"] == "2" or None

            await _eventually(serves_two, "GET /models shows iris v2 again")
            # Nothing held the alias before version 2: the history is used up.
            _error(await client.post("/models/iris/rollback", headers=AUTHORIZED), 400, "FAILED_PRECONDITION")


async def test_a_rollback_with_no_earlier_champion_is_400_with_the_servers_message(admin_server: PredictionServer):
    async with bridge(_target(admin_server)) as client:
        message = _error(await client.post("/models/housing/rollback", headers=AUTHORIZED), 400, "FAILED_PRECONDITION")
    channel, stub = _direct(admin_server)
    with channel, pytest.raises(grpc.RpcError) as direct:
        stub.Rollback(admin_pb2.RollbackRequest(model="housing"), metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert direct.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message == direct.value.details()
    assert "no earlier version" in message


async def test_operations_unknown_and_none(admin_server: PredictionServer):
    async with bridge(_target(admin_server)) as client:
        missing = await client.get(f"/operations/{UNKNOWN_OPERATION}", headers=AUTHORIZED)
        everything = await client.get("/operations", headers=AUTHORIZED)
        unknown_model = await client.get("/operations?model=nope", headers=AUTHORIZED)
    assert UNKNOWN_OPERATION in _error(missing, 404, "NOT_FOUND")
    assert everything.status_code == 200
    assert everything.json() == {"operations": []}
    _error(unknown_model, 422, "INVALID_ARGUMENT")
    assert unknown_model.json()["error"]["details"][0]["field"] == "model"


async def test_retrain_input_the_server_refuses_is_422(admin_server: PredictionServer):
    async with bridge(_target(admin_server)) as client:
        unknown_parameter = await client.post(
            "/retrain", json={"model": "housing", "hyperparameters": {"nope": 1}}, headers=AUTHORIZED
        )
        out_of_bounds = await client.post(
            "/retrain", json={"model": "iris", "hyperparameters": {"C": 1e9}}, headers=AUTHORIZED
        )
        unknown_model = await client.post("/retrain", json={"model": "penguins"}, headers=AUTHORIZED)
        operations = (await client.get("/operations", headers=AUTHORIZED)).json()
    assert "'nope'" in _error(unknown_parameter, 422, "INVALID_ARGUMENT")
    assert "C must be" in _error(out_of_bounds, 422, "INVALID_ARGUMENT")
    assert "penguins" in _error(unknown_model, 422, "INVALID_ARGUMENT")
    assert operations == {"operations": []}, "a refused retrain started an operation"


async def test_a_version_the_server_refuses_shows_in_models():
    registry = in_memory_registry()
    registry.register("IrisBestModel", small_iris_model(), input_names=IRIS_FEATURES, loadable=False)
    with running_server(registry, admin_token=TOKEN) as server:
        async with bridge(_target(server)) as client:
            moved = await client.put("/models/iris/aliases/champion", json={"version": "3"}, headers=AUTHORIZED)
            assert moved.status_code == 200, moved.text

            async def refused() -> dict[str, Any] | None:
                failure: dict[str, Any] | None = (await client.get("/models")).json()["iris"]["last_load_failure"]
                return failure

            failure = await _eventually(refused, "GET /models reports the refused version")
            models = (await client.get("/models")).json()
    assert (failure["version"], failure["reason"]) == ("3", "artifact")
    assert failure["message"]
    assert failure["failed_at"].endswith("Z")
    assert models["iris"]["model"]["version"] == "2", "the server kept serving the version it had"
    assert models["iris"]["registry_reachable"] is True
    assert models["housing"]["last_load_failure"] is None


async def test_a_retrain_through_the_real_server(tmp_path: Path):
    workdir = fake_training(tmp_path, WAITING_TRAINING)
    with running_server(in_memory_registry(), admin_token=TOKEN, retrain_workdir=workdir) as server:
        async with bridge(_target(server)) as client:
            body = {"model": "iris", "hyperparameters": {"C": 2, "max_iter": 300}, "max_rows": 50}
            started = await client.post("/retrain", json=body, headers=AUTHORIZED)
            assert started.status_code == 202, started.text
            operation = started.json()
            assert operation["model"] == "iris"
            assert operation["state"] in ("queued", "running")
            assert (operation["hyperparameters"], operation["max_rows"]) == ({"C": 2.0, "max_iter": 300.0}, 50)
            assert (operation["trigger"], operation["decision"], operation["finished_at"]) == ("manual", None, None)

            again = await client.post("/retrain", json={"model": "iris"}, headers=AUTHORIZED)
            assert operation["id"] in _error(again, 409, "ALREADY_EXISTS")
            listed = (await client.get("/operations?model=iris", headers=AUTHORIZED)).json()["operations"]
            assert [each["id"] for each in listed] == [operation["id"]]
            assert (await client.get("/operations?model=housing", headers=AUTHORIZED)).json() == {"operations": []}

            (workdir / "training" / "release").touch()

            async def finished() -> dict[str, Any] | None:
                current = (await client.get(f"/operations/{operation['id']}", headers=AUTHORIZED)).json()
                return current if current["state"] not in ("queued", "running") else None

            done = await _eventually(finished, "the retrain operation finished")
    assert done["state"] == "failed"
    assert "exited with code 3" in done["failure_reason"]
    assert "fake training: nothing trained" in done["failure_reason"]
    assert done["started_at"] is not None
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert (done["decision"], done["registered_version"]) == (None, "")


async def test_the_authorization_is_in_no_log_record(admin_server: PredictionServer, caplog: pytest.LogCaptureFixture):
    secrets = (TOKEN, "wrong-c0ffee")
    with caplog.at_level(logging.DEBUG):
        async with bridge(_target(admin_server)) as client:
            for method, path, body, _ in ROUTES:
                for headers in (AUTHORIZED, WRONG):
                    await _send(client, method, path, body, headers)
            await _send(client, "POST", "/retrain", {"model": "bad name"}, AUTHORIZED)  # refused by the bridge
            await _send(client, "GET", "/nowhere", None, AUTHORIZED)
        async with bridge("127.0.0.1:1") as client:  # no server: a 503, whose cause is logged
            unavailable = await _send(client, "GET", "/models/iris/versions", None, AUTHORIZED)
    assert unavailable.status_code == 503
    # The capture works: every request left its access line (and the server its own), the 503 its warning.
    assert sum(record.name == "rest_bridge.access" for record in caplog.records) == 2 * len(ROUTES) + 3
    assert any(
        record.name == "rest_bridge.errors" and "UNAVAILABLE" in record.getMessage() for record in caplog.records
    )
    for record in caplog.records:
        text = " ".join((record.getMessage(), record.exc_text or "", str(record.__dict__)))
        assert not any(secret in text for secret in secrets), f"{record.name} logged a token: {record.getMessage()}"


async def test_the_authorization_header_reaches_admin_calls_only(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        admin = await client.get(
            "/models/iris/versions",
            headers={"authorization": SCRIPTED_AUTHORIZATION, "x-request-id": "admin-call-1"},
        )
        assert admin.status_code == 200, admin.text
        assert scripted.script.metadata[-1]["authorization"] == SCRIPTED_AUTHORIZATION
        assert scripted.script.metadata[-1]["x-request-id"] == "admin-call-1"
        iris = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
        predicted = await client.post("/predict/iris", json=iris, headers={"authorization": SCRIPTED_AUTHORIZATION})
        assert predicted.status_code == 200
        assert "authorization" not in scripted.script.metadata[-1]
        models = await client.get("/models", headers={"authorization": SCRIPTED_AUTHORIZATION})
        assert models.status_code == 200
        assert "authorization" not in scripted.script.metadata[-1]


@pytest.mark.parametrize(
    "value",
    ["Bearer caf\u00e9".encode("latin-1"), b"Bearer a\x7fb", b"Bearer " + b"x" * 5000],
    ids=["non-ascii", "control", "too-long"],
)
async def test_an_authorization_grpc_cannot_carry_is_not_sent(scripted: ScriptedServer, value: bytes):
    async with bridge(scripted.target) as client:
        response = await client.get("/models/iris/versions", headers=[(b"authorization", value)])
    _error(response, 401, "UNAUTHENTICATED")
    assert "authorization" not in scripted.script.metadata[-1]


async def test_retrain_converts_both_ways(scripted: ScriptedServer):
    headers = {"authorization": SCRIPTED_AUTHORIZATION}
    async with bridge(scripted.target) as client:
        body = {"model": "housing", "hyperparameters": {"max_iter": 200, "learning_rate": 0.05}, "max_rows": 5000}
        full = await client.post("/retrain", json=body, headers=headers)
        sent_full = scripted.script.requests[-1]
        bare = await client.post("/retrain", json={"model": "iris"}, headers=headers)
        sent_bare = scripted.script.requests[-1]
    assert sent_full == admin_pb2.RetrainRequest(
        model="housing", hyperparameters={"max_iter": 200.0, "learning_rate": 0.05}, max_rows=5000
    )
    assert isinstance(sent_bare, admin_pb2.RetrainRequest)
    assert not sent_bare.HasField("max_rows")
    assert full.status_code == bare.status_code == 202
    expected = admin_pb2.Operation(
        id=OPERATION_ID,
        model="housing",
        state=admin_pb2.OPERATION_STATE_QUEUED,
        hyperparameters={"max_iter": 200.0, "learning_rate": 0.05},
        max_rows=5000,
        trigger="manual",
    )
    expected.created_at.FromSeconds(1_700_000_000)
    assert full.json() == rest_json(expected)
    assert full.json()["state"] == "queued"
    assert (full.json()["decision"], full.json()["started_at"]) == (None, None)
    assert bare.json()["max_rows"] is None


@pytest.mark.parametrize(
    "case",
    [
        (
            "GET",
            f"/operations/{OPERATION_ID}",
            None,
            admin_pb2.GetOperationRequest(id=OPERATION_ID),
            finished_operation(),
        ),
        (
            "GET",
            "/operations?model=housing",
            None,
            admin_pb2.ListOperationsRequest(model="housing"),
            admin_pb2.ListOperationsResponse(operations=[finished_operation()]),
        ),
        ("GET", "/operations", None, admin_pb2.ListOperationsRequest(), None),
        (
            "GET",
            "/models/IrisBestModel/versions",
            None,
            admin_pb2.ListModelVersionsRequest(model="IrisBestModel"),
            registered_versions("IrisBestModel"),
        ),
        (
            "PUT",
            "/models/iris/aliases/challenger",
            {"version": "4", "expected_version": ""},
            admin_pb2.SetAliasRequest(model="iris", alias="challenger", version="4", expected_version=""),
            admin_pb2.AliasChange(name="iris", alias="challenger", version="4", previous_version=""),
        ),
        (
            "PUT",
            "/models/iris/aliases/champion",
            {"version": "4"},
            admin_pb2.SetAliasRequest(model="iris", alias="champion", version="4"),
            None,
        ),
        (
            "POST",
            "/models/housing/rollback",
            None,
            admin_pb2.RollbackRequest(model="housing"),
            admin_pb2.AliasChange(name="housing", alias="champion", version="3", previous_version="4"),
        ),
        (
            "PUT",
            "/models/iris/traffic",
            {"challenger_percent": 12.5, "shadow": True},
            admin_pb2.SetTrafficSplitRequest(model="iris", challenger_percent=12.5, shadow=True),
            admin_pb2.TrafficSplit(name="iris-registered", challenger_percent=12.5, shadow=True),
        ),
        (
            "PUT",
            "/models/IrisBestModel/traffic",
            {"challenger_percent": 0, "shadow": False},
            admin_pb2.SetTrafficSplitRequest(model="IrisBestModel"),
            admin_pb2.TrafficSplit(name="IrisBestModel-registered"),
        ),
        (
            "GET",
            f"/predictions/{PREDICTION_ID}",
            None,
            admin_pb2.GetPredictionRequest(prediction_id=PREDICTION_ID),
            logged_prediction(PREDICTION_ID),
        ),
        (
            "GET",
            "/drift/housing",
            None,
            admin_pb2.GetDriftReportRequest(model="housing"),
            drift_report("housing-registered"),
        ),
        (
            "GET",
            "/quality/IrisBestModel",
            None,
            admin_pb2.GetModelQualityRequest(model="IrisBestModel"),
            model_quality("IrisBestModel-registered"),
        ),
        (
            "PUT",
            "/models/iris/auto-retrain",
            {"enabled": False},
            admin_pb2.SetAutoRetrainRequest(model="iris", enabled=False),
            admin_pb2.AutoRetrain(name="iris-registered", enabled=False, triggers=["quality", "drift"]),
        ),
        (
            "PUT",
            "/models/housing/auto-retrain",
            {"enabled": True},
            admin_pb2.SetAutoRetrainRequest(model="housing", enabled=True),
            admin_pb2.AutoRetrain(name="housing-registered", enabled=True, triggers=["quality", "drift"]),
        ),
        (
            "POST",
            "/feedback",
            {"items": [{"prediction_id": PREDICTION_ID, "species": "versicolor"}]},
            admin_pb2.SubmitFeedbackRequest(
                items=[admin_pb2.FeedbackItem(prediction_id=PREDICTION_ID, species=iris_pb2.IRIS_SPECIES_VERSICOLOR)]
            ),
            None,  # FeedbackResult's code has two REST fields: test_feedback_answers_each_item_with_its_status
        ),
    ],
    ids=lambda case: f"{case[0]} {case[1]}",
)
async def test_every_admin_route_converts_both_ways(scripted: ScriptedServer, case: tuple[str, str, Any, Any, Any]):
    method, path, body, sent, answer = case
    async with bridge(scripted.target) as client:
        response = await _send(client, method, path, body, {"authorization": SCRIPTED_AUTHORIZATION})
    assert response.status_code == 200, response.text
    received = scripted.script.requests[-1]
    assert received == sent
    # ListFields: == on messages ignores whether an optional field is set to its default ("" here) or unset.
    assert received.ListFields() == sent.ListFields()
    if answer is not None:
        assert response.json() == rest_json(answer)


async def test_the_drift_report_converts_its_statuses_and_empty_windows(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        response = await client.get("/drift/iris", headers={"authorization": SCRIPTED_AUTHORIZATION})
    assert response.status_code == 200, response.text
    champion, challenger = response.json()["versions"]
    assert (champion["status"], champion["drifted"]) == ("ok", True)
    assert (champion["oldest_at"], champion["newest_at"]) == ("2023-11-14T22:13:20.250000Z", "2023-11-14T23:13:20Z")
    assert champion["features"][0] == {"name": "median_income", "psi": 0.31, "drifted": True}
    assert champion["outputs"] == [{"name": "median_house_value", "psi": 0.12, "drifted": False}]
    assert challenger["status"] == "insufficient_data"
    assert (challenger["window_rows"], challenger["oldest_at"], challenger["newest_at"]) == (0, None, None)
    assert (challenger["features"], challenger["outputs"], challenger["drifted"]) == ([], [], False)


async def test_quality_converts_its_metrics_and_confidence(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        response = await client.get("/quality/iris", headers={"authorization": SCRIPTED_AUTHORIZATION})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["window_labels"], body["window_seconds"]) == ("iris-registered", 500, 86_400.0)
    champion, challenger = body["variants"]
    assert champion["live"] == {"accuracy": 2 / 3, "recall_setosa": 1.0, "recall_virginica": 0.5}
    assert champion["training"] == {"accuracy": 0.97, "macro_f1": 0.96}
    assert [(each["upper_bound"], each["cumulative_count"]) for each in champion["confidence"]] == [
        (0.5, 0),
        (0.9, 1),
        (1.0, 3),
    ]
    assert champion["newest_at"] == "2023-11-14T22:28:20.500000Z"
    assert (challenger["labels"], challenger["live"], challenger["confidence"]) == (0, {}, [])
    assert (challenger["oldest_at"], challenger["newest_at"]) == (None, None)


async def test_feedback_answers_each_item_with_its_status(scripted: ScriptedServer):
    items = [
        {"prediction_id": PREDICTION_ID, "value": 2.07},
        {"prediction_id": RETRIED_ID, "species": "setosa"},
        {"prediction_id": MISMATCHED_ID, "species": "virginica"},
        {"prediction_id": UNKNOWN_ID, "value": 0},
        {"prediction_id": RELABELLED_ID, "value": 3.5},
    ]
    async with bridge(scripted.target) as client:
        response = await client.post(
            "/feedback", json={"items": items}, headers={"authorization": SCRIPTED_AUTHORIZATION}
        )
    assert response.status_code == 200, response.text
    sent = scripted.script.requests[-1]
    assert sent == admin_pb2.SubmitFeedbackRequest(
        items=[
            admin_pb2.FeedbackItem(prediction_id=PREDICTION_ID, value=2.07),
            admin_pb2.FeedbackItem(prediction_id=RETRIED_ID, species=iris_pb2.IRIS_SPECIES_SETOSA),
            admin_pb2.FeedbackItem(prediction_id=MISMATCHED_ID, species=iris_pb2.IRIS_SPECIES_VIRGINICA),
            admin_pb2.FeedbackItem(prediction_id=UNKNOWN_ID, value=0.0),
            admin_pb2.FeedbackItem(prediction_id=RELABELLED_ID, value=3.5),
        ]
    )
    assert isinstance(sent, admin_pb2.SubmitFeedbackRequest)
    # A label of 0 is set all the same: the oneof says which label an item has, not its value.
    assert [each.WhichOneof("label") for each in sent.items] == ["value", "species", "species", "value", "value"]
    assert response.json() == {
        "results": [
            {
                "prediction_id": PREDICTION_ID,
                "status": "OK",
                "http_status": 200,
                "recorded": True,
                "message": "recorded",
            },
            {
                "prediction_id": RETRIED_ID,
                "status": "OK",
                "http_status": 200,
                "recorded": False,
                "message": "the same label was already recorded",
            },
            {
                "prediction_id": MISMATCHED_ID,
                "status": "INVALID_ARGUMENT",
                "http_status": 422,
                "recorded": False,
                "message": "a species does not fit a housing prediction",
            },
            {
                "prediction_id": UNKNOWN_ID,
                "status": "NOT_FOUND",
                "http_status": 404,
                "recorded": False,
                "message": "no logged prediction has this id",
            },
            {
                "prediction_id": RELABELLED_ID,
                "status": "ALREADY_EXISTS",
                "http_status": 409,
                "recorded": False,
                "message": "the prediction already has the label 2.5",
            },
        ]
    }


NEW_ADMIN_ROUTES = [
    ("GET", "/drift/iris", None),
    ("POST", "/feedback", {"items": [{"prediction_id": PREDICTION_ID, "value": 1.0}]}),
    ("GET", "/quality/iris", None),
    ("PUT", "/models/iris/auto-retrain", {"enabled": False}),
]


@pytest.mark.parametrize(("method", "path", "body"), NEW_ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in NEW_ADMIN_ROUTES])
async def test_drift_feedback_quality_and_auto_retrain_pass_the_authorization_on(
    scripted: ScriptedServer, method: str, path: str, body: Any
):
    async with bridge(scripted.target) as client:
        authorized = await _send(
            client, method, path, body, {"authorization": SCRIPTED_AUTHORIZATION, "x-request-id": "admin-call-2"}
        )
        assert authorized.status_code == 200, authorized.text
        assert scripted.script.metadata[-1]["authorization"] == SCRIPTED_AUTHORIZATION
        assert scripted.script.metadata[-1]["x-request-id"] == "admin-call-2"
        calls = len(scripted.script.requests)
        refused = await _send(client, method, path, body)
        # The bridge refuses nothing itself: the call reached the server, without the header, which refused it.
        assert len(scripted.script.requests) == calls + 1
        assert "authorization" not in scripted.script.metadata[-1]
        _error(refused, 401, "UNAUTHENTICATED")
        unavailable = await _send(
            client, method, path, body, {"authorization": SCRIPTED_AUTHORIZATION, "x-request-id": "abort-UNAVAILABLE"}
        )
        _error(unavailable, 503, "UNAVAILABLE")
        # The one status table: a call refused as a whole for a switched-off part (no prediction log) is a 400.
        off = await _send(
            client,
            method,
            path,
            body,
            {"authorization": SCRIPTED_AUTHORIZATION, "x-request-id": "abort-FAILED_PRECONDITION"},
        )
        _error(off, 400, "FAILED_PRECONDITION")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/predictions/not-a-uuid", None),
        ("GET", f"/predictions/{PREDICTION_ID}x", None),
        ("GET", f"/predictions/{PREDICTION_ID.replace('-', '')}", None),
        ("PUT", "/models/iris/traffic", {"challenger_percent": 101, "shadow": False}),
        ("PUT", "/models/iris/traffic", {"challenger_percent": -1, "shadow": False}),
        ("PUT", "/models/iris/traffic", {"challenger_percent": "10", "shadow": False}),
        ("PUT", "/models/iris/traffic", {"challenger_percent": 10}),
        ("PUT", "/models/iris/traffic", {"challenger_percent": 10, "shadow": True, "sticky": True}),
        ("PUT", "/models/bad name/traffic", {"challenger_percent": 10, "shadow": True}),
    ],
    ids=str,
)
async def test_the_bridge_refuses_bad_traffic_and_prediction_input(
    scripted: ScriptedServer, method: str, path: str, body: Any
):
    calls = len(scripted.script.requests)
    async with bridge(scripted.target) as client:
        response = await _send(client, method, path, body, {"authorization": SCRIPTED_AUTHORIZATION})
    _error(response, 422, "INVALID_ARGUMENT")
    assert len(scripted.script.requests) == calls, "the server was called"


async def test_a_traffic_split_is_kept_and_shown_in_models():
    with running_server(in_memory_registry(), admin_token=TOKEN) as server:
        async with bridge(_target(server)) as client:
            split = await client.put(
                "/models/iris/traffic", json={"challenger_percent": 25, "shadow": True}, headers=AUTHORIZED
            )
            assert split.status_code == 200, split.text
            assert split.json() == {"name": "IrisBestModel", "challenger_percent": 25.0, "shadow": True}

            async def configured() -> dict[str, Any] | None:
                iris = (await client.get("/models")).json()["iris"]
                return iris if iris["configured_challenger_percent"] == 25.0 else None

            iris = await _eventually(configured, "GET /models shows the configured split")
            housing = (await client.get("/models")).json()["housing"]
    # No version has the challenger alias: nothing answers as the challenger, whatever is configured.
    assert (iris["challenger"], iris["challenger_percent"], iris["challenger_load_failure"]) == (None, 0.0, None)
    assert housing["configured_challenger_percent"] == 0.0


async def test_a_prediction_can_be_fetched_from_the_log(admin_server: PredictionServer):
    async with bridge(_target(admin_server)) as client:
        predicted = await client.post("/predict/iris", json=IRIS, headers={"x-routing-key": "user-42"})
        assert predicted.status_code == 200, predicted.text
        answer = predicted.json()

        async def logged() -> httpx.Response | None:
            response = await client.get(f"/predictions/{answer['prediction_id']}", headers=AUTHORIZED)
            if response.status_code == 404:
                return None  # the log's writer has not flushed it yet
            return response

        found = await _eventually(logged, "the prediction is in the log", timeout=10.0)
        unauthenticated = await client.get(f"/predictions/{answer['prediction_id']}")
        missing = await client.get(f"/predictions/{UNKNOWN_PREDICTION}", headers=AUTHORIZED)
    assert found.status_code == 200, found.text
    row = found.json()
    assert row["prediction_id"] == answer["prediction_id"]
    assert (row["service"], row["model"], row["version"], row["variant"]) == ("iris", "IrisBestModel", "2", "champion")
    assert row["inputs"] == IRIS
    assert row["output"] == pytest.approx(answer["probabilities"])
    assert (row["request_id"], row["routing_key"]) == (predicted.headers["x-request-id"], "user-42")
    assert row["latency_ms"] >= 0
    assert row["logged_at"].endswith("Z")
    _error(unauthenticated, 401, "UNAUTHENTICATED")
    assert UNKNOWN_PREDICTION in _error(missing, 404, "NOT_FOUND")


async def test_feedback_reaches_quality_and_drift_through_the_real_server():
    # Iris v3, the champion, was registered with the profile of its training rows: its drift can be measured, and
    # is once the window holds drift_min_rows rows. Housing's version has no profile.
    registry = in_memory_registry()
    model = small_iris_model()
    rows = load_iris().data.astype(np.float64)
    profile = reference_profile(rows, model.predict_proba(rows), IRIS_FEATURES, IRIS_SPECIES)
    registry.register(
        "IrisBestModel", model, alias="champion", input_names=IRIS_FEATURES, reference_profile=profile.to_json()
    )
    with running_server(registry, admin_token=TOKEN, drift_min_rows=3) as server:
        async with bridge(_target(server)) as client:
            flowers = [(await client.post("/predict/iris", json=IRIS)).json() for _ in range(3)]
            house = (await client.post("/predict/housing", json=HOUSE)).json()
            predicted = flowers[0]["species"]
            other = next(each for each in IRIS_SPECIES if each != predicted)

            async def logged() -> bool | None:
                for each in (*flowers, house):
                    found = await client.get(f"/predictions/{each['prediction_id']}", headers=AUTHORIZED)
                    if found.status_code != 200:
                        return None  # the log's writer has not flushed it yet
                return True

            await _eventually(logged, "the predictions are in the log", timeout=10.0)
            items = [
                {"prediction_id": flowers[0]["prediction_id"], "species": predicted},
                {"prediction_id": flowers[1]["prediction_id"], "species": other},
                {"prediction_id": house["prediction_id"], "value": 2.0},
                {"prediction_id": flowers[2]["prediction_id"], "value": 1.0},
                {"prediction_id": UNKNOWN_PREDICTION, "species": predicted},
                {"prediction_id": flowers[0]["prediction_id"], "species": predicted},
                {"prediction_id": flowers[0]["prediction_id"], "species": other},
            ]
            feedback = await client.post("/feedback", json={"items": items}, headers=AUTHORIZED)
            quality = await client.get("/quality/iris", headers=AUTHORIZED)
            housing_quality = await client.get("/quality/housing", headers=AUTHORIZED)

            async def measured() -> httpx.Response | None:
                response = await client.get("/drift/iris", headers=AUTHORIZED)
                return response if response.json()["versions"][0]["window_rows"] == 3 else None

            drift = await _eventually(measured, "the drift window holds the three rows", timeout=10.0)
            housing_drift = await client.get("/drift/housing", headers=AUTHORIZED)
        channel, stub = _direct(server)
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        with channel:
            direct_quality = stub.GetModelQuality(admin_pb2.GetModelQualityRequest(model="iris"), metadata=metadata)
            direct_drift = stub.GetDriftReport(admin_pb2.GetDriftReportRequest(model="iris"), metadata=metadata)

    assert feedback.status_code == 200, feedback.text
    results = feedback.json()["results"]
    assert [each["prediction_id"] for each in results] == [each["prediction_id"] for each in items]
    assert [(each["status"], each["http_status"], each["recorded"]) for each in results] == [
        ("OK", 200, True),
        ("OK", 200, True),
        ("OK", 200, True),
        ("INVALID_ARGUMENT", 422, False),  # a value for an iris prediction
        ("NOT_FOUND", 404, False),
        ("OK", 200, False),  # the same label again: nothing changes
        ("ALREADY_EXISTS", 409, False),  # another label: the first is kept
    ]
    assert all(each["message"] for each in results)

    assert quality.status_code == 200, quality.text
    assert quality.json() == rest_json(direct_quality)
    iris = quality.json()
    assert iris["name"] == "IrisBestModel"
    (champion,) = iris["variants"]
    assert (champion["version"], champion["variant"], champion["labels"]) == ("3", "champion", 2)
    assert champion["live"]["accuracy"] == 0.5  # one label agrees with its prediction, one does not
    assert champion["confidence"][-1]["cumulative_count"] == 2
    assert champion["oldest_at"].endswith("Z")
    assert champion["newest_at"] >= champion["oldest_at"]
    (housing,) = housing_quality.json()["variants"]
    assert housing["labels"] == 1
    assert housing["live"]["rmse"] == pytest.approx(abs(house["median_house_value"] - 2.0))
    assert housing["confidence"] == []

    assert drift.json() == rest_json(direct_drift)
    report = drift.json()
    assert (report["name"], report["min_rows"]) == ("IrisBestModel", 3)
    (version,) = report["versions"]
    assert (version["version"], version["variant"], version["status"]) == ("3", "champion", "ok")
    assert [each["name"] for each in version["features"]] == list(IRIS_FEATURES)
    assert [each["name"] for each in version["outputs"]] == list(IRIS_SPECIES)
    # Three copies of one flower against the spread of the training rows: every feature has drifted.
    assert all(each["drifted"] and each["psi"] > report["threshold"] for each in version["features"])
    assert version["drifted"] is True
    assert version["oldest_at"] <= version["newest_at"]
    (unprofiled,) = housing_drift.json()["versions"]
    assert (unprofiled["status"], unprofiled["features"], unprofiled["window_rows"]) == ("no_reference_profile", [], 1)
