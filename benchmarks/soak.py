"""Soak: minutes of mixed load against the real server and bridge, through a retrain, an A/B split and a swap.

    python -m benchmarks.soak [--minutes 10] [--json out.json] [--max-rows N] [--registry DIR] [--scale 1.0]
                              [--sample-seconds 5]

Set-up, in a temporary directory, on 127.0.0.1 only: ``python -m training`` trains both models into a fresh
SQLite registry (``benchmarks.retrain_latency.train_registry``: the same environment then reaches the server and
its retrain children; one OpenMP thread, as for retrains; ``--max-rows`` trains housing on a subset, for quick
runs, and so does the retrain). Then
``python -m server`` (admin token, plaintext admin allowed, free gRPC and metrics ports, state directory and
prediction log in the temporary directory) and ``python -m rest_bridge`` in front of it. ``--registry DIR`` keeps
the trained registry in DIR and reuses it on the next run (with the versions and aliases the events left there).

Load, concurrently and continuously, each kind paced to its own rate (``--scale`` multiplies every rate; a caller
that falls behind sends at once but never bursts to catch up): unary ``Predict`` and ``Classify``,
``PredictBatch`` (100 rows), ``PredictColumns`` (1,000 rows), long-lived ``PredictStream`` and
``ClassifyStream`` streams (3 in all, under the server's default cap of 4), REST ``/predict/iris`` and
``/predict/housing/batch`` (20 rows), and deliberately bad inputs (out of range, missing fields, an empty batch,
columns of unequal lengths, a message that is not protobuf, bad REST bodies, a bad message inside a stream), which
must be refused with INVALID_ARGUMENT (REST 422): those are counted as expected errors. Every answer is checked
(row counts, finite values, a version named); anything else, a wrong answer included, is an unexpected error.

Events, one after the other, each at its fraction of the run or when the one before has finished: a housing
``ModelAdmin/Retrain`` (waited for, and its hot reload when promoted), an A/B split (``SetAlias`` challenger to
another version, ``SetTrafficSplit`` 30%, waited until served), and a model swap (``SetAlias`` champion to the
challenger's version with ``expected_version``, waited until served). The load runs ``--minutes`` and, if an
event is still under way then, until it ends.

Every ``--sample-seconds`` the server's and the bridge's RSS, open file descriptors and threads are read from
/proc. Reported: calls and errors by kind, the events with their times, RSS in the first and the last minute,
fds and threads at the start and the end, p50/p99 per minute per kind, which versions and variants answered,
a few server counters, ERROR lines in the logs, and the processes' exit codes. Markdown on stdout; with ``--json``
every figure. Exit status 1 when any unexpected error happened (2 when interrupted). Every process started is
stopped on exit, on Ctrl-C and on SIGTERM.
"""

import argparse
import asyncio
import contextlib
import json
import math
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from benchmarks.retrain_latency import Server, Workspace, load_average, machine, train_registry, wait_serving
from benchmarks.serving_baselines import housing_rows, iris_rows
from data.schema import HOUSING_FEATURES, IRIS_FEATURES
from protos.prediction.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    housing_pb2,
    housing_pb2_grpc,
    iris_pb2,
    iris_pb2_grpc,
    model_pb2,
)

ROOT = Path(__file__).resolve().parents[1]
HTTP_PORT = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
LOG_ERROR = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) |^Traceback ")
CALL_TIMEOUT_S = 10.0
ADMIN_TIMEOUT_S = 30.0
START_TIMEOUT_S = 180.0
RETRAIN_TIMEOUT_S = 1800.0
RELOAD_TIMEOUT_S = 180.0
POLL_S = 0.25
BATCH_ROWS = 100
COLUMN_ROWS = 1000
REST_BATCH_ROWS = 20
REGISTRY_MARKER = "soak-registry.json"  # written once both models are trained
POOL = 32  # distinct prebuilt requests per kind, sent in turn
STREAM_BAD_EVERY = 50  # every this many messages of a stream is a bad one
AB_PERCENT = 30.0
RETRAIN_AT, AB_AT, SWAP_AT = 0.1, 0.4, 0.7
COUNTERS = (
    "model_swaps_total",
    "model_load_failures_total",
    "grpc_server_shed_total",
    "grpc_server_streams_rejected_total",
    "grpc_server_malformed_requests_total",
    "model_requests_expired_total",
    "prediction_log_rows_written_total",
    "prediction_log_dropped_total",
    "model_drift_dropped_total",
    "model_shadow_dropped_total",
)


class WrongAnswerError(Exception):
    """An answer that came back OK but is not what was asked for."""


# ---------------------------------------------------------------------------------------------------
# Requests


def _housing(row: Sequence[float]) -> housing_pb2.HousingFeatures:
    return housing_pb2.HousingFeatures(**dict(zip(HOUSING_FEATURES, (float(x) for x in row), strict=True)))


def _iris(row: Sequence[float]) -> iris_pb2.IrisFeatures:
    return iris_pb2.IrisFeatures(**dict(zip(IRIS_FEATURES, (float(x) for x in row), strict=True)))


