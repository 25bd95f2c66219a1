"""Single-row housing ``Predict`` latency with and without a retrain running, on the real server process.

    python -m benchmarks.retrain_latency [--rounds 3] [--phase-seconds 15] [--concurrency 8] [--max-rows N]
                                         [--niceness 10 [0 ...]] [--warmup-seconds 5] [--json PATH]

Set-up, in a temporary directory, on 127.0.0.1 only: ``python -m training`` trains both models into a fresh
SQLite registry (all rows and the 300-tree housing model by default, what ``make run`` serves), then
``python -m server`` serves them on port 0 with an admin token, a state directory of its own and the same
``TRAINING_*`` environment, so that its retrain children find the data. ``--max-rows`` trains on a subset, for
quick runs: the initial models and every retrain (the housing RMSE floor is lifted then, or a small model would
never become champion).

Load: a load-generator process (asyncio, closed loop: ``--concurrency`` callers on one channel, each sending
the next request when the previous answer arrived) sends one prebuilt single-row ``HousingPredictor/Predict``
and timestamps every answer with ``CLOCK_MONOTONIC``, which is the same clock in every process; it runs
through a whole phase, and this process decides afterwards which answers fall into the measured windows.

Phases, ``--rounds`` rounds, their order alternating from round to round:

- ``idle``: no retrain; one window of ``--phase-seconds``.
- ``retraining``: ``ModelAdmin/Retrain`` of housing; measured while ``GetOperation`` says RUNNING, for
  ``--phase-seconds`` in all. A retrain that finishes sooner is followed by another once the version it promoted
  is served (one retrain per model at a time). One still running when the phase ends is waited for, and its hot
  reload too, before the next phase. The load keeps running meanwhile, which gives two more figures: ``whole
  retrain`` (every retrain from RUNNING to its end) and ``hot reload`` (from the end of a promoting retrain until
  ``GetModelInfo`` names the new version; the server loads it in its own process).

The retrains set the pace: each retraining phase lasts as long as its retrain (20-40 s for the full housing model
on 2 cores), so ``--niceness 10 0`` takes about 5.5 minutes and one niceness about 3.

Both phases poll the admin service at the same rate, so that they carry the same admin traffic.

Figures per phase and round: p50, p99, throughput; the server process's own CPU per request (utime+stime of its
pid from /proc: the retrain children are counted apart, as ``retrain cores``, their CPU over the window's wall
time); the mean time inside the server's Predict handler (``grpc_server_handling_seconds`` from its /metrics),
which tells the server's own slowdown from waiting for a core or the client; the load generator's CPU per
request; and ``other cores``, what every other process on the machine used (from /proc/stat): the machine may be
shared, and that column says how much. A digest of the project's sources is taken around every phase, since
retrain children import ``training`` afresh: a change while it runs is reported. Reported: the median over rounds
and the ratio retraining / idle. Several ``--niceness`` values (``PREDICTOR_RETRAIN_NICENESS``) each get a server
of their own on the same registry, one after the other.
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from data.schema import HOUSING_FEATURES
from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, housing_pb2, housing_pb2_grpc, model_pb2

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "retrain_latency.json"
PREDICT = "/prediction.v1.HousingPredictor/Predict"
# The first block group of the data set (Berkeley), the README's example.
HOUSING_ROW = (8.3252, 41.0, 6.984127, 1.02381, 322.0, 2.555556, 37.88, -122.23)
PORTS = re.compile(r"gRPC on port (\d+), metrics on port (\d+)")
PREDICT_LABELS = {'grpc_service="prediction.v1.HousingPredictor"', 'grpc_method="Predict"'}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TRAINING_TIMEOUT_S = 1800.0
START_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 30.0
RETRAIN_TIMEOUT_S = 1800.0
RELOAD_TIMEOUT_S = 180.0
POLL_S = 0.1
RAMP_S = 1.0  # load runs this long before a window opens
SETTLE_S = 1.0  # after a hot reload, before the next retrain or phase
MAX_RETRAINS_PER_PHASE = 50
# What the server and its retrain children import from this working tree (retrain children import it anew).
SOURCE_PACKAGES = ("server", "training", "model_registry", "data", "protos")
RUNNING, SUCCEEDED, FAILED = (
    admin_pb2.OPERATION_STATE_RUNNING,
    admin_pb2.OPERATION_STATE_SUCCEEDED,
    admin_pb2.OPERATION_STATE_FAILED,
)


# ---------------------------------------------------------------------------------------------------
# CPU accounting from /proc


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [0] state, [1] ppid, [11:15] utime stime cutime cstime."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants_cpu(pid: int) -> float:
    """CPU of everything ``pid`` started: live descendants, and the children it has waited for (cutime + cstime).

    A child that exits moves its CPU from the first term to the second when it is waited for, so the sum is
    continuous across a retrain child's end.
    """
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                tree.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    fields = _stat_fields(pid)
    ticks = int(fields[13]) + int(fields[14])
    pending = list(tree.get(pid, ()))
    while pending:
        child = pending.pop()
        with contextlib.suppress(OSError):
            ticks += sum(int(each) for each in _stat_fields(child)[11:15])
        pending.extend(tree.get(child, ()))
    return ticks / CLOCK_TICKS


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every core), from the first line of /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(each) for each in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True)
class Reading:
    """CPU seconds so far of each party, at one moment (``time.monotonic()``)."""

    at: float
    server: float
    retrain: float
    generator: float
    bench: float
    machine: float
    handler_seconds: float
    """``grpc_server_handling_seconds`` of housing Predict so far: time inside the server's handler."""
    handler_calls: float


