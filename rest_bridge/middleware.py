"""Per-request bookkeeping, as one plain ASGI middleware (no BaseHTTPMiddleware: it costs a task per call).

For every HTTP request it settles the request id, returns it as ``X-Request-ID``, counts the request
and its latency by route and status, writes the access log line, adds the security headers
(``SECURITY_HEADERS``; a response that sets its own Content-Security-Policy, like the docs pages, keeps it),
and turns any exception that escaped the app into the standard 500 error body (logged with its traceback and
request id). A second one, inside it, refuses request bodies over the size limit.
"""

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rest_bridge.errors import INTERNAL_MESSAGE, error_response
from rest_bridge.metrics import UNMATCHED_ROUTE, BridgeMetrics

logger = logging.getLogger(__name__)
ACCESS_LOGGER = "rest_bridge.access"
ACCESS_FORMAT = '%s "%s %s" %d %.2fms id=%s'
access_logger = logging.getLogger(ACCESS_LOGGER)

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LENGTH = 128
CONTENT_LENGTH_HEADER = b"content-length"
CONTENT_SECURITY_POLICY_HEADER = b"content-security-policy"
# An API answer is never a page: it loads nothing, runs nothing and is framed by nobody.
API_CONTENT_SECURITY_POLICY = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


CORS_METHODS = ("GET", "POST", "PUT")
# What the bridge reads from a request besides the standard CORS-safe headers; its id is what a caller reads back.
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "X-Routing-Key")
CORS_EXPOSED_HEADERS = ("X-Request-ID",)
CORS_MAX_AGE_SECONDS = 600


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of Starlette's CORSMiddleware for these allowed origins: the bridge's methods and headers,
    no cookies (the admin token travels in Authorization, which a page must set itself)."""
    return {
        "allow_origins": list(origins),
        "allow_methods": list(CORS_METHODS),
        "allow_headers": list(CORS_REQUEST_HEADERS),
        "expose_headers": list(CORS_EXPOSED_HEADERS),
        "allow_credentials": False,
        "max_age": CORS_MAX_AGE_SECONDS,
    }


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == CONTENT_LENGTH_HEADER:
            return int(value) if value.isdigit() else None
    return None


def accepted_request_id(value: bytes) -> str | None:
    """The client's id if it is 1 to 128 visible ASCII characters (what logs and gRPC metadata can carry)."""
    if 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(0x21 <= byte <= 0x7E for byte in value):
        return value.decode("ascii")
    return None


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            accepted = accepted_request_id(value)
            if accepted is not None:
                return accepted
            break
    return uuid.uuid4().hex


def _route_of(scope: Scope) -> str:
    """The path template of the route that answered, or ``UNMATCHED_ROUTE``.

    FastAPI's router records only its own routes in ``scope["route"]``; for Starlette's (the OpenAPI document, the
    docs assets' mount) the matched endpoint is looked up among the router's routes: a mount is labelled with its
    ``/{path}`` template, so the files under it add no label values.
    """
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        for candidate in getattr(scope.get("router"), "routes", ()):
            if endpoint is getattr(candidate, "endpoint", None) or endpoint is getattr(candidate, "app", None):
                template = getattr(candidate, "path_format", None)
                if isinstance(template, str):
                    return template
    return UNMATCHED_ROUTE


def _with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    if not any(name.lower() == CONTENT_SECURITY_POLICY_HEADER for name, _ in headers):
        headers.append((CONTENT_SECURITY_POLICY_HEADER, API_CONTENT_SECURITY_POLICY))
    headers.extend(SECURITY_HEADERS)
    return headers


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: BridgeMetrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = _with_security_headers([*message.get("headers", ()), header])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            if not started:
                await error_response(500, "INTERNAL", INTERNAL_MESSAGE, request_id)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            method = scope["method"]
            self.metrics.observe_request(_route_of(scope), method, status, elapsed)
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                # makeRecord + handle is logger.info without its stack walk for the caller's line.
                args = (_client(scope), method, _path(scope), status, elapsed * 1000, request_id)
                access_logger.handle(
                    access_logger.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, ACCESS_FORMAT, args, None)
                )


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_body_bytes`` with 413, before the app parses any of them.

    A declared Content-Length is checked up front. A chunked body is counted as it arrives; past the
    limit the app is told the client left, and whatever it answers to that is replaced by the 413.
    Runs inside ``RequestContextMiddleware``, whose request id the error body carries.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        too_large = False
        started = False

        async def refuse() -> None:
            message = f"the request body is over {self.max_body_bytes} bytes"
            request_id = scope.get("state", {}).get("request_id", "-")
            await error_response(413, "RESOURCE_EXHAUSTED", message, request_id)(scope, receive, send)

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if not too_large:
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif message["type"] == "http.response.start" and not started:
                started = True
                await refuse()

        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await refuse()
            return
        try:
            await self.app(scope, counting_receive, send_unless_refused)
        except Exception:
            if not too_large:
                raise
            if not started:
                await refuse()


def _path(scope: Scope) -> str:
    # The raw path keeps %-escapes, so a client cannot write a line break into the log.
    raw = scope.get("raw_path")
    return raw.decode("ascii", "backslashreplace") if isinstance(raw, bytes) else repr(scope["path"])


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"
