"""REST ``POST /predict/iris`` through the bridge against direct gRPC ``Classify``, in one run.

    python -m benchmarks.bridge_vs_grpc [--rounds 5] [--requests 2000] [--json out.json]

Set-up, all on 127.0.0.1: the gRPC server (``benchmarks.iris_server``: the real server, iris pipeline
in memory) and the bridge (``python -m rest_bridge``, uvicorn, access log on as in production) run as
processes of their own; this process is the client. Client, bridge and server share the machine's cores.

Clients. Concurrency 1: blocking ones, a sync gRPC stub and a raw HTTP/1.1 keep-alive socket that sends
prebuilt request bytes and reads the response by Content-Length. Concurrency N: asyncio ones, N tasks on
one grpc.aio channel, and N keep-alive connections. The HTTP client is deliberately minimal so that its
own cost does not count against the bridge; ``client overhead`` measures it against httpx on GET /health.

Method: a warm-up, then ``--rounds`` rounds, each running every (protocol, concurrency) case in turn, so
that drift affects both protocols alike. Each figure is the median over rounds of that round's p50, p99
and throughput.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc
import httpx

from benchmarks.http_client import CONTENT_LENGTH, AsyncHttp, http_request
from protos.prediction.v1 import iris_pb2, iris_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
FLOWER = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
GRPC_PORT = re.compile(r"gRPC on port (\d+)")
HTTP_PORT = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Figures:
    protocol: str
    concurrency: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    server_cpu_ms: float = 0.0
    """CPU time of the gRPC server process per request (all its threads)."""
    bridge_cpu_ms: float = 0.0
    """CPU time of the bridge process per request (about 0 for direct gRPC)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuMeter:
    """Charges the CPU time the server and bridge processes spent during a measurement to its requests."""

    server_pid: int
    bridge_pid: int

    def read(self) -> tuple[float, float]:
        return cpu_seconds(self.server_pid), cpu_seconds(self.bridge_pid)

    def charge(self, figures: Figures, before: tuple[float, float], requests: int) -> Figures:
        server, bridge = (now - then for now, then in zip(self.read(), before, strict=True))
        return replace(figures, server_cpu_ms=server * 1000 / requests, bridge_cpu_ms=bridge * 1000 / requests)


