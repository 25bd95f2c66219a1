"""Faults while traffic flows: the server goes away and comes back under the bridge."""

import socket
import time

import anyio
import pytest

from ..server.conftest import in_memory_registry, running_server
from .conftest import IRIS, bridge

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_bridge_answers_503_while_the_server_is_down_and_recovers_when_it_returns():
    port = _free_port()
    with running_server(in_memory_registry(), port=port) as first:
        async with bridge(f"127.0.0.1:{port}") as client:
            assert (await client.post("/predict/iris", json=IRIS)).status_code == 200

            first.stop(grace=0)
            for _ in range(20):
                down = await client.post("/predict/iris", json=IRIS)
                assert down.status_code == 503
                assert down.json()["error"]["code"] == "UNAVAILABLE"
                assert (await client.get("/ready")).status_code == 503
                assert (await client.get("/health")).status_code == 200

            with running_server(in_memory_registry(), port=port):
                started = time.monotonic()
                while (answer := await client.post("/predict/iris", json=IRIS)).status_code != 200:
                    assert answer.status_code == 503, answer.text
                    assert time.monotonic() - started < 10, "the bridge did not find the restarted server"
                    await anyio.sleep(0.05)
                assert answer.json()["species"] == "setosa"
