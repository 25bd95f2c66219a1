"""The interceptors every RPC passes through: error mapping, malformed messages, the prediction streams' cap and
metrics, request id and the access log; admin authentication.

Access log lines go to the ``server.access`` logger; ``server.logs`` hands records to a queue so that
the RPC thread never waits on the log's I/O.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc import _server as _grpc_server  # grpcio internals: see QueueTimingExecutor
from grpc._cython import cygrpc as _cygrpc  # type: ignore[attr-defined]

from server.admin.auth import AdminAuthenticator
from server.errors import InvalidInputError
from server.grpc_errors import abort_for
from server.metrics import RpcMetrics
from server.tls import is_private

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("server.access")
REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"


def request_id_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == REQUEST_ID_KEY:
            return str(value)
    return "-"


class MalformedMessage:
    """What a request deserializer yields for bytes that do not parse: the call (or the stream message) is
    answered INVALID_ARGUMENT. gRPC itself would answer INTERNAL and log a full traceback per message."""

    __slots__ = ("error",)

    def __init__(self, method: str) -> None:
        self.error = InvalidInputError(f"the request message of {method} could not be parsed (malformed protobuf)")


class _MalformedLog:
    """At most one warning per method every ``interval`` seconds, with the count of the ones not logged."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def note(self, method: str, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(method, 0.0):
                self._quiet[method] = self._quiet.get(method, 0) + 1
                return
            self._next[method] = now + self._interval
            quiet = self._quiet.pop(method, 0)
        logger.warning(
            "%s: a request message could not be parsed (%s: %s); %d more since the last such line",
            method,
            type(error).__name__,
            str(error)[:200],
            quiet,
        )


# Never shed: a health check must answer under overload (that is when orchestrators ask), reflection is cheap.
NEVER_SHED = ("/grpc.health.v1.", "/grpc.reflection.")
# gRFC A6: a client's retry policy waits this many milliseconds before it retries.
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def split_method(method: str) -> tuple[str, str]:
    """``/package.Service/Method`` as (``package.Service``, ``Method``), the labels py-grpc-prometheus uses."""
    _, service, name = method.split("/", 2)
    return service, name


def overload_refusal(waited: float, shed_after: float) -> tuple[str, tuple[tuple[str, str]]]:
    """The details and the pushback trailer of a call shed after waiting ``waited`` seconds for a worker."""
    details = (
        f"overloaded: the call waited {waited * 1000:.0f} ms for a worker (at most {shed_after * 1000:.0f} ms); "
        "retry after the pushback"
    )
    return details, ((PUSHBACK_KEY, str(round(shed_after * 1000))),)


_worker = threading.local()


class QueueTimingExecutor(futures.ThreadPoolExecutor):
    """The RPC thread pool, noting for each task how long it waited for a thread (``queue_wait()`` in the task).

    gRPC submits one task per call; the task then receives and parses the request before the handler runs, so a
    stamp taken when the call arrived would count the upload and the parsing of a large message as queueing.

    With ``shed_after``, a unary call that waited longer is answered RESOURCE_EXHAUSTED right here, before its
    request is received, parsed or seen by any interceptor: under overload a shed call must cost as little as
    possible, or shedding itself takes the GIL from the calls being answered. This reaches into grpcio's
    sync server (``grpc._server``, the version the lock pins); a task it does not recognise runs as usual and
    the interceptor sheds it instead (``fast_sheds`` tells which way calls went).
    """

    def __init__(
        self,
        *args: Any,
        shed_after: float | None = None,
        on_shed: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._shed_after = shed_after
        self._on_shed = on_shed
        self.fast_sheds = 0
        self._fast_sheds_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        submitted = time.monotonic()
        shed_after = self._shed_after

        def timed(*inner_args: Any, **inner_kwargs: Any) -> Any:
            waited = time.monotonic() - submitted
            if shed_after is not None and waited > shed_after and self._shed_now(inner_args, waited, shed_after):
                return None
            _worker.queue_wait = waited
            return fn(*inner_args, **inner_kwargs)

        return super().submit(timed, *args, **kwargs)

    def _shed_now(self, args: tuple[Any, ...], waited: float, shed_after: float) -> bool:
        # gRPC's task for a unary call: context.run(_unary_response_in_pool, rpc_event, state, ...).
        if len(args) < 3 or args[0] is not _grpc_server._unary_response_in_pool:
            return False
        rpc_event, state = args[1], args[2]
        # A registered method's name is the event's tag; a generic handler's, its call details.
        method = rpc_event.tag if isinstance(rpc_event.tag, str) and rpc_event.tag else rpc_event.call_details.method
        method = method.decode() if isinstance(method, bytes) else str(method)
        if method.startswith(NEVER_SHED):
            return False
        details, trailer = overload_refusal(waited, shed_after)
        # Counted first: by the time the caller reads its refusal, the metrics show it.
        with self._fast_sheds_lock:
            self.fast_sheds += 1
        if self._on_shed is not None:
            self._on_shed(method)
        with state.condition:
            # What context.abort() leaves behind, then what gRPC does with an aborted call.
            state.code = grpc.StatusCode.RESOURCE_EXHAUSTED
            state.details = details.encode()
            state.trailing_metadata = trailer
            state.aborted = True
            _grpc_server._abort(state, rpc_event.call, _cygrpc.StatusCode.unknown, b"RPC Aborted")
        return True


def queue_wait() -> float:
    """How long the task running on this thread waited for it (0 outside ``QueueTimingExecutor`` threads)."""
    wait: float = getattr(_worker, "queue_wait", 0.0)
    return wait


def _refusing_malformed_request(behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if type(request) is MalformedMessage:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error))
        yield from behavior(request, context)

    return call


