"""Our gRPC server against ``mlflow models serve`` and MLServer, on the same registered models, in one run.

    python -m benchmarks.serving_baselines [--rounds 3] [--requests 1000] [--concurrency 1 16] [--quick]
                                           [--tracking-uri URI] [--no-mlserver] [--baseline-omp-threads N]
                                           [--access-log] [--json out.json]

Systems, all on 127.0.0.1, each a process tree of its own:

- ``ours``: ``python -m server`` (one process, a thread pool), gRPC.
- ``mlflow``: ``mlflow models serve --env-manager local --workers 1``, one process per model, REST
  ``POST /invocations`` with ``{"inputs": {column: [values]}}``, the fastest format it accepts here
  (``inputs`` and ``instances`` about 3.45 ms p50 for one iris row, ``dataframe_split`` 4.17 ms).
- ``mlserver-rest`` / ``mlserver-grpc``: MLServer 1.7.1 with ``mlserver_mlflow.MLflowRuntime``
  (``parallel_workers: 0``: inference in the server process), one process for both models, V2 / Open
  Inference protocol over REST and over gRPC. It runs from its own virtualenv (``--mlserver-python``,
  default ``.bench-venv``; see ``--help``) and is left out when that is missing.

Models: by default both are trained afresh with ``python -m training`` into a temporary SQLite registry;
``--tracking-uri`` uses an existing registry instead. Every system serves ``models:/<name>@champion``.

Method. First a correctness check: the same rows through every system, housing values equal to 1e-9 and
iris classes equal, or the run stops. Then a warm-up of every (system, case), then ``--rounds`` rounds;
each round runs every case and, within a case, every system in an order rotated from round to round.
The load generator is a separate process (asyncio, closed loop: ``concurrency`` callers each sending the
next request when the previous answer arrived) that sends prebuilt request bytes and checks only the
status, so its cost per call is small and the same for every system speaking the same protocol; it
reports its own CPU per request so that you can see what it took from the shared cores. Server CPU per
request is the change in utime+stime of the server's whole process tree over the measured requests,
divided by their number: it does not depend on the client or on how busy the machine is.
"""

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.http_client import AsyncHttp, http_request
from data.schema import HOUSING_FEATURES, IRIS_FEATURES, IRIS_SPECIES
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HOUSING_MODEL = "CaliforniaHousingBestModel"
IRIS_MODEL = "IrisBestModel"
ALIAS = "champion"
HOUSING_EXAMPLE = (3.87, 28.6, 5.43, 1.1, 1425.0, 3.07, 35.63, -119.57)
IRIS_EXAMPLE = (5.84, 3.06, 3.76, 1.2)
START_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 30.0
TOLERANCE = 1e-9
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Case:
    """One measured workload: a model, the rows per request."""

    model: str  # "housing" or "iris"
    rows: int

    @property
    def label(self) -> str:
        return f"{self.model} x{self.rows}"


