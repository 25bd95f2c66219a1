"""Schema-driven fuzzing: whatever schemathesis sends, in or out of the schema, the bridge answers no 5xx.

The cases come from the bridge's own OpenAPI document, for every operation, both valid ones and ones
that break the schema on purpose; every response is checked by schemathesis (server errors, status
codes, content types and bodies against the documented schemas).
"""

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from rest_bridge.app import create_app
from rest_bridge.settings import BridgeSettings
from server.app import PredictionServer

from ..server.conftest import in_memory_registry, running_server

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def default_server() -> Iterator[PredictionServer]:
    # The server's default batch limit (1000): the REST schema does not state the limit, which is a server
    # setting reported by GET /models, so a smaller one would fail schemathesis' "valid data is accepted".
    with running_server(in_memory_registry()) as server:
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_input_yields_a_server_error(default_server: PredictionServer, mode: GenerationMode) -> None:
    app = create_app(BridgeSettings(grpc_target=f"127.0.0.1:{default_server.port}"), CollectorRegistry())
    # schemathesis runs the app's lifespan itself, in its own event loop thread, and ends it at teardown.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) == 9

    for operation in operations:
        if mode == GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to break in a GET without parameters

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate()

        check()