def _refusing_malformed_requests(
    behavior: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]],
) -> Callable[..., Iterator[Any]]:
    def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        def parsed() -> Iterator[Any]:
            for request in requests:
                if type(request) is MalformedMessage:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error))
                yield request

        return behavior(parsed(), context)

    return call


class ServerCallInterceptor(grpc.ServerInterceptor):
    """Turns exceptions into statuses (``server.grpc_errors``), answers unparsable request messages with
    INVALID_ARGUMENT (counted, logged at a bounded rate), caps and counts the prediction streams
    (``stream_methods``; py-grpc-prometheus counts no streams) and logs one line per call when asked."""

    def __init__(
        self,
        *,
        access_log: bool,
        metrics: RpcMetrics,
        stream_methods: frozenset[str] = frozenset(),
        max_concurrent_streams: int = 1,
        max_queue_seconds: float | None = None,
    ) -> None:
        self._access_log = access_log
        self._metrics = metrics
        self._stream_methods = stream_methods
        self._max_streams = max_concurrent_streams
        self._streams = threading.BoundedSemaphore(max_concurrent_streams)
        self._malformed_log = _MalformedLog()
        self._max_queue = max_queue_seconds

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            shed_after = None if self._max_queue is None or method.startswith(NEVER_SHED) else self._max_queue
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, shed_after),
                request_deserializer=self._tolerant(handler.request_deserializer, method),
                response_serializer=handler.response_serializer,
            )
        deserializer = self._tolerant(handler.request_deserializer, method)
        if handler.stream_stream is not None and method in self._stream_methods:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        # Health's Watch and reflection: no per-message replies to give, so an unparsable message ends the call.
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _refusing_malformed_request(handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _refusing_malformed_requests(handler.stream_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _tolerant(self, deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
        if deserialize is None:
            return None
        counter = self._metrics.malformed.labels(*split_method(method))
        malformed_log = self._malformed_log

        def parse(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as exc:
                counter.inc()
                malformed_log.note(method, exc)
                return MalformedMessage(method)

        return parse

    def _unary(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        method: str,
        shed_after: float | None,
    ) -> Callable[..., Any]:
        access_log = self._access_log and access_logger.isEnabledFor(logging.INFO)
        shed = self._metrics.shed

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            request_id = request_id_of(context)
            try:
                if shed_after is not None and (waited := queue_wait()) > shed_after:
                    shed.labels(*split_method(method)).inc()
                    details, trailer = overload_refusal(waited, shed_after)
                    context.set_trailing_metadata(trailer)
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
                if type(request) is MalformedMessage:
                    raise request.error
                return behavior(request, context)
            except Exception as exc:
                # context.abort() raises too; the status it set must pass through unchanged.
                if context.code() in (None, grpc.StatusCode.OK):  # type: ignore[attr-defined]
                    abort_for(exc, context, method, request_id)
                raise
            finally:
                if access_log:
                    code = context.code() or grpc.StatusCode.OK  # type: ignore[attr-defined]
                    elapsed_ms = (time.perf_counter() - start) * 1000
                    access_logger.info("%s %s %.2fms request_id=%s", method, code.name, elapsed_ms, request_id)

        return call

    def _stream(
        self, behavior: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Callable[..., Iterator[Any]]:
        labels = split_method(method)
        active = self._metrics.streams_active.labels(*labels)
        rejected = self._metrics.streams_rejected.labels(*labels)
        messages = self._metrics.stream_messages
        answered = messages.labels(*labels, "OK")
        streams = self._streams
        most = self._max_streams
        access_log = self._access_log

        def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            request_id = request_id_of(context)
            if not streams.acquire(blocking=False):
                rejected.inc()
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server already holds its {most} concurrent streams; retry later or use unary calls",
                )
            start = time.perf_counter()
            active.inc()
            replies = 0
            try:
                for reply in behavior(requests, context):
                    if reply.WhichOneof("result") == "error":
                        messages.labels(*labels, reply.error.status).inc()
                    else:
                        answered.inc()
                    replies += 1
                    yield reply
            except Exception as exc:
                if context.code() in (None, grpc.StatusCode.OK):  # type: ignore[attr-defined]
                    abort_for(exc, context, method, request_id)
                raise
            finally:
                streams.release()
                active.dec()
                if access_log and access_logger.isEnabledFor(logging.INFO):
                    code = context.code() or grpc.StatusCode.OK  # type: ignore[attr-defined]
                    elapsed_ms = (time.perf_counter() - start) * 1000
                    access_logger.info(
                        "%s %s %.2fms replies=%d request_id=%s", method, code.name, elapsed_ms, replies, request_id
                    )

        return call


class AdminAuthInterceptor(grpc.ServerInterceptor):
    """Lets an admin call through only with the bearer token; must sit inside ``ServerCallInterceptor``.

    Its refusals are domain errors, so the outer interceptor maps them like any other error (and counts them).
    """

    def __init__(self, authenticator: AdminAuthenticator, service_name: str) -> None:
        self._authenticator = authenticator
        self._prefix = f"/{service_name}/"

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        authorization = next(
            (str(value) for key, value in handler_call_details.invocation_metadata if key == AUTHORIZATION_KEY), None
        )
        behavior = handler.unary_unary
        authenticator = self._authenticator

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            authenticator.check(authorization, private=is_private(context))
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
