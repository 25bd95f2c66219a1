"""The interceptors unary RPCs pass through: error mapping, request id and the access log; admin authentication.

Access log lines go to the ``server.access`` logger; ``server.logs`` hands records to a queue so that
the RPC thread never waits on the log's I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from server.admin.auth import AdminAuthenticator
from server.grpc_errors import abort_for

access_logger = logging.getLogger("server.access")
REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"


def request_id_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == REQUEST_ID_KEY:
            return str(value)
    return "-"


class ServerCallInterceptor(grpc.ServerInterceptor):
    """Turns exceptions into statuses (``server.grpc_errors``) and logs one line per call when asked."""

    def __init__(self, *, access_log: bool) -> None:
        self._access_log = access_log

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        method = handler_call_details.method
        access_log = self._access_log and access_logger.isEnabledFor(logging.INFO)

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            request_id = request_id_of(context)
            try:
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

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


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
            authenticator.check(authorization)
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
