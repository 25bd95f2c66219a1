"""The production registry for real: a PostgreSQL server, an ``mlflow server`` on it serving artifacts,
``python -m training`` registering through it (as the compose stack's train job does), and a gRPC server
loading from it and answering predictions; and the same server outliving the registry: started while the
registry is unreachable, and losing it later.

PostgreSQL refuses to run as root: under root (as CI runs) its processes run as ``nobody`` (setpriv), on a
temporary directory owned by that user; nothing on the system is created or changed.
"""

import contextlib
import http.client
import itertools
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg2  # type: ignore[import-untyped]
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc

from ..deploy.compose import raw_compose
from ..faults import TcpGate
from ..prerequisites import POSTGRES, REPO_ROOT
from ..processes import Process, started
from ..server.conftest import channel_to, mlflow_server_on
from ..server.test_metrics import _scrape, _value

# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the lock has psycopg2 (psycopg2-binary).
BACKEND_SCHEME = "postgresql+psycopg2"
UNPRIVILEGED_USER = "nobody"
PORT_ATTEMPTS = 5
START_TIMEOUT_SECONDS = 30.0
MLFLOW_START_TIMEOUT_SECONDS = 120.0
MLFLOW_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
HOUSE = housing_pb2.HousingFeatures(
    median_income=8.3252,
    house_age=41,
    average_rooms=6.98,
    average_bedrooms=1.02,
    population=322,
    average_occupancy=2.55,
    latitude=37.88,
    longitude=-122.23,
)


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str

    def uri(self, database: str, scheme: str = BACKEND_SCHEME) -> str:
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"


