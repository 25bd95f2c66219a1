"""gRPC adapter of the admin service (``prediction.v1.ModelAdmin``): convert, delegate, convert back.

Authentication happens before any of this runs (``server.interceptors.AdminAuthInterceptor``).
"""

import math
from collections.abc import Mapping
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from protos.prediction.v1 import admin_pb2, admin_pb2_grpc
from server.admin.operations import Operation, OperationState
from server.admin.service import AliasChange, ModelAdmin, VersionStatus
from server.converters import SPECIES_ENUM, timestamp
from server.observe.drift import ColumnDrift, DriftReport
from server.observe.feedback import FeedbackItem, FeedbackOutcome, FeedbackResult
from server.observe.prediction_log import LoggedPrediction
from server.observe.quality import QualityReport

STATE_TO_PROTO = {
    OperationState.QUEUED: admin_pb2.OPERATION_STATE_QUEUED,
    OperationState.RUNNING: admin_pb2.OPERATION_STATE_RUNNING,
    OperationState.SUCCEEDED: admin_pb2.OPERATION_STATE_SUCCEEDED,
    OperationState.FAILED: admin_pb2.OPERATION_STATE_FAILED,
}
GATE_TAG = "champion_gate"
GATE_REASON_TAG = "champion_gate_reason"


def operation_to_proto(operation: Operation) -> admin_pb2.Operation:
    message = admin_pb2.Operation(
        id=operation.id,
        model=operation.model,
        state=STATE_TO_PROTO[operation.state],
        hyperparameters=dict(operation.hyperparameters),
        trigger=operation.trigger,
        trigger_reason=operation.trigger_reason,
        created_at=timestamp(operation.created_at),
        candidate_metrics=dict(operation.candidate_metrics),
        champion_metrics=dict(operation.champion_metrics),
        champion_version=operation.champion_version or "",
        registered_version=operation.registered_version or "",
        decision={None: admin_pb2.GATE_DECISION_UNSPECIFIED, True: admin_pb2.GATE_DECISION_PROMOTED}.get(
            operation.promoted, admin_pb2.GATE_DECISION_REJECTED
        ),
        decision_reason=operation.decision_reason,
        failure_reason=operation.failure_reason,
    )
    if operation.max_rows is not None:
        message.max_rows = operation.max_rows
    if operation.started_at is not None:
        message.started_at.CopyFrom(timestamp(operation.started_at))
    if operation.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(operation.finished_at))
    return message


def version_to_proto(status: VersionStatus) -> admin_pb2.RegisteredVersion:
    info = status.info
    return admin_pb2.RegisteredVersion(
        version=info.version,
        aliases=list(info.aliases),
        metrics=dict(info.metrics),
        created_at=timestamp(info.created_at),
        run_id=info.run_id,
        gate_decision=info.tags.get(GATE_TAG, ""),
        gate_reason=info.tags.get(GATE_REASON_TAG, ""),
        serving=status.serving,
    )


def logged_prediction_to_proto(row: LoggedPrediction) -> admin_pb2.LoggedPrediction:
    # A non-finite number is stored as null (JSON has no NaN); the map cannot hold "no value", so it reads NaN.
    def numbers(values: Mapping[str, float | None]) -> dict[str, float]:
        return {name: math.nan if value is None else value for name, value in values.items()}

    return admin_pb2.LoggedPrediction(
        prediction_id=row.prediction_id,
        logged_at=timestamp(datetime.fromtimestamp(row.logged_at, UTC)),
        service=row.service,
        model=row.model,
        version=row.version,
        variant=row.variant,
        inputs=numbers(row.inputs),
        output=numbers(row.output),
        latency_ms=row.latency_ms,
        request_id=row.request_id,
        routing_key=row.routing_key or "",
    )


FEEDBACK_CODE = {
    FeedbackOutcome.RECORDED: admin_pb2.FEEDBACK_CODE_OK,
    FeedbackOutcome.ALREADY_RECORDED: admin_pb2.FEEDBACK_CODE_OK,
    FeedbackOutcome.NOT_FOUND: admin_pb2.FEEDBACK_CODE_NOT_FOUND,
    FeedbackOutcome.ALREADY_EXISTS: admin_pb2.FEEDBACK_CODE_ALREADY_EXISTS,
    FeedbackOutcome.INVALID_ARGUMENT: admin_pb2.FEEDBACK_CODE_INVALID_ARGUMENT,
}
DRIFT_STATUS = {
    "ok": admin_pb2.DRIFT_STATUS_OK,
    "insufficient_data": admin_pb2.DRIFT_STATUS_INSUFFICIENT_DATA,
    "no_reference_profile": admin_pb2.DRIFT_STATUS_NO_REFERENCE_PROFILE,
}
CLASS_INDEX_BY_SPECIES = {species: index for index, species in enumerate(SPECIES_ENUM)}


def _moment(seconds: float | None) -> Timestamp | None:
    return None if seconds is None else timestamp(datetime.fromtimestamp(seconds, UTC))


def drift_report_to_proto(name: str, report: DriftReport) -> admin_pb2.DriftReport:
    def columns(found: tuple[ColumnDrift, ...]) -> list[admin_pb2.ColumnDrift]:
        return [admin_pb2.ColumnDrift(name=c.name, psi=c.psi, drifted=c.drifted) for c in found]

    return admin_pb2.DriftReport(
        name=name,
        threshold=report.threshold,
        min_rows=report.min_rows,
        versions=[
            admin_pb2.VersionDrift(
                version=version.version,
                variant=version.variant,
                status=DRIFT_STATUS[version.status.value],
                window_rows=version.window_rows,
                window_capacity=version.window_capacity,
                oldest_at=_moment(version.oldest_at),
                newest_at=_moment(version.newest_at),
                features=columns(version.features),
                outputs=columns(version.outputs),
                drifted=version.drifted,
            )
            for version in report.versions
        ],
    )


