"""A real gRPC server whose behaviour each request chooses through its ``x-request-id``.

The bridge forwards only the request id (and, on admin calls, the client's Authorization) as metadata, so
the id is the script:

| x-request-id | the servicer |
| --- | --- |
| ``abort-<CODE>`` | aborts with that grpc.StatusCode (INVALID_ARGUMENT carries BadRequest details) |
| ``sleep-<seconds>`` | answers after that long, or as soon as the call is cancelled |
| ``hold-<name>`` | waits (up to 10 s) until the call ends, recording whether it ended by cancellation |
| anything else | answers at once |

Every call's metadata and request message are recorded, so tests can prove what reached the server. After its
script, an admin call (``ModelAdmin``) needs ``authorization: Bearer scripted-token`` (else UNAUTHENTICATED),
then answers with every field of its message set (``Retrain`` echoes its request in a QUEUED operation,
``SetTrafficSplit`` its split, ``GetPrediction`` its id, ``SetAutoRetrain`` its switch). ``SubmitFeedback`` answers
each item by its prediction id, as ``FEEDBACK_OUTCOMES`` says (any other id: recorded).
"""

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.prediction.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    housing_pb2,
    housing_pb2_grpc,
    iris_pb2,
    iris_pb2_grpc,
    model_pb2,
)
from server.errors import FieldViolation, InvalidInputError
from server.grpc_errors import rich_status

HOLD_SECONDS = 10.0
SCRIPTED_AUTHORIZATION = "Bearer scripted-token"
OPERATION_ID = "0123456789abcdef0123456789abcdef"
PREDICTION_ID = "0192f0c4-7b1e-7c3a-9d2e-4f5a6b7c8d9e"
# SubmitFeedback's answer for each of these prediction ids: (code, recorded, message).
RETRIED_ID = "0192f0c4-7b1e-7c3a-9d2e-000000000001"
MISMATCHED_ID = "0192f0c4-7b1e-7c3a-9d2e-000000000003"
UNKNOWN_ID = "0192f0c4-7b1e-7c3a-9d2e-000000000005"
RELABELLED_ID = "0192f0c4-7b1e-7c3a-9d2e-000000000006"
FEEDBACK_OUTCOMES: dict[str, tuple[admin_pb2.FeedbackCode.ValueType, bool, str]] = {
    RETRIED_ID: (admin_pb2.FEEDBACK_CODE_OK, False, "the same label was already recorded"),
    MISMATCHED_ID: (admin_pb2.FEEDBACK_CODE_INVALID_ARGUMENT, False, "a species does not fit a housing prediction"),
    UNKNOWN_ID: (admin_pb2.FEEDBACK_CODE_NOT_FOUND, False, "no logged prediction has this id"),
    RELABELLED_ID: (admin_pb2.FEEDBACK_CODE_ALREADY_EXISTS, False, "the prediction already has the label 2.5"),
}
VIOLATIONS = (
    FieldViolation("instances[1].latitude", "must be at least 32 and at most 42.5, got 50"),
    FieldViolation("instances[2].longitude", "is required but was not set"),
)


@dataclass
class Script:
    """What the scripted servicers saw; shared by both services of one server."""

    metadata: list[dict[str, str]] = field(default_factory=list)
    requests: list[Message] = field(default_factory=list)
    started: dict[str, threading.Event] = field(default_factory=dict)
    cancelled: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, table: dict[str, threading.Event], name: str) -> threading.Event:
        with self.lock:
            return table.setdefault(name, threading.Event())

    def run(self, context: grpc.ServicerContext, request: Message | None = None) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        with self.lock:
            self.metadata.append(metadata)
            if request is not None:
                self.requests.append(request)
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
    return model_pb2.ModelVersion(name=name, version="7", alias="champion", run_id="run-7", variant="champion")


