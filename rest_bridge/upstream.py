"""The bridge's side of gRPC: one ``grpc.aio`` channel, its stubs, and how every call is made.

Every call carries the request's ``x-request-id`` as metadata and the configured deadline, and is
cancelled when the HTTP client disconnects: ASGI servers do not cancel a request's task when its client
goes away, they only answer ``receive()`` with ``http.disconnect``, so a watcher waits for that message
and cancels the request's task, which cancels the call it is awaiting. Admin calls also carry the client's
``Authorization`` header as ``authorization`` metadata; only the server checks it.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    housing_pb2,
    housing_pb2_grpc,
    iris_pb2,
    iris_pb2_grpc,
    model_pb2,
)
from rest_bridge.errors import ClientDisconnectedError
from rest_bridge.metrics import BridgeMetrics
from rest_bridge.settings import BridgeSettings

Request = TypeVar("Request")
Response = TypeVar("Response")
T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"
# Sticky A/B routing: requests with the same key always reach the same variant of a deployment.
ROUTING_KEY = "x-routing-key"
MAX_ROUTING_KEY_LENGTH = 256
# Bearer tokens are short; gRPC refuses metadata over 8 KiB (soft) to 16 KiB (hard) in total.
MAX_AUTHORIZATION_LENGTH = 4096
HOUSING_SERVICE = housing_pb2.DESCRIPTOR.services_by_name["HousingPredictor"].full_name
IRIS_SERVICE = iris_pb2.DESCRIPTOR.services_by_name["IrisClassifier"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
# Spread calls over every address the target resolves to, instead of gRPC's default pick_first. Prediction
# calls (idempotent: nothing changes when one is made twice) are retried on UNAVAILABLE, the status of a call
# the server never started: refused on a full connection (REFUSED_STREAM), no model loaded, a connection lost.
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": HOUSING_SERVICE}, {"service": IRIS_SERVICE}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
# gRPC's default reconnect backoff grows to 120 s: after a long outage the bridge could keep answering
# 503 for minutes once the server is back. Capped at a few seconds, it finds a restarted server quickly.
CHANNEL_OPTIONS = (
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 3000),
)
CLOSE_GRACE_SECONDS = 1.0
# Below the server's default PREDICTOR_MAX_STREAMS_PER_CONNECTION (256).
DEFAULT_MAX_CALLS = 200


class UpstreamTlsError(ValueError):
    """A BRIDGE_GRPC_TLS_* file cannot be read; the message names the setting and the file."""


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How the channel is secured: its credentials, and the name the server's certificate must carry if not the
    target's host."""

    credentials: grpc.ChannelCredentials
    server_name: str | None = None


def _read_tls_file(setting: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UpstreamTlsError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def upstream_tls(settings: BridgeSettings) -> UpstreamTls | None:
    """The channel's TLS from the settings, files read now (at start-up), or None for plaintext."""
    if not settings.grpc_tls:
        return None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_tls_file("BRIDGE_GRPC_TLS_CA_FILE", settings.grpc_tls_ca_file),
        private_key=_read_tls_file("BRIDGE_GRPC_TLS_KEY_FILE", settings.grpc_tls_key_file),
        certificate_chain=_read_tls_file("BRIDGE_GRPC_TLS_CERT_FILE", settings.grpc_tls_cert_file),
    )
    return UpstreamTls(credentials, settings.grpc_tls_server_name)


def forwardable_authorization(value: str | None) -> str | None:
    """The Authorization header as gRPC metadata can carry it, or None: a value it cannot carry is not sent.

    gRPC accepts only printable ASCII in a text metadata value and fails the whole call otherwise; without the
    header the server answers UNAUTHENTICATED, the same as for any other unusable credential. Nothing else is
    checked here: the server is the one authority on the token.
    """
    if value is None or not 0 < len(value) <= MAX_AUTHORIZATION_LENGTH:
        return None
    if not all(" " <= character <= "~" for character in value):
        return None
    return value


def forwardable_routing_key(value: str | None) -> str | None:
    """The X-Routing-Key header as the server takes it, or None (not sent): printable ASCII, 1 to 256 characters.

    A key that does not fit is dropped rather than refused: routing falls back to the random split, as for a
    request without one.
    """
    if value is None or not 0 < len(value) <= MAX_ROUTING_KEY_LENGTH:
        return None
    if not all(" " <= character <= "~" for character in value):
        return None
    return value


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the HTTP client disconnects first, cancel it and raise ClientDisconnectedError.

    Call only after the request body has been read: the watcher consumes what ``receive()`` returns.
    """
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, task))
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and watcher.exception() is None:
            task.uncancel()
            raise ClientDisconnectedError from None
        raise
    finally:
        watcher.cancel()


@dataclass(frozen=True, slots=True)
class AdminContext:
    """What an admin call is made with: the request's id, its ``receive`` (to notice a disconnect) and the
    client's Authorization header as it came (None when there was none)."""

    request_id: str
    receive: Receive
    authorization: str | None