@dataclass(frozen=True)
class Requests:
    """Prebuilt valid requests, ``POOL`` of each kind, with different rows."""

    housing: list[housing_pb2.HousingFeatures]
    iris: list[iris_pb2.IrisFeatures]
    batches: list[housing_pb2.HousingBatchRequest]
    columns: list[housing_pb2.HousingColumns]
    rest_iris: list[dict[str, float]]
    rest_batches: list[dict[str, Any]]

    @classmethod
    def build(cls) -> "Requests":
        houses, flowers = housing_rows(POOL * COLUMN_ROWS, seed=12), iris_rows(POOL, seed=12)
        columns = [
            housing_pb2.HousingColumns(
                **{name: houses[i * COLUMN_ROWS : (i + 1) * COLUMN_ROWS, j] for j, name in enumerate(HOUSING_FEATURES)}
            )
            for i in range(POOL)
        ]
        return cls(
            housing=[_housing(row) for row in houses[:POOL]],
            iris=[_iris(row) for row in flowers],
            batches=[
                housing_pb2.HousingBatchRequest(instances=[_housing(row) for row in houses[i : i + BATCH_ROWS]])
                for i in range(0, POOL * BATCH_ROWS, BATCH_ROWS)
            ],
            columns=columns,
            rest_iris=[dict(zip(IRIS_FEATURES, map(float, row), strict=True)) for row in flowers],
            rest_batches=[
                {
                    "instances": [
                        dict(zip(HOUSING_FEATURES, map(float, row), strict=True))
                        for row in houses[i : i + REST_BATCH_ROWS]
                    ]
                }
                for i in range(0, POOL * REST_BATCH_ROWS, REST_BATCH_ROWS)
            ],
        )


def _finite(*values: float) -> bool:
    return all(math.isfinite(value) for value in values)


def _served(model: model_pb2.ModelVersion) -> str:
    if not model.version:
        raise WrongAnswerError("the answer names no model version")
    return f"v{model.version} {model.variant or '?'}"


# ---------------------------------------------------------------------------------------------------
# What was seen


