"""Schema-driven fuzzing: whatever schemathesis sends, in or out of the schema, the bridge answers no 5xx.

The cases come from the bridge's own OpenAPI document, for every operation, both valid ones and ones
that break the schema on purpose; every response is checked by schemathesis (server errors, status
codes, content types and bodies against the documented schemas). Every route of the app with an input is
in the document, and each is fuzzed: the test derives the list from the app's routes, so a new route cannot
be left out. (The docs pages, their assets and the OpenAPI document itself take no input; test_security and
test_metrics cover them.) Admin operations are sent with the server's token, so they reach its servicer, on
an in-memory registry with a prediction log, drift and an automated trigger configured: each runs its real
handler, none stops at "switched off". Nothing is excluded: retrains are the one unbounded side effect, and
their child is a stand-in that trains nothing (``fake_training``). Schemathesis then also checks, on every
2xx, that the same call without the token or with a wrong one is refused. The hypothesis profiles are in
``tests/conftest.py``: the same examples every run under CI, a local example database elsewhere.
"""

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import given, settings
from prometheus_client import CollectorRegistry
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.schemas import BaseSchema

from rest_bridge.app import create_app
from rest_bridge.settings import BridgeSettings
from server.app import PredictionServer

from ..server.conftest import in_memory_registry, running_server
from .conftest import fake_training
from .scripted_server import SCRIPTED_AUTHORIZATION, ScriptedServer

# Bounded so that the three runs stay within about 30 s on a shared 2-core machine.
EXAMPLES_PER_OPERATION = 10
TOKEN = "fuzz-token"  # noqa: S105 - a test token
ADMIN_PATHS = r"^/(retrain|operations|predictions|drift|feedback|quality|models/\{model\}/)"
# The columns routes take one list per feature, all of the same length: JSON Schema cannot say "as long as the
# others" (their 422 documents it), so schema-valid columns are cut to the shortest one before they are sent. That
# keeps them schema-valid (every list still holds 1 to maxItems valid values) and holds the route to the full check:
# such input must be accepted (2xx), as on every other prediction route.
COLUMNS_PATHS = frozenset({"/predict/housing/columns", "/predict/iris/columns"})
# Admin input that fits the schema can still be refused by the server, which alone knows what exists: an
# unknown model or hyper-parameter (422), no earlier version to roll back to (400), an unknown operation or
# version (404), an alias that moved or a retrain already running (409); automated retraining switched on a server
# with no trigger configured (400).
SERVER_REFUSALS = ["2xx", "400", "401", "403", "404", "409", "422"]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictionServer]:
    # The server's default batch limit (1000): the batch routes' schema does not state the limit, which is a server
    # setting reported by GET /models, so a smaller one would fail schemathesis' "valid data is accepted"; the columns
    # routes state it as maxItems (rest_bridge.schemas.MAX_COLUMN_ROWS, the same default).
    # The fuzzer does start retrains (the schema's examples name real models): their child must not train.
    workdir = fake_training(tmp_path_factory.mktemp("retrain-workdir"))
    # A schedule that cannot come due during the test: PUT /models/{model}/auto-retrain reaches its real handler.
    # The bridge reaches the server over plaintext on loopback: admin calls must be let through without TLS.
    with running_server(
        in_memory_registry(),
        admin_token=TOKEN,
        admin_allow_plaintext=True,
        retrain_workdir=workdir,
        retrain_schedule_seconds=86_400.0,
    ) as server:
        yield server


def _operations_of(app: FastAPI, path_regex: str = "") -> set[tuple[str, str]]:
    """Every (method, path) the app documents, from its routes: what the fuzzer must have covered."""
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.include_in_schema and re.search(path_regex, route.path)
        for method in route.methods or ()
    }


def _equal_columns(case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
    """The case with every column of its body cut to the length of the shortest (only a dict of lists is cut)."""
    body = case.body
    if isinstance(body, dict) and body:
        lists = {name: each for name, each in body.items() if isinstance(each, list) and each}
        if len(lists) == len(body):
            rows = min(len(each) for each in lists.values())
            case.body = {name: values[:rows] for name, values in lists.items()}
    return case


def _fuzz(schema: BaseSchema, mode: GenerationMode, authorization: str) -> dict[tuple[str, str], set[int]]:
    """Run schemathesis over the schema's operations, sending ``authorization``; the statuses each (method, path)
    was answered with (none for one skipped)."""
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    statuses: dict[tuple[str, str], set[int]] = {}
    for operation in operations:
        statuses[(operation.method.upper(), operation.path)] = set()
        if mode == GenerationMode.NEGATIVE and not (operation.body or operation.path_parameters or operation.query):
            continue  # nothing to break in a GET without parameters

        strategy = operation.as_strategy(mode)
        if mode == GenerationMode.POSITIVE and operation.path in COLUMNS_PATHS:
            strategy = strategy.map(_equal_columns)

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
        )
        def check(case: schemathesis.Case[Any]) -> None:
            # Spelt as the security scheme names it: schemathesis strips exactly that name from its probes.
            response = case.call_and_validate(headers={"Authorization": authorization})
            statuses[(case.operation.method.upper(), case.operation.path)].add(response.status_code)

        check()
    return statuses


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_input_yields_a_server_error(default_server: PredictionServer, mode: GenerationMode) -> None:
    app = create_app(BridgeSettings(grpc_target=f"127.0.0.1:{default_server.port}"), CollectorRegistry())
    refusals = {
        "include-path-regex": ADMIN_PATHS,
        "checks": {"positive_data_acceptance": {"expected-statuses": SERVER_REFUSALS}},
    }
    # schemathesis runs the app's lifespan itself, in its own event loop thread, and ends it at teardown.
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict({"operations": [refusals]})
    )
    statuses = _fuzz(schema, mode, f"Bearer {TOKEN}")
    assert set(statuses) == _operations_of(app)
    assert len(statuses) == 23
    if mode == GenerationMode.POSITIVE:
        # The token got through and the handler ran: an admin route refused every time (401, 403) fuzzed nothing.
        refused = {operation for operation, answered in statuses.items() if answered and answered <= {401, 403}}
        assert not refused, sorted(refused)


def test_admin_routes_accept_every_input_their_schema_accepts(scripted: ScriptedServer) -> None:
    # The scripted server accepts every call with its token, so any refusal of schema-valid input would be the
    # bridge's own: a schema that promises more than the bridge takes.
    app = create_app(BridgeSettings(grpc_target=scripted.target), CollectorRegistry())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig())
    statuses = _fuzz(schema.include(path_regex=ADMIN_PATHS), GenerationMode.POSITIVE, SCRIPTED_AUTHORIZATION)
    assert set(statuses) == _operations_of(app, ADMIN_PATHS)
    assert len(statuses) == 12
