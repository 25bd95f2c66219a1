"""Schema-driven fuzzing: whatever schemathesis sends, in or out of the schema, the bridge answers no 5xx.

The cases come from the bridge's own OpenAPI document, for every operation, both valid ones and ones
that break the schema on purpose; every response is checked by schemathesis (server errors, status
codes, content types and bodies against the documented schemas). Each operation and mode is a test of
its own, so hypothesis keeps its failing examples apart (the profiles are in ``tests/conftest.py``: the
same examples every run under CI, a local example database elsewhere).
"""

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from prometheus_client import CollectorRegistry
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from rest_bridge.app import create_app
from rest_bridge.settings import BridgeSettings
from server.app import PredictionServer

from ..prerequisites import running_in_ci
from ..server.conftest import in_memory_registry, running_server

EXAMPLES_PER_OPERATION = 30
WITH_BODY = ("POST /predict/housing", "POST /predict/housing/batch", "POST /predict/iris", "POST /predict/iris/batch")
WITHOUT_PARAMETERS = ("GET /models", "GET /health", "GET /ready", "GET /metrics", "GET /metrics/prometheus")
# A GET without parameters has nothing to break: only operations with a body are fuzzed out of the schema.
CASES = [(label, GenerationMode.POSITIVE) for label in WITH_BODY + WITHOUT_PARAMETERS] + [
    (label, GenerationMode.NEGATIVE) for label in WITH_BODY
]


@pytest.fixture(scope="module")
def default_server() -> Iterator[PredictionServer]:
    # The server's default batch limit (1000): the REST schema does not state the limit, which is a server
    # setting reported by GET /models, so a smaller one would fail schemathesis' "valid data is accepted".
    with running_server(in_memory_registry()) as server:
        yield server


@pytest.fixture(scope="module")
def bridge_schema(default_server: PredictionServer) -> schemathesis.BaseSchema:
    app = create_app(BridgeSettings(grpc_target=f"127.0.0.1:{default_server.port}"), CollectorRegistry())
    # schemathesis runs the app's lifespan itself, in its own event loop thread, and ends it after each test.
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_property_tests_are_derandomised_under_ci_and_keep_their_failing_examples_elsewhere() -> None:
    profile = settings()
    if running_in_ci():
        assert profile.derandomize
        assert profile.database is None
    else:
        assert not profile.derandomize
        assert isinstance(profile.database, DirectoryBasedExampleDatabase)


def test_every_operation_of_the_schema_is_fuzzed(bridge_schema: schemathesis.BaseSchema) -> None:
    results = list(bridge_schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the bridge's OpenAPI document has an invalid operation"
    assert {operation.label for operation in operations} == set(WITH_BODY + WITHOUT_PARAMETERS)


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{mode}-{label}" for label, mode in CASES])
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    # Every example is a real HTTP request through the bridge to a gRPC server: wall time is not the point.
    # No health check is suppressed: none fires, and one that starts to would say something worth reading.
    deadline=None,
)
@given(data=st.data())
def test_no_input_yields_a_server_error(
    bridge_schema: schemathesis.BaseSchema, label: str, mode: GenerationMode, data: st.DataObject
) -> None:
    operation = bridge_schema.find_operation_by_label(label)
    assert operation is not None, label
    case: schemathesis.Case[Any] = data.draw(operation.as_strategy(mode))
    case.call_and_validate()
