"""Faults while traffic flows: the server goes away and comes back, on the same port, under the bridge.

The first server binds port 0 and the restarted one binds the port it got. Between the two the port is
free, so another process may take it: then the scenario starts again on a new port.
"""

import errno
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from itertools import pairwise

import anyio
import httpx
import pytest

from server.app import PredictionServer

from ..server.conftest import in_memory_registry, running_server
from .conftest import IRIS, bridge

pytestmark = pytest.mark.anyio

ATTEMPTS = 3
# The bridge caps its reconnect backoff at 3 s (rest_bridge/upstream.py); gRPC adds up to 20% jitter.
# gRPC's default backoff (1 s, then x1.6 each time, +-20%): its first attempt after 12 s of outage is its
# sixth or a later one, and after the sixth it waits at least 8.4 s.
LONG_OUTAGE_SECONDS = 12.0
RECOVERY_SECONDS = 6.0
LONGEST_RECONNECT_INTERVAL_SECONDS = 5.0


class PortTakenError(Exception):
    """Another process took the port between the server's stop and its restart."""


@contextmanager
def server_on(port: int) -> Iterator[PredictionServer]:
    with ExitStack() as stack:
        try:
            server = stack.enter_context(running_server(in_memory_registry(), port=port))
        except RuntimeError as error:  # grpc's "Failed to bind to address"
            raise PortTakenError(port) from error
        yield server


class RefusingListener:
    """Holds the port like a server that accepts connections and drops them: the channel's every reconnect
    attempt fails, and is seen here, with the time it arrived."""

    def __init__(self, port: int) -> None:
        try:
            self._socket = socket.create_server(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortTakenError(port) from error
            raise
        self._socket.settimeout(0.1)
        self.attempts: list[float] = []
        self._closing = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="refusing-listener", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.attempts.append(time.monotonic())
            connection.close()

    def close(self) -> None:
        self._closing.set()
        self._acceptor.join(timeout=5)
        self._socket.close()


async def _on_the_same_port(scenario: Callable[[], Awaitable[None]]) -> None:
    for _ in range(ATTEMPTS):
        try:
            await scenario()
        except PortTakenError:
            continue
        return
    pytest.fail(f"the port was taken by another process between stop and restart, {ATTEMPTS} times")


async def _assert_unavailable(client: httpx.AsyncClient) -> None:
    down = await client.post("/predict/iris", json=IRIS)
    assert down.status_code == 503, down.text
    assert down.json()["error"]["code"] == "UNAVAILABLE"


async def _seconds_until_served(client: httpx.AsyncClient, limit: float) -> float:
    started = time.monotonic()
    while (answer := await client.post("/predict/iris", json=IRIS)).status_code != 200:
        assert answer.status_code == 503, answer.text
        assert time.monotonic() - started < limit, f"the bridge did not find the restarted server in {limit} s"
        await anyio.sleep(0.05)
    assert answer.json()["species"] == "setosa"
    return time.monotonic() - started


async def test_bridge_answers_503_while_the_server_is_down_and_recovers_when_it_returns():
    async def scenario() -> None:
        with server_on(0) as first:
            port = first.port
            async with bridge(f"127.0.0.1:{port}") as client:
                assert (await client.post("/predict/iris", json=IRIS)).status_code == 200

                first.stop(grace=0)
                for _ in range(20):
                    await _assert_unavailable(client)
                    assert (await client.get("/ready")).status_code == 503
                    assert (await client.get("/health")).status_code == 200

                with server_on(port):
                    await _seconds_until_served(client, limit=10)

    await _on_the_same_port(scenario)


async def test_after_a_long_outage_the_bridge_finds_the_restarted_server_within_seconds():
    async def scenario() -> None:
        with server_on(0) as first:
            port = first.port
            async with bridge(f"127.0.0.1:{port}") as client:
                assert (await client.post("/predict/iris", json=IRIS)).status_code == 200
                first.stop(grace=0)

                listener = RefusingListener(port)
                try:
                    outage_started = time.monotonic()
                    while time.monotonic() - outage_started < LONG_OUTAGE_SECONDS:
                        await _assert_unavailable(client)
                        await anyio.sleep(0.2)
                    # The server comes back just after a failed attempt, so the bridge finds it only at its next
                    # one: the time to recovery is one whole backoff interval, wherever the outage ended.
                    seen = len(listener.attempts)
                    while len(listener.attempts) == seen:
                        assert time.monotonic() - outage_started < 4 * LONG_OUTAGE_SECONDS, "no reconnect attempt"
                        await _assert_unavailable(client)
                        await anyio.sleep(0.05)
                finally:
                    listener.close()

                with server_on(port):
                    recovered_in = await _seconds_until_served(client, limit=RECOVERY_SECONDS)

                late_attempts = [at for at in listener.attempts if at - outage_started > LONG_OUTAGE_SECONDS / 2]
                intervals = [later - earlier for earlier, later in pairwise(late_attempts)]
                assert intervals, listener.attempts
                assert max(intervals) < LONGEST_RECONNECT_INTERVAL_SECONDS, (intervals, recovered_in)

    await _on_the_same_port(scenario)


async def _statuses_with_more_requests_in_flight_than_streams(max_upstream_calls: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    with running_server(in_memory_registry(), max_streams_per_connection=4, max_workers=8) as server:
        async with bridge(f"127.0.0.1:{server.port}", max_upstream_calls=max_upstream_calls) as client:

            async def caller() -> None:
                for _ in range(25):
                    statuses[(await client.post("/predict/iris", json=IRIS)).status_code] += 1

            async with anyio.create_task_group() as callers:
                for _ in range(16):
                    callers.start_soon(caller)
    return statuses


async def test_requests_beyond_the_calls_a_server_connection_takes_wait_in_the_bridge_instead_of_failing():
    # The server takes 4 calls on the bridge's connection and refuses some beyond that (REFUSED_STREAM).
    assert await _statuses_with_more_requests_in_flight_than_streams(max_upstream_calls=3) == {200: 400}