def feedback_item_from_proto(item: admin_pb2.FeedbackItem) -> FeedbackItem:
    label = item.WhichOneof("label")
    if label == "value":
        return FeedbackItem(item.prediction_id, value=item.value)
    if label == "species":
        # UNSPECIFIED (or a number this server does not know) is no class: refused as invalid per item.
        return FeedbackItem(item.prediction_id, class_index=CLASS_INDEX_BY_SPECIES.get(item.species, -1))
    return FeedbackItem(item.prediction_id)


def feedback_result_to_proto(result: FeedbackResult) -> admin_pb2.FeedbackResult:
    return admin_pb2.FeedbackResult(
        prediction_id=result.prediction_id,
        code=FEEDBACK_CODE[result.outcome],
        recorded=result.outcome is FeedbackOutcome.RECORDED,
        message=result.message,
    )


def quality_to_proto(name: str, report: QualityReport) -> admin_pb2.ModelQuality:
    return admin_pb2.ModelQuality(
        name=name,
        window_labels=report.window_labels,
        window_seconds=report.window_seconds or 0.0,
        variants=[
            admin_pb2.VariantQuality(
                version=variant.version,
                variant=variant.variant,
                labels=variant.labels,
                oldest_at=_moment(variant.oldest_at),
                newest_at=_moment(variant.newest_at),
                live=dict(variant.live),
                training=dict(variant.training),
                confidence=[
                    admin_pb2.ConfidenceBucket(upper_bound=bound, cumulative_count=count)
                    for bound, count in variant.confidence_buckets
                ],
            )
            for variant in report.variants
        ],
    )


def alias_change_to_proto(change: AliasChange) -> admin_pb2.AliasChange:
    return admin_pb2.AliasChange(
        name=change.name, alias=change.alias, version=change.version, previous_version=change.previous_version or ""
    )


class ModelAdminServicer(admin_pb2_grpc.ModelAdminServicer):
    def __init__(self, admin: ModelAdmin) -> None:
        self._admin = admin

    def Retrain(  # noqa: N802 - names come from the proto
        self, request: admin_pb2.RetrainRequest, context: grpc.ServicerContext
    ) -> admin_pb2.Operation:
        max_rows = request.max_rows if request.HasField("max_rows") else None
        return operation_to_proto(self._admin.retrain(request.model, dict(request.hyperparameters), max_rows))

    def GetOperation(  # noqa: N802
        self, request: admin_pb2.GetOperationRequest, context: grpc.ServicerContext
    ) -> admin_pb2.Operation:
        return operation_to_proto(self._admin.operation(request.id))

    def ListOperations(  # noqa: N802
        self, request: admin_pb2.ListOperationsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListOperationsResponse:
        return admin_pb2.ListOperationsResponse(
            operations=[operation_to_proto(each) for each in self._admin.operations(request.model)]
        )

    def ListModelVersions(  # noqa: N802
        self, request: admin_pb2.ListModelVersionsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListModelVersionsResponse:
        name, versions = self._admin.list_versions(request.model)
        return admin_pb2.ListModelVersionsResponse(name=name, versions=[version_to_proto(each) for each in versions])

    def SetAlias(  # noqa: N802
        self, request: admin_pb2.SetAliasRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AliasChange:
        compare = request.HasField("expected_version")
        change = self._admin.set_alias(
            request.model,
            request.alias,
            request.version,
            expected=request.expected_version or None,
            compare=compare,
        )
        return alias_change_to_proto(change)

    def Rollback(  # noqa: N802
        self, request: admin_pb2.RollbackRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AliasChange:
        return alias_change_to_proto(self._admin.rollback(request.model))

    def SetTrafficSplit(  # noqa: N802
        self, request: admin_pb2.SetTrafficSplitRequest, context: grpc.ServicerContext
    ) -> admin_pb2.TrafficSplit:
        name, split = self._admin.set_traffic_split(request.model, request.challenger_percent, shadow=request.shadow)
        return admin_pb2.TrafficSplit(name=name, challenger_percent=split.challenger_percent, shadow=split.shadow)

    def GetPrediction(  # noqa: N802
        self, request: admin_pb2.GetPredictionRequest, context: grpc.ServicerContext
    ) -> admin_pb2.LoggedPrediction:
        return logged_prediction_to_proto(self._admin.prediction(request.prediction_id))

    def GetDriftReport(  # noqa: N802
        self, request: admin_pb2.GetDriftReportRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DriftReport:
        return drift_report_to_proto(*self._admin.drift_report(request.model))

    def SubmitFeedback(  # noqa: N802
        self, request: admin_pb2.SubmitFeedbackRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SubmitFeedbackResponse:
        results = self._admin.submit_feedback([feedback_item_from_proto(item) for item in request.items])
        return admin_pb2.SubmitFeedbackResponse(results=[feedback_result_to_proto(each) for each in results])

    def GetModelQuality(  # noqa: N802
        self, request: admin_pb2.GetModelQualityRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ModelQuality:
        return quality_to_proto(*self._admin.quality(request.model))

    def SetAutoRetrain(  # noqa: N802
        self, request: admin_pb2.SetAutoRetrainRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AutoRetrain:
        name, enabled, triggers = self._admin.set_auto_retrain(request.model, enabled=request.enabled)
        return admin_pb2.AutoRetrain(name=name, enabled=enabled, triggers=list(triggers))
