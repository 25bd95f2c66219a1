"""A small real stack that makes every kind of series the dashboards and alerts read: for their tests and pictures.

``demo_stack`` runs the real gRPC server (``build_server``, metrics on a free port) on an in-memory registry of
small fitted models, and the real REST bridge (``create_app`` under uvicorn, on a free port) in front of it:

- housing v1 and iris v2 are the champions, each with a reference profile (drift is measured) and training
  metrics; iris reached v2 by a hot reload from v1 after start-up (``model_swaps_total``);
- each has a challenger answering part of the traffic and predicting a copy of the rest in shadow;
- housing's champion alias was moved to a version whose artifact cannot be loaded (``model_load_failures_total``:
  v1 keeps serving);
- a schedule retrain trigger fires once per model; the retrain child is a script that exits at once, because
  training is not what is shown (``model_retrain_triggered_total``).

``drive_traffic`` sends requests through the bridge: single rows, batches, columns, an invalid request, an unknown
path, and feedback for the predictions, so live quality is computed; ``drive_grpc`` what the bridge does not: a
prediction stream with one bad message, and a request message that cannot be parsed.
"""

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import uvicorn
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from data.profile import reference_profile
from data.schema import HOUSING_FEATURES, HOUSING_TARGET, IRIS_FEATURES, IRIS_SPECIES
from model_registry.memory import InMemoryRegistry
from protos.prediction.v1 import iris_pb2, iris_pb2_grpc
from rest_bridge.app import create_app
from rest_bridge.settings import BridgeSettings
from server.app import PredictionServer, build_server
from server.settings import ServerSettings

HOUSING = "CaliforniaHousingBestModel"
IRIS = "IrisBestModel"
ADMIN_TOKEN = "monitoring-demo-token"  # noqa: S105 - the demo's own server, on loopback
# Centres and spreads of the demo's housing rows (the feature table's example values, plausible spreads).
HOUSING_CENTRE = np.array([3.87, 28.6, 5.43, 1.1, 1425.0, 3.07, 35.63, -119.57])
HOUSING_SPREAD = np.array([1.5, 10.0, 1.0, 0.1, 500.0, 0.5, 1.5, 1.5])
FAILING_TRAINING = "import sys\nsys.exit(3)\n"
NEVER_MADE = "00000000-0000-4000-8000-000000000000"  # a prediction id no prediction has


def housing_rows(rng: np.random.Generator, count: int, income_shift: float = 0.0) -> NDArray[np.float64]:
    """Valid housing feature rows; ``income_shift`` moves median_income (drift)."""
    rows = rng.normal(HOUSING_CENTRE, HOUSING_SPREAD, size=(count, len(HOUSING_CENTRE)))
    rows[:, 0] += income_shift
    low = np.array([0.5, 1.0, 1.0, 0.5, 10.0, 1.0, 32.5, -124.0])
    high = np.array([15.0, 52.0, 10.0, 2.0, 5000.0, 6.0, 42.0, -114.5])
    return np.clip(rows, low, high)


