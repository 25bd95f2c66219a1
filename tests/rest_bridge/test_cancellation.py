"""A client that disconnects mid-request cancels its gRPC call: the server sees the call end early."""

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from rest_bridge.app import create_app
from rest_bridge.errors import ClientDisconnectedError
from rest_bridge.settings import BridgeSettings
from rest_bridge.upstream import cancel_on_disconnect

from .conftest import IRIS
from .scripted_server import SCRIPTED_AUTHORIZATION, ScriptedServer

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def uvicorn_bridge(target: str) -> AsyncIterator[tuple[int, CollectorRegistry]]:
    """The bridge served by a real uvicorn on 127.0.0.1, in this event loop."""
    registry = CollectorRegistry()
    app = create_app(BridgeSettings(grpc_target=target, upstream_timeout_seconds=30), registry)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        with anyio.fail_after(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield listener.getsockname()[1], registry
    finally:
        server.should_exit = True
        with anyio.fail_after(10):
            await task
        listener.close()


async def _wait(event_of: object, timeout: float) -> bool:
    return await anyio.to_thread.run_sync(lambda: event_of.wait(timeout))  # type: ignore[attr-defined]


IRIS_BODY = json.dumps(IRIS).encode()
# (request line and headers before the script, body, route label, gRPC method): a prediction and an admin call.
DISCONNECTING = [
    (
        b"POST /predict/iris HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(IRIS_BODY),
        IRIS_BODY,
        "/predict/iris",
        "prediction.v1.IrisClassifier/Classify",
    ),
    (
        b"GET /models/iris/versions HTTP/1.1\r\nauthorization: " + SCRIPTED_AUTHORIZATION.encode() + b"\r\n",
        b"",
        "/models/{model}/versions",
        "prediction.v1.ModelAdmin/ListModelVersions",
    ),
]


@pytest.mark.parametrize(("head", "body", "route", "grpc_method"), DISCONNECTING, ids=["predict", "admin"])
async def test_a_disconnected_client_cancels_the_grpc_call(
    scripted: ScriptedServer, head: bytes, body: bytes, route: str, grpc_method: str
):
    name = route.strip("/").replace("/", "-").replace("{", "").replace("}", "")
    async with uvicorn_bridge(scripted.target) as (port, registry):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"host: bridge\r\nx-request-id: hold-%s\r\n\r\n%s" % (name.encode(), body))
        await writer.drain()
        assert await _wait(scripted.script.event(scripted.script.started, name), 10), "call never arrived"
        writer.close()
        await writer.wait_closed()
        assert await _wait(scripted.script.event(scripted.script.cancelled, name), 5), "call not cancelled"
        method = "POST" if head.startswith(b"POST") else "GET"
        labels = {"route": route, "method": method, "status": "499"}
        with anyio.fail_after(5):
            while registry.get_sample_value("bridge_http_requests_total", labels) != 1:
                await asyncio.sleep(0.01)
        code = {"grpc_method": grpc_method, "grpc_code": "CANCELLED"}
        assert registry.get_sample_value("bridge_upstream_errors_total", code) is None


async def _never_disconnects() -> dict[str, object]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_work_finishing_first_returns_its_result():
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await cancel_on_disconnect(_never_disconnects, work()) == 7


async def test_a_disconnect_first_cancels_the_work():
    cancelled = asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return 0

    async def disconnect() -> dict[str, object]:
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnectedError):
        await cancel_on_disconnect(disconnect, work())
    assert cancelled.is_set()
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


async def test_a_cancellation_from_outside_still_propagates():
    async def work() -> int:
        await asyncio.Event().wait()
        return 0

    task = asyncio.create_task(cancel_on_disconnect(_never_disconnects, work()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
