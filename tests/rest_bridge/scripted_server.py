"""A real gRPC server whose behaviour each request chooses through its ``x-request-id``.

The bridge forwards only the request id as metadata, so the id is the script:

| x-request-id | the servicer |
| --- | --- |
| ``abort-<CODE>`` | aborts with that grpc.StatusCode (INVALID_ARGUMENT carries BadRequest details) |
| ``sleep-<seconds>`` | answers after that long, or as soon as the call is cancelled |
| ``hold-<name>`` | waits (up to 10 s) until the call ends, recording whether it ended by cancellation |
| anything else | answers at once |

Every call's metadata is recorded, so tests can prove what reached the server.
"""

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server.errors import FieldViolation, InvalidInputError
from server.grpc_errors import rich_status

HOLD_SECONDS = 10.0
VIOLATIONS = (
    FieldViolation("instances[1].latitude", "must be at least 32 and at most 42.5, got 50"),
    FieldViolation("instances[2].longitude", "is required but was not set"),
)


@dataclass
class Script:
    """What the scripted servicers saw; shared by both services of one server."""

    metadata: list[dict[str, str]] = field(default_factory=list)
    started: dict[str, threading.Event] = field(default_factory=dict)
    cancelled: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, table: dict[str, threading.Event], name: str) -> threading.Event:
        with self.lock:
            return table.setdefault(name, threading.Event())

    def run(self, context: grpc.ServicerContext) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        with self.lock:
            self.metadata.append(metadata)
        request_id = metadata.get("x-request-id", "")
        action, _, argument = request_id.partition("-")
        if action == "abort":
            code = grpc.StatusCode[argument]
            message = f"scripted {argument}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                context.abort_with_status(rich_status(code, message, InvalidInputError(message, VIOLATIONS)))
            context.abort(code, message)
        elif action == "sleep":
            ended = threading.Event()
            context.add_callback(ended.set)
            ended.wait(float(argument))
        elif action == "hold":
            ended = threading.Event()
            # Callbacks run when the RPC terminates: before we answer, that can only be a cancellation.
            context.add_callback(ended.set)
            self.event(self.started, argument).set()
            if ended.wait(HOLD_SECONDS):
                self.event(self.cancelled, argument).set()


def _version(name: str) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(name=name, version="7", alias="champion", run_id="run-7")


def _info(name: str) -> model_pb2.ModelInfo:
    loaded_at = Timestamp(seconds=1_700_000_000)
    return model_pb2.ModelInfo(
        model=_version(name),
        model_uri=f"models:/{name}/7",
        estimator="sklearn.pipeline.Pipeline",
        loaded_at=loaded_at,
        training_metrics={"score": 0.9},
        features=[model_pb2.FeatureSpec(name="x", unit="cm", minimum=0, maximum=1)],
        max_batch_size=10,
    )


class ScriptedHousing(housing_pb2_grpc.HousingPredictorServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Predict(self, request: Any, context: grpc.ServicerContext) -> housing_pb2.HousingPrediction:  # noqa: N802
        self.script.run(context)
        return housing_pb2.HousingPrediction(
            median_house_value=2.0, median_house_value_usd=200_000.0, model=_version("Housing")
        )

    def PredictBatch(self, request: Any, context: grpc.ServicerContext) -> housing_pb2.HousingBatchPrediction:  # noqa: N802
        self.script.run(context)
        value = housing_pb2.HousingValue(median_house_value=2.0, median_house_value_usd=200_000.0)
        return housing_pb2.HousingBatchPrediction(
            predictions=[value] * len(request.instances), model=_version("Housing")
        )

    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> model_pb2.ModelInfo:  # noqa: N802
        self.script.run(context)
        return _info("Housing")


def _classification() -> dict[str, Any]:
    return {
        "species": iris_pb2.IRIS_SPECIES_VIRGINICA,
        "species_name": "virginica",
        "probabilities": iris_pb2.SpeciesProbabilities(setosa=0.1, versicolor=0.2, virginica=0.7),
        "confidence": 0.7,
    }


class ScriptedIris(iris_pb2_grpc.IrisClassifierServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Classify(self, request: Any, context: grpc.ServicerContext) -> iris_pb2.IrisPrediction:  # noqa: N802
        self.script.run(context)
        return iris_pb2.IrisPrediction(**_classification(), model=_version("Iris"))

    def ClassifyBatch(self, request: Any, context: grpc.ServicerContext) -> iris_pb2.IrisBatchPrediction:  # noqa: N802
        self.script.run(context)
        return iris_pb2.IrisBatchPrediction(
            classifications=[iris_pb2.IrisClassification(**_classification()) for _ in request.instances],
            model=_version("Iris"),
        )

    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> model_pb2.ModelInfo:  # noqa: N802
        self.script.run(context)
        return _info("Iris")


@dataclass
class ScriptedServer:
    port: int
    script: Script
    health: health.HealthServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """Both services and health (SERVING) on 127.0.0.1, a free port."""
    script = Script()
    workers = futures.ThreadPoolExecutor(max_workers=8)
    server = grpc.server(workers, options=[("grpc.so_reuseport", 0)])
    housing_pb2_grpc.add_HousingPredictorServicer_to_server(ScriptedHousing(script), server)
    iris_pb2_grpc.add_IrisClassifierServicer_to_server(ScriptedIris(script), server)
    health_servicer = health.HealthServicer()
    for service in ("", "prediction.v1.HousingPredictor", "prediction.v1.IrisClassifier"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield ScriptedServer(port=port, script=script, health=health_servicer)
    finally:
        server.stop(grace=0).wait()
        workers.shutdown(wait=True)