class Upstream:
    """The channel to the prediction server(s). ``open()`` on the serving event loop, ``close()`` at shutdown."""

    def __init__(
        self,
        target: str,
        timeout_seconds: float,
        metrics: BridgeMetrics,
        tls: UpstreamTls | None = None,
        max_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        self._metrics = metrics
        self._tls = tls
        self._channel: grpc.aio.Channel | None = None
        # The server takes at most PREDICTOR_MAX_STREAMS_PER_CONNECTION calls on one connection and refuses
        # some of those beyond it (REFUSED_STREAM): past this many, requests wait here for a call to end, within
        # the same deadline, instead of being answered 503.
        self._call_slots = asyncio.Semaphore(max_calls)

    async def open(self) -> None:
        # Created here rather than in __init__: a grpc.aio channel belongs to the loop it was made on.
        if self._tls is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        else:
            options: tuple[tuple[str, str | int], ...] = CHANNEL_OPTIONS
            if self._tls.server_name is not None:
                options += (("grpc.ssl_target_name_override", self._tls.server_name),)
            self._channel = grpc.aio.secure_channel(self.target, self._tls.credentials, options=options)
        self._housing = housing_pb2_grpc.HousingPredictorStub(self._channel)
        self._iris = iris_pb2_grpc.IrisClassifierStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._admin = admin_pb2_grpc.ModelAdminStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=CLOSE_GRACE_SECONDS)
            self._channel = None

    async def _call(
        self,
        method: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        message: Request,
        request_id: str,
        receive: Receive,
        *,
        authorization: str | None = None,
        routing_key: str | None = None,
    ) -> Response:
        metadata: tuple[tuple[str, str], ...] = ((REQUEST_ID_KEY, request_id),)
        forwarded = forwardable_authorization(authorization)
        if forwarded is not None:
            metadata += ((AUTHORIZATION_KEY, forwarded),)
        key = forwardable_routing_key(routing_key)
        if key is not None:
            metadata += ((ROUTING_KEY, key),)
        started = time.monotonic()
        async with self._call_slot(method):
            remaining = self.timeout_seconds - (time.monotonic() - started)
            call = rpc(message, timeout=remaining, metadata=metadata)
            try:
                return await cancel_on_disconnect(receive, call)
            except grpc.aio.AioRpcError as error:
                self._metrics.upstream_error(method, error.code())
                raise

    @contextlib.asynccontextmanager
    async def _call_slot(self, method: str) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._call_slots.acquire(), self.timeout_seconds)
        except TimeoutError:
            # As if the server's deadline had passed: 504, counted like one.
            self._metrics.upstream_error(method, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="the bridge's upstream calls were all busy until the deadline",
            ) from None
        try:
            yield
        finally:
            self._call_slots.release()

    # Prediction calls also carry the client's X-Routing-Key, when it has a usable one.

    async def predict_housing(
        self,
        message: housing_pb2.HousingFeatures,
        *,
        request_id: str,
        receive: Receive,
        routing_key: str | None = None,
    ) -> housing_pb2.HousingPrediction:
        return await self._call(
            f"{HOUSING_SERVICE}/Predict", self._housing.Predict, message, request_id, receive, routing_key=routing_key
        )

    async def predict_housing_batch(
        self,
        message: housing_pb2.HousingBatchRequest,
        *,
        request_id: str,
        receive: Receive,
        routing_key: str | None = None,
    ) -> housing_pb2.HousingBatchPrediction:
        return await self._call(
            f"{HOUSING_SERVICE}/PredictBatch",
            self._housing.PredictBatch,
            message,
            request_id,
            receive,
            routing_key=routing_key,
        )

    async def predict_housing_columns(
        self,
        message: housing_pb2.HousingColumns,
        *,
        request_id: str,
        receive: Receive,
        routing_key: str | None = None,
    ) -> housing_pb2.HousingColumnsPrediction:
        return await self._call(
            f"{HOUSING_SERVICE}/PredictColumns",
            self._housing.PredictColumns,
            message,
            request_id,
            receive,
            routing_key=routing_key,
        )

    async def classify_iris(
        self,
        message: iris_pb2.IrisFeatures,
        *,
        request_id: str,
        receive: Receive,
        routing_key: str | None = None,
    ) -> iris_pb2.IrisPrediction:
        return await self._call(
            f"{IRIS_SERVICE}/Classify", self._iris.Classify, message, request_id, receive, routing_key=routing_key
        )

    async def classify_iris_batch(
        self,
        message: iris_pb2.IrisBatchRequest,
        *,
        request_id: str,
        receive: Receive,
        routing_key: str | None = None,
    ) -> iris_pb2.IrisBatchPrediction:
        return await self._call(
            f"{IRIS_SERVICE}/ClassifyBatch",
            self._iris.ClassifyBatch,
            message,
            request_id,
            receive,
            routing_key=routing_key,
        )

    async def classify_iris_columns(
        self,
        message: iris_pb2.IrisColumns,
        *,
        request_id: str,
        receive: Receive,
        routing_key: str | None = None,
    ) -> iris_pb2.IrisColumnsPrediction:
        return await self._call(
            f"{IRIS_SERVICE}/ClassifyColumns",
            self._iris.ClassifyColumns,
            message,
            request_id,
            receive,
            routing_key=routing_key,
        )

    async def model_info(self, *, request_id: str, receive: Receive) -> tuple[model_pb2.ModelInfo, model_pb2.ModelInfo]:
        """Both services' model info, one call after the other (this is no hot path)."""
        request = model_pb2.GetModelInfoRequest()
        housing = await self._call(
            f"{HOUSING_SERVICE}/GetModelInfo", self._housing.GetModelInfo, request, request_id, receive
        )
        iris = await self._call(f"{IRIS_SERVICE}/GetModelInfo", self._iris.GetModelInfo, request, request_id, receive)
        return housing, iris

    # Admin calls (prediction.v1.ModelAdmin): one line each, the context carries the client's credentials.

    async def _admin_call(
        self,
        name: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        message: Request,
        context: AdminContext,
    ) -> Response:
        return await self._call(
            f"{ADMIN_SERVICE}/{name}",
            rpc,
            message,
            context.request_id,
            context.receive,
            authorization=context.authorization,
        )

    async def retrain(self, message: admin_pb2.RetrainRequest, context: AdminContext) -> admin_pb2.Operation:
        return await self._admin_call("Retrain", self._admin.Retrain, message, context)

    async def get_operation(self, message: admin_pb2.GetOperationRequest, context: AdminContext) -> admin_pb2.Operation:
        return await self._admin_call("GetOperation", self._admin.GetOperation, message, context)

    async def list_operations(
        self, message: admin_pb2.ListOperationsRequest, context: AdminContext
    ) -> admin_pb2.ListOperationsResponse:
        return await self._admin_call("ListOperations", self._admin.ListOperations, message, context)

    async def list_model_versions(
        self, message: admin_pb2.ListModelVersionsRequest, context: AdminContext
    ) -> admin_pb2.ListModelVersionsResponse:
        return await self._admin_call("ListModelVersions", self._admin.ListModelVersions, message, context)

    async def set_alias(self, message: admin_pb2.SetAliasRequest, context: AdminContext) -> admin_pb2.AliasChange:
        return await self._admin_call("SetAlias", self._admin.SetAlias, message, context)

    async def rollback(self, message: admin_pb2.RollbackRequest, context: AdminContext) -> admin_pb2.AliasChange:
        return await self._admin_call("Rollback", self._admin.Rollback, message, context)

    async def set_traffic_split(
        self, message: admin_pb2.SetTrafficSplitRequest, context: AdminContext
    ) -> admin_pb2.TrafficSplit:
        return await self._admin_call("SetTrafficSplit", self._admin.SetTrafficSplit, message, context)

    async def get_prediction(
        self, message: admin_pb2.GetPredictionRequest, context: AdminContext
    ) -> admin_pb2.LoggedPrediction:
        return await self._admin_call("GetPrediction", self._admin.GetPrediction, message, context)

    async def get_drift_report(
        self, message: admin_pb2.GetDriftReportRequest, context: AdminContext
    ) -> admin_pb2.DriftReport:
        return await self._admin_call("GetDriftReport", self._admin.GetDriftReport, message, context)

    async def submit_feedback(
        self, message: admin_pb2.SubmitFeedbackRequest, context: AdminContext
    ) -> admin_pb2.SubmitFeedbackResponse:
        return await self._admin_call("SubmitFeedback", self._admin.SubmitFeedback, message, context)

    async def get_model_quality(
        self, message: admin_pb2.GetModelQualityRequest, context: AdminContext
    ) -> admin_pb2.ModelQuality:
        return await self._admin_call("GetModelQuality", self._admin.GetModelQuality, message, context)

    async def set_auto_retrain(
        self, message: admin_pb2.SetAutoRetrainRequest, context: AdminContext
    ) -> admin_pb2.AutoRetrain:
        return await self._admin_call("SetAutoRetrain", self._admin.SetAutoRetrain, message, context)

    async def serving_status(self, service: str, *, request_id: str) -> str:
        """The health status name of ``service``, or the code name of the failed health check."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout_seconds,
                metadata=((REQUEST_ID_KEY, request_id),),
            )
        except grpc.aio.AioRpcError as error:
            self._metrics.upstream_error("grpc.health.v1.Health/Check", error.code())
            return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
