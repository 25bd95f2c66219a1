"""Fixtures of the bridge tests: the bridge in-process over httpx, real gRPC servers on 127.0.0.1 port 0."""

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from pydantic import TypeAdapter

from rest_bridge.app import create_app
from rest_bridge.settings import BridgeSettings
from server.app import PredictionServer

# Re-exported so that the tests here can use the real-server fixtures of the server tests.
from ..server.conftest import in_memory_registry, running_server
from .scripted_server import ScriptedServer, scripted_server

IRIS = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
HOUSE = {
    "median_income": 8.3252,
    "house_age": 41.0,
    "average_rooms": 6.98,
    "average_bedrooms": 1.02,
    "population": 322.0,
    "average_occupancy": 2.55,
    "latitude": 37.88,
    "longitude": -122.23,
}


def columns(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    """The body of a columns route for ``rows`` (each a dict of features): one list per feature, in row order."""
    return {name: [row[name] for row in rows] for name in rows[0]}


def proto_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON form of a message, with the proto field names and every field written."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


_DATETIME = TypeAdapter(datetime)


def enum_prefix(enum: EnumDescriptor) -> str:
    """The prefix of an enum's value names: IrisSpecies -> IRIS_SPECIES_."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _rest_value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return _DATETIME.dump_python(value.ToDatetime(tzinfo=UTC), mode="json")
        return rest_json(value)
    if field.enum_type is not None:
        if value == 0:
            return None
        return field.enum_type.values_by_number[value].name.removeprefix(enum_prefix(field.enum_type)).lower()
    return value


def rest_json(message: Message) -> dict[str, Any]:
    """What the bridge must answer for ``message``, derived from the descriptors alone: every field under its proto
    name, with the differences the bridge documents (enums as lower-case names without their prefix, the zero value
    as null; an unset optional field or message as null; a Timestamp as an RFC 3339 string)."""
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            result[field.name] = {key: _rest_value(entry, each) for key, each in value.items()}
        elif field.is_repeated:
            result[field.name] = [_rest_value(field, each) for each in value]
        elif field.has_presence and not message.HasField(field.name):
            result[field.name] = None
        else:
            result[field.name] = _rest_value(field, value)
    return result


def without_prediction_ids(value: Any) -> Any:
    """``value`` (a JSON answer) without its prediction ids, each checked to be set: two calls with the same input
    give the same answer but never the same id."""
    if isinstance(value, dict):
        if "prediction_id" in value:
            assert isinstance(value["prediction_id"], str)
            assert value["prediction_id"]
        return {key: without_prediction_ids(each) for key, each in value.items() if key != "prediction_id"}
    if isinstance(value, list):
        return [without_prediction_ids(each) for each in value]
    return value


# A training child that trains nothing and fails at once.
FAILING_TRAINING = "import sys\nprint('fake training: nothing trained')\nsys.exit(3)\n"


def fake_training(workdir: Path, script: str = FAILING_TRAINING) -> Path:
    """``workdir`` as a retrain working directory whose ``python -m training`` runs ``script`` instead.

    The server starts retrain children as ``python -m training`` in its ``retrain_workdir``, and ``-m`` looks in
    the working directory first: a server given this directory cannot start real training, whatever it is sent.
    """
    package = workdir / "training"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(script)
    return workdir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def bridge(target: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """The bridge app, its lifespan running, behind an httpx client that calls it in-process."""
    settings = BridgeSettings(grpc_target=target, **overrides)  # type: ignore[arg-type]
    app = create_app(settings, CollectorRegistry())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client,
    ):
        yield client


@pytest.fixture(scope="module")
def prediction_server() -> Iterator[PredictionServer]:
    """The real prediction server with small in-memory models, shared by a module's tests."""
    with running_server(in_memory_registry(), max_batch_size=5) as server:
        yield server


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    with scripted_server() as server:
        yield server


@pytest.fixture
async def client(prediction_server: PredictionServer) -> AsyncIterator[httpx.AsyncClient]:
    async with bridge(f"127.0.0.1:{prediction_server.port}") as opened:
        yield opened