@contextmanager
def child(module: str, env: dict[str, str], pattern: re.Pattern[str], log: Path) -> Iterator[tuple[int, int]]:
    """Start ``python -m module``, wait for ``pattern`` in its log, yield (the port it names, its pid).

    The child gets SIGTERM at exit.
    """
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR", **env},
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    try:
        deadline = time.monotonic() + 60
        while (match := pattern.search(log.read_text())) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield int(match.group(1)), process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _split_response(buffer: bytes) -> tuple[int, int] | None:
    """(status, total length) of the first complete response in ``buffer``, or None if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    match = CONTENT_LENGTH.search(buffer, 0, end + 2)
    if match is None:
        raise RuntimeError("response without content-length")
    total = end + 4 + int(match.group(1))
    return (int(buffer[9:12]), total) if len(buffer) >= total else None


class BlockingHttp:
    """One keep-alive HTTP/1.1 connection sending the same prebuilt request."""

    def __init__(self, port: int, request: bytes) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request
        self.buffer = b""

    def call(self) -> None:
        self.socket.sendall(self.request)
        while (parsed := _split_response(self.buffer)) is None:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buffer += chunk
        status, total = parsed
        self.buffer = self.buffer[total:]
        if status != 200:
            raise RuntimeError(f"HTTP {status}")

    def close(self) -> None:
        self.socket.close()


def _figures(protocol: str, concurrency: int, latencies: list[float], wall: float) -> Figures:
    ordered = sorted(latencies)
    return Figures(
        protocol=protocol,
        concurrency=concurrency,
        p50_ms=ordered[len(ordered) // 2] * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        throughput_rps=len(ordered) / wall,
    )


def measure_serial(protocol: str, call: Callable[[], object], requests: int, meter: CpuMeter) -> Figures:
    latencies = []
    clock = time.perf_counter
    cpu = meter.read()
    start = clock()
    for _ in range(requests):
        before = clock()
        call()
        latencies.append(clock() - before)
    return meter.charge(_figures(protocol, 1, latencies, clock() - start), cpu, requests)


def measure_rest_serial(http_port: int, request: bytes, requests: int, meter: CpuMeter) -> Figures:
    # A new connection each time: uvicorn closes keep-alive connections idle for more than 5 s.
    connection = BlockingHttp(http_port, request)
    try:
        for _ in range(10):
            connection.call()
        return measure_serial("rest", connection.call, requests, meter)
    finally:
        connection.close()


async def measure_concurrent(
    protocol: str, calls: Sequence[Callable[[], Awaitable[object]]], requests: int, meter: CpuMeter
) -> Figures:
    latencies: list[float] = []
    clock = time.perf_counter
    per_worker = requests // len(calls)

    async def worker(call: Callable[[], Awaitable[object]]) -> None:
        for _ in range(per_worker):
            before = clock()
            await call()
            latencies.append(clock() - before)

    cpu = meter.read()
    start = clock()
    await asyncio.gather(*(worker(call) for call in calls))
    return meter.charge(_figures(protocol, len(calls), latencies, clock() - start), cpu, len(latencies))


async def run_concurrent_round(
    grpc_port: int, http_port: int, concurrency: int, requests: int, *, rest_request: bytes, meter: CpuMeter
) -> list[Figures]:
    flower = iris_pb2.IrisFeatures(**FLOWER)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        calls = [lambda: stub.Classify(flower)] * concurrency
        grpc_figures = await measure_concurrent("grpc", calls, requests, meter)
    connections = [await AsyncHttp.open(http_port, rest_request) for _ in range(concurrency)]
    try:
        rest_figures = await measure_concurrent("rest", [each.call for each in connections], requests, meter)
    finally:
        for each in connections:
            each.close()
    return [grpc_figures, rest_figures]


def client_overhead(http_port: int, requests: int, meter: CpuMeter) -> dict[str, float]:
    """p50 of GET /health through the raw client and through httpx: the difference is client cost."""
    raw = BlockingHttp(http_port, http_request("/health", None))
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}") as client:
        for _ in range(200):
            raw.call()
            client.get("/health")
        raw_figures = measure_serial("raw", raw.call, requests, meter)
        httpx_figures = measure_serial("httpx", lambda: client.get("/health").raise_for_status(), requests, meter)
    raw.close()
    return {"raw_client_p50_ms": raw_figures.p50_ms, "httpx_client_p50_ms": httpx_figures.p50_ms}


@dataclass(frozen=True)
class Summary:
    rounds: int
    requests: dict[int, int]
    """Requests per round at each concurrency."""
    cpus: int | None
    results: list[Figures]
    """Medians over rounds, one per (protocol, concurrency)."""
    client_overhead: dict[str, float]


def benchmark(rounds: int, requests: int, concurrency: int, warmup: int) -> Summary:
    rest_request = http_request("/predict/iris", json.dumps(FLOWER).encode())
    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        grpc_port, server_pid = stack.enter_context(child("benchmarks.iris_server", {}, GRPC_PORT, logs / "server.log"))
        bridge_env = {
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": "0",
            "BRIDGE_GRPC_TARGET": f"127.0.0.1:{grpc_port}",
        }
        http_port, bridge_pid = stack.enter_context(child("rest_bridge", bridge_env, HTTP_PORT, logs / "bridge.log"))
        meter = CpuMeter(server_pid, bridge_pid)

        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        flower = iris_pb2.IrisFeatures(**FLOWER)
        for _ in range(warmup):
            stub.Classify(flower, wait_for_ready=True)
        measure_rest_serial(http_port, rest_request, warmup, meter)
        asyncio.run(
            run_concurrent_round(grpc_port, http_port, concurrency, warmup, rest_request=rest_request, meter=meter)
        )

        results: dict[tuple[str, int], list[Figures]] = {}
        for _ in range(rounds):
            serial = [
                measure_serial("grpc", lambda: stub.Classify(flower), requests, meter),
                measure_rest_serial(http_port, rest_request, requests, meter),
            ]
            concurrent = asyncio.run(
                run_concurrent_round(
                    grpc_port, http_port, concurrency, requests * 2, rest_request=rest_request, meter=meter
                )
            )
            for figures in (*serial, *concurrent):
                results.setdefault((figures.protocol, figures.concurrency), []).append(figures)
        overhead = client_overhead(http_port, requests, meter)

    medians = [
        Figures(
            protocol=protocol,
            concurrency=level,
            p50_ms=statistics.median(each.p50_ms for each in runs),
            p99_ms=statistics.median(each.p99_ms for each in runs),
            throughput_rps=statistics.median(each.throughput_rps for each in runs),
            server_cpu_ms=statistics.median(each.server_cpu_ms for each in runs),
            bridge_cpu_ms=statistics.median(each.bridge_cpu_ms for each in runs),
        )
        for (protocol, level), runs in sorted(results.items(), key=lambda item: (item[0][1], item[0][0]))
    ]
    return Summary(rounds, {1: requests, concurrency: requests * 2}, os.cpu_count(), medians, overhead)


def report(summary: Summary) -> str:
    lines = [
        f"{'protocol':<8} {'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
        f"{'server cpu ms/req':>18} {'bridge cpu ms/req':>18}"
    ]
    for each in summary.results:
        lines.append(
            f"{each.protocol:<8} {each.concurrency:>5} {each.p50_ms:>8.3f} {each.p99_ms:>8.3f} "
            f"{each.throughput_rps:>8.0f} {each.server_cpu_ms:>18.3f} {each.bridge_cpu_ms:>18.3f}"
        )
    lines.append("")
    by_case = {(each.protocol, each.concurrency): each for each in summary.results}
    for level in sorted({each.concurrency for each in summary.results}):
        grpc_figures, rest_figures = by_case[("grpc", level)], by_case[("rest", level)]
        lines.append(
            f"concurrency {level}: REST p50 = {rest_figures.p50_ms / grpc_figures.p50_ms:.2f} x gRPC "
            f"(+{rest_figures.p50_ms - grpc_figures.p50_ms:.3f} ms), "
            f"throughput {rest_figures.throughput_rps / grpc_figures.throughput_rps:.2f} x gRPC"
        )
    overhead = summary.client_overhead
    lines.append(
        f"client overhead, GET /health p50: raw socket {overhead['raw_client_p50_ms']:.3f} ms, "
        f"httpx {overhead['httpx_client_p50_ms']:.3f} ms"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=32, help="the concurrent level (default 32)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests per protocol")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    arguments = parser.parse_args()
    summary = benchmark(arguments.rounds, arguments.requests, arguments.concurrency, arguments.warmup)
    print(report(summary))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(asdict(summary), indent=2) + "\n")


if __name__ == "__main__":
    main()