def model_info(name: str) -> model_pb2.ModelInfo:
    loaded_at = Timestamp(seconds=1_700_000_000)
    info = model_pb2.ModelInfo(
        model=_version(name),
        model_uri=f"models:/{name}/7",
        estimator="sklearn.pipeline.Pipeline",
        loaded_at=loaded_at,
        training_metrics={"score": 0.9},
        features=[model_pb2.FeatureSpec(name="x", unit="cm", minimum=0, maximum=1)],
        max_batch_size=10,
        registry_reachable=name == "Housing",
    )
    if name == "Iris":  # one service with a refused version and a challenger, one without either
        info.challenger.CopyFrom(
            model_pb2.ModelVersion(name=name, version="9", alias="challenger", run_id="run-9", variant="challenger")
        )
        info.challenger_percent = 10.0
        info.configured_challenger_percent = 10.0
        info.shadow = True
        info.challenger_load_failure.CopyFrom(
            model_pb2.LoadFailure(
                version="10",
                reason="signature",
                message="v10 wants 5 inputs",
                failed_at=Timestamp(seconds=1_700_000_200),
            )
        )
        info.last_load_failure.CopyFrom(
            model_pb2.LoadFailure(
                version="8", reason="warm_up", message="v8 answered NaN", failed_at=Timestamp(seconds=1_700_000_100)
            )
        )
    return info