@dataclass
class Recorder:
    """Every call's outcome, by traffic kind; times are seconds since the load started."""

    began: float
    ends: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unexpected: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    expected: Counter[str] = field(default_factory=Counter)
    served: Counter[tuple[int, str, str]] = field(default_factory=Counter)

    def now(self) -> float:
        return time.monotonic() - self.began

    def ok(self, kind: str, latency: float, served: str) -> None:
        at = self.now()
        self.ends[kind].append(at)
        self.latencies[kind].append(latency)
        self.served[(int(at // 60), kind, served)] += 1

    def error(self, kind: str, what: str, message: str) -> None:
        self.unexpected[(kind, what)] += 1
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(f"{self.now():.1f} s {what}: {message[:300]}")

    def refused(self, kind: str) -> None:
        self.expected[kind] += 1


def _failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name, exc.details() or ""
    if isinstance(exc, TimeoutError):
        return "client timeout", f"no answer within {CALL_TIMEOUT_S:.0f} s"
    return type(exc).__name__, str(exc)


# ---------------------------------------------------------------------------------------------------
# Load


@dataclass(frozen=True)
class Traffic:
    kind: str
    rate: float
    """Calls per second, all workers together."""
    workers: int
    call: Callable[[int], Awaitable[str]]
    """Makes call number ``i`` and checks its answer: which version and variant answered."""


async def _paced(rate: float, stop: asyncio.Event, step: Callable[[int], Awaitable[None]], offset: float = 0.0) -> None:
    """``step(i)`` at ``rate`` per second until ``stop``; a step that ran late delays the next, never doubles up."""
    spacing = 1.0 / rate
    due = time.monotonic() + offset * spacing
    index = 0
    while not stop.is_set():
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
            if stop.is_set():
                return
        await step(index)
        index += 1
        due = max(due + spacing, time.monotonic())


async def drive(traffic: Traffic, recorder: Recorder, stop: asyncio.Event) -> None:
    async def one(index: int) -> None:
        before = time.perf_counter()
        try:
            served = await asyncio.wait_for(traffic.call(index), CALL_TIMEOUT_S)
        except Exception as exc:  # every failure is recorded, by its type, and the load goes on
            recorder.error(traffic.kind, *_failure(exc))
            return
        recorder.ok(traffic.kind, time.perf_counter() - before, served)

    async def worker(number: int) -> None:
        # Each worker takes every ``workers``-th request of the pool, so that together they send all of them.
        async def step(index: int) -> None:
            await one(index * traffic.workers + number)

        await _paced(traffic.rate / traffic.workers, stop, step, offset=number / traffic.workers)

    await asyncio.gather(*(worker(number) for number in range(traffic.workers)))


class Load:
    """The clients: one gRPC channel and one HTTP client, and every kind of traffic on them."""

    def __init__(self, grpc_port: int, http_port: int, recorder: Recorder, scale: float) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=CALL_TIMEOUT_S)
        self.housing = housing_pb2_grpc.HousingPredictorStub(self.channel)
        self.iris = iris_pb2_grpc.IrisClassifierStub(self.channel)
        self.recorder = recorder
        self.scale = scale
        self.requests = Requests.build()

    async def close(self) -> None:
        await self.http.aclose()
        await self.channel.close()

    # One valid call of each kind --------------------------------------------------------------------

    async def predict(self, i: int) -> str:
        answer = await self.housing.Predict(self.requests.housing[i % POOL], timeout=CALL_TIMEOUT_S)
        if not (_finite(answer.median_house_value) and answer.prediction_id):
            raise WrongAnswerError(f"median_house_value {answer.median_house_value}")
        return _served(answer.model)

    async def classify(self, i: int) -> str:
        answer = await self.iris.Classify(self.requests.iris[i % POOL], timeout=CALL_TIMEOUT_S)
        total = answer.probabilities.setosa + answer.probabilities.versicolor + answer.probabilities.virginica
        if answer.species == iris_pb2.IRIS_SPECIES_UNSPECIFIED or abs(total - 1) > 1e-6:
            raise WrongAnswerError(f"species {answer.species}, probabilities adding up to {total}")
        return _served(answer.model)

    async def predict_batch(self, i: int) -> str:
        answer = await self.housing.PredictBatch(self.requests.batches[i % POOL], timeout=CALL_TIMEOUT_S)
        values = [each.median_house_value for each in answer.predictions]
        if len(values) != BATCH_ROWS or not _finite(*values):
            raise WrongAnswerError(f"{len(values)} predictions for {BATCH_ROWS} rows, or a value not finite")
        return _served(answer.model)

    async def predict_columns(self, i: int) -> str:
        answer = await self.housing.PredictColumns(self.requests.columns[i % POOL], timeout=CALL_TIMEOUT_S)
        values = np.asarray(answer.median_house_value)
        if len(values) != COLUMN_ROWS or len(answer.prediction_ids) != COLUMN_ROWS or not np.isfinite(values).all():
            raise WrongAnswerError(f"{len(values)} values and {len(answer.prediction_ids)} ids for {COLUMN_ROWS} rows")
        return _served(answer.model)

    async def rest_iris(self, i: int) -> str:
        response = await self.http.post("/predict/iris", json=self.requests.rest_iris[i % POOL])
        body = response.json()
        if response.status_code != 200 or not body.get("species"):
            raise WrongAnswerError(f"HTTP {response.status_code}: {response.text[:300]}")
        return f"v{body['model']['version']} {body['model']['variant']}"

    async def rest_housing_batch(self, i: int) -> str:
        response = await self.http.post("/predict/housing/batch", json=self.requests.rest_batches[i % POOL])
        body = response.json()
        if response.status_code != 200 or len(body.get("predictions", ())) != REST_BATCH_ROWS:
            raise WrongAnswerError(f"HTTP {response.status_code}: {response.text[:300]}")
        return f"v{body['model']['version']} {body['model']['variant']}"

    def traffic(self) -> list[Traffic]:
        s = self.scale
        return [
            Traffic("grpc Predict", 30 * s, 4, self.predict),
            Traffic("grpc Classify", 30 * s, 4, self.classify),
            Traffic(f"grpc PredictBatch x{BATCH_ROWS}", 4 * s, 2, self.predict_batch),
            Traffic(f"grpc PredictColumns x{COLUMN_ROWS}", 2 * s, 2, self.predict_columns),
            Traffic("REST /predict/iris", 20 * s, 2, self.rest_iris),
            Traffic(f"REST /predict/housing/batch x{REST_BATCH_ROWS}", 4 * s, 2, self.rest_housing_batch),
        ]

    # Streams ----------------------------------------------------------------------------------------

    async def stream(self, kind: str, rate: float, stop: asyncio.Event) -> None:
        """One long-lived stream at a time; one that breaks is an unexpected error, and another takes its place."""
        housing = kind.endswith("PredictStream")
        while not stop.is_set():
            call: Any = self.housing.PredictStream() if housing else self.iris.ClassifyStream()
            try:
                await self._on_stream(call, kind, housing, rate, stop)
            except Exception as exc:  # recorded by its type
                self.recorder.error(kind, *_failure(exc))
                call.cancel()
                await asyncio.sleep(0.5)  # a server refusing at once must not make this a busy loop

    async def _on_stream(self, call: Any, kind: str, housing: bool, rate: float, stop: asyncio.Event) -> None:
        """Messages on ``call`` until ``stop``, one in flight, every ``STREAM_BAD_EVERY``-th a bad one; then close."""
        bad_kind = f"{kind} bad message"
        sequence = 0

        async def step(index: int) -> None:
            nonlocal sequence
            bad = index % STREAM_BAD_EVERY == STREAM_BAD_EVERY - 1
            message: Any
            if housing:
                message = housing_pb2.HousingFeatures(median_income=3.0) if bad else self.requests.housing[index % POOL]
            else:
                message = iris_pb2.IrisFeatures(sepal_length_cm=-1.0) if bad else self.requests.iris[index % POOL]
            before = time.perf_counter()
            await call.write(message)
            reply = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
            latency = time.perf_counter() - before
            if reply is grpc.aio.EOF:
                raise WrongAnswerError("the server ended the stream")
            if reply.sequence != sequence:
                raise WrongAnswerError(f"reply sequence {reply.sequence}, expected {sequence}")
            sequence += 1
            if bad:
                if reply.HasField("error") and reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
                    self.recorder.refused(bad_kind)
                else:
                    self.recorder.error(bad_kind, "not refused", str(reply)[:300])
            elif reply.HasField("prediction"):
                self.recorder.ok(kind, latency, _served(reply.prediction.model))
            else:
                self.recorder.error(kind, reply.error.status or "error", reply.error.message)

        await _paced(rate, stop, step)
        await call.done_writing()
        if (rest := await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)) is not grpc.aio.EOF:
            raise WrongAnswerError(f"a reply after the last message: {rest}")
        if (code := await call.code()) != grpc.StatusCode.OK:
            raise WrongAnswerError(f"the stream ended with {code.name}")

    # Deliberately bad inputs ------------------------------------------------------------------------

    def bad_inputs(self) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
        """(kind, call): each call must be refused with INVALID_ARGUMENT (REST: 422)."""
        good = self.requests.columns[0]
        unequal = housing_pb2.HousingColumns()
        unequal.CopyFrom(good)
        del unequal.latitude[-1]
        out_of_range = housing_pb2.HousingFeatures()
        out_of_range.CopyFrom(self.requests.housing[0])
        out_of_range.latitude = 50.0
        raw_classify: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            "/prediction.v1.IrisClassifier/Classify"
        )
        return [
            ("grpc Predict out of range", lambda: self.housing.Predict(out_of_range, timeout=CALL_TIMEOUT_S)),
            (
                "grpc Classify fields missing",
                lambda: self.iris.Classify(iris_pb2.IrisFeatures(sepal_length_cm=5.1), timeout=CALL_TIMEOUT_S),
            ),
            (
                "grpc PredictBatch empty",
                lambda: self.housing.PredictBatch(housing_pb2.HousingBatchRequest(), timeout=CALL_TIMEOUT_S),
            ),
            ("grpc PredictColumns unequal", lambda: self.housing.PredictColumns(unequal, timeout=CALL_TIMEOUT_S)),
            ("grpc Classify not protobuf", lambda: raw_classify(b"\x0a\xff", timeout=CALL_TIMEOUT_S)),
            (
                "REST /predict/iris negative",
                lambda: self.http.post("/predict/iris", json={**self.requests.rest_iris[0], "sepal_length_cm": -1}),
            ),
            ("REST /predict/housing/batch empty", lambda: self.http.post("/predict/housing/batch", json={})),
        ]

    async def bad(self, rate: float, stop: asyncio.Event) -> None:
        calls = self.bad_inputs()

        async def step(index: int) -> None:
            kind, call = calls[index % len(calls)]
            try:
                answer = await asyncio.wait_for(call(), CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    self.recorder.refused(kind)
                else:
                    self.recorder.error(kind, *_failure(exc))
                return
            except Exception as exc:  # recorded by its type
                self.recorder.error(kind, *_failure(exc))
                return
            if isinstance(answer, httpx.Response) and answer.status_code == 422:
                self.recorder.refused(kind)
            else:
                status = answer.status_code if isinstance(answer, httpx.Response) else "OK"
                self.recorder.error(kind, "not refused", f"answered {status}")

        await _paced(rate, stop, step)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.scale
        await asyncio.gather(
            *(drive(each, self.recorder, stop) for each in self.traffic()),
            self.stream("grpc PredictStream", 15 * s, stop),
            self.stream("grpc PredictStream", 15 * s, stop),
            self.stream("grpc ClassifyStream", 15 * s, stop),
            self.bad(1 * s, stop),
        )


# ---------------------------------------------------------------------------------------------------
# Events


@dataclass
class Event:
    name: str
    planned_s: float
    started_s: float = 0.0
    finished_s: float = 0.0
    started_at: str = ""
    ok: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class Admin:
    def __init__(self, channel: grpc.aio.Channel, token: str, max_rows: int | None) -> None:
        self.admin = admin_pb2_grpc.ModelAdminStub(channel)
        self.housing = housing_pb2_grpc.HousingPredictorStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.max_rows = max_rows

    async def info(self) -> model_pb2.ModelInfo:
        return await self.housing.GetModelInfo(model_pb2.GetModelInfoRequest(), timeout=ADMIN_TIMEOUT_S)

    async def until(self, done: Callable[[model_pb2.ModelInfo], bool], what: str) -> float:
        """Seconds until GetModelInfo satisfies ``done``."""
        began = time.monotonic()
        while not done(await self.info()):
            if time.monotonic() - began > RELOAD_TIMEOUT_S:
                raise RuntimeError(f"not served within {RELOAD_TIMEOUT_S:.0f} s: {what}")
            await asyncio.sleep(POLL_S / 5)
        return time.monotonic() - began

    async def other_version(self, than: str) -> str:
        """The newest registered housing version other than ``than`` (``than`` itself when there is none)."""
        listing = await self.admin.ListModelVersions(
            admin_pb2.ListModelVersionsRequest(model="housing"), metadata=self.metadata, timeout=ADMIN_TIMEOUT_S
        )
        others = sorted((int(each.version) for each in listing.versions if each.version != than), reverse=True)
        return str(others[0]) if others else than

    async def retrain(self) -> dict[str, Any]:
        request = admin_pb2.RetrainRequest(model="housing")
        if self.max_rows is not None:
            request.max_rows = self.max_rows
        operation = await self.admin.Retrain(request, metadata=self.metadata, timeout=ADMIN_TIMEOUT_S)
        deadline = time.monotonic() + RETRAIN_TIMEOUT_S
        while operation.state not in (admin_pb2.OPERATION_STATE_SUCCEEDED, admin_pb2.OPERATION_STATE_FAILED):
            if time.monotonic() > deadline:
                raise RuntimeError(f"retrain {operation.id} not finished within {RETRAIN_TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_S)
            operation = await self.admin.GetOperation(
                admin_pb2.GetOperationRequest(id=operation.id), metadata=self.metadata, timeout=ADMIN_TIMEOUT_S
            )
        detail: dict[str, Any] = {
            "operation": operation.id,
            "training_seconds": round(
                (operation.finished_at.ToNanoseconds() - operation.started_at.ToNanoseconds()) / 1e9, 2
            ),
            "decision": admin_pb2.GateDecision.Name(operation.decision).removeprefix("GATE_DECISION_").lower(),
            "reason": operation.decision_reason,
            "registered_version": operation.registered_version,
        }
        if operation.state == admin_pb2.OPERATION_STATE_FAILED:
            raise RuntimeError(f"retrain {operation.id} failed: {operation.failure_reason[-500:]}")
        if operation.decision == admin_pb2.GATE_DECISION_PROMOTED:
            version = operation.registered_version
            detail["reload_seconds"] = round(
                await self.until(lambda info: info.model.version == version, f"v{version}"), 2
            )
        return detail

    async def ab_split(self) -> dict[str, Any]:
        champion = (await self.info()).model.version
        challenger = await self.other_version(champion)
        await self.admin.SetAlias(
            admin_pb2.SetAliasRequest(model="housing", alias="challenger", version=challenger),
            metadata=self.metadata,
            timeout=ADMIN_TIMEOUT_S,
        )
        await self.admin.SetTrafficSplit(
            admin_pb2.SetTrafficSplitRequest(model="housing", challenger_percent=AB_PERCENT, shadow=False),
            metadata=self.metadata,
            timeout=ADMIN_TIMEOUT_S,
        )
        seconds = await self.until(
            lambda info: info.challenger.version == challenger and info.challenger_percent == AB_PERCENT,
            f"challenger v{challenger} at {AB_PERCENT:g}%",
        )
        return {
            "champion": champion,
            "challenger": challenger,
            "challenger_percent": AB_PERCENT,
            "served_after_seconds": round(seconds, 2),
        }

    async def swap(self) -> dict[str, Any]:
        info = await self.info()
        champion = info.model.version
        target = info.challenger.version if info.challenger.version not in ("", champion) else ""
        target = target or await self.other_version(champion)
        change = await self.admin.SetAlias(
            admin_pb2.SetAliasRequest(model="housing", alias="champion", version=target, expected_version=champion),
            metadata=self.metadata,
            timeout=ADMIN_TIMEOUT_S,
        )
        seconds = await self.until(lambda info: info.model.version == target, f"champion v{target}")
        return {"from": change.previous_version, "to": change.version, "served_after_seconds": round(seconds, 2)}


async def run_events(admin: Admin, events: list[Event], recorder: Recorder) -> None:
    actions = {"retrain": admin.retrain, "A/B split": admin.ab_split, "model swap": admin.swap}
    for event in events:
        if (wait := event.planned_s - recorder.now()) > 0:
            await asyncio.sleep(wait)
        event.started_s, event.started_at = recorder.now(), datetime.now(UTC).isoformat(timespec="seconds")
        print(f"{event.started_s:6.1f} s  {event.name} ...", file=sys.stderr, flush=True)
        try:
            event.detail = await actions[event.name]()
            event.ok = True
        except Exception as exc:  # a failed event is reported, and the soak goes on
            event.error = "{}: {}".format(*_failure(exc))
            recorder.error(f"event {event.name}", "failed", event.error)
        event.finished_s = recorder.now()
        print(f"{event.finished_s:6.1f} s  {event.name}: {event.detail or event.error}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Resources


def resources(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
    }


async def sample(
    pids: dict[str, int], every: float, recorder: Recorder, out: dict[str, list[dict[str, float]]]
) -> None:
    """Every ``every`` seconds until cancelled (the caller takes one more sample at the end)."""
    while True:
        take_sample(pids, recorder, out)
        await asyncio.sleep(every)


def take_sample(pids: dict[str, int], recorder: Recorder, out: dict[str, list[dict[str, float]]]) -> None:
    at = round(recorder.now(), 2)
    for name, pid in pids.items():
        try:
            out[name].append({"at": at, **resources(pid)})
        except (OSError, KeyError, ValueError) as exc:
            recorder.error(f"{name} process", "gone", str(exc))


# ---------------------------------------------------------------------------------------------------
# Processes


def start_process(workspace: Workspace, scratch: Path, name: str, module: str, env: dict[str, str]) -> Server:
    log = scratch / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env={**workspace.environment, **env},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, log)


def start_server(workspace: Workspace, scratch: Path, token: str) -> Server:
    """The server on the registry, with a state directory and a prediction log of its own in ``scratch``."""
    return start_process(
        workspace,
        scratch,
        "server",
        "server",
        {
            "PREDICTOR_HOST": "127.0.0.1",
            "PREDICTOR_PORT": "0",
            "PREDICTOR_METRICS_HOST": "127.0.0.1",
            "PREDICTOR_METRICS_PORT": "0",
            "PREDICTOR_ADMIN_TOKEN": token,
            "PREDICTOR_ADMIN_ALLOW_PLAINTEXT": "true",
            "PREDICTOR_STATE_DIR": str(scratch / "state"),
            "PREDICTOR_PREDICTION_LOG_PATH": str(scratch / "predictions.db"),
            "PREDICTOR_RETRAIN_WORKDIR": str(workspace.root),
        },
    )


def start_bridge(workspace: Workspace, scratch: Path, grpc_port: int) -> Server:
    bridge = start_process(
        workspace,
        scratch,
        "bridge",
        "rest_bridge",
        {"BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": "0", "BRIDGE_GRPC_TARGET": f"127.0.0.1:{grpc_port}"},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while (match := HTTP_PORT.search(bridge.log.read_text(errors="replace"))) is None:
        if bridge.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the bridge did not start:\n{bridge.log_tail()}")
        time.sleep(0.1)
    bridge.port = int(match.group(1))
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{bridge.port}/ready", timeout=2).status_code == 200:
                return bridge
        if bridge.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the bridge did not become ready:\n{bridge.log_tail()}")
        time.sleep(0.25)


def server_counters(metrics_port: int) -> dict[str, float]:
    """Each counter of ``COUNTERS``, summed over its labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=ADMIN_TIMEOUT_S) as answer:
        text = answer.read().decode()
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found


@dataclass(frozen=True)
class TrainingWorkspace(Workspace):
    """The workspace as the first training sees it: one OpenMP thread, as the server gives its retrain children.

    On a busy 2-core machine the default OpenMP team made a 1,600-row housing fit take over 80 s (every parallel
    region of every tree waits for a descheduled thread); one thread fits it in about a second.
    """

    @property
    def environment(self) -> dict[str, str]:
        return {**super().environment, "OMP_NUM_THREADS": "1"}


def prepare_registry(workspace: Workspace) -> list[str]:
    """Train both models into ``workspace.root``, unless an earlier soak left a finished registry there."""
    marker = workspace.root / REGISTRY_MARKER
    if marker.exists():
        kept = json.loads(marker.read_text())
        if kept["max_rows"] != workspace.max_rows:
            raise SystemExit(f"{workspace.root} was trained with --max-rows {kept['max_rows']}: pass the same")
        print(f"reusing the registry in {workspace.root}", file=sys.stderr, flush=True)
        return [str(line) for line in kept["training"]]
    if workspace.root.exists() and any(workspace.root.iterdir()):
        raise SystemExit(
            f"{workspace.root} is not empty and holds no finished soak registry: remove it or name another"
        )
    workspace.logs.mkdir(parents=True)
    print(f"training both models into {workspace.root} ...", file=sys.stderr, flush=True)
    training = train_registry(TrainingWorkspace(workspace.root, workspace.max_rows))
    marker.write_text(json.dumps({"max_rows": workspace.max_rows, "training": training}) + "\n")
    return training


def log_errors(log: Path) -> list[str]:
    return [line[:300] for line in log.read_text(errors="replace").splitlines() if LOG_ERROR.search(line)]


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Options:
    minutes: float
    json_path: Path | None
    max_rows: int | None
    scale: float
    sample_seconds: float
    registry: Path | None


@dataclass
class Outcome:
    recorder: Recorder
    events: list[Event]
    samples: dict[str, list[dict[str, float]]]
    load_seconds: float
    interrupted: bool
    counters: dict[str, float] = field(default_factory=dict)


async def soak(options: Options, server: Server, bridge: Server, token: str) -> Outcome:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupted = False

    def interrupt(name: str) -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: stop waiting for anything
            raise KeyboardInterrupt(name)
        interrupted = True
        print(f"{name}: stopping the load ...", file=sys.stderr, flush=True)
        stop.set()

    for each in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(each, interrupt, each.name)
    seconds = options.minutes * 60
    recorder = Recorder(time.monotonic())
    load = Load(server.port, bridge.port, recorder, options.scale)
    recorder.began = time.monotonic()  # after the requests were built
    events = [
        Event("retrain", round(seconds * RETRAIN_AT, 1)),
        Event("A/B split", round(seconds * AB_AT, 1)),
        Event("model swap", round(seconds * SWAP_AT, 1)),
    ]
    samples: dict[str, list[dict[str, float]]] = {"server": [], "bridge": []}
    pids = {"server": server.process.pid, "bridge": bridge.process.pid}
    admin_channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        sampler = asyncio.create_task(sample(pids, options.sample_seconds, recorder, samples))
        traffic = asyncio.create_task(load.run(stop))
        happenings = asyncio.create_task(run_events(Admin(admin_channel, token, options.max_rows), events, recorder))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if not interrupted and not happenings.done():
            print("the load goes on until the last event has finished ...", file=sys.stderr, flush=True)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({happenings, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        stop.set()
        happenings.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await happenings
        await asyncio.wait_for(traffic, CALL_TIMEOUT_S * 2)
        load_seconds = recorder.now()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        take_sample(pids, recorder, samples)
        counters = server_counters(server.metrics_port)
    finally:
        for each in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(each)
        await load.close()
        await admin_channel.close()
    return Outcome(recorder, events, samples, load_seconds, interrupted, counters)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def latency_figures(recorder: Recorder) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    for kind, ends in recorder.ends.items():
        latencies = recorder.latencies[kind]
        minutes: dict[int, list[float]] = defaultdict(list)
        for at, latency in zip(ends, latencies, strict=True):
            minutes[int(at // 60)].append(latency)
        figures[kind] = {
            "calls": len(latencies),
            "p50_ms": round(_quantile(latencies, 0.5), 3),
            "p99_ms": round(_quantile(latencies, 0.99), 3),
            "max_ms": round(max(latencies) * 1000, 3),
            "per_minute": [
                {
                    "minute": minute + 1,
                    "calls": len(values),
                    "p50_ms": round(_quantile(values, 0.5), 3),
                    "p99_ms": round(_quantile(values, 0.99), 3),
                }
                for minute, values in sorted(minutes.items())
            ],
        }
    return figures


def resource_figures(samples: list[dict[str, float]], load_seconds: float, settled_at: float) -> dict[str, Any]:
    """RSS in the first and the last minute, and from the end of the last event (``settled_at``): the events load
    versions (a retrained one, a challenger), so growth across them is expected; growth after them is not."""
    if not samples:
        return {}
    first = [each["rss_kib"] for each in samples if each["at"] < 60] or [samples[0]["rss_kib"]]
    last = [each["rss_kib"] for each in samples if each["at"] >= load_seconds - 60] or [samples[-1]["rss_kib"]]
    settled = [each["rss_kib"] for each in samples if each["at"] >= settled_at] or [samples[-1]["rss_kib"]]
    first_mib, last_mib = statistics.median(first) / 1024, statistics.median(last) / 1024
    settled_mib, end_mib = settled[0] / 1024, samples[-1]["rss_kib"] / 1024
    return {
        "rss_first_minute_mib": round(first_mib, 1),
        "rss_last_minute_mib": round(last_mib, 1),
        "rss_growth_mib": round(last_mib - first_mib, 1),
        "rss_growth_percent": round((last_mib / first_mib - 1) * 100, 1),
        "rss_after_events_mib": round(settled_mib, 1),
        "rss_end_mib": round(end_mib, 1),
        "rss_growth_after_events_mib": round(end_mib - settled_mib, 1),
        "seconds_after_events": round(load_seconds - settled_at, 1),
        "rss_max_mib": round(max(each["rss_kib"] for each in samples) / 1024, 1),
        "fds": {"start": samples[0]["fds"], "end": samples[-1]["fds"], "max": max(each["fds"] for each in samples)},
        "threads": {
            "start": samples[0]["threads"],
            "end": samples[-1]["threads"],
            "max": max(each["threads"] for each in samples),
        },
        "samples": samples,
    }


def summarise(outcome: Outcome, options: Options, extra: dict[str, Any]) -> dict[str, Any]:
    recorder = outcome.recorder
    kinds = sorted({*recorder.ends, *(kind for kind, _ in recorder.unexpected)})
    errors = {
        kind: {what: count for (each, what), count in recorder.unexpected.items() if each == kind} for kind in kinds
    }
    served: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for (minute, kind, version), count in sorted(recorder.served.items()):
        served[kind][str(minute + 1)][version] = count
    return {
        "benchmark": "soak",
        **extra,
        "settings": {
            **{key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()},
            "rates_per_second_at_scale_1": {
                "grpc Predict": 30,
                "grpc Classify": 30,
                f"grpc PredictBatch x{BATCH_ROWS}": 4,
                f"grpc PredictColumns x{COLUMN_ROWS}": 2,
                "REST /predict/iris": 20,
                f"REST /predict/housing/batch x{REST_BATCH_ROWS}": 4,
                "streams": "2 PredictStream + 1 ClassifyStream at 15 messages/s each",
                "bad inputs": 1,
            },
            "stream_bad_every": STREAM_BAD_EVERY,
            "call_timeout_seconds": CALL_TIMEOUT_S,
        },
        "load_seconds": round(outcome.load_seconds, 1),
        "interrupted": outcome.interrupted,
        "unexpected_errors": sum(recorder.unexpected.values()),
        "expected_errors": sum(recorder.expected.values()),
        "calls": {kind: len(recorder.ends.get(kind, ())) for kind in kinds},
        "errors_by_kind": errors,
        "error_examples": dict(recorder.examples),
        "expected_errors_by_kind": dict(sorted(recorder.expected.items())),
        "events": [asdict(each) for each in outcome.events],
        "resources": {
            name: resource_figures(each, outcome.load_seconds, max((e.finished_s for e in outcome.events), default=0))
            for name, each in outcome.samples.items()
        },
        "latency": latency_figures(recorder),
        "served": served,
        "server_counters": outcome.counters,
    }


def markdown(summary: dict[str, Any]) -> str:
    passed = summary["unexpected_errors"] == 0 and not summary["interrupted"]
    lines = [
        f"# Soak: {summary['settings']['minutes']:g} min of mixed load ({summary['date']})",
        "",
        f"**{'PASS' if passed else 'FAIL'}**: {summary['unexpected_errors']} unexpected errors, "
        f"{summary['expected_errors']} deliberate bad inputs refused as expected; load ran "
        f"{summary['load_seconds']:.0f} s, {sum(summary['calls'].values()):,} calls answered OK"
        + (" (interrupted)" if summary["interrupted"] else "")
        + f". Load average {summary['load_average']['before']} before, {summary['load_average']['after']} after.",
        "",
        "## Calls and errors",
        "",
        "| kind | calls OK | p50 ms | p99 ms | max ms | unexpected errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, calls in summary["calls"].items():
        figures = summary["latency"].get(kind)
        errors = ", ".join(f"{what} {count}" for what, count in summary["errors_by_kind"][kind].items()) or "0"
        timing = (
            ["", "", ""] if figures is None else [f"{figures[each]:.2f}" for each in ("p50_ms", "p99_ms", "max_ms")]
        )
        lines.append(f"| {kind} | {calls:,} | " + " | ".join(timing) + f" | {errors} |")
    lines += ["", "Deliberate bad inputs, each refused with INVALID_ARGUMENT (REST 422):", ""]
    lines += [f"- {kind}: {count}" for kind, count in summary["expected_errors_by_kind"].items()]
    for kind, examples in summary["error_examples"].items():
        lines += ["", f"Unexpected errors of {kind} (first {len(examples)}):", ""]
        lines += [f"- {each}" for each in examples]
    lines += [
        "",
        "## Events",
        "",
        "| event | planned s | started s | finished s | took s | started at (UTC) | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for event in summary["events"]:
        result = (
            ", ".join(f"{key} {value}" for key, value in event["detail"].items())
            if event["ok"]
            else f"FAILED: {event['error'] or 'not run'}"
        )
        took = event["finished_s"] - event["started_s"]
        lines.append(
            f"| {event['name']} | {event['planned_s']:.0f} | {event['started_s']:.1f} | {event['finished_s']:.1f} "
            f"| {took:.1f} | {event['started_at']} | {result} |"
        )
    lines += [
        "",
        "## Resources",
        "",
        "| process | RSS first minute MiB | RSS last minute MiB | growth | after the events, to the end | RSS max MiB "
        "| fds start / end / max | threads start / end / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, figures in summary["resources"].items():
        if figures:
            fds, threads = figures["fds"], figures["threads"]
            lines.append(
                f"| {name} | {figures['rss_first_minute_mib']:.1f} | {figures['rss_last_minute_mib']:.1f} "
                f"| {figures['rss_growth_mib']:+.1f} MiB ({figures['rss_growth_percent']:+.1f}%) "
                f"| {figures['rss_after_events_mib']:.1f} to {figures['rss_end_mib']:.1f} MiB "
                f"({figures['rss_growth_after_events_mib']:+.1f}, {figures['seconds_after_events']:.0f} s) "
                f"| {figures['rss_max_mib']:.1f} | {fds['start']} / {fds['end']} / {fds['max']} "
                f"| {threads['start']} / {threads['end']} / {threads['max']} |"
            )
    lines.append(
        f"\nMedians of the samples (every {summary['settings']['sample_seconds']:g} s) in the first and the last 60 s "
        "of the load (the same window when it ran a minute or less); after the events: the first sample after the last "
        "event ended, and the last sample. The events load versions (a retrained one, a challenger), so growth "
        "across them is expected. The server's retrain children are not counted."
    )
    minutes = max((len(each["per_minute"]) for each in summary["latency"].values()), default=0)
    lines += [
        "",
        "## Latency per minute: p50 / p99 ms (calls)",
        "",
        "| kind | " + " | ".join(f"minute {minute + 1}" for minute in range(minutes)) + " |",
        "| --- |" + " --- |" * minutes,
    ]
    for kind, figures in summary["latency"].items():
        cells = {each["minute"]: each for each in figures["per_minute"]}
        row = [
            f"{cells[m]['p50_ms']:.2f} / {cells[m]['p99_ms']:.2f} ({cells[m]['calls']:,})" if m in cells else ""
            for m in range(1, minutes + 1)
        ]
        lines.append(f"| {kind} | " + " | ".join(row) + " |")
    lines += ["", "## Who answered (housing and iris versions, variant), per minute", ""]
    for kind, per_minute in summary["served"].items():
        parts = [
            f"{minute}: " + ", ".join(f"{version} {count:,}" for version, count in versions.items())
            for minute, versions in per_minute.items()
        ]
        lines.append(f"- {kind}: " + "; ".join(parts))
    lines += ["", "## At the end", ""]
    lines.append("Server counters: " + ", ".join(f"{k} {v:g}" for k, v in summary["server_counters"].items()) + ".")
    lines.append(
        "Exit codes after SIGTERM: " + ", ".join(f"{k} {v}" for k, v in summary["exit_codes"].items()) + "; ERROR "
        "lines in the logs: " + ", ".join(f"{k} {len(v)}" for k, v in summary["log_errors"].items()) + "."
    )
    for name, found in summary["log_errors"].items():
        lines += [f"    {name}: {line}" for line in found[:5]]
    return "\n".join(lines)


def run(options: Options) -> dict[str, Any]:
    began = time.monotonic()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = load_average()
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="soak-") as folder, ExitStack() as stack:
        scratch = Path(folder)
        workspace = Workspace(options.registry or scratch / "registry", options.max_rows)
        training = prepare_registry(workspace)
        trained = time.monotonic()
        print(f"registry ready in {trained - began:.0f} s:", *training, sep="\n  ", file=sys.stderr, flush=True)
        server = start_server(workspace, scratch, token)
        stack.callback(server.stop)
        wait_serving(server)
        bridge = start_bridge(workspace, scratch, server.port)
        stack.callback(bridge.stop)
        print(f"serving (gRPC {server.port}, REST {bridge.port}); load for {options.minutes:g} min", file=sys.stderr)
        try:
            outcome = asyncio.run(soak(options, server, bridge, token))
        finally:
            # asyncio took the signals over while it ran; from here on they unwind as before.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        stack.close()  # the bridge first, then the server
        exit_codes = {"bridge": bridge.process.returncode, "server": server.process.returncode}
        for name, code in exit_codes.items():
            if code != 0:
                outcome.recorder.error(f"{name} process", f"exit {code}", "did not exit 0 on SIGTERM")
        errors = {"server": log_errors(server.log), "bridge": log_errors(bridge.log)}
        for name, found in errors.items():
            for line in found:
                outcome.recorder.error(f"{name} log", "ERROR line", line)
        if outcome.recorder.unexpected:
            for each in (server, bridge):
                print(f"--- {each.log.name} (tail) ---\n{each.log_tail()}", file=sys.stderr)
        extra = {
            "date": date,
            "machine": machine(),
            "load_average": {"before": load_before, "after": load_average()},
            "training": training,
            "seconds": {"training": round(trained - began, 1), "total": round(time.monotonic() - began, 1)},
            "exit_codes": exit_codes,
            "log_errors": errors,
        }
        return summarise(outcome, options, extra)


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--max-rows", type=int, help="train and retrain housing on N rows (quick runs)")
    parser.add_argument(
        "--registry",
        type=Path,
        help="keep the trained registry in this directory and reuse it next time (default: a fresh one each run)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every traffic rate (default 1)")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="resource sampling interval (default 5)")
    arguments = parser.parse_args(argv)
    if arguments.minutes <= 0 or arguments.scale <= 0 or arguments.sample_seconds <= 0:
        parser.error("--minutes, --scale and --sample-seconds must be positive")
    return Options(
        arguments.minutes,
        arguments.json,
        arguments.max_rows,
        arguments.scale,
        arguments.sample_seconds,
        None if arguments.registry is None else arguments.registry.resolve(),
    )


def _raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    options = parse_options()
    # SIGTERM unwinds like Ctrl-C, so that everything started is stopped.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        summary = run(options)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'SIGINT'}): every process was stopped", file=sys.stderr)
        return 2
    summary["report"] = markdown(summary)
    print(summary["report"])
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwritten to {options.json_path}", file=sys.stderr)
    if summary["interrupted"]:
        return 2
    return 1 if summary["unexpected_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
