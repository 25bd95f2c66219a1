"""``python -m benchmarks.overload``: the server at four times the load it sustains, then back at half of it.

The server runs as its own process with its shipped defaults (admission, shedding after ``PREDICTOR_MAX_QUEUE_MS``,
micro-batching, access log, prediction log, drift) on the production housing pipeline. This process first finds
the sustainable rate S (single-row ``Predict`` back to back from 64 callers), then offers open-loop load at a fixed
rate, whatever the answers do, as independent clients would:

- baseline: 0.5 S for ``--baseline-seconds``,
- overload: 4 S for ``--overload-seconds``,
- recovery: 0.5 S again for ``--recovery-seconds``,

over ``--connections`` client connections (1: one client multiplexing every call; more: many clients).

Meanwhile a second channel asks health every 100 ms with a 1 s deadline, as an orchestrator would, and the
server's RSS is read from ``/proc`` every half second. It prints, per second, what was offered and what came back
(OK, shed with RESOURCE_EXHAUSTED and whether the shed calls carried ``grpc-retry-pushback-ms``, refused with
UNAVAILABLE because the connection had ``PREDICTOR_MAX_STREAMS_PER_CONNECTION`` calls open, other errors),
the p50 and p99 of the answered calls, the slowest health check and the RSS; then a summary: the shed share under
overload, health failures, the RSS peak against the baseline's, and how many seconds after the overload the p99
was back within twice the baseline's with nothing shed. ``--json PATH`` writes every figure.

One caveat it reports rather than hides: the load generator shares this machine's cores with the server, so the
rate it really offered is printed beside the rate it was asked for.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import production_housing_model, server_process, timed_calls, wait_serving
from data.schema import HOUSING_FEATURES
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc

ROW = housing_pb2.HousingFeatures(
    **dict(zip(HOUSING_FEATURES, (3.87, 28.6, 5.43, 1.1, 1425.0, 3.07, 35.63, -119.57), strict=True))
)
PUSHBACK_KEY = "grpc-retry-pushback-ms"
# What a client sees of a stream the server refused in gRPC's core (HTTP/2 REFUSED_STREAM is error code 7).
REFUSED_STREAM = "RST_STREAM with error code 7"
PREDICT = "/prediction.v1.HousingPredictor/Predict"
# The service under load; the overall status would read NOT_SERVING, since this server has no iris model.
HEALTH_SERVICE = "prediction.v1.HousingPredictor"
PredictMethod = grpc.aio.UnaryUnaryMultiCallable[housing_pb2.HousingFeatures, housing_pb2.HousingPrediction]
CALL_TIMEOUT_SECONDS = 5.0
HEALTH_TIMEOUT_SECONDS = 1.0
HEALTH_EVERY_SECONDS = 0.1
# The generator never holds more calls than this open (a client's own bound); calls it could not send are counted.
MAX_OUTSTANDING = 4_000
TICK_SECONDS = 0.002


@dataclass
class Second:
    phase: str
    second: int
    offered: int = 0
    not_sent: int = 0
    ok: int = 0
    shed: int = 0
    shed_with_pushback: int = 0
    refused: int = 0
    other_errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    health_checks: int = 0
    health_failures: int = 0
    health_slowest_ms: float = 0.0
    rss_mb: float = 0.0

    def summary(self) -> dict[str, Any]:
        figures = {key: value for key, value in asdict(self).items() if key != "latencies"}
        ordered = sorted(self.latencies)
        figures["p50_ms"] = _quantile(ordered, 0.5) * 1000
        figures["p99_ms"] = _quantile(ordered, 0.99) * 1000
        return figures


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def serve(model_file: str) -> None:
    import joblib  # noqa: PLC0415

    from benchmarks.harness import serve_until_sigterm  # noqa: PLC0415
    from model_registry.memory import InMemoryRegistry  # noqa: PLC0415

    registry = InMemoryRegistry()
    registry.register(
        "CaliforniaHousingBestModel", joblib.load(model_file), alias="champion", input_names=HOUSING_FEATURES
    )
    # The shipped defaults, the access log included (the harness turns it off unless asked).
    serve_until_sigterm(registry, access_log=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class OpenLoop:
    """Offers calls at a rate per phase, records each answer in the second it was sent."""

    def __init__(self, target: str, pid: int) -> None:
        self._target = target
        self._pid = pid
        self.seconds: list[Second] = []
        self._outstanding = 0
        # One example of each unexpected status, with its details and how long the call had taken.
        self.example_errors: dict[str, str] = {}
        self.error_seconds: dict[str, list[float]] = {}

    def _bucket(self, phase: str, began: float, now: float) -> Second:
        index = int(now - began)
        phase_seconds = [each for each in self.seconds if each.phase == phase]
        while len(phase_seconds) <= index:
            bucket = Second(phase, len(phase_seconds))
            self.seconds.append(bucket)
            phase_seconds.append(bucket)
        return phase_seconds[index]

    async def _call(self, predict: PredictMethod, bucket: Second) -> None:
        started = time.perf_counter()
        try:
            await predict(ROW, timeout=CALL_TIMEOUT_SECONDS)
            bucket.ok += 1
            bucket.latencies.append(time.perf_counter() - started)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                bucket.shed += 1
                trailers = error.trailing_metadata() or ()
                if any(key == PUSHBACK_KEY for key, _ in trailers):
                    bucket.shed_with_pushback += 1
            elif error.code() == grpc.StatusCode.UNAVAILABLE and REFUSED_STREAM in (error.details() or ""):
                bucket.refused += 1
            else:
                name = error.code().name
                self.example_errors.setdefault(name, f"{error.details()} {error.debug_error_string()}")
                self.error_seconds.setdefault(name, []).append(time.perf_counter() - started)
                bucket.other_errors[name] = bucket.other_errors.get(name, 0) + 1
        finally:
            self._outstanding -= 1

    async def _watch(self, phase_of: "list[tuple[str, float]]", stop: asyncio.Event) -> None:
        # Its own connection, as an orchestrator's probe has: gRPC would otherwise share the load's connection.
        own_connection = (("grpc.use_local_subchannel_pool", 1),)
        async with grpc.aio.insecure_channel(self._target, options=own_connection) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                phase, began = phase_of[-1]
                bucket = self._bucket(phase, began, time.monotonic())
                bucket.rss_mb = max(bucket.rss_mb, rss_mb(self._pid))
                started = time.perf_counter()
                try:
                    answer = await health.Check(
                        health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=HEALTH_TIMEOUT_SECONDS
                    )
                    failed = answer.status != health_pb2.HealthCheckResponse.SERVING
                except grpc.aio.AioRpcError:
                    failed = True
                elapsed_ms = (time.perf_counter() - started) * 1000
                bucket.health_checks += 1
                bucket.health_failures += failed
                bucket.health_slowest_ms = max(bucket.health_slowest_ms, elapsed_ms)
                await asyncio.sleep(HEALTH_EVERY_SECONDS)

    async def run(self, phases: list[tuple[str, float, float]], connections: int = 1) -> None:
        """``phases``: (name, calls per second, seconds), one after the other; the calls spread round robin over
        ``connections`` client connections (many clients, each with its own connection)."""
        phase_of: list[tuple[str, float]] = [(phases[0][0], time.monotonic())]
        stop = asyncio.Event()
        pending: set[asyncio.Task[None]] = set()
        # A subchannel pool of its own per channel: gRPC would otherwise share one connection between them.
        channels = [
            grpc.aio.insecure_channel(self._target, options=(("grpc.use_local_subchannel_pool", 1),))
            for _ in range(connections)
        ]
        methods: list[PredictMethod] = [
            channel.unary_unary(
                PREDICT,
                request_serializer=housing_pb2.HousingFeatures.SerializeToString,
                response_deserializer=housing_pb2.HousingPrediction.FromString,
            )
            for channel in channels
        ]
        try:
            watcher = asyncio.create_task(self._watch(phase_of, stop))
            for name, rate, seconds in phases:
                began = time.monotonic()
                phase_of.append((name, began))
                sent = 0
                while (now := time.monotonic()) < began + seconds:
                    due = int((now - began) * rate)
                    bucket = self._bucket(name, began, now)
                    while sent < due:
                        sent += 1
                        bucket.offered += 1
                        if self._outstanding >= MAX_OUTSTANDING:
                            bucket.not_sent += 1
                            continue
                        self._outstanding += 1
                        task = asyncio.create_task(self._call(methods[sent % connections], bucket))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    await asyncio.sleep(TICK_SECONDS)
            await asyncio.gather(*pending)
            stop.set()
            await watcher
        finally:
            for channel in channels:
                await channel.close()


def report(seconds: list[Second], sustainable: float) -> dict[str, Any]:
    def phase(name: str) -> list[Second]:
        return [each for each in seconds if each.phase == name]

    baseline, overload, recovery = phase("baseline"), phase("overload"), phase("recovery")
    baseline_p99 = _quantile(sorted(value for each in baseline for value in each.latencies), 0.99)
    recovered_after = next(
        (
            each.second
            for each in recovery
            if each.shed == 0 and each.latencies and _quantile(sorted(each.latencies), 0.99) <= 2 * baseline_p99
        ),
        None,
    )
    offered = sum(each.offered for each in overload)
    errors: dict[str, int] = {}
    for each in seconds:
        for name, count in each.other_errors.items():
            errors[name] = errors.get(name, 0) + count
    return {
        "sustainable_calls_per_second": sustainable,
        "overload_offered_per_second": offered / max(1, len(overload)),
        "overload_answered_ok_per_second": sum(each.ok for each in overload) / max(1, len(overload)),
        "overload_shed_share": sum(each.shed for each in overload) / max(1, offered),
        "overload_not_sent": sum(each.not_sent for each in overload),
        "overload_refused_share": sum(each.refused for each in overload) / max(1, offered),
        "shed_with_pushback_share": sum(each.shed_with_pushback for each in seconds)
        / max(1, sum(each.shed for each in seconds)),
        "other_errors": errors,
        "baseline_p99_ms": baseline_p99 * 1000,
        "overload_p99_ms_of_answered": _quantile(sorted(v for each in overload for v in each.latencies), 0.99) * 1000,
        "recovered_after_seconds": recovered_after,
        "health_checks": sum(each.health_checks for each in seconds),
        "health_failures": sum(each.health_failures for each in seconds),
        "health_slowest_ms_under_overload": max((each.health_slowest_ms for each in overload), default=0.0),
        "rss_mb_baseline_peak": max((each.rss_mb for each in baseline), default=0.0),
        "rss_mb_overload_peak": max((each.rss_mb for each in overload), default=0.0),
        "rss_mb_recovery_last": recovery[-1].rss_mb if recovery else 0.0,
        "per_second": [each.summary() for each in seconds],
    }


def markdown(figures: dict[str, Any]) -> str:
    lines = [
        "| phase | s | offered | not sent | OK | shed (with pushback) | refused | other errors | p50 ms | p99 ms | "
        "slowest health ms | RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for each in figures["per_second"]:
        errors = ", ".join(f"{name} {count}" for name, count in each["other_errors"].items()) or "0"
        lines.append(
            f"| {each['phase']} | {each['second']} | {each['offered']} | {each['not_sent']} | {each['ok']} | "
            f"{each['shed']} ({each['shed_with_pushback']}) | {each['refused']} | {errors} | {each['p50_ms']:.1f} | "
            f"{each['p99_ms']:.1f} | {each['health_slowest_ms']:.1f} | {each['rss_mb']:.0f} |"
        )
    recovered = figures["recovered_after_seconds"]
    lines += [
        "",
        f"- sustainable: {figures['sustainable_calls_per_second']:,.0f} calls/s (64 callers back to back); "
        f"the open-loop load over {figures['connections']} connection(s)",
        f"- overload: {figures['overload_offered_per_second']:,.0f} calls/s offered, "
        f"{figures['overload_answered_ok_per_second']:,.0f} answered OK a second, "
        f"{figures['overload_shed_share']:.0%} shed, {figures['overload_refused_share']:.0%} refused (streams per "
        f"connection), {figures['overload_not_sent']} not sent (client bound)",
        f"- shed calls carrying {PUSHBACK_KEY}: {figures['shed_with_pushback_share']:.0%}; other errors: "
        f"{figures['other_errors'] or 'none'}"
        + "".join(
            f"; {name} ({figures['example_errors'][name]!r}) after {times['min']:.2f} / {times['median']:.2f} / "
            f"{times['max']:.2f} s (min / median / max)"
            for name, times in figures["error_seconds"].items()
        ),
        f"- p99 of answered calls: baseline {figures['baseline_p99_ms']:.1f} ms, under overload "
        f"{figures['overload_p99_ms_of_answered']:.1f} ms; back within 2x the baseline with nothing shed "
        + ("never within the recovery phase" if recovered is None else f"in second {recovered} of the recovery"),
        f"- health: {figures['health_checks']} checks, {figures['health_failures']} failed or not SERVING, slowest "
        f"under overload {figures['health_slowest_ms_under_overload']:.1f} ms (deadline "
        f"{HEALTH_TIMEOUT_SECONDS * 1000:.0f} ms)",
        f"- RSS: baseline peak {figures['rss_mb_baseline_peak']:.0f} MB, overload peak "
        f"{figures['rss_mb_overload_peak']:.0f} MB, end of recovery {figures['rss_mb_recovery_last']:.0f} MB",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--overload-seconds", type=float, default=15.0)
    parser.add_argument("--recovery-seconds", type=float, default=15.0)
    parser.add_argument("--factor", type=float, default=4.0, help="overload as a multiple of the sustainable rate")
    parser.add_argument(
        "--connections", type=int, default=1, help="client connections the load is spread over (default 1)"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    import joblib  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="overload-") as scratch:
        model_file = Path(scratch) / "housing.joblib"
        joblib.dump(production_housing_model(), model_file)
        command = [sys.executable, "-m", "benchmarks.overload", "--serve", str(model_file)]
        with server_process(command) as server:
            target = f"127.0.0.1:{server.grpc_port}"
            with grpc.insecure_channel(target) as channel:
                wait_serving(channel, "prediction.v1.HousingPredictor")
                stub = housing_pb2_grpc.HousingPredictorStub(channel)

                def predict() -> None:
                    stub.Predict(ROW, timeout=CALL_TIMEOUT_SECONDS)

                timed_calls(predict, 2.0, 64)  # warm-up
                rates = []
                for _ in range(3):
                    latencies, wall = timed_calls(predict, 3.0, 64)
                    rates.append(len(latencies) / wall)
                sustainable = statistics.median(rates)
            print(f"sustainable: {sustainable:,.0f} calls/s; offering load now", file=sys.stderr)
            load = OpenLoop(target, server.process.pid)
            asyncio.run(
                load.run(
                    [
                        ("baseline", 0.5 * sustainable, args.baseline_seconds),
                        ("overload", args.factor * sustainable, args.overload_seconds),
                        ("recovery", 0.5 * sustainable, args.recovery_seconds),
                    ],
                    args.connections,
                )
            )
    figures = report(load.seconds, sustainable)
    figures["connections"] = args.connections
    figures["example_errors"] = load.example_errors
    figures["error_seconds"] = {
        name: {"min": min(each), "median": statistics.median(each), "max": max(each)}
        for name, each in load.error_seconds.items()
    }
    print(markdown(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
