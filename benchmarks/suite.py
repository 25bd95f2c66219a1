"""``make bench`` (``python -m benchmarks.suite``): our service, its peers and its floors side by side, in one run.

    python -m benchmarks.suite [--quick] [--sets project plain] [--rounds 3] [--seconds 1.0] [--no-prune]
                               [--no-mlserver] [--access-log] [--output-dir benchmarks/results]

Systems (all on 127.0.0.1, each a process tree of its own, the same load generator for all):

- ours: ``python -m server`` over gRPC (unary ``Predict``/``Classify``, ``PredictBatch``, ``PredictColumns``,
  the bidirectional ``PredictStream``/``ClassifyStream``), and ``python -m rest_bridge`` in front of it (REST);
  default settings except ``PREDICTOR_MAX_BATCH_SIZE=10000`` (for the 10,000-row case) and scratch paths.
- ``mlflow models serve --env-manager local``, one process tree per model: ``--workers`` at its default (1) and
  ``--workers 2``, each with ``OMP_NUM_THREADS`` unset and ``=1``.
- MLServer 1.7.1 (its own virtualenv, ``.bench-venv``), REST and gRPC (V2 / Open Inference protocol), with
  ``mlserver_mlflow.MLflowRuntime`` on the registry artifacts and with ``mlserver_sklearn.SKLearnModel`` on the same
  estimator saved with joblib (``model.joblib``, one FP64 tensor of shape [rows, features]), each with
  ``parallel_workers: 0`` (inference in the server process) and at its default (1 worker process), each with
  ``OMP_NUM_THREADS`` unset and ``=1``.
- Floors: a no-op unary RPC on a bare sync grpcio server (``benchmarks.noop_server``, ThreadPoolExecutor of 8
  threads like ours) with the single-row housing request, and ``predict`` in this process on the same rows with the
  server's thread settings (one OpenMP thread via threadpoolctl; the exact fast path as the server uses it: for
  any number of rows when it is the native forest kernel, else up to 32 rows; else scikit-learn), one call at a
  time.

Model sets: ``project`` trains the project's models afresh (``python -m training``); ``plain`` registers
``HistGradientBoostingRegressor(random_state=0)`` and ``StandardScaler+LogisticRegression()`` under the same names
in a second registry (``benchmarks.plain_models``). Every system of a set serves the same registered versions
(``models:/<name>@champion``), and before anything is measured every system and configuration must give the same
answers as the estimator in process on the same rows (housing within 1e-9, iris classes equal), or the run stops.

Cases: single-row housing and iris at 1, 8 and 64 in flight; 1,000-row housing batches (PredictBatch,
PredictColumns, the bridge's batch and columns routes, the peers' batch forms) at 1 and 8; 10,000-row housing
through PredictColumns at 1 (against in-process only). Streaming at c in flight: c messages in flight spread over
min(c, 4) streams (4 is the server's default cap on concurrent streams), each message sent as soon as one of its
stream's earlier ones is answered, so it is closed-loop like the unary callers; its latency is send to reply.

Method: each (case, in flight) is measured for ``--seconds`` (batches 1.5x) per system in ``--rounds`` rounds,
the systems in an order rotated from round to round; figures are medians over rounds; the server CPU per request
is the change of the server's whole process tree's utime+stime (for REST, bridge plus server) over the measured
requests. Pruning: before the rounds, a pre-round measures every peer configuration once at the lowest and the
highest concurrency of each case; for each peer (mlflow, MLServer REST, MLServer gRPC) only the configurations
that were best at one of them enter the rounds (``--no-prune`` keeps them all). Every pre-round figure is in the
output. Ours is compared with each peer's best configuration in the rounds, per case and concurrency.
"""

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.serving_baselines import (
    ALIAS,
    CALL_TIMEOUT_S,
    HOUSING_MODEL,
    IRIS_MODEL,
    ROOT,
    TOLERANCE,
    V2_INFER,
    V2_REQUEST,
    Case,
    LoadGenerator,
    Measurement,
    Server,
    Target,
    columns_for,
    decode_v2_grpc,
    free_port,
    grpc_serving,
    housing_rows,
    http_ok,
    iris_rows,
    mlflow_body,
    mlserver_grpc_body,
    mlserver_rest_body,
    post_json,
    start,
    start_mlflow,
    train_registry,
    wait_until,
)
from data.schema import HOUSING_FEATURES, IRIS_FEATURES, IRIS_SPECIES
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc

FloatMatrix = np.ndarray[Any, np.dtype[np.float64]]
PEERS = ("mlflow", "mlserver-rest", "mlserver-grpc")
PEER_TITLES = {"mlflow": "mlflow serve", "mlserver-rest": "MLServer REST", "mlserver-grpc": "MLServer gRPC"}
MAX_STREAMS = 4
SMALL_BATCH_ROWS = 32  # the server's default PREDICTOR_SMALL_BATCH_ROWS: up to this many rows take the fast path
NOOP_ROUTE = "/bench.Noop/Call"
# In the pre-round, a configuration whose calls take longer than this is dominated: it fails and is not kept.
PRUNE_CALL_TIMEOUT_S = 10.0
PORT_LINE = re.compile(r"gRPC on port (\d+)")


# ---------------------------------------------------------------------------------------------------
# Cases and the systems that answer them


@dataclass(frozen=True)
class Workload:
    model: str
    rows: int
    concurrencies: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.model} x{self.rows}"

    @property
    def is_batch(self) -> bool:
        return self.rows > 1


@dataclass
class Variant:
    """One system in one configuration: the processes charged for its CPU and how it is called."""

    system: str  # unique, e.g. "ours PredictColumns" or "mlflow workers=2 OMP=1"
    group: str  # "ours", "floor" or one of PEERS
    config: str
    processes: list[Server]
    targets: Callable[[Workload, FloatMatrix], Target | None]
    answers: Callable[[str, FloatMatrix], list[float]] | None  # model, rows -> values or class indices

    def cpu_seconds(self) -> float:
        return sum(each.cpu_seconds() for each in self.processes)


class _Charged(Server):
    """What the load generator's ``run`` needs of a server: its CPU, here of several process trees."""

    def __init__(self, variant: Variant) -> None:
        first = variant.processes[0]
        super().__init__(variant.system, first.process, first.log)
        self._variant = variant

    def cpu_seconds(self) -> float:
        return self._variant.cpu_seconds()


def rows_of(workload: Workload, seed: int = 7) -> FloatMatrix:
    return housing_rows(workload.rows, seed) if workload.model == "housing" else iris_rows(workload.rows, seed)


def _housing_messages(rows: FloatMatrix) -> list[housing_pb2.HousingFeatures]:
    return [housing_pb2.HousingFeatures(**dict(zip(HOUSING_FEATURES, row, strict=True))) for row in rows.tolist()]