def housing_value(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    """The demo's "true" median house value of each row (units of $100,000)."""
    return np.asarray(0.45 * rows[:, 0] + 0.01 * rows[:, 1] - 0.05 * (rows[:, 6] - 35.0), dtype=np.float64)


def iris_rows(rng: np.random.Generator, count: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Iris flowers near the real ones (a little noise), with their species."""
    data, target = load_iris(return_X_y=True)
    chosen = rng.integers(0, len(data), size=count)
    rows = np.clip(data[chosen] + rng.normal(0.0, 0.15, size=(count, 4)), 0.1, None)
    return rows, target[chosen].astype(np.int64)


def demo_registry(seed: int = 0) -> InMemoryRegistry:
    rng = np.random.default_rng(seed)
    registry = InMemoryRegistry()
    rows = housing_rows(rng, 2000)
    values = housing_value(rows) + rng.normal(0.0, 0.3, size=len(rows))
    champion = LinearRegression().fit(rows, values)
    # Fitted to values 10% higher and shifted: a challenger that really differs from the champion.
    challenger = LinearRegression().fit(rows, values * 1.1 + 0.2)
    profile = reference_profile(rows, champion.predict(rows), HOUSING_FEATURES, (HOUSING_TARGET,)).to_json()
    rmse = float(np.sqrt(np.mean((champion.predict(rows) - values) ** 2)))
    challenger_rmse = float(np.sqrt(np.mean((challenger.predict(rows) - values) ** 2)))
    registry.register(
        HOUSING,
        champion,
        alias="champion",
        input_names=HOUSING_FEATURES,
        metrics={"rmse": rmse},
        reference_profile=profile,
    )
    registry.register(
        HOUSING, challenger, alias="challenger", input_names=HOUSING_FEATURES, metrics={"rmse": challenger_rmse}
    )

    data, target = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=500).fit(data, target)
    iris_profile = reference_profile(data, iris.predict_proba(data), IRIS_FEATURES, IRIS_SPECIES).to_json()
    accuracy = float(np.mean(iris.predict(data) == target))
    for alias in ("champion", None):  # v1 is served first, v2 is promoted after start-up (a hot reload)
        registry.register(
            IRIS,
            iris,
            alias=alias,
            input_names=IRIS_FEATURES,
            metrics={"accuracy": accuracy},
            reference_profile=iris_profile,
        )
    # Strongly regularised: it disagrees with the champion on some flowers.
    weak = LogisticRegression(max_iter=500, C=0.01).fit(data, target)
    weak_accuracy = float(np.mean(weak.predict(data) == target))
    registry.register(IRIS, weak, alias="challenger", input_names=IRIS_FEATURES, metrics={"accuracy": weak_accuracy})
    for name, percent in ((HOUSING, 20), (IRIS, 30)):
        registry.set_model_tag(name, "traffic_split", json.dumps({"challenger_percent": percent, "shadow": True}))
    return registry


class BridgeThread:
    """The REST bridge app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, settings: BridgeSettings) -> None:
        config = uvicorn.Config(
            create_app(settings, CollectorRegistry()),
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="rest-bridge", daemon=True)
        self.port = 0

    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the bridge did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)


@dataclass(frozen=True, slots=True)
class DemoStack:
    server: PredictionServer
    registry: InMemoryRegistry
    bridge_url: str
    metrics_address: str
    """host:port of the server's /metrics."""
    bridge_address: str


def _wait(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(0.02)


@contextmanager
def demo_stack(*, seed: int = 0) -> Iterator[DemoStack]:
    registry = demo_registry(seed)
    with tempfile.TemporaryDirectory(prefix="monitoring-demo-") as name:
        directory = Path(name)
        workdir = directory / "retrain"
        (workdir / "training").mkdir(parents=True)
        (workdir / "training" / "__init__.py").write_text("")
        (workdir / "training" / "__main__.py").write_text(FAILING_TRAINING)
        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            metrics_host="127.0.0.1",
            metrics_port=0,
            grace_seconds=0.5,
            max_workers=4,
            admin_token=ADMIN_TOKEN,
            # Loopback only: the token may travel without TLS.
            admin_allow_plaintext=True,
            model_poll_seconds=0.2,
            mlflow_tracking_uri=f"sqlite:///{directory}/unused.db",
            # Explicitly: mlflow exports the URIs it last used into the environment, which the settings would read.
            mlflow_registry_uri=None,
            state_dir=directory / "state",
            prediction_log_path=directory / "predictions.db",
            prediction_log_flush_seconds=0.1,
            drift_min_rows=20,
            drift_interval_seconds=0.25,
            retrain_workdir=workdir,
            retrain_schedule_seconds=0.5,
            retrain_trigger_check_seconds=0.25,
            # Every version coalesces concurrent requests (auto decides by measuring, which differs run to run).
            microbatch="on",
        )
        server = build_server(settings, registry)
        server.start()
        bridge: BridgeThread | None = None
        try:
            server.load_models()
            bridge = BridgeThread(BridgeSettings(grpc_target=f"127.0.0.1:{server.port}", access_log=False))
            bridge.start()
            stack = DemoStack(
                server,
                registry,
                f"http://127.0.0.1:{bridge.port}",
                f"127.0.0.1:{server.metrics_port}",
                f"127.0.0.1:{bridge.port}",
            )
            # A hot reload (iris v1 -> v2) and a version that cannot be loaded (housing v3; v1 keeps serving).
            registry.set_alias(IRIS, "champion", "2", expected="1")
            broken = registry.register(HOUSING, None, input_names=HOUSING_FEATURES, loadable=False)
            registry.set_alias(HOUSING, "champion", broken, expected="1")
            _wait(lambda: _reloaded_and_refused(server), "iris v2 is served and housing v3 refused")
            _wait(lambda: httpx.get(f"{stack.bridge_url}/ready", timeout=5).status_code == 200, "the bridge is ready")
            yield stack
        finally:
            if bridge is not None:
                bridge.stop()
            server.stop(grace=0.5)