def _as_unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *command]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _connects(port: int, user: str) -> bool:
    try:
        psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres", connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def _start_postgres(bin_dir: Path, data_dir: Path, log: Path, user: str) -> tuple[subprocess.Popen[bytes], int]:
    """A postgres on a free loopback port; a port taken between choosing and binding it is tried again."""
    for _attempt in range(PORT_ATTEMPTS):
        port = _free_port()
        with log.open("ab") as output:
            process = subprocess.Popen(
                _as_unprivileged(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(data_dir),
                        "-p",
                        str(port),
                        "-k",
                        str(data_dir),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        # A throwaway database: durability only costs time here.
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                    ]
                ),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            if _connects(port, user):
                return process, port
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError(f"postgres did not accept connections in time:\n{log.read_text()}")
        if "could not bind" not in log.read_text() and "already in use" not in log.read_text():
            raise AssertionError(f"postgres exited with {process.returncode}:\n{log.read_text()}")
    raise AssertionError(f"no free port after {PORT_ATTEMPTS} attempts:\n{log.read_text()}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bin_dir = POSTGRES.require()
    user = "mlflow"
    root = Path(tempfile.mkdtemp(prefix="registry-postgres-"))
    try:
        if os.geteuid() == 0:
            owner = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(root, owner.pw_uid, owner.pw_gid)
        data_dir, log = root / "data", root / "postgres.log"
        subprocess.run(
            _as_unprivileged(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    user,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )
        process, port = _start_postgres(bin_dir, data_dir, log, user)
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")
            connection.autocommit = True
            with contextlib.closing(connection), connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE mlflow")
            yield Postgres(port=port, user=user)
        finally:
            # SIGINT is PostgreSQL's fast shutdown: sessions are closed, nothing is waited for.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _compose_mlflow_option(name: str) -> str:
    command: list[str] = raw_compose()["services"]["mlflow"]["command"]
    (option,) = [argument for argument in command if argument.startswith(f"{name}=")]
    return option


def _status_with_host(server_uri: str, host: str) -> int:
    address = server_uri.removeprefix("http://")
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        # Not /health: MLflow exempts its health routes from the Host check.
        connection.request("GET", "/api/2.0/mlflow/registered-models/search", headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


@dataclass(frozen=True)
class TrackingServer:
    uri: str
    artifacts: Path


@pytest.fixture(scope="module")
def tracking_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """``mlflow server`` on the PostgreSQL database, serving artifacts from a local directory, on a port it picks."""
    artifacts = tmp_path_factory.mktemp("served-artifacts")
    command = [
        "-m",
        "mlflow",
        "server",
        "--host=127.0.0.1",
        "--port=0",
        "--workers=1",
        f"--backend-store-uri={postgres.uri('mlflow')}",
        "--serve-artifacts",
        f"--artifacts-destination={artifacts}",
        # As the compose stack runs it, so that the Host headers its containers send are checked here.
        _compose_mlflow_option("--allowed-hosts"),
    ]
    # The job runner (GenAI evaluation jobs) starts worker processes the registry never needs.
    server = Process(command, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, new_session=True)
    try:
        port = int(server.wait_for(MLFLOW_LISTENING, timeout=MLFLOW_START_TIMEOUT_SECONDS).group(1))
        yield TrackingServer(uri=f"http://127.0.0.1:{port}", artifacts=artifacts)
    finally:
        server.kill()


def _train(tracking_uri: str, data_home: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``python -m training --skip-if-served``, the compose stack's train job, with quick settings."""
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "SCIKIT_LEARN_DATA": str(data_home),
        "TRAINING_DATA_DIR": str(data_dir),
        "TRAINING_ALLOW_DOWNLOAD": "false",
        "TRAINING_MAX_ROWS": "600",
        "TRAINING_HOUSING_MAX_ITER": "20",
        "TRAINING_HOUSING_MAX_RMSE": "10",
        "TRAINING_IRIS_MIN_ACCURACY": "0.5",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    environment.pop("MLFLOW_REGISTRY_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "training", "--skip-if-served"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def registered(
    tracking_server: TrackingServer, offline_data_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrackingServer:
    """The tracking server once ``python -m training`` has registered both models through it."""
    trained = _train(tracking_server.uri, offline_data_home, tmp_path_factory.mktemp("training-data"))
    assert trained.returncode == 0, trained.stderr
    return tracking_server


def test_models_trained_through_mlflow_on_postgresql_are_served(postgres: Postgres, registered: TrackingServer) -> None:
    tracking_server = registered
    # The compose containers reach it as mlflow:5000; MLflow refuses unknown Host headers (DNS rebinding).
    assert _status_with_host(tracking_server.uri, "mlflow:5000") == 200
    assert _status_with_host(tracking_server.uri, "attacker.example:5000") != 200

    # The registry lives in PostgreSQL, the model files in the server's artifact store.
    connection = psycopg2.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname="mlflow")
    with contextlib.closing(connection), connection.cursor() as cursor:
        cursor.execute("SELECT name, alias, version FROM registered_model_aliases ORDER BY name")
        assert cursor.fetchall() == [("CaliforniaHousingBestModel", "champion", 1), ("IrisBestModel", "champion", 1)]
    assert any(path.name == "MLmodel" for path in tracking_server.artifacts.rglob("MLmodel"))

    with mlflow_server_on(tracking_server.uri, metrics_port=None) as server, channel_to(server) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        house = housing_pb2_grpc.HousingPredictorStub(channel).Predict(HOUSE, timeout=10)
        flower = iris_pb2_grpc.IrisClassifierStub(channel).Classify(
            iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2),
            timeout=10,
        )
    assert house.median_house_value > 0
    assert (house.model.name, house.model.version) == ("CaliforniaHousingBestModel", "1")
    assert flower.species == iris_pb2.IRIS_SPECIES_SETOSA
    assert (flower.model.name, flower.model.version) == ("IrisBestModel", "1")


SERVER_PORTS = re.compile(r"gRPC on port (\d+), metrics on port (\d+)")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Long enough to see the retries spread out (0.5, 1, 2 s apart, then the poll interval).
OUTAGE_SECONDS = 5.0
POLL_SECONDS = 3.0


def _rounds(moments: list[float], apart: float = 0.25) -> list[float]:
    """The start of each burst of connection attempts (one round of the watcher asks several times)."""
    pairs = zip([-math.inf, *moments], moments, strict=False)
    return [moment for previous, moment in pairs if moment - previous > apart]


def _health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_a_server_started_while_the_registry_is_unreachable_serves_once_it_returns_and_outlives_a_later_outage(
    registered: TrackingServer, tmp_path: Path
) -> None:
    port = int(registered.uri.rsplit(":", 1)[1])
    environment = {
        "MLFLOW_TRACKING_URI": "",  # set below, through the gate
        "PREDICTOR_STATE_DIR": str(tmp_path / "state"),
        "PREDICTOR_HOST": "127.0.0.1",
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_HOST": "127.0.0.1",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_MODEL_POLL_SECONDS": str(POLL_SECONDS),
        "PREDICTOR_REGISTRY_TIMEOUT_SECONDS": "2",
        "PREDICTOR_PREDICTION_LOG": "false",
        "PREDICTOR_GRACE_SECONDS": "1",
    }
    with TcpGate(port) as gate:
        environment["MLFLOW_TRACKING_URI"] = environment["MLFLOW_REGISTRY_URI"] = f"http://127.0.0.1:{gate.port}"
        with started("server", environment) as server:
            grpc_port, metrics_port = (int(found) for found in server.wait_for(SERVER_PORTS).groups())
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                # Up, answering health and honest about it, with nothing to serve.
                server.wait_for(re.compile(r"model registry unreachable"))
                assert _health(channel) == NOT_SERVING
                assert _health(channel, "prediction.v1.HousingPredictor") == NOT_SERVING
                assert _value(_scrape(metrics_port), "model_registry_up") == 0
                with pytest.raises(grpc.RpcError) as refused:
                    housing_pb2_grpc.HousingPredictorStub(channel).Predict(HOUSE, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

                # It retries sooner than its poll interval, then ever further apart.
                time.sleep(OUTAGE_SECONDS)
                rounds = _rounds(list(gate.refused_at))
                gaps = [later - earlier for earlier, later in itertools.pairwise(rounds)]
                assert len(gaps) >= 2, f"retry rounds at {rounds}"
                assert gaps[0] < POLL_SECONDS / 2, f"the first retry waited {gaps[0]:.2f} s"
                # Doubling (with 10% jitter) until the poll interval caps it.
                capped = POLL_SECONDS * 0.85
                assert all(later > earlier * 1.3 or later >= capped for earlier, later in itertools.pairwise(gaps)), (
                    gaps
                )

                opened = time.monotonic()
                gate.open()
                _wait(lambda: _health(channel) == SERVING, "SERVING once the registry is back", POLL_SECONDS + 15)
                back_after = time.monotonic() - opened
                assert housing_pb2_grpc.HousingPredictorStub(channel).Predict(HOUSE, timeout=5).model.version == "1"
                assert _value(_scrape(metrics_port), "model_registry_up") == 1
                server.wait_for(re.compile(r"model registry reachable again"))

                # Lost later: the loaded versions keep answering, and the metric and the log say so.
                gate.close()
                _wait(
                    lambda: _value(_scrape(metrics_port), "model_registry_up") == 0,
                    "the later outage is seen",
                    POLL_SECONDS + 10,
                )
                for _ in range(20):
                    assert housing_pb2_grpc.HousingPredictorStub(channel).Predict(HOUSE, timeout=5).model.version == "1"
                assert _health(channel) == SERVING
                gate.open()
                _wait(
                    lambda: _value(_scrape(metrics_port), "model_registry_up") == 1,
                    "the registry is seen again",
                    POLL_SECONDS + 10,
                )
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=20) == 0
    unreachable_lines = [line for line in server.lines if "model registry unreachable" in line]
    assert len(unreachable_lines) == 2, unreachable_lines  # one per outage, not one per retry
    assert back_after < POLL_SECONDS + 15