def _iris_messages(rows: FloatMatrix) -> list[iris_pb2.IrisFeatures]:
    return [iris_pb2.IrisFeatures(**dict(zip(IRIS_FEATURES, row, strict=True))) for row in rows.tolist()]


def _columns(model: str, rows: FloatMatrix) -> dict[str, list[float]]:
    return {name: rows[:, index].tolist() for index, name in enumerate(columns_for(model))}


def _records(model: str, rows: FloatMatrix) -> list[dict[str, float]]:
    return [dict(zip(columns_for(model), row, strict=True)) for row in rows.tolist()]


def single_tensor_rest_body(rows: FloatMatrix) -> bytes:
    """What ``mlserver_sklearn`` decodes (NumpyRequestCodec): one FP64 tensor [rows, features]."""
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def single_tensor_grpc_body(model: str, rows: FloatMatrix) -> bytes:
    request: Any = V2_REQUEST(model_name=model)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    tensor.contents.fp64_contents.extend(rows.ravel().tolist())
    return bytes(request.SerializeToString())


# ---------------------------------------------------------------------------------------------------
# Our server, the bridge and the no-op floor


@dataclass
class Ours:
    server: Server
    grpc_port: int
    startup_seconds: float
    bridge: Server | None = None
    bridge_port: int = 0

    def rss_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.server.process.pid}/status").read_text()
        found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE))
        return {"rss_mb": int(found["VmRSS"]) / 1024, "peak_rss_mb": int(found["VmHWM"]) / 1024}


def start_ours(tracking_uri: str, workdir: Path, logs: Path, access_log: bool) -> Ours:
    """Our server, timed from spawn to SERVING (both models loaded and warmed up), with nothing else starting."""
    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": str(port),
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": str(free_port()),
        "PREDICTOR_ACCESS_LOG": "true" if access_log else "false",
        "PREDICTOR_MAX_BATCH_SIZE": "10000",
        "PREDICTOR_STATE_DIR": str(workdir / "state"),
        "PREDICTOR_PREDICTION_LOG_PATH": str(workdir / "predictions.db"),
        "PREDICTOR_RETRAIN_WORKDIR": str(workdir / "retrain"),
    }
    began = time.monotonic()
    server = start("ours", [sys.executable, "-m", "server"], env, logs)
    deadline = began + 120
    while not grpc_serving(port):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"our server did not become SERVING:\n{server.log_tail()}")
        time.sleep(0.02)
    return Ours(server, port, time.monotonic() - began)


def start_bridge(ours: Ours, logs: Path, access_log: bool) -> None:
    port = free_port()
    env = {
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_GRPC_TARGET": f"127.0.0.1:{ours.grpc_port}",
        "BRIDGE_ACCESS_LOG": "true" if access_log else "false",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    bridge = start("rest-bridge", [sys.executable, "-m", "rest_bridge"], env, logs)
    wait_until(bridge, lambda: http_ok(port, "/health"), "GET /health")
    ours.bridge, ours.bridge_port = bridge, port


def start_noop(logs: Path) -> tuple[Server, int]:
    server = start("noop", [sys.executable, "-m", "benchmarks.noop_server"], {}, logs)
    port: list[int] = []

    def bound() -> bool:
        if found := PORT_LINE.search(server.log.read_text()):
            port.append(int(found.group(1)))
        return bool(port)

    wait_until(server, bound, "its port")
    return server, port[0]


def _grpc_call(port: int, route: str, body: bytes) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 26)]) as channel:
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(route)
        return method(body, timeout=CALL_TIMEOUT_S)


def _iris_index(name: str) -> float:
    return float(IRIS_SPECIES.index(name))