def _reloaded_and_refused(server: PredictionServer) -> bool:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    return "model_swaps_total{" in text and "model_load_failures_total{" in text


AUTHORIZED = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _house(row: NDArray[np.float64]) -> dict[str, float]:
    return dict(zip(HOUSING_FEATURES, (float(value) for value in row), strict=True))


def _flower(row: NDArray[np.float64]) -> dict[str, float]:
    return dict(zip(IRIS_FEATURES, (float(value) for value in row), strict=True))


@dataclass
class TrafficCounts:
    predictions: int = 0
    feedback: int = 0
    errors: int = 0


def drive_traffic(
    client: httpx.Client,
    rng: np.random.Generator,
    *,
    singles: int = 10,
    batch_rows: int = 16,
    income_shift: float = 0.0,
    label_noise: float = 0.3,
    wrong_species: float = 0.1,
) -> TrafficCounts:
    """One round through the bridge: ``singles`` single rows and one batch per model, one columns request, one
    invalid request, one unknown path, one lookup of a prediction that does not exist, then feedback for every
    single-row prediction."""
    counts = TrafficCounts()
    houses = housing_rows(rng, singles + batch_rows + 4, income_shift)
    flowers, species = iris_rows(rng, singles + batch_rows)
    labelled: list[dict[str, Any]] = []
    for index in range(singles):
        house = client.post("/predict/housing", json=_house(houses[index])).json()
        truth = float(housing_value(houses[index : index + 1])[0] + rng.normal(0.0, label_noise))
        labelled.append({"prediction_id": house["prediction_id"], "value": max(truth, 0.15)})
        flower = client.post("/predict/iris", json=_flower(flowers[index])).json()
        true_species = IRIS_SPECIES[int(species[index])]
        if rng.random() < wrong_species:
            true_species = IRIS_SPECIES[(int(species[index]) + 1) % len(IRIS_SPECIES)]
        labelled.append({"prediction_id": flower["prediction_id"], "species": true_species})
        counts.predictions += 2
    batch = {"instances": [_house(row) for row in houses[singles : singles + batch_rows]]}
    client.post("/predict/housing/batch", json=batch).raise_for_status()
    client.post(
        "/predict/iris/batch", json={"instances": [_flower(row) for row in flowers[singles:]]}
    ).raise_for_status()
    columns = houses[singles + batch_rows :]
    client.post(
        "/predict/housing/columns", json={name: columns[:, i].tolist() for i, name in enumerate(HOUSING_FEATURES)}
    ).raise_for_status()
    counts.predictions += 2 * batch_rows + len(columns)
    invalid = client.post("/predict/iris", json={**_flower(flowers[0]), "sepal_length_cm": -1.0})
    unknown = client.get("/no-such-route")
    # Passed on to the server, which answers NOT_FOUND: an upstream error the bridge counts.
    never_made = client.get(f"/predictions/{NEVER_MADE}", headers=AUTHORIZED)
    counts.errors += sum(
        (invalid.status_code == 422, unknown.status_code == 404, never_made.status_code == 404), start=0
    )
    feedback = client.post("/feedback", json={"items": labelled}, headers=AUTHORIZED)
    feedback.raise_for_status()
    counts.feedback += len(labelled)
    return counts


def drive_grpc(target: str, rng: np.random.Generator, *, messages: int = 8) -> None:
    """A ClassifyStream of ``messages`` flowers, one of them invalid; one unparsable Classify request."""
    flowers, _species = iris_rows(rng, messages)
    requests = [iris_pb2.IrisFeatures(**_flower(row)) for row in flowers]
    requests[len(requests) // 2] = iris_pb2.IrisFeatures(sepal_length_cm=-1.0)
    with grpc.insecure_channel(target) as channel:
        replies = list(iris_pb2_grpc.IrisClassifierStub(channel).ClassifyStream(iter(requests), timeout=10))
        if len(replies) != messages:
            raise RuntimeError(f"{len(replies)} stream replies for {messages} messages")
        # No serializers: the bytes go out as they are.
        raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/prediction.v1.IrisClassifier/Classify")
        try:
            raw(b"\xff\xff\xff", timeout=10)
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                raise
        else:
            raise RuntimeError("an unparsable request was answered")