def predict_handling(metrics_port: int) -> tuple[float, float]:
    """(sum, count) of the server's ``grpc_server_handling_seconds`` histogram for housing ``Predict``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=CALL_TIMEOUT_S) as answer:
        text = answer.read().decode()
    found = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("} ")
        kind = name.removeprefix("grpc_server_handling_seconds_")
        if name != kind and kind in found and PREDICT_LABELS.issubset(labels.split(",")):
            found[kind] = float(value)
    return found["sum"], found["count"]


@dataclass(frozen=True)
class Meter:
    server_pid: int
    generator_pid: int
    metrics_port: int

    def read(self) -> Reading:
        at = time.monotonic()
        handler_seconds, handler_calls = predict_handling(self.metrics_port)
        return Reading(
            at=at,
            server=process_cpu(self.server_pid),
            retrain=descendants_cpu(self.server_pid),
            generator=process_cpu(self.generator_pid),
            bench=time.process_time(),
            machine=machine_busy(),
            handler_seconds=handler_seconds,
            handler_calls=handler_calls,
        )


@dataclass(frozen=True)
class Window:
    """A measured interval. Answers count up to ``until`` (at most ``end.at``: a retrain's recorded end)."""

    start: Reading
    end: Reading
    until: float


# ---------------------------------------------------------------------------------------------------
# Figures


@dataclass(frozen=True)
class Samples:
    """Every answer of one load run: monotonic end times (sorted) and latencies, and failed calls."""

    ends: np.ndarray[Any, np.dtype[np.float64]]
    latencies: np.ndarray[Any, np.dtype[np.float64]]
    errors: list[tuple[float, str]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Samples":
        return cls(
            np.asarray(data["ends"], dtype=np.float64),
            np.asarray(data["latencies"], dtype=np.float64),
            [(float(at), str(code)) for at, code in data["errors"]],
        )

    def between(self, start: float, end: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        low, high = np.searchsorted(self.ends, [start, end], side="right")
        return self.latencies[low:high]


@dataclass(frozen=True)
class Figures:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    rps: float
    server_cpu_ms: float
    """The server process's own CPU per request (every thread, the retrain children not included)."""
    handler_ms: float
    """Mean time inside the server's Predict handler (its gRPC histogram): the rest of the latency is waiting
    (for a core, the GIL, the transport) and the client."""
    generator_cpu_ms: float
    """The load generator's CPU per request."""
    retrain_cores: float
    """CPU of the server's children (retrains) over the window's wall time."""
    other_cores: float
    """CPU of every other process on the machine over the window's wall time."""
    errors: int

    @classmethod
    def of(cls, samples: Samples, windows: Sequence[Window]) -> "Figures":
        kept = np.sort(np.concatenate([samples.between(each.start.at, each.until) for each in windows]))
        count = len(kept)
        if count == 0:
            raise RuntimeError("no answer in the measured window: is the load generator calling the server?")
        # CPU is read at the window's edges: charge it to every answer between them.
        charged = sum(len(samples.between(each.start.at, each.end.at)) for each in windows)

        def spent(name: str) -> float:
            return float(sum(getattr(each.end, name) - getattr(each.start, name) for each in windows))

        wall = spent("at")
        others = spent("machine") - spent("server") - spent("retrain") - spent("generator") - spent("bench")
        return cls(
            requests=count,
            seconds=sum(each.until - each.start.at for each in windows),
            p50_ms=float(kept[count // 2]) * 1000,
            p99_ms=float(kept[min(count - 1, int(count * 0.99))]) * 1000,
            rps=count / sum(each.until - each.start.at for each in windows),
            server_cpu_ms=spent("server") / max(charged, 1) * 1000,
            handler_ms=spent("handler_seconds") / max(spent("handler_calls"), 1) * 1000,
            generator_cpu_ms=spent("generator") / max(charged, 1) * 1000,
            retrain_cores=spent("retrain") / wall,
            other_cores=max(others, 0.0) / wall,
            errors=sum(any(each.start.at <= at <= each.until for each in windows) for at, _code in samples.errors),
        )

    @classmethod
    def median(cls, rounds: Sequence["Figures"]) -> "Figures":
        values = {name: statistics.median(getattr(each, name) for each in rounds) for name in cls.__dataclass_fields__}
        return cls(**{**values, "requests": round(values["requests"]), "errors": round(values["errors"])})


# ---------------------------------------------------------------------------------------------------
# The load generator (its own process: ``--load-generator``; commands on stdin, answers on stdout)


def housing_request() -> bytes:
    return housing_pb2.HousingFeatures(**dict(zip(HOUSING_FEATURES, HOUSING_ROW, strict=True))).SerializeToString()


async def _load(
    method: "grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]",
    body: bytes,
    concurrency: int,
    seconds: float,
    stop: asyncio.Event,
) -> dict[str, Any]:
    ends: list[float] = []
    latencies: list[float] = []
    errors: list[tuple[float, str]] = []
    clock = time.monotonic
    deadline = clock() + seconds

    async def caller() -> None:
        while not stop.is_set() and clock() < deadline:
            before = clock()
            try:
                await method(body, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                errors.append((clock(), exc.code().name))
                await asyncio.sleep(0.01)  # a server refusing at once must not make this a busy loop
                continue
            after = clock()
            ends.append(after)
            latencies.append(after - before)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {"ends": ends, "latencies": latencies, "errors": errors}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _generate(port: int, concurrency: int, warmup_seconds: float) -> None:
    """Warm up, say ``ready``; then for each ``go SECONDS`` load until ``stop`` (or SECONDS) and send the samples."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "exit")

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    body = housing_request()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PREDICT)
        warmup = await _load(method, body, concurrency, warmup_seconds, asyncio.Event())
        if warmup["errors"] or not warmup["latencies"]:
            _say(f"warm-up failed: {len(warmup['latencies'])} answers, errors {warmup['errors'][:5]}")
            return
        _say("ready")
        while (command := await commands.get()) != "exit":
            verb, _, argument = command.partition(" ")
            if verb != "go":
                _say(f"unknown command {command!r}")
                return
            stop = asyncio.Event()
            task = asyncio.create_task(_load(method, body, concurrency, float(argument), stop))
            _say("started")
            command = await commands.get()
            stop.set()
            _say(json.dumps(await task))
            if command == "exit":
                return


def load_generator_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrain_latency --load-generator")
    parser.add_argument("--load-generator", action="store_true")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup-seconds", type=float, required=True)
    arguments = parser.parse_args(argv)
    asyncio.run(_generate(arguments.port, arguments.concurrency, arguments.warmup_seconds))


class LoadGenerator:
    """The parent's handle on the load-generator process."""

    def __init__(self, port: int, concurrency: int, warmup_seconds: float, log: Path) -> None:
        self.log = log
        command = [sys.executable, "-m", "benchmarks.retrain_latency", "--load-generator", "--port", str(port)]
        command += ["--concurrency", str(concurrency), "--warmup-seconds", str(warmup_seconds)]
        with log.open("wb") as errors:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=True,
            )

    def _send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def _receive(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator died:\n{self.log.read_text(errors='replace')[-3000:]}")
        return line.strip()

    def wait_ready(self) -> None:
        if (answer := self._receive()) != "ready":
            raise RuntimeError(f"the load generator: {answer}")

    def start(self, max_seconds: float) -> None:
        self._send(f"go {max_seconds}")
        if (answer := self._receive()) != "started":
            raise RuntimeError(f"the load generator: {answer}")

    def finish(self) -> Samples:
        self._send("stop")
        return Samples.from_json(json.loads(self._receive()))

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


# ---------------------------------------------------------------------------------------------------
# Processes: training, the server


def sources_digest() -> dict[str, str]:
    """A digest of each package's Python sources: the working tree may be edited while the benchmark runs."""
    digests = {}
    for package in SOURCE_PACKAGES:
        digest = hashlib.sha256()
        for path in sorted((ROOT / package).rglob("*.py")):
            with contextlib.suppress(OSError):
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
        digests[package] = digest.hexdigest()[:12]
    return digests


@dataclass(frozen=True)
class Workspace:
    """The temporary directory and the environment shared by training, the server and its retrain children."""

    root: Path
    max_rows: int | None

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def environment(self) -> dict[str, str]:
        # Nothing of the caller's own PREDICTOR_/TRAINING_ settings: every run starts from the same defaults.
        inherited = {
            name: value for name, value in os.environ.items() if not name.startswith(("PREDICTOR_", "TRAINING_"))
        }
        env = {
            **inherited,
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.root / 'mlflow.db'}",
            "TRAINING_DATA_DIR": str(self.root / "data"),
            "TRAINING_ARTIFACT_ROOT": str(self.root / "mlartifacts"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "GRPC_VERBOSITY": "ERROR",
        }
        env.setdefault("SCIKIT_LEARN_DATA", str(ROOT.parent / "shared" / "data" / "scikit_learn_data"))
        if self.max_rows is not None:
            env["TRAINING_HOUSING_MAX_RMSE"] = "10"  # a model fitted on a subset must still become champion
        return env


def train_registry(workspace: Workspace) -> list[str]:
    """Both models, with the project's own ``python -m training`` (iris always on all its 150 rows).

    Returns its summary lines (``<model> v<N>: <metrics>; promoted ...``), one per model.
    """
    runs = [["--model", "housing", "--max-rows", str(workspace.max_rows)], ["--model", "iris"]]
    for arguments in [[]] if workspace.max_rows is None else runs:
        log = workspace.logs / "training.log"
        with log.open("ab") as output:
            result = subprocess.run(
                [sys.executable, "-m", "training", *arguments],
                check=False,
                cwd=workspace.root,
                env=workspace.environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=TRAINING_TIMEOUT_S,
            )
        if result.returncode != 0:
            raise RuntimeError(f"training failed:\n{log.read_text(errors='replace')[-3000:]}")
    summary = re.compile(r"^(CaliforniaHousingBestModel|IrisBestModel) v\d+: ", flags=re.MULTILINE)
    text = (workspace.logs / "training.log").read_text(errors="replace")
    return [line for line in text.splitlines() if summary.match(line)]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    metrics_port: int = 0

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (the server stops its retrain children itself), SIGKILL to the whole group after 30 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # A retrain child that outlived the server is still in its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_server(workspace: Workspace, name: str, token: str, niceness: int) -> Server:
    log = workspace.logs / f"{name}.log"
    env = {
        **workspace.environment,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_ADMIN_TOKEN": token,
        "PREDICTOR_ADMIN_ALLOW_PLAINTEXT": "true",
        "PREDICTOR_STATE_DIR": str(workspace.root / f"state-{name}"),
        "PREDICTOR_RETRAIN_WORKDIR": str(workspace.root),
        "PREDICTOR_RETRAIN_NICENESS": str(niceness),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, log)


def wait_serving(server: Server) -> None:
    """Read the bound port from the log, then wait for ``grpc.health.v1`` to say SERVING for ``""``."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (match := PORTS.search(server.log.read_text(errors="replace"))) is None:
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{server.log_tail()}")
        time.sleep(0.1)
    server.port, server.metrics_port = int(match.group(1)), int(match.group(2))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.RpcError):
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become SERVING:\n{server.log_tail()}")
            time.sleep(0.25)


# ---------------------------------------------------------------------------------------------------
# The admin side


def _monotonic_of(moment: Timestamp) -> float:
    """A wall-clock timestamp of the server on this process's monotonic clock (same machine)."""
    return moment.ToNanoseconds() / 1e9 - time.time() + time.monotonic()


@dataclass(frozen=True)
class RetrainRecord:
    operation_id: str
    seconds: float
    """From started_at to finished_at, as the server recorded them."""
    decision: str
    registered_version: str
    reload_seconds: float | None
    """From the end of the retrain until the new version was served (None when it was not promoted)."""
    candidate_metrics: dict[str, float] = field(default_factory=dict)


class Admin:
    def __init__(self, channel: grpc.Channel, token: str, max_rows: int | None) -> None:
        self._admin = admin_pb2_grpc.ModelAdminStub(channel)
        self._housing = housing_pb2_grpc.HousingPredictorStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._max_rows = max_rows
        self.last_operation: str | None = None

    def retrain(self) -> tuple[admin_pb2.Operation, int]:
        """Start a housing retrain: the operation, and how often ALREADY_EXISTS was answered first.

        Called only once the previous operation is reported finished, when the server should accept at once.
        """
        request = admin_pb2.RetrainRequest(model="housing")
        if self._max_rows is not None:
            request.max_rows = self._max_rows
        deadline = time.monotonic() + CALL_TIMEOUT_S
        for refusals in range(int(CALL_TIMEOUT_S / POLL_S) + 1):
            try:
                operation = self._admin.Retrain(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                # The raised object is also a grpc.Call, which the type stubs do not say.
                refused = getattr(exc, "code", lambda: None)() == grpc.StatusCode.ALREADY_EXISTS
                if not refused or time.monotonic() > deadline:
                    raise
                time.sleep(POLL_S)
                continue
            self.last_operation = operation.id
            return operation, refusals
        raise RuntimeError("Retrain answered ALREADY_EXISTS for 30 s after the previous retrain finished")

    def get(self, operation_id: str) -> admin_pb2.Operation:
        return self._admin.GetOperation(
            admin_pb2.GetOperationRequest(id=operation_id), metadata=self._metadata, timeout=CALL_TIMEOUT_S
        )

    def poll(self) -> None:
        """The admin call the idle phase makes as often as a retraining phase polls its operation."""
        if self.last_operation is None:
            request = admin_pb2.ListOperationsRequest(model="housing")
            self._admin.ListOperations(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
        else:
            self.get(self.last_operation)

    def wait(self, operation_id: str, states: set[int], timeout: float) -> admin_pb2.Operation:
        deadline = time.monotonic() + timeout
        while (operation := self.get(operation_id)).state not in states:
            if time.monotonic() > deadline:
                raise RuntimeError(f"retrain {operation_id} still {admin_pb2.OperationState.Name(operation.state)}")
            time.sleep(POLL_S)
        return operation

    def served_version(self) -> str:
        info = self._housing.GetModelInfo(model_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)
        return str(info.model.version)


# ---------------------------------------------------------------------------------------------------
# Phases


@dataclass
class PhaseRun:
    phase: str
    figures: Figures
    """The measured phase."""
    whole: Figures | None = None
    """Retraining: every retrain of the phase from RUNNING to its end, past the end of the phase."""
    reload: Figures | None = None
    """Retraining: from the end of each promoting retrain until its version was served."""
    retrains: list[RetrainRecord] = field(default_factory=list)
    refusals: int = 0
    """Retrain calls answered ALREADY_EXISTS although the model's previous operation was reported finished."""
    round: int = 0
    sources: list[dict[str, str]] = field(default_factory=list)
    """Digests of the project's Python packages at the start and the end of the phase."""


@dataclass
class Block:
    """One server (one retrain niceness) and every phase measured on it."""

    niceness: int
    runs: list[PhaseRun] = field(default_factory=list)
    started_sources: dict[str, str] = field(default_factory=dict)
    """Digests of the project's packages when its server started."""

    def median(self, phase: str) -> Figures | None:
        chosen = [each.figures for each in self.runs if each.phase == phase]
        return Figures.median(chosen) if chosen else None

    def whole_median(self) -> Figures | None:
        chosen = [each.whole for each in self.runs if each.whole is not None]
        return Figures.median(chosen) if chosen else None

    def reload_median(self) -> Figures | None:
        chosen = [each.reload for each in self.runs if each.reload is not None]
        return Figures.median(chosen) if chosen else None

    @property
    def changed_sources(self) -> list[str]:
        """The packages whose sources changed while this block ran (from its server's start to its last phase)."""
        seen = [self.started_sources, *(digests for each in self.runs for digests in each.sources)]
        return [package for package in SOURCE_PACKAGES if len({digests[package] for digests in seen}) > 1]

    @property
    def retrains(self) -> list[RetrainRecord]:
        return [record for each in self.runs for record in each.retrains]


@dataclass(frozen=True)
class Bench:
    admin: Admin
    generator: LoadGenerator
    meter: Meter
    phase_seconds: float

    def idle(self) -> PhaseRun:
        self.generator.start(self.phase_seconds + 60)
        time.sleep(RAMP_S)
        start = self.meter.read()
        while time.monotonic() - start.at < self.phase_seconds:
            time.sleep(POLL_S)
            self.admin.poll()
        end = self.meter.read()
        return PhaseRun("idle", Figures.of(self.generator.finish(), [Window(start, end, end.at)]))

    def retraining(self) -> PhaseRun:
        """Retrains one after the other until ``phase_seconds`` of RUNNING were measured; then the last one's end."""
        self.generator.start(RETRAIN_TIMEOUT_S + RELOAD_TIMEOUT_S + self.phase_seconds)
        time.sleep(RAMP_S)
        measured: list[Window] = []  # the phase: at most phase_seconds of RUNNING
        whole: list[Window] = []  # every retrain from RUNNING to its end
        reloads: list[Window] = []
        records: list[RetrainRecord] = []
        refusals = 0
        for _ in range(MAX_RETRAINS_PER_PHASE):
            started, refused = self.admin.retrain()
            refusals += refused
            operation = self.admin.wait(started.id, {RUNNING, SUCCEEDED, FAILED}, CALL_TIMEOUT_S)
            start = self.meter.read()
            elapsed = sum(each.end.at - each.start.at for each in measured)
            while operation.state == RUNNING and elapsed + time.monotonic() - start.at < self.phase_seconds:
                time.sleep(POLL_S)
                operation = self.admin.get(operation.id)
            cut = self.meter.read()
            phase_over = operation.state == RUNNING
            if phase_over:
                measured.append(Window(start, cut, cut.at))
                operation = self.admin.wait(operation.id, {SUCCEEDED, FAILED}, RETRAIN_TIMEOUT_S)
            finish = self.meter.read() if phase_over else cut
            # Answers count until the end the server recorded: a hot reload starts right after it.
            until = min(finish.at, _monotonic_of(operation.finished_at))
            if until > start.at:
                whole.append(Window(start, finish, until))
                if not phase_over:
                    measured.append(Window(start, cut, until))
            record, reload = self._settle(operation, finish)
            records.append(record)
            if reload is not None:
                reloads.append(reload)
            if phase_over or sum(each.end.at - each.start.at for each in measured) >= self.phase_seconds:
                break
        samples = self.generator.finish()
        if not measured:
            raise RuntimeError("no retrain was seen RUNNING: they finish faster than the poll interval")
        return PhaseRun(
            phase="retraining",
            figures=Figures.of(samples, measured),
            whole=Figures.of(samples, whole),
            reload=Figures.of(samples, reloads) if reloads else None,
            retrains=records,
            refusals=refusals,
        )

    def _settle(self, operation: admin_pb2.Operation, finished: Reading) -> tuple[RetrainRecord, Window | None]:
        """Wait until a promoted version is served; the hot-reload window (None when nothing was promoted)."""
        if operation.state == FAILED:
            raise RuntimeError(f"retrain {operation.id} failed: {operation.failure_reason}")
        seconds = (operation.finished_at.ToNanoseconds() - operation.started_at.ToNanoseconds()) / 1e9
        decision = admin_pb2.GateDecision.Name(operation.decision).removeprefix("GATE_DECISION_").lower()
        window = None
        if operation.decision == admin_pb2.GATE_DECISION_PROMOTED:
            deadline = time.monotonic() + RELOAD_TIMEOUT_S
            while self.admin.served_version() != operation.registered_version:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"version {operation.registered_version} was promoted but is not served")
                time.sleep(POLL_S / 2)
            served = self.meter.read()
            # The answers count from the recorded end of the retrain, the CPU from when it was seen.
            window = Window(replace(finished, at=_monotonic_of(operation.finished_at)), served, served.at)
        time.sleep(SETTLE_S)
        reload_seconds = None if window is None else window.end.at - window.start.at
        record = RetrainRecord(
            operation.id,
            seconds,
            decision,
            operation.registered_version,
            reload_seconds,
            dict(operation.candidate_metrics),
        )
        return record, window


def run_block(workspace: Workspace, options: "Options", niceness: int) -> Block:
    block = Block(niceness)
    name = f"server-nice{niceness}"
    token = secrets.token_urlsafe(24)
    with ExitStack() as stack:
        block.started_sources = sources_digest()
        server = start_server(workspace, name, token, niceness)
        stack.callback(server.stop)
        wait_serving(server)
        generator = LoadGenerator(
            server.port, options.concurrency, options.warmup_seconds, workspace.logs / f"load-{name}.log"
        )
        stack.callback(generator.stop)
        generator.wait_ready()
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        bench = Bench(
            Admin(channel, token, workspace.max_rows),
            generator,
            Meter(server.process.pid, generator.process.pid, server.metrics_port),
            options.phase_seconds,
        )
        try:
            for round_index in range(options.rounds):
                order = ("idle", "retraining") if round_index % 2 == 0 else ("retraining", "idle")
                for phase in order:
                    print(
                        f"niceness {niceness}, round {round_index + 1}/{options.rounds}: {phase}",
                        file=sys.stderr,
                        flush=True,
                    )
                    before = sources_digest()
                    result = bench.idle() if phase == "idle" else bench.retraining()
                    result.round, result.sources = round_index, [before, sources_digest()]
                    block.runs.append(result)
        except BaseException:
            print(f"--- server log ---\n{server.log_tail()}", file=sys.stderr)
            raise
    return block


# ---------------------------------------------------------------------------------------------------
# Report


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def _row(niceness: int, label: str, figures: Figures) -> str:
    return (
        f"| {niceness} | {label} | {figures.p50_ms:.2f} | {figures.p99_ms:.2f} | {figures.rps:.0f} "
        f"| {figures.server_cpu_ms:.2f} | {figures.handler_ms:.2f} | {figures.retrain_cores:.2f} "
        f"| {figures.other_cores:.2f} | {figures.requests:,} | {figures.errors} |"
    )


def _ratio_row(niceness: int, label: str, figures: Figures, idle: Figures) -> str:
    return (
        f"| {niceness} | {label} | {_ratio(figures.p50_ms, idle.p50_ms)} | {_ratio(figures.p99_ms, idle.p99_ms)} "
        f"| {_ratio(figures.rps, idle.rps)} | {_ratio(figures.server_cpu_ms, idle.server_cpu_ms)} "
        f"| {_ratio(figures.handler_ms, idle.handler_ms)} | | | | |"
    )


def report(blocks: Sequence[Block]) -> str:
    lines = [
        "| retrain niceness | phase | p50 ms | p99 ms | req/s | server CPU ms/req | handler ms | retrain cores "
        "| other cores | answers | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for block in blocks:
        idle, retraining, whole = block.median("idle"), block.median("retraining"), block.whole_median()
        reload = block.reload_median()
        for label, figures in (("idle", idle), ("retraining", retraining), ("whole retrain", whole)):
            if figures is not None:
                lines.append(_row(block.niceness, label, figures))
        if reload is not None:
            lines.append(_row(block.niceness, "hot reload", reload))
        if idle is not None and retraining is not None:
            lines.append(_ratio_row(block.niceness, "**retraining / idle**", retraining, idle))
        if idle is not None and whole is not None:
            lines.append(_ratio_row(block.niceness, "whole retrain / idle", whole, idle))
    lines.append("")
    for block in blocks:
        if not (retrains := block.retrains):
            continue
        seconds = statistics.median(each.seconds for each in retrains)
        decisions = ", ".join(sorted({each.decision for each in retrains}))
        reloads = [each.reload_seconds for each in retrains if each.reload_seconds is not None]
        line = f"niceness {block.niceness}: {len(retrains)} retrains of median {seconds:.1f} s ({decisions})"
        if reloads:
            line += f", hot reload median {statistics.median(reloads):.2f} s"
        if refusals := sum(each.refusals for each in block.runs):
            line += f"; {refusals} Retrain calls refused with ALREADY_EXISTS after the previous one had finished"
        if changed := block.changed_sources:
            line += f"; WARNING: sources changed while it ran: {', '.join(changed)}"
        lines.append(line)
    lines.append(
        "Medians over rounds. retraining = at most the phase duration of each round's retrain; whole retrain = from "
        "RUNNING to its end; hot reload = from the end of a promoting retrain until its version is served. server "
        "CPU = the server process's own (its retrain children apart); handler = mean time inside the server's "
        "Predict handler (grpc_server_handling_seconds); retrain cores, other cores = the CPU of the "
        "retrain children and of every other process on the machine, over wall time."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Orchestration


@dataclass(frozen=True)
class Options:
    rounds: int
    phase_seconds: float
    concurrency: int
    max_rows: int | None
    niceness: list[int]
    warmup_seconds: float
    json_path: Path


def machine() -> dict[str, Any]:
    names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), flags=re.MULTILINE)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": names[0] if names else platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    return [float(each) for each in Path("/proc/loadavg").read_text().split()[:3]]


def run(options: Options) -> dict[str, Any]:
    began = time.monotonic()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="retrain-latency-") as folder:
        workspace = Workspace(Path(folder), options.max_rows)
        workspace.logs.mkdir()
        print("training both models into a temporary registry ...", file=sys.stderr, flush=True)
        training = train_registry(workspace)
        trained = time.monotonic()
        print(f"trained in {trained - began:.0f} s:", *training, sep="\n  ", file=sys.stderr, flush=True)
        blocks = [run_block(workspace, options, niceness) for niceness in options.niceness]
    return {
        "benchmark": "retrain_latency",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_average()},
        "settings": {
            **{key: value for key, value in asdict(options).items() if key != "json_path"},
            "max_rows": options.max_rows,
            "housing_row": dict(zip(HOUSING_FEATURES, HOUSING_ROW, strict=True)),
            "poll_seconds": POLL_S,
            "ramp_seconds": RAMP_S,
            "retrain_openmp_threads": "server default (PREDICTOR_RETRAIN_OPENMP_THREADS unset)",
        },
        "training": training,
        "seconds": {"training": round(trained - began, 1), "total": round(time.monotonic() - began, 1)},
        "results": [
            {
                "niceness": block.niceness,
                "median": {
                    phase: None if figures is None else asdict(figures)
                    for phase, figures in (
                        ("idle", block.median("idle")),
                        ("retraining", block.median("retraining")),
                        ("whole_retrain", block.whole_median()),
                        ("hot_reload", block.reload_median()),
                    )
                },
                "sources_changed": block.changed_sources,
                "rounds": [asdict(each) for each in block.runs],
            }
            for block in blocks
        ],
        "report": report(blocks),
    }


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (idle, retraining); medians (default 3)")
    parser.add_argument(
        "--phase-seconds", type=float, default=15.0, help="measured seconds per phase and round (default 15)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="Predict calls in flight (default 8)")
    parser.add_argument("--max-rows", type=int, help="train and retrain on a subset of N housing rows (quick runs)")
    parser.add_argument(
        "--niceness",
        type=int,
        nargs="+",
        default=[10],
        help="PREDICTOR_RETRAIN_NICENESS of the server; several values run one server each (default 10, the "
        "server's default; '10 0' shows what the lower priority buys)",
    )
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="load before the first phase (default 5)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where the figures go (default {RESULTS})")
    arguments = parser.parse_args(argv)
    if arguments.rounds < 1 or arguments.phase_seconds <= 0 or arguments.concurrency < 1:
        parser.error("--rounds, --phase-seconds and --concurrency must be positive")
    if any(not 0 <= each <= 19 for each in arguments.niceness):
        parser.error("--niceness values must be in [0, 19]")
    return Options(
        rounds=arguments.rounds,
        phase_seconds=arguments.phase_seconds,
        concurrency=arguments.concurrency,
        max_rows=arguments.max_rows,
        niceness=arguments.niceness,
        warmup_seconds=arguments.warmup_seconds,
        json_path=arguments.json,
    )


def _raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    if "--load-generator" in sys.argv[1:]:
        load_generator_main(sys.argv[1:])
        return
    options = parse_options()
    # SIGTERM unwinds like Ctrl-C, so that everything started is stopped.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    summary = run(options)
    print(summary["report"])
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten to {options.json_path} ({summary['seconds']['total']:.0f} s in all)", file=sys.stderr)


if __name__ == "__main__":
    main()
