"""The one place where failures become HTTP responses, all with the ``ErrorResponse`` body.

    upstream gRPC status (grpc.aio.AioRpcError)  -> HTTP_STATUS_BY_CODE, BadRequest violations as details
    request validation (RequestValidationError)  -> 422 INVALID_ARGUMENT, one detail per bad field
    a body FastAPI could not decode as JSON      -> 422 INVALID_ARGUMENT, like any other JSON that is not valid
      (not UTF-8, nested too deeply: its 400 HTTPException caused by UnicodeDecodeError or RecursionError)
    Starlette HTTPException (404, 405, ...)      -> its status, with the gRPC code of that status
    ClientDisconnectedError                      -> 499 CANCELLED (logged and counted; nobody reads it)
    anything else                                -> 500 INTERNAL "internal error" (``rest_bridge.middleware``)

``HTTP_STATUS_BY_CODE`` follows google/rpc/code.proto, except INVALID_ARGUMENT: 422, so that bad input
looks the same whether the bridge or the server caught it. Messages of 4xx statuses are the server's,
written for callers; those of 5xx statuses are fixed, because a transport failure's text names internal
addresses: the original is logged with the request id.
"""

import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from google.rpc import error_details_pb2, status_pb2
from starlette.exceptions import HTTPException

from rest_bridge.schemas import ErrorDetail, ErrorResponse, FieldViolation

logger = logging.getLogger(__name__)

HTTP_STATUS_BY_CODE = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 422,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
        grpc.StatusCode.UNAUTHENTICATED: 401,
    }
)
# For statuses the bridge makes itself (404 of an unknown path, 405, ...): the code whose status it is.
CODE_BY_HTTP_STATUS = MappingProxyType(
    {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED,
        404: grpc.StatusCode.NOT_FOUND,
        405: grpc.StatusCode.UNIMPLEMENTED,
        409: grpc.StatusCode.ABORTED,
        422: grpc.StatusCode.INVALID_ARGUMENT,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        499: grpc.StatusCode.CANCELLED,
        501: grpc.StatusCode.UNIMPLEMENTED,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
SERVER_ERROR_MESSAGES = MappingProxyType(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED: "the prediction service did not answer in time",
        grpc.StatusCode.UNAVAILABLE: "the prediction service is unavailable; retry later",
        grpc.StatusCode.UNIMPLEMENTED: "the prediction service does not implement this operation",
    }
)
INTERNAL_MESSAGE = "internal error"
GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"
MAX_REPORTED_VIOLATIONS = 50


class ClientDisconnectedError(Exception):
    """The HTTP client went away before the answer was ready; its gRPC call was cancelled."""


def http_status_for(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_CODE.get(code, 500)


def code_for_http_status(status: int) -> str:
    code = CODE_BY_HTTP_STATUS.get(status)
    if code is None:
        code = grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT
    return code.name


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    details: Sequence[FieldViolation] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = ErrorResponse(
        error=ErrorDetail(status=status, code=code, message=message, request_id=request_id, details=list(details))
    )
    return Response(body.model_dump_json(), status_code=status, media_type="application/json", headers=headers)


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def bad_request_violations(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> list[FieldViolation]:
    """The google.rpc.BadRequest field violations carried in a status's details, if any."""
    for key, value in trailing_metadata or ():
        if key != GRPC_STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
            violations: list[FieldViolation] = []
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad_request = error_details_pb2.BadRequest()
                    detail.Unpack(bad_request)
                    violations.extend(
                        FieldViolation(field=v.field, description=v.description) for v in bad_request.field_violations
                    )
        except Exception:  # malformed details must not turn a 4xx into a 500
            logger.warning("undecodable %s in an upstream error", GRPC_STATUS_DETAILS_KEY)
            return []
        return violations
    return []


def upstream_error_response(error: grpc.aio.AioRpcError, request_id: str) -> Response:
    code = error.code()
    status = http_status_for(code)
    if status < 500:
        message = error.details() or code.name
        details = bad_request_violations(error.trailing_metadata())
    else:
        logger.warning("upstream %s for request %s: %s", code.name, request_id, error.details())
        message = SERVER_ERROR_MESSAGES.get(code, INTERNAL_MESSAGE)
        details = []
    name = code.name if code in HTTP_STATUS_BY_CODE else grpc.StatusCode.UNKNOWN.name
    return error_response(status, name, message, request_id, details=details)


def _field_path(location: Sequence[int | str]) -> str:
    path = ""
    for part in location:
        if part == "[key]":  # pydantic's marker of a bad key of a map: the path up to here names the key
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_violations(errors: Sequence[Any]) -> list[FieldViolation]:
    violations = []
    for error in errors[:MAX_REPORTED_VIOLATIONS]:
        location = tuple(error.get("loc", ()))
        # A field is named as in the proto message, wherever the route takes it from.
        if location[:1] in (("body",), ("path",), ("query",)):
            location = location[1:]
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            violations.append(FieldViolation(field="", description=f"is not valid JSON: {reason}"))
            continue
        if not location and isinstance(error.get("input"), bytes):
            # FastAPI hands the body over unparsed when its Content-Type is not JSON.
            description = "must be a JSON object sent with Content-Type: application/json"
        else:
            description = str(error.get("msg", "invalid"))
        violations.append(FieldViolation(field=_field_path(location), description=description))
    return violations


def summary(violations: Sequence[FieldViolation], total: int) -> str:
    first = violations[0]
    message = f"{first.field}: {first.description}" if first.field else f"request body: {first.description}"
    if total > 1:
        message += f" (and {total - 1} more invalid field{'s' if total > 2 else ''})"
    return message


async def _on_upstream_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, grpc.aio.AioRpcError)
    return upstream_error_response(error, request_id_of(request))


async def _on_validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    violations = validation_violations(errors) or [FieldViolation(field="", description="invalid request")]
    code = grpc.StatusCode.INVALID_ARGUMENT.name
    return error_response(422, code, summary(violations, len(errors)), request_id_of(request), details=violations)


def undecodable_body_violation(error: HTTPException) -> FieldViolation | None:
    """The violation of a body FastAPI's JSON parsing failed on without a JSONDecodeError, or None.

    FastAPI turns a JSONDecodeError into a RequestValidationError (422) but any other failure of ``json.loads``
    into a bare 400; only the cause tells them apart (a client that left also fails the body read, and stays
    as it is: nobody reads that answer).
    """
    if error.status_code != 400:
        return None
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError):
        reason = f"{cause.reason} at offset {cause.start} (the body must be UTF-8)"
    elif isinstance(cause, RecursionError):
        reason = "nested too deeply"
    else:
        return None
    return FieldViolation(field="", description=f"is not valid JSON: {reason}")


async def _on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    violation = undecodable_body_violation(error)
    if violation is not None:
        code = grpc.StatusCode.INVALID_ARGUMENT.name
        return error_response(422, code, summary([violation], 1), request_id_of(request), details=[violation])
    status = error.status_code
    return error_response(
        status, code_for_http_status(status), str(error.detail), request_id_of(request), headers=error.headers
    )


async def _on_client_disconnected(request: Request, error: Exception) -> Response:
    code = grpc.StatusCode.CANCELLED
    return error_response(HTTP_STATUS_BY_CODE[code], code.name, "the client closed the request", request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(grpc.aio.AioRpcError, _on_upstream_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnectedError, _on_client_disconnected)