def ours_variants(ours: Ours) -> list[Variant]:
    """Every way of calling our server that a case measures, with how to read its answers."""
    port, rest = ours.grpc_port, ours.bridge_port
    grpc_only, with_bridge = [ours.server], [ours.server, *([ours.bridge] if ours.bridge else [])]
    housing_service, iris_service = "/prediction.v1.HousingPredictor", "/prediction.v1.IrisClassifier"

    def unary(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.rows != 1:
            return None
        if workload.model == "housing":
            return Target("grpc", port, f"{housing_service}/Predict", _housing_messages(rows)[0].SerializeToString())
        return Target("grpc", port, f"{iris_service}/Classify", _iris_messages(rows)[0].SerializeToString())

    def unary_answers(model: str, rows: FloatMatrix) -> list[float]:
        if model == "housing":
            return [
                housing_pb2.HousingPrediction.FromString(
                    _grpc_call(port, f"{housing_service}/Predict", message.SerializeToString())
                ).median_house_value
                for message in _housing_messages(rows)
            ]
        return [
            _iris_index(
                iris_pb2.IrisPrediction.FromString(
                    _grpc_call(port, f"{iris_service}/Classify", message.SerializeToString())
                ).species_name
            )
            for message in _iris_messages(rows)
        ]

    def stream(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.rows != 1:
            return None
        if workload.model == "housing":
            route, body = f"{housing_service}/PredictStream", _housing_messages(rows)[0].SerializeToString()
        else:
            route, body = f"{iris_service}/ClassifyStream", _iris_messages(rows)[0].SerializeToString()
        return Target("grpc-stream", port, route, body, streams=MAX_STREAMS)

    def stream_answers(model: str, rows: FloatMatrix) -> list[float]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            if model == "housing":
                replies = housing_pb2_grpc.HousingPredictorStub(channel).PredictStream(
                    iter(_housing_messages(rows)), timeout=CALL_TIMEOUT_S
                )
                return [reply.prediction.median_house_value for reply in replies]
            iris_replies = iris_pb2_grpc.IrisClassifierStub(channel).ClassifyStream(
                iter(_iris_messages(rows)), timeout=CALL_TIMEOUT_S
            )
            return [_iris_index(reply.prediction.species_name) for reply in iris_replies]

    def batch(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.model != "housing" or workload.rows != 1000:
            return None
        request = housing_pb2.HousingBatchRequest(instances=_housing_messages(rows))
        return Target("grpc", port, f"{housing_service}/PredictBatch", request.SerializeToString())

    def batch_answers(model: str, rows: FloatMatrix) -> list[float]:
        request = housing_pb2.HousingBatchRequest(instances=_housing_messages(rows))
        payload = _grpc_call(port, f"{housing_service}/PredictBatch", request.SerializeToString())
        return [each.median_house_value for each in housing_pb2.HousingBatchPrediction.FromString(payload).predictions]

    def columns(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.model != "housing" or workload.rows == 1:
            return None
        request = housing_pb2.HousingColumns(**_columns("housing", rows))
        return Target("grpc", port, f"{housing_service}/PredictColumns", request.SerializeToString())

    def columns_answers(model: str, rows: FloatMatrix) -> list[float]:
        request = housing_pb2.HousingColumns(**_columns("housing", rows))
        payload = _grpc_call(port, f"{housing_service}/PredictColumns", request.SerializeToString())
        return list(housing_pb2.HousingColumnsPrediction.FromString(payload).median_house_value)

    def rest_single(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.model != "iris" or workload.rows != 1:
            return None
        return Target("http", rest, "/predict/iris", json.dumps(_records("iris", rows)[0]).encode())

    def rest_single_answers(model: str, rows: FloatMatrix) -> list[float]:
        return [
            _iris_index(post_json(rest, "/predict/iris", json.dumps(record).encode())["species_name"])
            for record in _records("iris", rows)
        ]

    def rest_batch(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.model != "housing" or workload.rows != 1000:
            return None
        return Target(
            "http", rest, "/predict/housing/batch", json.dumps({"instances": _records("housing", rows)}).encode()
        )

    def rest_batch_answers(model: str, rows: FloatMatrix) -> list[float]:
        answer = post_json(
            rest, "/predict/housing/batch", json.dumps({"instances": _records("housing", rows)}).encode()
        )
        return [float(each["median_house_value"]) for each in answer["predictions"]]

    def rest_columns(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.model != "housing" or workload.rows != 1000:
            return None
        return Target("http", rest, "/predict/housing/columns", json.dumps(_columns("housing", rows)).encode())

    def rest_columns_answers(model: str, rows: FloatMatrix) -> list[float]:
        answer = post_json(rest, "/predict/housing/columns", json.dumps(_columns("housing", rows)).encode())
        return [float(each) for each in answer["median_house_value"]]

    return [
        Variant("ours unary", "ours", "Predict / Classify", grpc_only, unary, unary_answers),
        Variant("ours stream", "ours", "PredictStream / ClassifyStream", grpc_only, stream, stream_answers),
        Variant("ours PredictBatch", "ours", "PredictBatch", grpc_only, batch, batch_answers),
        Variant("ours PredictColumns", "ours", "PredictColumns", grpc_only, columns, columns_answers),
        Variant("ours REST", "ours", "POST /predict/iris", with_bridge, rest_single, rest_single_answers),
        Variant("ours REST batch", "ours", "POST /predict/housing/batch", with_bridge, rest_batch, rest_batch_answers),
        Variant(
            "ours REST columns",
            "ours",
            "POST /predict/housing/columns",
            with_bridge,
            rest_columns,
            rest_columns_answers,
        ),
    ]


def noop_variant(server: Server, port: int) -> Variant:
    def target(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.model != "housing" or workload.rows != 1:
            return None
        return Target("grpc", port, NOOP_ROUTE, _housing_messages(rows)[0].SerializeToString())

    return Variant("no-op gRPC", "floor", "bare grpcio, ThreadPoolExecutor(8)", [server], target, None)


# ---------------------------------------------------------------------------------------------------
# Peers


def omp_env(omp: str | None) -> dict[str, str]:
    return {} if omp is None else {"OMP_NUM_THREADS": omp}


def omp_label(omp: str | None) -> str:
    return "OMP unset" if omp is None else f"OMP={omp}"


def start_mlflow_configs(tracking_uri: str, logs: Path) -> list[Variant]:
    """``mlflow models serve`` in every configuration, one process tree per model, all started together."""
    started = []
    for workers in (None, 2):
        for omp in (None, "1"):
            config = f"workers={'1 (default)' if workers is None else workers}, {omp_label(omp)}"
            tag = f"w{workers or 'default'}-omp{omp or 'unset'}"
            servers, ports = {}, {}
            for model, name in (("housing", HOUSING_MODEL), ("iris", IRIS_MODEL)):
                servers[model], ports[model] = start_mlflow(
                    name, tracking_uri, logs, omp_env(omp), workers=workers, name=f"mlflow-{model}-{tag}"
                )
            started.append((config, servers, ports))
    for _config, servers, ports in started:
        for model, server in servers.items():
            wait_until(server, lambda port=ports[model]: http_ok(port, "/ping"), "GET /ping")
    return [_mlflow_variant(config, servers, ports) for config, servers, ports in started]


def _mlflow_variant(config: str, servers: dict[str, Server], ports: dict[str, int]) -> Variant:
    def target(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.rows > 1000:
            return None
        return Target("http", ports[workload.model], "/invocations", mlflow_body(Case(workload.model, 1), rows))

    def answers(model: str, rows: FloatMatrix) -> list[float]:
        answer = post_json(ports[model], "/invocations", mlflow_body(Case(model, len(rows)), rows))
        return [float(each) for each in answer["predictions"]]

    return Variant(f"mlflow {config}", "mlflow", config, list(servers.values()), target, answers)


def save_joblib_models(estimators: dict[str, Any], folder: Path) -> dict[str, Path]:
    import joblib  # noqa: PLC0415

    paths = {}
    for model, estimator in estimators.items():
        (folder / model).mkdir(parents=True, exist_ok=True)
        paths[model] = folder / model / "model.joblib"
        joblib.dump(estimator, paths[model])
    return paths


def download_artifacts(tracking_uri: str, folder: Path) -> dict[str, Path]:
    """Each champion's MLflow model folder (what MLServer's MLflow runtime loads)."""
    import mlflow  # noqa: PLC0415

    mlflow.set_tracking_uri(tracking_uri)
    paths = {}
    for model, name in (("housing", HOUSING_MODEL), ("iris", IRIS_MODEL)):
        paths[model] = Path(
            mlflow.artifacts.download_artifacts(f"models:/{name}@{ALIAS}", dst_path=str(folder / model))
        )
    return paths


@dataclass(frozen=True)
class MlserverConfig:
    runtime: str  # "mlflow" or "sklearn"
    parallel_workers: int | None  # None: MLServer's default
    omp: str | None

    @property
    def label(self) -> str:
        workers = "parallel_workers=default (1)" if self.parallel_workers is None else "parallel_workers=0"
        return f"{self.runtime} runtime, {workers}, {omp_label(self.omp)}"

    @property
    def tag(self) -> str:
        return f"{self.runtime}-pw{self.parallel_workers}-omp{self.omp or 'unset'}"


def start_mlserver_configs(
    mlserver_python: Path, artifacts: dict[str, Path], joblib_models: dict[str, Path], workdir: Path, logs: Path
) -> list[Variant]:
    # The project's housing pipeline holds data.transforms.RotatedCoordinates: MLServer must import that package
    # (and only that: the rest of the repository is not for its virtualenv).
    importable = workdir / "mlserver-pythonpath"
    importable.mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (importable / "data").symlink_to(ROOT / "data")
    started: list[tuple[MlserverConfig, Server, int, int]] = []
    for runtime in ("mlflow", "sklearn"):
        for parallel_workers in (0, None):
            for omp in (None, "1"):
                config = MlserverConfig(runtime, parallel_workers, omp)
                repository = workdir / f"mlserver-{config.tag}"
                repository.mkdir()
                http_port, grpc_port = free_port(), free_port()
                settings: dict[str, Any] = {
                    "host": "127.0.0.1",
                    "http_port": http_port,
                    "grpc_port": grpc_port,
                    "metrics_port": free_port(),
                    "debug": False,
                }
                if parallel_workers is not None:
                    settings["parallel_workers"] = parallel_workers
                (repository / "settings.json").write_text(json.dumps(settings))
                for model in ("housing", "iris"):
                    (repository / model).mkdir()
                    if runtime == "mlflow":
                        model_settings = {
                            "name": model,
                            "implementation": "mlserver_mlflow.MLflowRuntime",
                            "parameters": {"uri": str(artifacts[model])},
                        }
                    else:
                        model_settings = {
                            "name": model,
                            "implementation": "mlserver_sklearn.SKLearnModel",
                            "parameters": {"uri": str(joblib_models[model])},
                        }
                    (repository / model / "model-settings.json").write_text(json.dumps(model_settings))
                env = {**omp_env(config.omp), "PYTHONPATH": str(importable)}
                command = [str(mlserver_python.parent / "mlserver"), "start", str(repository)]
                server = start(f"mlserver-{config.tag}", command, env, logs, cwd=repository)
                started.append((config, server, http_port, grpc_port))
    variants = []
    for config, server, http_port, grpc_port in started:
        for model in ("housing", "iris"):
            wait_until(server, lambda port=http_port, m=model: http_ok(port, f"/v2/models/{m}/ready"), f"{model} ready")
        variants += _mlserver_variants(config, server, http_port, grpc_port)
    return variants


def _mlserver_variants(config: MlserverConfig, server: Server, http_port: int, grpc_port: int) -> list[Variant]:
    per_column = config.runtime == "mlflow"  # an MLflow column signature: one tensor per named column

    def rest_body(model: str, rows: FloatMatrix) -> bytes:
        return mlserver_rest_body(Case(model, len(rows)), rows) if per_column else single_tensor_rest_body(rows)

    def grpc_body(model: str, rows: FloatMatrix) -> bytes:
        return mlserver_grpc_body(Case(model, len(rows)), rows) if per_column else single_tensor_grpc_body(model, rows)

    def rest_target(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.rows > 1000:
            return None
        return Target("http", http_port, f"/v2/models/{workload.model}/infer", rest_body(workload.model, rows))

    def rest_answers(model: str, rows: FloatMatrix) -> list[float]:
        answer = post_json(http_port, f"/v2/models/{model}/infer", rest_body(model, rows))
        return [float(each) for each in np.ravel(answer["outputs"][0]["data"])]

    def grpc_target(workload: Workload, rows: FloatMatrix) -> Target | None:
        if workload.rows > 1000:
            return None
        return Target("grpc", grpc_port, V2_INFER, grpc_body(workload.model, rows))

    def grpc_answers(model: str, rows: FloatMatrix) -> list[float]:
        return decode_v2_grpc(_grpc_call(grpc_port, V2_INFER, grpc_body(model, rows)))

    return [
        Variant(f"mlserver-rest {config.label}", "mlserver-rest", config.label, [server], rest_target, rest_answers),
        Variant(f"mlserver-grpc {config.label}", "mlserver-grpc", config.label, [server], grpc_target, grpc_answers),
    ]


# ---------------------------------------------------------------------------------------------------
# The reference: the served estimators in this process


@dataclass
class InProcess:
    """The champions as the server runs them: the fast path up to SMALL_BATCH_ROWS rows (at any size when it is the
    native forest kernel), else scikit-learn."""

    estimators: dict[str, Any]
    fast_paths: dict[str, Any]
    any_size: set[str]
    runtime: Any

    @classmethod
    def load(cls, tracking_uri: str) -> "InProcess":
        from model_registry.mlflow import MlflowRegistry  # noqa: PLC0415
        from server.fast_paths import compile_fast_path, fast_path_any_size, reproduces  # noqa: PLC0415
        from server.runtime import PredictRuntime  # noqa: PLC0415

        registry = MlflowRegistry(tracking_uri)
        estimators, fast_paths, any_size = {}, {}, set()
        for model, name in (("housing", HOUSING_MODEL), ("iris", IRIS_MODEL)):
            version = registry.resolve(name, ALIAS).version
            estimators[model] = registry.load(name, str(version)).estimator
            method = "predict" if model == "housing" else "predict_proba"
            fast_path = compile_fast_path(estimators[model], method)
            sample = housing_rows(256, 3) if model == "housing" else iris_rows(256, 3)
            if fast_path is not None and reproduces(fast_path, estimators[model], method, sample):
                fast_paths[model] = fast_path
                if fast_path_any_size(fast_path):
                    any_size.add(model)
        runtime = PredictRuntime(None)
        runtime.limit_current_thread()
        return cls(estimators, fast_paths, any_size, runtime)

    def served_call(self, model: str, rows: FloatMatrix) -> Callable[[], object]:
        if model in self.fast_paths and (model in self.any_size or len(rows) <= SMALL_BATCH_ROWS):
            fast_path = self.fast_paths[model]
            return lambda: fast_path(rows)
        method = getattr(self.estimators[model], "predict" if model == "housing" else "predict_proba")
        return lambda: self.runtime.run(method, rows)

    def answers(self, model: str, rows: FloatMatrix) -> list[float]:
        return [float(each) for each in self.estimators[model].predict(rows)]

    def measure(self, workload: Workload, seconds: float) -> Measurement:
        rows = rows_of(workload)
        call = self.served_call(workload.model, rows)
        for _ in range(3):
            call()
        latencies: list[float] = []
        cpu_before, began = time.process_time(), time.perf_counter()
        deadline = began + seconds
        while time.perf_counter() < deadline or len(latencies) < 3:
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu_before
        return Measurement.of(latencies, wall, cpu, 0.0)


def check_answers(variants: Sequence[Variant], reference: InProcess) -> dict[str, float]:
    """Every variant on the same rows as the estimator in process: housing within TOLERANCE, iris classes equal."""
    worst: dict[str, float] = {}
    for model, rows in (("housing", housing_rows(40, 11)), ("iris", iris_rows(20, 11))):
        expected = np.array(reference.answers(model, rows))
        for variant in variants:
            serves = any(
                variant.targets(workload, rows_of(workload)) is not None
                for workload in (Workload(model, 1, (1,)), Workload(model, 1000, (1,)))
            )
            if variant.answers is None or not serves:
                continue
            got = np.array(variant.answers(model, rows))
            difference = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else np.inf
            if not difference <= (TOLERANCE if model == "housing" else 0.0):
                raise RuntimeError(f"{variant.system} disagrees on {model}: {got[:5]} against {expected[:5]}")
            worst[f"{variant.system} {model}"] = difference
    return worst


# ---------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Plan:
    workloads: list[Workload]
    rounds: int
    seconds: float
    prune_seconds: float
    prune: bool

    def seconds_for(self, workload: Workload) -> float:
        return self.seconds * (1.5 if workload.is_batch else 1.0)


@dataclass
class Series:
    system: str
    group: str
    config: str
    case: str
    rows: int
    concurrency: int
    rounds: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> Measurement:
        return Measurement.median(self.rounds)

    def add(self, outcome: Measurement | str) -> None:
        if isinstance(outcome, Measurement):
            self.rounds.append(outcome)
        else:
            self.failures.append(outcome)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "group": self.group,
            "config": self.config,
            "case": self.case,
            "rows": self.rows,
            "concurrency": self.concurrency,
            "median": asdict(self.median) if self.rounds else None,
            "rounds": [asdict(each) for each in self.rounds],
            "failures": self.failures,
        }


def _warmup_for(workload: Workload, concurrency: int) -> int:
    """Unmeasured calls first: each measurement opens fresh connections, and every one must have answered once."""
    return max(concurrency, 3) if workload.is_batch else concurrency + 20


def _run(
    generator: LoadGenerator,
    variant: Variant,
    target: Target,
    workload: Workload,
    *,
    concurrency: int,
    seconds: float,
    call_timeout: float | None = None,
) -> Measurement | str:
    """The measurement, or why it failed (a system that fails under load is reported, and the run goes on)."""
    try:
        return generator.run(
            target,
            _Charged(variant),
            concurrency,
            max(concurrency, 3),
            _warmup_for(workload, concurrency),
            seconds=seconds,
            call_timeout=call_timeout,
        )
    except RuntimeError as exc:
        exited = [server for server in variant.processes if server.process.poll() is not None]
        if exited and variant.group in {"ours", "floor"}:
            # Everything after would fail too, and say nothing about the peers: stop here.
            raise RuntimeError(f"{exited[0].name} exited during the run:\n{exited[0].log_tail(10)}") from exc
        if exited:
            return f"{exc} ({exited[0].name} exited: {exited[0].log_tail(5)})"
        return str(exc)


def preround(
    plan: Plan, peers: Sequence[Variant], generator: LoadGenerator, log: Callable[[str], None]
) -> tuple[list[Series], set[tuple[str, str]]]:
    """Every peer configuration once at each case's lowest and highest concurrency; the (case, system) winners."""
    figures: list[Series] = []
    keep: set[tuple[str, str]] = set()
    for workload in plan.workloads:
        rows = rows_of(workload)
        candidates = [(each, target) for each in peers if (target := each.targets(workload, rows)) is not None]
        if not candidates:
            continue
        for concurrency in sorted({min(workload.concurrencies), max(workload.concurrencies)}):
            best: dict[str, tuple[float, str]] = {}
            for variant, target in candidates:
                measured = _run(
                    generator,
                    variant,
                    target,
                    workload,
                    concurrency=concurrency,
                    seconds=plan.prune_seconds,
                    call_timeout=PRUNE_CALL_TIMEOUT_S,
                )
                series = Series(
                    variant.system, variant.group, variant.config, workload.label, workload.rows, concurrency
                )
                series.add(measured)
                figures.append(series)
                if isinstance(measured, str):
                    log(f"pre-round {workload.label} x{concurrency} in flight: {variant.system} failed: {measured}")
                elif measured.rps > best.get(variant.group, (-1.0, ""))[0]:
                    best[variant.group] = (measured.rps, variant.system)
            for _rps, system in best.values():
                keep.add((workload.label, system))
            log(f"pre-round {workload.label} x{concurrency} in flight: best " + ", ".join(s for _, s in best.values()))
    return figures, keep


def measure_rounds(
    plan: Plan,
    variants: Sequence[Variant],
    keep: set[tuple[str, str]] | None,
    reference: InProcess,
    generator: LoadGenerator,
    *,
    log: Callable[[str], None],
) -> list[Series]:
    """``plan.rounds`` rounds of every case, the systems in a rotated order each round; in process at 1 in flight."""
    series: dict[tuple[str, str, int], Series] = {}
    chosen: dict[Workload, list[tuple[Variant, Target]]] = {}
    for workload in plan.workloads:
        rows = rows_of(workload)
        chosen[workload] = [
            (variant, target)
            for variant in variants
            if (target := variant.targets(workload, rows)) is not None
            and (variant.group not in PEERS or keep is None or (workload.label, variant.system) in keep)
        ]
        for variant, target in chosen[workload]:  # connections, caches, lazy imports: once, unmeasured
            outcome = _run(generator, variant, target, workload, concurrency=max(workload.concurrencies), seconds=0.0)
            if isinstance(outcome, str):
                log(f"warm-up {workload.label}: {variant.system} failed: {outcome}")
    for round_index in range(plan.rounds):
        log(f"round {round_index + 1}/{plan.rounds}")
        for workload in plan.workloads:
            key = ("in process", workload.label, 1)
            series.setdefault(
                key, Series("in process", "floor", "one OpenMP thread", workload.label, workload.rows, 1)
            ).add(reference.measure(workload, plan.seconds_for(workload)))
            systems = chosen[workload]
            shift = round_index % len(systems)
            for concurrency in workload.concurrencies:
                for variant, target in [*systems[shift:], *systems[:shift]]:
                    measured = _run(
                        generator,
                        variant,
                        target,
                        workload,
                        concurrency=concurrency,
                        seconds=plan.seconds_for(workload),
                    )
                    series.setdefault(
                        (variant.system, workload.label, concurrency),
                        Series(
                            variant.system, variant.group, variant.config, workload.label, workload.rows, concurrency
                        ),
                    ).add(measured)
                    if isinstance(measured, str):
                        log(f"{workload.label} x{concurrency} in flight: {variant.system} failed: {measured}")
    return list(series.values())


# ---------------------------------------------------------------------------------------------------
# One model set, start to finish


@dataclass
class PeerAdmission:
    """Peers join a set's run a family at a time: checked, pruned in a pre-round, the losers stopped."""

    plan: Plan
    reference: InProcess
    generator: LoadGenerator
    log: Callable[[str], None]
    keep: Callable[[Server], Server]
    correctness: dict[str, float]
    admitted: list[Variant] = field(default_factory=list)
    preround: list[Series] = field(default_factory=list)
    kept: set[tuple[str, str]] = field(default_factory=set)

    def admit(self, family: str, started: list[Variant]) -> None:
        for variant in started:
            for server in variant.processes:
                self.keep(server)
        self.correctness.update(check_answers(started, self.reference))
        if self.plan.prune:
            figures, winners = preround(self.plan, started, self.generator, self.log)
            self.preround.extend(figures)
            self.kept.update(winners)
            winning = {system for _, system in winners}
            needed = {id(server) for each in started if each.system in winning for server in each.processes}
            for variant in started:
                for server in variant.processes:
                    if id(server) not in needed:
                        server.stop()  # idle servers would only take memory (and a little CPU) from the rounds
            started = [each for each in started if each.system in winning]
        self.log(f"{family}: {len(started)} configuration(s) go on to the rounds")
        self.admitted.extend(started)


def run_set(name: str, options: "Options", log: Callable[[str], None]) -> dict[str, Any]:
    plan = options.plan
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-suite-{name}-")))
        logs = workdir / "logs"
        logs.mkdir()

        def keep(server: Server) -> Server:
            stack.callback(server.stop)
            return server

        try:
            log(f"[{name}] registering the models ...")
            tracking_uri = options.registries.get(name) or register_models(name, workdir, logs)
            log(f"[{name}] starting our server (alone, timed to SERVING) ...")
            ours = start_ours(tracking_uri, workdir, logs, options.access_log)
            keep(ours.server)
            memory_at_start = ours.rss_mb()
            start_bridge(ours, logs, options.access_log)
            assert ours.bridge is not None
            keep(ours.bridge)
            noop, noop_port = start_noop(logs)
            keep(noop)
            reference = InProcess.load(tracking_uri)
            variants = [*ours_variants(ours), noop_variant(noop, noop_port)]
            correctness = check_answers(variants, reference)
            generator = LoadGenerator()
            stack.callback(generator.stop)
            peers = PeerAdmission(plan, reference, generator, log, keep, correctness)
            log(f"[{name}] starting mlflow models serve, 4 configurations x 2 models ...")
            peers.admit("mlflow", start_mlflow_configs(tracking_uri, logs))
            if options.with_mlserver:
                log(f"[{name}] starting MLServer, 8 configurations ...")
                artifacts = download_artifacts(tracking_uri, workdir / "mlflow-artifacts")
                joblib_models = save_joblib_models(reference.estimators, workdir / "joblib-models")
                started = start_mlserver_configs(options.mlserver_python, artifacts, joblib_models, workdir, logs)
                peers.admit("MLServer", started)
            results = measure_rounds(
                plan, variants + peers.admitted, peers.kept if plan.prune else None, reference, generator, log=log
            )
            memory_at_end = ours.rss_mb()
        except BaseException:
            for log_file in sorted(logs.glob("*.log")):
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
                print(f"--- {log_file.name} ---\n{tail}", file=sys.stderr)
            raise
    return {
        "model_set": name,
        "startup_to_serving_s": ours.startup_seconds,
        "memory_after_start": memory_at_start,
        "memory_after_run": memory_at_end,
        "correctness_max_difference": correctness,
        "preround": [each.to_json() for each in peers.preround],
        "results": [each.to_json() for each in results],
    }


def register_models(name: str, workdir: Path, logs: Path) -> str:
    return train_registry(workdir, logs, "training" if name == "project" else "benchmarks.plain_models")


# ---------------------------------------------------------------------------------------------------
# Report


def _index(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(each["system"], each["case"], each["concurrency"]): each for each in results if each["median"]}


def best_peer(results: Sequence[dict[str, Any]], group: str, case: str, concurrency: int) -> dict[str, Any] | None:
    candidates = [
        each
        for each in results
        if each["median"] and each["group"] == group and each["case"] == case and each["concurrency"] == concurrency
    ]
    return max(candidates, key=lambda each: each["median"]["rps"], default=None)


def _figure(entry: dict[str, Any] | None, rows: int) -> str:
    if entry is None:
        return "-"
    median = entry["median"]
    volume = f"{median['rps']:,.0f} req/s" if rows == 1 else f"{median['rps'] * rows:,.0f} rows/s"
    shed = f", {median['shed_fraction']:.1%} shed" if median.get("shed_fraction") else ""
    return (
        f"{volume}, p50 {median['p50_ms']:.2f} / p99 {median['p99_ms']:.1f} ms, "
        f"{median['server_cpu_us']:,.0f} µs CPU{shed}"
    )


OURS_ROWS = (
    ("housing x1", "ours unary", "housing, 1 row, Predict"),
    ("housing x1", "ours stream", "housing, 1 row, PredictStream"),
    ("iris x1", "ours unary", "iris, 1 row, Classify"),
    ("iris x1", "ours stream", "iris, 1 row, ClassifyStream"),
    ("iris x1", "ours REST", "iris, 1 row, REST /predict/iris"),
    ("housing x1000", "ours PredictBatch", "housing, 1,000 rows, PredictBatch"),
    ("housing x1000", "ours PredictColumns", "housing, 1,000 rows, PredictColumns"),
    ("housing x1000", "ours REST batch", "housing, 1,000 rows, REST /predict/housing/batch"),
    ("housing x1000", "ours REST columns", "housing, 1,000 rows, REST /predict/housing/columns"),
    ("housing x10000", "ours PredictColumns", "housing, 10,000 rows, PredictColumns"),
)


def comparison_table(model_set: dict[str, Any]) -> list[str]:
    results = model_set["results"]
    by_key = _index(results)
    lines = [
        "| case | in flight | ours | mlflow serve (best config) | MLServer REST (best config) "
        "| MLServer gRPC (best config) | ours / best peer (throughput) | floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, system, title in OURS_ROWS:
        rows = int(case.split("x")[1])
        for concurrency in sorted({key[2] for key in by_key if key[0] == system and key[1] == case}):
            ours = by_key[(system, case, concurrency)]
            cells, peer_rps = [], []
            for group in PEERS:
                best = best_peer(results, group, case, concurrency)
                cells.append("-" if best is None else f"{_figure(best, rows)} ({best['config']})")
                if best is not None:
                    peer_rps.append(best["median"]["rps"])
            ratio = f"{ours['median']['rps'] / max(peer_rps):.2f}x" if peer_rps else "-"
            floors = []
            if (noop := by_key.get(("no-op gRPC", case, concurrency))) and system == "ours unary":
                floors.append(f"no-op gRPC {noop['median']['rps']:,.0f} req/s")
            if concurrency == 1 and (local := by_key.get(("in process", case, 1))):
                floors.append(f"in process {local['median']['rps'] * rows:,.0f} rows/s")
            lines.append(
                f"| {title} | {concurrency} | {_figure(ours, rows)} | {' | '.join(cells)} | {ratio} "
                f"| {'; '.join(floors) or '-'} |"
            )
    return lines


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def _rps(entry: dict[str, Any] | None) -> float | None:
    return None if entry is None else float(entry["median"]["rps"])


def check_targets(model_set: dict[str, Any]) -> list[Check]:
    results = model_set["results"]
    by_key = _index(results)
    checks: list[Check] = []

    def ratio_check(title: str, ours: float | None, other: float | None, factor: float, other_name: str) -> None:
        if ours is None or other is None or other == 0:
            checks.append(Check(title, "not measured", None))
            return
        checks.append(Check(title, f"{ours / other:.2f}x {other_name}", ours >= factor * other))

    def best_of(groups: Sequence[str], case: str, concurrency: int) -> tuple[float | None, str]:
        found = [(b["median"]["rps"], b["system"]) for g in groups if (b := best_peer(results, g, case, concurrency))]
        return max(found) if found else (None, "")

    top = 64
    ours_single = _rps(by_key.get(("ours unary", "housing x1", top)))
    peer, peer_name = best_of(PEERS, "housing x1", top)
    ratio_check(f"housing 1 row, {top} in flight: >= 3x the best peer", ours_single, peer, 3.0, peer_name)
    noop = _rps(by_key.get(("no-op gRPC", "housing x1", top)))
    ratio_check(f"housing 1 row, {top} in flight: >= 0.5x the no-op floor", ours_single, noop, 0.5, "no-op")
    batch_levels = sorted({key[2] for key in by_key if key[1] == "housing x1000" and key[0] == "ours PredictColumns"})
    local_1000 = _rps(by_key.get(("in process", "housing x1000", 1)))
    for concurrency in batch_levels:
        columns = _rps(by_key.get(("ours PredictColumns", "housing x1000", concurrency)))
        mlserver, name = best_of(["mlserver-grpc"], "housing x1000", concurrency)
        ratio_check(
            f"1,000 rows PredictColumns, {concurrency} in flight: >= 1.5x MLServer gRPC", columns, mlserver, 1.5, name
        )
        batch = _rps(by_key.get(("ours PredictBatch", "housing x1000", concurrency)))
        ratio_check(f"1,000 rows PredictBatch, {concurrency} in flight: >= MLServer gRPC", batch, mlserver, 1.0, name)
        rest_batch = _rps(by_key.get(("ours REST batch", "housing x1000", concurrency)))
        mlflow, name = best_of(["mlflow"], "housing x1000", concurrency)
        ratio_check(
            f"1,000 rows REST batch, {concurrency} in flight: >= 1.5x mlflow serve", rest_batch, mlflow, 1.5, name
        )
    ratio_check(
        "1,000 rows PredictColumns, 1 in flight: >= 0.8x in process",
        _rps(by_key.get(("ours PredictColumns", "housing x1000", 1))),
        local_1000,
        0.8,
        "in process",
    )
    ratio_check(
        "10,000 rows PredictColumns, 1 in flight: >= 0.8x in process",
        _rps(by_key.get(("ours PredictColumns", "housing x10000", 1))),
        _rps(by_key.get(("in process", "housing x10000", 1))),
        0.8,
        "in process",
    )
    for case in ("housing x1", "iris x1"):
        for concurrency in sorted({key[2] for key in by_key if key[1] == case and key[0] == "ours stream"}):
            ratio_check(
                f"{case.replace(' x1', '')} 1 row, {concurrency} in flight: stream >= 2x unary",
                _rps(by_key.get(("ours stream", case, concurrency))),
                _rps(by_key.get(("ours unary", case, concurrency))),
                2.0,
                "unary",
            )
    rest_iris = _rps(by_key.get(("ours REST", "iris x1", top)))
    mlflow, name = best_of(["mlflow"], "iris x1", top)
    ratio_check(f"REST /predict/iris, {top} in flight: >= 3x mlflow serve", rest_iris, mlflow, 3.0, name)
    mlserver, name = best_of(["mlserver-rest"], "iris x1", top)
    ratio_check(f"REST /predict/iris, {top} in flight: >= 1.5x MLServer REST", rest_iris, mlserver, 1.5, name)
    for case, system in (("housing x1", "ours unary"), ("iris x1", "ours unary"), ("iris x1", "ours REST")):
        ours_entry = by_key.get((system, case, top))
        mlflow_p99 = [
            each["median"]["p99_ms"]
            for each in results
            if each["median"] and each["group"] == "mlflow" and each["case"] == case and each["concurrency"] == top
        ]
        title = (
            f"{case.replace(' x1', '')} 1 row {system.removeprefix('ours ')}, p99 at {top} in flight <= 1/5 mlflow's"
        )
        if ours_entry is None or not mlflow_p99:
            checks.append(Check(title, "not measured", None))
        else:
            ours_p99, best_p99 = ours_entry["median"]["p99_ms"], min(mlflow_p99)
            checks.append(
                Check(
                    title,
                    f"{ours_p99:.1f} ms against {best_p99:.1f} ms ({ours_p99 / best_p99:.2f})",
                    ours_p99 * 5 <= best_p99,
                )
            )
    rss = max(model_set["memory_after_start"]["rss_mb"], model_set["memory_after_run"]["rss_mb"])
    checks.append(Check("server RSS, both models loaded: <= 400 MB", f"{rss:.0f} MB", rss <= 400))
    startup = model_set["startup_to_serving_s"]
    checks.append(Check("start-up to SERVING, local registry: <= 10 s", f"{startup:.1f} s", startup <= 10))
    return checks


def configurations_table(model_set: dict[str, Any]) -> list[str]:
    lines = [
        "| case | in flight | system | configuration | where | req/s | p50 ms | p99 ms | server CPU µs/req | shed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    entries = [(each, "pre-round") for each in model_set["preround"]] + [
        (each, "rounds") for each in model_set["results"] if each["group"] in PEERS
    ]
    for entry, where in sorted(entries, key=lambda e: (e[0]["case"], e[0]["concurrency"], e[0]["group"], e[1])):
        median = entry["median"]
        figures = (
            f"{median['rps']:,.0f} | {median['p50_ms']:.2f} | {median['p99_ms']:.1f} | {median['server_cpu_us']:,.0f} "
            f"| {median.get('shed_fraction', 0.0):.1%}"
            if median
            else "failed | - | - | - | -"
        )
        lines.append(
            f"| {entry['case']} | {entry['concurrency']} | {PEER_TITLES[entry['group']]} | {entry['config']} "
            f"| {where} | {figures} |"
        )
    return lines


def markdown(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    plan = summary["plan"]
    quick = " · QUICK (smoke) run: not figures to quote" if summary["quick"] else ""
    pruning = (
        f"peers pruned in a pre-round of {plan['prune_seconds']:g} s per configuration at each case's lowest and "
        "highest concurrency (its figures are below)"
        if plan["prune"]
        else "every peer configuration in every round"
    )
    lines = [
        "# Serving benchmark suite",
        "",
        f"{summary['date']} · {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gb']:.0f} GB · "
        f"Python {machine['python']} · load average {machine['load_average_start']} at the start, "
        f"{machine['load_average_end']} at the end{quick}",
        "",
        f"{plan['rounds']} rounds of {plan['seconds']:g} s per system, case and concurrency (batches 1.5x), medians; "
        f"{pruning}. "
        "Streaming at c in flight: c messages in flight over min(c, 4) streams. Server CPU per request is the server's "
        "whole process tree (for REST, bridge plus server). `python -m benchmarks.suite --help` has the method.",
        "",
    ]
    for model_set in summary["model_sets"]:
        lines += [f"## Model set: {model_set['model_set']}", "", *comparison_table(model_set), "", "### Targets", ""]
        lines += ["| target | measured | result |", "| --- | --- | --- |"]
        for check in check_targets(model_set):
            verdict = "not measured" if check.met is None else ("met" if check.met else "**missed**")
            lines.append(f"| {check.target} | {check.measured} | {verdict} |")
        lines += ["", "### Every peer configuration tried", "", *configurations_table(model_set), ""]
        failures = [
            f"- {each['system']}, {each['case']}, {each['concurrency']} in flight: {' '.join(failure.split())[:400]}"
            for each in [*model_set["preround"], *model_set["results"]]
            for failure in each["failures"]
        ]
        if failures:
            lines += ["### Failed measurements (left out of the figures above)", "", *failures, ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# The machine


def machine_description(mlserver_python: Path | None) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    ours = {}
    for package in ("grpcio", "protobuf", "numpy", "scikit-learn", "mlflow", "fastapi", "uvicorn", "threadpoolctl"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            ours[package] = importlib.metadata.version(package)
    peers: dict[str, str] = {}
    if mlserver_python is not None:
        script = (
            "import importlib.metadata as m, json\n"
            "names = ['mlserver', 'mlserver-mlflow', 'mlserver-sklearn', 'mlflow', 'scikit-learn', 'grpcio',"
            " 'protobuf']\n"
            "print(json.dumps({n: m.version(n) for n in names}))\n"
        )
        with contextlib.suppress(subprocess.SubprocessError, OSError, json.JSONDecodeError):
            peers = json.loads(
                subprocess.run(
                    [str(mlserver_python), "-c", script], capture_output=True, text=True, check=True, timeout=60
                ).stdout
            )
    return {
        "cpu_model": model.group(1) if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": int(memory.group(1)) / 1024 / 1024 if memory else 0.0,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ours,
        "bench_venv_packages": peers,
        "load_average_start": ", ".join(f"{each:.1f}" for each in os.getloadavg()),
    }


# ---------------------------------------------------------------------------------------------------
# Entry point


@dataclass
class Options:
    plan: Plan
    sets: list[str]
    quick: bool
    mlserver_python: Path
    with_mlserver: bool
    access_log: bool
    output_dir: Path
    registries: dict[str, str] = field(default_factory=dict)
    """Existing registries (tracking URIs) by model set, instead of registering afresh."""


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds of 0.25 s, pre-round 0.15 s, one model set"
    )
    parser.add_argument(
        "--sets", nargs="+", choices=("project", "plain"), help="model sets (default: both; --quick: project)"
    )
    parser.add_argument("--rounds", type=int, help="measured rounds, figures are medians (default 3)")
    parser.add_argument(
        "--seconds", type=float, help="seconds per system, case and concurrency (default 1; batches 1.5x)"
    )
    parser.add_argument(
        "--prune-seconds", type=float, help="seconds per peer configuration in the pre-round (default 0.5)"
    )
    parser.add_argument("--no-prune", action="store_true", help="measure every peer configuration in every round")
    parser.add_argument(
        "--mlserver-python",
        type=Path,
        default=ROOT / ".bench-venv" / "bin" / "python",
        help="python of the virtualenv with mlserver, mlserver-mlflow and mlserver-sklearn 1.7.1 (default .bench-venv)",
    )
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument("--access-log", action="store_true", help="our server's and the bridge's access logs on")
    parser.add_argument(
        "--project-registry", help="tracking URI of a registry with the project's models (skip training)"
    )
    parser.add_argument("--plain-registry", help="tracking URI of a registry with the plain models (skip registering)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the reports go")
    arguments = parser.parse_args(argv)
    quick = bool(arguments.quick)
    with_mlserver = not arguments.no_mlserver and arguments.mlserver_python.exists()
    if not arguments.no_mlserver and not with_mlserver:
        print(f"MLServer left out: {arguments.mlserver_python} does not exist", file=sys.stderr)
    single, batch = (1, 8, 64), (1, 8)
    plan = Plan(
        workloads=[
            Workload("housing", 1, single),
            Workload("iris", 1, single),
            Workload("housing", 1000, batch),
            Workload("housing", 10000, (1,)),
        ],
        rounds=arguments.rounds or (2 if quick else 3),
        seconds=arguments.seconds or (0.25 if quick else 1.0),
        prune_seconds=arguments.prune_seconds or (0.15 if quick else 0.5),
        prune=not arguments.no_prune,
    )
    return Options(
        plan=plan,
        sets=arguments.sets or (["project"] if quick else ["project", "plain"]),
        quick=quick,
        mlserver_python=arguments.mlserver_python,
        with_mlserver=with_mlserver,
        access_log=arguments.access_log,
        output_dir=arguments.output_dir,
        registries={
            name: uri
            for name, uri in (("project", arguments.project_registry), ("plain", arguments.plain_registry))
            if uri
        },
    )


def _raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _timed(log: Callable[[str], None]) -> Iterator[None]:
    began = time.monotonic()
    yield
    log(f"done in {time.monotonic() - began:.0f} s")


def main() -> None:
    options = parse_options()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # unwinds like Ctrl-C: every server is stopped

    def log(message: str) -> None:
        print(f"{datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)

    machine = machine_description(options.mlserver_python if options.with_mlserver else None)
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "machine": machine,
        "plan": asdict(options.plan),
        "with_mlserver": options.with_mlserver,
        "access_log": options.access_log,
        "model_sets": [],
    }
    with _timed(log):
        for name in options.sets:
            summary["model_sets"].append(run_set(name, options, log))
    machine["load_average_end"] = ", ".join(f"{each:.1f}" for each in os.getloadavg())
    report = markdown(summary)
    stem = "quick" if options.quick else "latest"
    options.output_dir.mkdir(parents=True, exist_ok=True)
    (options.output_dir / f"{stem}.md").write_text(report)
    (options.output_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(report)
    log(f"wrote {options.output_dir / stem}.md and .json")


if __name__ == "__main__":
    main()
