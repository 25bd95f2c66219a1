"""Fixtures of the bridge tests: the bridge in-process over httpx, real gRPC servers on 127.0.0.1 port 0."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

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


def proto_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON form of a message, with the proto field names and every field written."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


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