def housing_rows(count: int, seed: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Plausible block groups: the typical row scaled by 0.6-1.4 per feature, coordinates inside California."""
    generator = np.random.default_rng(seed)
    rows = np.array(HOUSING_EXAMPLE) * generator.uniform(0.6, 1.4, size=(count, len(HOUSING_EXAMPLE)))
    rows[:, 6] = generator.uniform(32.6, 41.9, size=count)
    rows[:, 7] = generator.uniform(-124.3, -114.4, size=count)
    return np.round(rows, 4)


def iris_rows(count: int, seed: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    generator = np.random.default_rng(seed)
    low, high = np.array((4.3, 2.0, 1.0, 0.1)), np.array((7.9, 4.4, 6.9, 2.5))
    return np.round(generator.uniform(low, high, size=(count, len(IRIS_EXAMPLE))), 2)


def rows_for(case: Case, seed: int = 7) -> np.ndarray[Any, np.dtype[np.float64]]:
    return housing_rows(case.rows, seed) if case.model == "housing" else iris_rows(case.rows, seed)


def columns_for(model: str) -> tuple[str, ...]:
    return HOUSING_FEATURES if model == "housing" else IRIS_FEATURES


# ---------------------------------------------------------------------------------------------------
# Request encodings, one per system. Each returns what the load generator sends as is.


@dataclass(frozen=True)
class Target:
    """What the load generator needs to call one system: a gRPC method or an HTTP path, and the body."""

    kind: str  # "grpc", "grpc-stream" (a bidirectional stream, one reply per message) or "http"
    port: int
    route: str  # gRPC method path or HTTP path
    body: bytes
    streams: int = 0
    """For "grpc-stream": the messages in flight are spread over this many streams (at least one each)."""


def ours_request(case: Case, rows: np.ndarray[Any, np.dtype[np.float64]]) -> tuple[str, bytes]:
    if case.model == "housing":
        messages = [housing_pb2.HousingFeatures(**dict(zip(HOUSING_FEATURES, row, strict=True))) for row in rows]
        if case.rows == 1:
            return "/prediction.v1.HousingPredictor/Predict", messages[0].SerializeToString()
        batch = housing_pb2.HousingBatchRequest(instances=messages)
        return "/prediction.v1.HousingPredictor/PredictBatch", batch.SerializeToString()
    flowers = [iris_pb2.IrisFeatures(**dict(zip(IRIS_FEATURES, row, strict=True))) for row in rows]
    if case.rows == 1:
        return "/prediction.v1.IrisClassifier/Classify", flowers[0].SerializeToString()
    return "/prediction.v1.IrisClassifier/ClassifyBatch", iris_pb2.IrisBatchRequest(
        instances=flowers
    ).SerializeToString()


def mlflow_body(case: Case, rows: np.ndarray[Any, np.dtype[np.float64]]) -> bytes:
    """``{"inputs": {column: [values]}}``: about 0.7 ms a call faster than ``dataframe_split`` (iris, one row)."""
    columns = {name: rows[:, index].tolist() for index, name in enumerate(columns_for(case.model))}
    return json.dumps({"inputs": columns}).encode()


def v2_inputs(case: Case, rows: np.ndarray[Any, np.dtype[np.float64]]) -> list[tuple[str, list[float]]]:
    """V2 inputs: one FP64 tensor per named column (what an MLflow column signature asks for)."""
    return [(name, rows[:, column].tolist()) for column, name in enumerate(columns_for(case.model))]


def mlserver_rest_body(case: Case, rows: np.ndarray[Any, np.dtype[np.float64]]) -> bytes:
    inputs = [
        {"name": name, "shape": [len(values)], "datatype": "FP64", "data": values}
        for name, values in v2_inputs(case, rows)
    ]
    return json.dumps({"inputs": inputs}).encode()


def _v2_messages() -> tuple[type[Message], type[Message]]:
    """The few V2 (``inference.GRPCInferenceService``) messages we need, built from field numbers."""
    proto = descriptor_pb2.FileDescriptorProto(name="bench_v2_subset.proto", package="inference", syntax="proto3")
    contents = proto.message_type.add(name="InferTensorContents")
    contents.field.add(name="int64_contents", number=3, type=3, label=3)
    contents.field.add(name="fp64_contents", number=7, type=1, label=3)
    tensor = proto.message_type.add(name="Tensor")
    tensor.field.add(name="name", number=1, type=9, label=1)
    tensor.field.add(name="datatype", number=2, type=9, label=1)
    tensor.field.add(name="shape", number=3, type=3, label=3)
    tensor.field.add(name="contents", number=5, type=11, label=1, type_name=".inference.InferTensorContents")
    request = proto.message_type.add(name="ModelInferRequest")
    request.field.add(name="model_name", number=1, type=9, label=1)
    request.field.add(name="inputs", number=5, type=11, label=3, type_name=".inference.Tensor")
    response = proto.message_type.add(name="ModelInferResponse")
    response.field.add(name="outputs", number=5, type=11, label=3, type_name=".inference.Tensor")
    response.field.add(name="raw_output_contents", number=6, type=12, label=3)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    messages = message_factory.GetMessages([proto], pool=pool)
    return messages["inference.ModelInferRequest"], messages["inference.ModelInferResponse"]


V2_REQUEST, V2_RESPONSE = _v2_messages()
V2_INFER = "/inference.GRPCInferenceService/ModelInfer"


def mlserver_grpc_body(case: Case, rows: np.ndarray[Any, np.dtype[np.float64]]) -> bytes:
    request: Any = V2_REQUEST(model_name=case.model)
    for name, values in v2_inputs(case, rows):
        tensor = request.inputs.add(name=name, datatype="FP64", shape=[len(values)])
        tensor.contents.fp64_contents.extend(values)
    return bytes(request.SerializeToString())


def decode_v2_grpc(payload: bytes) -> list[float]:
    response: Any = V2_RESPONSE.FromString(payload)
    output = response.outputs[0]
    if len(response.raw_output_contents) > 0:
        dtype = np.int64 if output.datatype == "INT64" else np.float64
        return [float(each) for each in np.frombuffer(response.raw_output_contents[0], dtype=dtype)]
    contents = output.contents
    return [float(each) for each in (contents.int64_contents if output.datatype == "INT64" else contents.fp64_contents)]


# ---------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A started process group; ``cpu_seconds()`` is the utime+stime of its whole process tree."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        # Workers that outlived their parent are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _own_cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime (children that exited and were waited for count too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(each) for each in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    tree, pending, ticks = _children(), [root], 0
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError):
            ticks += _own_cpu_ticks(pid)
        pending.extend(tree.get(pid, ()))
    return ticks / CLOCK_TICKS


def start(name: str, command: Sequence[str], env: dict[str, str], logs: Path, cwd: Path = ROOT) -> Server:
    log = logs / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR", "MLFLOW_DISABLE_TELEMETRY": "true", **env},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, process, log)


def wait_until(server: Server, ready: Any, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not become ready ({what}):\n{server.log_tail()}")
        time.sleep(0.25)


def http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def train_registry(workdir: Path, logs: Path, module: str = "training") -> str:
    """A fresh SQLite registry in ``workdir``, filled by ``python -m <module>`` (the training flow by default)."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "TRAINING_ARTIFACT_ROOT": str(workdir / "artifacts"),
        "TRAINING_DATA_DIR": str(workdir / "data"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.setdefault("SCIKIT_LEARN_DATA", str(ROOT.parent / "shared" / "data" / "scikit_learn_data"))
    log = logs / f"{module.rsplit('.', 1)[-1]}.log"
    with log.open("wb") as output:
        result = subprocess.run(
            [sys.executable, "-m", module],
            check=False,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if result.returncode != 0:
        raise RuntimeError(f"python -m {module} failed:\n{log.read_text()[-3000:]}")
    return uri


def start_ours(tracking_uri: str, logs: Path, access_log: bool) -> tuple[Server, int]:
    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": str(port),
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": str(free_port()),
        "PREDICTOR_ACCESS_LOG": "true" if access_log else "false",
    }
    return start("ours", [sys.executable, "-m", "server"], env, logs), port


def start_mlflow(
    model: str, tracking_uri: str, logs: Path, extra_env: dict[str, str], *, workers: int | None = 1, name: str = ""
) -> tuple[Server, int]:
    """``mlflow models serve`` on ``model``; ``workers`` None leaves ``--workers`` at mlflow's default."""
    port = free_port()
    command = [
        str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{model}@{ALIAS}",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    if workers is not None:
        command += ["--workers", str(workers)]
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra_env,
    }
    return start(name or f"mlflow-{model}", command, env, logs), port


def download_models(tracking_uri: str, folder: Path) -> dict[str, Path]:
    """Each champion's artifacts in a local folder (what MLServer's MLflow runtime loads)."""
    script = (
        "import sys, mlflow\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "for name, target in zip(sys.argv[2::2], sys.argv[3::2]):\n"
        f"    mlflow.artifacts.download_artifacts(f'models:/{{name}}@{ALIAS}', dst_path=target)\n"
    )
    paths = {"housing": folder / "housing", "iris": folder / "iris"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            tracking_uri,
            HOUSING_MODEL,
            str(paths["housing"]),
            IRIS_MODEL,
            str(paths["iris"]),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    return paths


def start_mlserver(
    mlserver_python: Path, tracking_uri: str, workdir: Path, logs: Path, extra_env: dict[str, str]
) -> tuple[Server, int, int]:
    repository = workdir / "mlserver"
    models = download_models(tracking_uri, workdir / "mlserver-artifacts")
    http_port, grpc_port = free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
    }
    (repository).mkdir(parents=True)
    (repository / "settings.json").write_text(json.dumps(settings))
    for name, path in models.items():
        (repository / name).mkdir()
        model_settings = {
            "name": name,
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(path)},
        }
        (repository / name / "model-settings.json").write_text(json.dumps(model_settings))
    command = [str(mlserver_python.parent / "mlserver"), "start", str(repository)]
    # Run from the repository folder: MLServer puts the working directory on sys.path.
    return start("mlserver", command, extra_env, logs, cwd=repository), http_port, grpc_port


# ---------------------------------------------------------------------------------------------------
# Correctness


def post_json(port: int, path: str, body: bytes) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:  # noqa: S310
        return json.loads(response.read())


def ours_answers(port: int, case: Case, rows: np.ndarray[Any, np.dtype[np.float64]]) -> list[float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        if case.model == "housing":
            housing = housing_pb2_grpc.HousingPredictorStub(channel)
            if case.rows == 1:
                row = dict(zip(HOUSING_FEATURES, rows[0], strict=True))
                return [housing.Predict(housing_pb2.HousingFeatures(**row), timeout=CALL_TIMEOUT_S).median_house_value]
            batch = housing_pb2.HousingBatchRequest.FromString(ours_request(case, rows)[1])
            answer = housing.PredictBatch(batch, timeout=CALL_TIMEOUT_S)
            return [each.median_house_value for each in answer.predictions]
        iris = iris_pb2_grpc.IrisClassifierStub(channel)
        request = iris_pb2.IrisBatchRequest.FromString(ours_request(Case("iris", 2), rows)[1])
        answer_batch = iris.ClassifyBatch(request, timeout=CALL_TIMEOUT_S)
        return [float(IRIS_SPECIES.index(each.species_name)) for each in answer_batch.classifications]


def baseline_answers(
    system: str, ports: dict[str, int], case: Case, rows: np.ndarray[Any, np.dtype[np.float64]]
) -> list[float]:
    if system == "mlflow":
        answer = post_json(ports[f"mlflow-{case.model}"], "/invocations", mlflow_body(case, rows))
        return [float(each) for each in answer["predictions"]]
    if system == "mlserver-rest":
        answer = post_json(ports["mlserver-rest"], f"/v2/models/{case.model}/infer", mlserver_rest_body(case, rows))
        return [float(each) for each in answer["outputs"][0]["data"]]
    with grpc.insecure_channel(f"127.0.0.1:{ports['mlserver-grpc']}") as channel:
        infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(V2_INFER)
        payload = infer(mlserver_grpc_body(case, rows), timeout=CALL_TIMEOUT_S)
    return decode_v2_grpc(payload)


def check_answers(systems: Sequence[str], ports: dict[str, int]) -> dict[str, float]:
    """The same rows through every system: housing values within TOLERANCE, iris classes equal."""
    worst: dict[str, float] = {}
    for case in (Case("housing", 1), Case("housing", 100), Case("iris", 20)):
        rows = rows_for(case, seed=11)
        expected = ours_answers(ports["ours"], case, rows)
        for system in systems:
            if system == "ours":
                continue
            got = baseline_answers(system, ports, case, rows)
            difference = (
                float(np.max(np.abs(np.array(got) - np.array(expected)))) if len(got) == len(expected) else np.inf
            )
            if not difference <= TOLERANCE:
                raise RuntimeError(f"{system} disagrees with ours on {case.label}: {got[:5]} vs {expected[:5]}")
            worst[f"{system} {case.label}"] = difference
    return worst


# ---------------------------------------------------------------------------------------------------
# The load generator (runs in its own process: ``--load-generator``, one JSON job per stdin line)


class ShedError(Exception):
    """The server refused the call as overloaded (gRPC RESOURCE_EXHAUSTED, HTTP 429): load shedding, not a fault."""


def _shedding_counted(call: Any) -> Any:
    async def counted() -> None:
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ShedError from exc
            raise
        except RuntimeError as exc:
            if str(exc).startswith("HTTP 429"):
                raise ShedError from exc
            raise

    return counted


async def _closed_loop(
    calls: Sequence[Any], requests: int, seconds: float | None = None, timeout: float = CALL_TIMEOUT_S
) -> tuple[list[float], float, int]:
    """``requests`` calls shared by the callers; with ``seconds``, each caller goes on until that much time passed
    (a call in flight then still finishes and counts, and so does its time). Latencies of the answered calls, the
    wall time, and how many calls were shed (each caller sends its next call at once, as after an answer)."""
    latencies: list[float] = []
    shed = 0
    clock = time.perf_counter
    share, extra = divmod(requests, len(calls))
    deadline = clock() + (seconds or 0.0)

    async def caller(call: Any, count: int) -> None:
        nonlocal shed
        sent = 0
        while sent < count or (seconds is not None and clock() < deadline):
            before = clock()
            try:
                await asyncio.wait_for(call(), timeout)
            except ShedError:
                shed += 1
            else:
                latencies.append(clock() - before)
            sent += 1

    began = clock()
    await asyncio.gather(*(caller(call, share + (index < extra)) for index, call in enumerate(calls)))
    return latencies, clock() - began, shed


def _stream_reply_ok(reply: bytes) -> bool:
    """Whether a ``*StreamReply`` holds a prediction (field 2), not an error (field 3), after its sequence."""
    index = 0
    if reply[:1] == b"\x08":  # field 1, the varint sequence (absent when 0)
        index = 1
        while reply[index] & 0x80:
            index += 1
        index += 1
    return reply[index : index + 1] == b"\x12"


class _StreamCaller:
    """One bidirectional stream on which several callers each keep one message in flight.

    Replies come in request order, so each reply ends the oldest call waiting on this stream.
    """

    def __init__(self, call: Any, body: bytes) -> None:
        self._call, self._body = call, body
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._writing = asyncio.Lock()  # grpc.aio allows one write in progress per call
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        failure: BaseException
        try:
            while True:
                reply = await self._call.read()
                if reply is grpc.aio.EOF:
                    failure = RuntimeError(f"the stream ended: {await self._call.code()}")
                    break
                waiter = self._waiting.popleft()
                if _stream_reply_ok(reply):
                    waiter.set_result(None)
                else:
                    waiter.set_exception(RuntimeError(f"the stream answered an error: {reply[:300]!r}"))
        except grpc.aio.AioRpcError as exc:
            failure = exc
        while self._waiting:
            self._waiting.popleft().set_exception(failure)

    async def send(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._writing:
            self._waiting.append(waiter)
            await self._call.write(self._body)
        await waiter

    async def close(self) -> None:
        async with self._writing:
            await self._call.done_writing()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._reader


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then send ``requests`` calls from ``concurrency`` callers; latencies and own CPU."""
    target = Target(**{**job["target"], "body": base64.b64decode(job["target"]["body"])})
    concurrency, requests, warmup = job["concurrency"], job["requests"], job["warmup"]
    async with contextlib.AsyncExitStack() as stack:
        if target.kind == "grpc":
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{target.port}")
            stack.push_async_callback(channel.close)
            method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(target.route)
            calls: list[Any] = [lambda: method(target.body)] * concurrency
        elif target.kind == "grpc-stream":
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{target.port}")
            stack.push_async_callback(channel.close)
            open_stream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(target.route)
            streams = [
                _StreamCaller(open_stream(), target.body) for _ in range(max(1, min(target.streams, concurrency)))
            ]
            for stream in streams:
                stack.push_async_callback(stream.close)
            calls = [streams[index % len(streams)].send for index in range(concurrency)]
        else:
            calls = []
            for _ in range(concurrency):
                connection = await AsyncHttp.open(target.port, http_request(target.route, target.body))
                stack.callback(connection.close)
                calls.append(connection.call)
        calls = [_shedding_counted(call) for call in calls]
        timeout = job.get("call_timeout") or CALL_TIMEOUT_S
        await _closed_loop(calls, warmup, timeout=timeout)
        print("ready", flush=True)  # the parent samples the server's CPU now
        sys.stdin.readline()
        cpu_before = time.process_time()
        latencies, wall, shed = await _closed_loop(calls, requests, job.get("seconds"), timeout)
        client_cpu = time.process_time() - cpu_before
    if not latencies:
        raise RuntimeError(f"every one of {shed} calls was shed (RESOURCE_EXHAUSTED)")
    return {"latencies": latencies, "wall": wall, "client_cpu": client_cpu, "shed": shed}


def load_generator_main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            result = asyncio.run(run_job(job))
        except Exception as exc:
            target = {key: value for key, value in job["target"].items() if key != "body"}
            result = {"error": f"{type(exc).__name__}: {exc} (target {target}, concurrency {job['concurrency']})"}
        print(json.dumps(result), flush=True)


class LoadGenerator:
    """The parent's handle on the load generator process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serving_baselines", "--load-generator"],
            cwd=ROOT,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
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
            raise RuntimeError("the load generator died")
        return line

    def run(
        self,
        target: Target,
        server: Server,
        concurrency: int,
        requests: int,
        warmup: int,
        *,
        seconds: float | None = None,
        call_timeout: float | None = None,
    ) -> "Measurement":
        """``requests`` calls (with ``seconds``: at least, and for that long) after ``warmup`` unmeasured ones."""
        job = {
            "target": {**asdict(target), "body": base64.b64encode(target.body).decode()},
            "concurrency": concurrency,
            "requests": requests,
            "warmup": warmup,
            "seconds": seconds,
            "call_timeout": call_timeout,
        }
        self._send(json.dumps(job))
        answer = self._receive().strip()
        if answer != "ready":
            raise RuntimeError(f"{server.name}: the load generator failed in its warm-up: {answer}")
        cpu_before = server.cpu_seconds()
        self._send("go")
        result = json.loads(self._receive())
        if "error" in result:
            raise RuntimeError(f"{server.name}: {result['error']}")
        server_cpu = server.cpu_seconds() - cpu_before
        return Measurement.of(
            result["latencies"], result["wall"], server_cpu, result["client_cpu"], shed=result.get("shed", 0)
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


# ---------------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class Measurement:
    p50_ms: float
    p99_ms: float
    rps: float
    server_cpu_us: float  # server CPU per request
    client_cpu_us: float  # load generator CPU per request
    shed_fraction: float = 0.0  # calls refused as overloaded, of all sent; the other figures are of answered calls

    @classmethod
    def of(
        cls, latencies: list[float], wall: float, server_cpu: float, client_cpu: float, *, shed: int = 0
    ) -> "Measurement":
        ordered = sorted(latencies)
        count = len(ordered)
        return cls(
            p50_ms=ordered[count // 2] * 1000,
            p99_ms=ordered[min(count - 1, int(count * 0.99))] * 1000,
            rps=count / wall,
            server_cpu_us=server_cpu / count * 1e6,
            client_cpu_us=client_cpu / count * 1e6,
            shed_fraction=shed / (count + shed),
        )

    @classmethod
    def median(cls, runs: Sequence["Measurement"]) -> "Measurement":
        return cls(**{name: statistics.median(getattr(run, name) for run in runs) for name in cls.__dataclass_fields__})


@dataclass
class Result:
    system: str
    case: str
    concurrency: int
    rounds: list[Measurement] = field(default_factory=list)

    @property
    def median(self) -> Measurement:
        return Measurement.median(self.rounds)


def targets_for(case: Case, systems: Sequence[str], ports: dict[str, int]) -> dict[str, Target]:
    rows = rows_for(case)
    targets: dict[str, Target] = {}
    for system in systems:
        if system == "ours":
            route, body = ours_request(case, rows)
            targets[system] = Target("grpc", ports["ours"], route, body)
        elif system == "mlflow":
            targets[system] = Target("http", ports[f"mlflow-{case.model}"], "/invocations", mlflow_body(case, rows))
        elif system == "mlserver-rest":
            route = f"/v2/models/{case.model}/infer"
            targets[system] = Target("http", ports[system], route, mlserver_rest_body(case, rows))
        else:
            targets[system] = Target("grpc", ports[system], V2_INFER, mlserver_grpc_body(case, rows))
    return targets


@dataclass
class Plan:
    cases: list[Case]
    concurrencies: list[int]
    rounds: int
    requests: int
    warmup: int

    def requests_for(self, case: Case) -> int:
        # Batches cost more per call: fewer of them keep every round about as long.
        return max(50, self.requests // 4) if case.rows > 16 else self.requests


def measure(
    plan: Plan, systems: Sequence[str], ports: dict[str, int], servers: dict[str, Server], generator: LoadGenerator
) -> list[Result]:
    results: dict[tuple[str, str, int], Result] = {}
    all_targets = {case: targets_for(case, systems, ports) for case in plan.cases}
    for case in plan.cases:
        for system in systems:
            target = all_targets[case][system]
            generator.run(target, servers[system], max(plan.concurrencies), plan.warmup, 20)
    for round_index in range(plan.rounds):
        order = [*systems[round_index % len(systems) :], *systems[: round_index % len(systems)]]
        print(f"round {round_index + 1}/{plan.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
        for case in plan.cases:
            for concurrency in plan.concurrencies:
                requests = max(plan.requests_for(case), concurrency)
                for system in order:
                    key = (system, case.label, concurrency)
                    measurement = generator.run(all_targets[case][system], servers[system], concurrency, requests, 20)
                    results.setdefault(key, Result(system, case.label, concurrency)).rounds.append(measurement)
    return list(results.values())


# ---------------------------------------------------------------------------------------------------
# Report


def report(results: Sequence[Result], systems: Sequence[str]) -> str:
    header = (
        f"{'case':<12} {'conc':>4} {'system':<14} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
        f"{'srv CPU us/req':>14} {'cli CPU us/req':>14}   ours/this: p50   req/s  srv CPU"
    )
    lines = [header, "-" * len(header)]
    by_key = {(each.case, each.concurrency, each.system): each.median for each in results}
    keys = sorted({(each.case, each.concurrency) for each in results}, key=lambda key: (key[0], key[1]))
    for case, concurrency in keys:
        ours = by_key[(case, concurrency, "ours")]
        for system in systems:
            figures = by_key[(case, concurrency, system)]
            ratios = (
                ""
                if system == "ours"
                else f"{ours.p50_ms / figures.p50_ms:>14.2f} {ours.rps / figures.rps:>7.2f} "
                f"{ours.server_cpu_us / figures.server_cpu_us:>8.2f}"
            )
            lines.append(
                f"{case:<12} {concurrency:>4} {system:<14} {figures.p50_ms:>8.3f} {figures.p99_ms:>8.3f} "
                f"{figures.rps:>8.0f} {figures.server_cpu_us:>14.0f} {figures.client_cpu_us:>14.0f}   {ratios}"
            )
        lines.append("")
    lines.append(
        "medians over rounds; ratios ours/this: p50 and server CPU below 1 and req/s above 1 favour ours. "
        "cli CPU = the load generator's own CPU per request (it shares the machine's cores with the server)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Orchestration


@dataclass
class Options:
    rounds: int
    requests: int
    warmup: int
    concurrency: list[int]
    batch_rows: int
    tracking_uri: str | None
    mlserver_python: Path
    with_mlserver: bool
    access_log: bool
    json_path: Path | None
    baseline_omp_threads: int | None = None

    @property
    def baseline_env(self) -> dict[str, str]:
        """Environment of the baselines: OMP_NUM_THREADS only when asked (out of the box they use every core)."""
        return {} if self.baseline_omp_threads is None else {"OMP_NUM_THREADS": str(self.baseline_omp_threads)}


def start_everything(
    options: Options, tracking_uri: str, workdir: Path, logs: Path, stack: ExitStack
) -> tuple[list[str], dict[str, Server], dict[str, int]]:
    servers: dict[str, Server] = {}
    ports: dict[str, int] = {}

    def keep(server: Server) -> Server:
        stack.callback(server.stop)
        return server

    ours, ports["ours"] = start_ours(tracking_uri, logs, options.access_log)
    servers["ours"] = keep(ours)
    mlflow_servers = {}
    for model, name in (("housing", HOUSING_MODEL), ("iris", IRIS_MODEL)):
        server, ports[f"mlflow-{model}"] = start_mlflow(name, tracking_uri, logs, options.baseline_env)
        mlflow_servers[model] = keep(server)
    systems = ["ours", "mlflow"]
    mlserver = None
    if options.with_mlserver:
        mlserver, ports["mlserver-rest"], ports["mlserver-grpc"] = start_mlserver(
            options.mlserver_python, tracking_uri, workdir, logs, options.baseline_env
        )
        keep(mlserver)
        systems += ["mlserver-rest", "mlserver-grpc"]
        servers["mlserver-rest"] = servers["mlserver-grpc"] = mlserver
    wait_until(ours, lambda: grpc_serving(ports["ours"]), "gRPC health SERVING")
    for model, server in mlflow_servers.items():
        wait_until(server, lambda port=ports[f"mlflow-{model}"]: http_ok(port, "/ping"), "GET /ping")
    if mlserver is not None:
        wait_until(mlserver, lambda: http_ok(ports["mlserver-rest"], "/v2/models/housing/ready"), "housing ready")
        wait_until(mlserver, lambda: http_ok(ports["mlserver-rest"], "/v2/models/iris/ready"), "iris ready")
    # mlflow serves one model per process: which process answers depends on the case.
    servers["mlflow"] = _MlflowPair(mlflow_servers)
    return systems, servers, ports


class _MlflowPair(Server):
    """Both ``mlflow models serve`` processes, for CPU accounting: only one of them is busy at a time."""

    def __init__(self, servers: dict[str, Server]) -> None:
        first = next(iter(servers.values()))
        super().__init__("mlflow", first.process, first.log)
        self._servers = servers

    def cpu_seconds(self) -> float:
        return sum(each.cpu_seconds() for each in self._servers.values())

    def stop(self) -> None:
        for each in self._servers.values():
            each.stop()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(each.log_tail(lines) for each in self._servers.values())


def run(options: Options) -> dict[str, Any]:
    plan = Plan(
        cases=[Case("housing", 1), Case("iris", 1), Case("housing", options.batch_rows)],
        concurrencies=options.concurrency,
        rounds=options.rounds,
        requests=options.requests,
        warmup=options.warmup,
    )
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serving-baselines-")))
        logs = workdir / "logs"
        logs.mkdir()
        tracking_uri = options.tracking_uri
        if tracking_uri is None:
            print("training both models into a temporary registry ...", file=sys.stderr, flush=True)
            tracking_uri = train_registry(workdir, logs)
        print("starting the servers ...", file=sys.stderr, flush=True)
        systems, servers, ports = start_everything(options, tracking_uri, workdir, logs, stack)
        worst = check_answers(systems, ports)
        print(
            f"correctness: every system gives the same answers as ours on the same rows "
            f"(housing within {TOLERANCE:g}, largest difference {max(worst.values()):.1e}; iris classes equal)"
        )
        generator = LoadGenerator()
        stack.callback(generator.stop)
        try:
            results = measure(plan, systems, ports, servers, generator)
        except BaseException:
            for server in {id(each): each for each in servers.values()}.values():
                print(f"--- {server.name} log ---\n{server.log_tail()}", file=sys.stderr)
            raise
    return {
        "systems": systems,
        "plan": asdict(plan),
        "cpus": os.cpu_count(),
        "access_log": options.access_log,
        "baseline_omp_threads": options.baseline_omp_threads,
        "correctness_max_difference": worst,
        "results": [
            {
                "system": each.system,
                "case": each.case,
                "concurrency": each.concurrency,
                "median": asdict(each.median),
                "rounds": [asdict(measurement) for measurement in each.rounds],
            }
            for each in results
        ],
        "report": report(results, systems),
    }


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds; figures are medians (default 3)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per single-row measurement")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per system and case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="callers in flight (1 16)")
    parser.add_argument("--batch-rows", type=int, default=100, help="rows of the housing batch case (100)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 200 requests")
    parser.add_argument("--tracking-uri", help="use this registry instead of training a fresh one")
    parser.add_argument(
        "--mlserver-python",
        type=Path,
        default=ROOT / ".bench-venv" / "bin" / "python",
        help="python of a virtualenv with mlserver==1.7.1, mlserver-mlflow==1.7.1, mlflow==3.17.2, "
        "scikit-learn==1.9.1, skops (default .bench-venv)",
    )
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument("--access-log", action="store_true", help="our server with its access log on (default off)")
    parser.add_argument(
        "--baseline-omp-threads",
        type=int,
        help="OMP_NUM_THREADS for mlflow and MLServer (default: unset, as users run them; our server "
        "limits OpenMP per call itself)",
    )
    parser.add_argument("--json", type=Path, help="write every raw figure to this file")
    parser.add_argument("--load-generator", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.rounds, arguments.requests, arguments.warmup = 2, 200, 100
    with_mlserver = not arguments.no_mlserver and arguments.mlserver_python.exists()
    if not arguments.no_mlserver and not with_mlserver:
        print(f"MLServer left out: {arguments.mlserver_python} does not exist", file=sys.stderr)
    return Options(
        rounds=arguments.rounds,
        requests=arguments.requests,
        warmup=arguments.warmup,
        concurrency=arguments.concurrency,
        batch_rows=arguments.batch_rows,
        tracking_uri=arguments.tracking_uri,
        mlserver_python=arguments.mlserver_python,
        with_mlserver=with_mlserver,
        access_log=arguments.access_log,
        json_path=arguments.json,
        baseline_omp_threads=arguments.baseline_omp_threads,
    )


def _raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    if "--load-generator" in sys.argv[1:]:
        load_generator_main()
        return
    options = parse_options()
    # SIGTERM unwinds like Ctrl-C, so that every server started is stopped.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    summary = run(options)
    print(summary["report"])
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