class ScriptedHousing(housing_pb2_grpc.HousingPredictorServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Predict(self, request: Any, context: grpc.ServicerContext) -> housing_pb2.HousingPrediction:  # noqa: N802
        self.script.run(context)
        return housing_pb2.HousingPrediction(
            median_house_value=2.0,
            median_house_value_usd=200_000.0,
            model=_version("Housing"),
            prediction_id=PREDICTION_ID,
        )

    def PredictBatch(self, request: Any, context: grpc.ServicerContext) -> housing_pb2.HousingBatchPrediction:  # noqa: N802
        self.script.run(context)
        value = housing_pb2.HousingValue(
            median_house_value=2.0, median_house_value_usd=200_000.0, prediction_id=PREDICTION_ID
        )
        return housing_pb2.HousingBatchPrediction(
            predictions=[value] * len(request.instances), model=_version("Housing")
        )

    def PredictColumns(self, request: Any, context: grpc.ServicerContext) -> housing_pb2.HousingColumnsPrediction:  # noqa: N802
        self.script.run(context, request)
        rows = len(request.median_income)
        return housing_pb2.HousingColumnsPrediction(
            median_house_value=[2.0] * rows,
            median_house_value_usd=[200_000.0] * rows,
            prediction_ids=[PREDICTION_ID] * rows,
            model=_version("Housing"),
        )

    def PredictStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        # The bridge has no streaming routes: gRPC clients stream, REST clients send batches.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the scripted server does not stream")

    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> model_pb2.ModelInfo:  # noqa: N802
        self.script.run(context)
        return model_info("Housing")


def _classification() -> dict[str, Any]:
    return {
        "species": iris_pb2.IRIS_SPECIES_VIRGINICA,
        "species_name": "virginica",
        "probabilities": iris_pb2.SpeciesProbabilities(setosa=0.1, versicolor=0.2, virginica=0.7),
        "confidence": 0.7,
        "prediction_id": PREDICTION_ID,
    }


class ScriptedIris(iris_pb2_grpc.IrisClassifierServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def ClassifyStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the scripted server does not stream")

    def Classify(self, request: Any, context: grpc.ServicerContext) -> iris_pb2.IrisPrediction:  # noqa: N802
        self.script.run(context)
        return iris_pb2.IrisPrediction(**_classification(), model=_version("Iris"))

    def ClassifyBatch(self, request: Any, context: grpc.ServicerContext) -> iris_pb2.IrisBatchPrediction:  # noqa: N802
        self.script.run(context)
        return iris_pb2.IrisBatchPrediction(
            classifications=[iris_pb2.IrisClassification(**_classification()) for _ in request.instances],
            model=_version("Iris"),
        )

    def ClassifyColumns(self, request: Any, context: grpc.ServicerContext) -> iris_pb2.IrisColumnsPrediction:  # noqa: N802
        self.script.run(context, request)
        rows = len(request.sepal_length_cm)
        return iris_pb2.IrisColumnsPrediction(
            species=[iris_pb2.IRIS_SPECIES_VIRGINICA] * rows,
            setosa=[0.1] * rows,
            versicolor=[0.2] * rows,
            virginica=[0.7] * rows,
            confidence=[0.7] * rows,
            prediction_ids=[PREDICTION_ID] * rows,
            model=_version("Iris"),
        )

    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> model_pb2.ModelInfo:  # noqa: N802
        self.script.run(context)
        return model_info("Iris")


def finished_operation() -> admin_pb2.Operation:
    """An operation with every field set."""
    return admin_pb2.Operation(
        id=OPERATION_ID,
        model="housing",
        state=admin_pb2.OPERATION_STATE_SUCCEEDED,
        hyperparameters={"max_iter": 200.0, "learning_rate": 0.05},
        max_rows=5000,
        trigger="manual",
        created_at=Timestamp(seconds=1_700_000_000, nanos=500_000_000),
        started_at=Timestamp(seconds=1_700_000_001),
        finished_at=Timestamp(seconds=1_700_000_061, nanos=123_456_000),
        candidate_metrics={"rmse": 0.44, "mae": 0.29, "r2": 0.85},
        champion_metrics={"rmse": 0.46, "mae": 0.3, "r2": 0.84},
        champion_version="3",
        registered_version="4",
        decision=admin_pb2.GATE_DECISION_PROMOTED,
        decision_reason="rmse 0.44 <= champion's 0.46",
        failure_reason="",
    )


def registered_versions(name: str) -> admin_pb2.ListModelVersionsResponse:
    return admin_pb2.ListModelVersionsResponse(
        name=name,
        versions=[
            admin_pb2.RegisteredVersion(
                version="4",
                aliases=["champion", "latest-good"],
                metrics={"rmse": 0.44},
                created_at=Timestamp(seconds=1_700_000_061),
                run_id="run-4",
                gate_decision="promoted",
                gate_reason="rmse 0.44 <= champion's 0.46",
                serving=True,
            ),
            admin_pb2.RegisteredVersion(version="3", created_at=Timestamp(seconds=1_600_000_000)),
        ],
    )


def logged_prediction(prediction_id: str) -> admin_pb2.LoggedPrediction:
    """A prediction-log row with every field set."""
    return admin_pb2.LoggedPrediction(
        prediction_id=prediction_id,
        logged_at=Timestamp(seconds=1_700_000_300, nanos=250_000_000),
        service="iris",
        model="IrisBestModel",
        version="9",
        variant="challenger",
        inputs={"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2},
        output={"setosa": 0.9, "versicolor": 0.07, "virginica": 0.03},
        latency_ms=1.25,
        request_id="req-1",
        routing_key="user-42",
    )


def drift_report(name: str) -> admin_pb2.DriftReport:
    """A drift report with every field set: a champion with a full window, one feature drifted; a challenger with
    too few rows, its window empty."""
    return admin_pb2.DriftReport(
        name=name,
        threshold=0.2,
        min_rows=100,
        versions=[
            admin_pb2.VersionDrift(
                version="4",
                variant="champion",
                status=admin_pb2.DRIFT_STATUS_OK,
                window_rows=1000,
                window_capacity=1000,
                oldest_at=Timestamp(seconds=1_700_000_000, nanos=250_000_000),
                newest_at=Timestamp(seconds=1_700_003_600),
                features=[
                    admin_pb2.ColumnDrift(name="median_income", psi=0.31, drifted=True),
                    admin_pb2.ColumnDrift(name="house_age", psi=0.02),
                ],
                outputs=[admin_pb2.ColumnDrift(name="median_house_value", psi=0.12)],
                drifted=True,
            ),
            admin_pb2.VersionDrift(
                version="5",
                variant="challenger",
                status=admin_pb2.DRIFT_STATUS_INSUFFICIENT_DATA,
                window_capacity=1000,
            ),
        ],
    )


def model_quality(name: str) -> admin_pb2.ModelQuality:
    """Live quality with every field set: a champion with labels, a challenger with none yet."""
    return admin_pb2.ModelQuality(
        name=name,
        window_labels=500,
        window_seconds=86_400.0,
        variants=[
            admin_pb2.VariantQuality(
                version="2",
                variant="champion",
                labels=3,
                oldest_at=Timestamp(seconds=1_700_000_000),
                newest_at=Timestamp(seconds=1_700_000_900, nanos=500_000_000),
                live={"accuracy": 2 / 3, "recall_setosa": 1.0, "recall_virginica": 0.5},
                training={"accuracy": 0.97, "macro_f1": 0.96},
                confidence=[
                    admin_pb2.ConfidenceBucket(upper_bound=0.5, cumulative_count=0),
                    admin_pb2.ConfidenceBucket(upper_bound=0.9, cumulative_count=1),
                    admin_pb2.ConfidenceBucket(upper_bound=1.0, cumulative_count=3),
                ],
            ),
            admin_pb2.VariantQuality(version="3", variant="challenger", training={"accuracy": 0.95}),
        ],
    )


def feedback_result(item: admin_pb2.FeedbackItem) -> admin_pb2.FeedbackResult:
    code, recorded, message = FEEDBACK_OUTCOMES.get(item.prediction_id, (admin_pb2.FEEDBACK_CODE_OK, True, "recorded"))
    return admin_pb2.FeedbackResult(prediction_id=item.prediction_id, code=code, recorded=recorded, message=message)


class ScriptedAdmin(admin_pb2_grpc.ModelAdminServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def _run(self, request: Message, context: grpc.ServicerContext) -> None:
        self.script.run(context, request)
        if dict(context.invocation_metadata()).get("authorization") != SCRIPTED_AUTHORIZATION:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "scripted: the admin token is not valid")

    def Retrain(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.Operation:  # noqa: N802
        self._run(request, context)
        operation = admin_pb2.Operation(
            id=OPERATION_ID,
            model=request.model,
            state=admin_pb2.OPERATION_STATE_QUEUED,
            hyperparameters=request.hyperparameters,
            trigger="manual",
            created_at=Timestamp(seconds=1_700_000_000),
        )
        if request.HasField("max_rows"):
            operation.max_rows = request.max_rows
        return operation

    def GetOperation(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.Operation:  # noqa: N802
        self._run(request, context)
        return finished_operation()

    def ListOperations(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ListOperationsResponse:  # noqa: N802
        self._run(request, context)
        return admin_pb2.ListOperationsResponse(operations=[finished_operation()])

    def ListModelVersions(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ListModelVersionsResponse:  # noqa: N802
        self._run(request, context)
        return registered_versions(request.model)

    def SetAlias(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.AliasChange:  # noqa: N802
        self._run(request, context)
        previous = request.expected_version if request.HasField("expected_version") else "3"
        return admin_pb2.AliasChange(
            name=request.model, alias=request.alias, version=request.version, previous_version=previous
        )

    def Rollback(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.AliasChange:  # noqa: N802
        self._run(request, context)
        return admin_pb2.AliasChange(name=request.model, alias="champion", version="3", previous_version="4")

    def SetTrafficSplit(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.TrafficSplit:  # noqa: N802
        self._run(request, context)
        return admin_pb2.TrafficSplit(
            name=f"{request.model}-registered", challenger_percent=request.challenger_percent, shadow=request.shadow
        )

    def GetPrediction(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.LoggedPrediction:  # noqa: N802
        self._run(request, context)
        return logged_prediction(request.prediction_id)

    def GetDriftReport(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.DriftReport:  # noqa: N802
        self._run(request, context)
        return drift_report(f"{request.model}-registered")

    def SubmitFeedback(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.SubmitFeedbackResponse:  # noqa: N802
        self._run(request, context)
        return admin_pb2.SubmitFeedbackResponse(results=[feedback_result(each) for each in request.items])

    def GetModelQuality(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ModelQuality:  # noqa: N802
        self._run(request, context)
        return model_quality(f"{request.model}-registered")

    def SetAutoRetrain(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.AutoRetrain:  # noqa: N802
        self._run(request, context)
        return admin_pb2.AutoRetrain(
            name=f"{request.model}-registered", enabled=request.enabled, triggers=["quality", "drift"]
        )


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
    """Both prediction services, admin and health (SERVING) on 127.0.0.1, a free port."""
    script = Script()
    workers = futures.ThreadPoolExecutor(max_workers=8)
    server = grpc.server(workers, options=[("grpc.so_reuseport", 0)])
    housing_pb2_grpc.add_HousingPredictorServicer_to_server(ScriptedHousing(script), server)
    iris_pb2_grpc.add_IrisClassifierServicer_to_server(ScriptedIris(script), server)
    admin_pb2_grpc.add_ModelAdminServicer_to_server(ScriptedAdmin(script), server)
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
