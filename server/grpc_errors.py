"""The one place where exceptions become gRPC statuses.

``STATUS_BY_ERROR`` maps domain errors to codes; ``server.interceptors`` applies it to every RPC. Anything
not in the table becomes INTERNAL with a fixed message: the cause is logged with the request id, never sent.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from model_registry import (
    AliasConflictError,
    AliasNotFoundError,
    ModelNotFoundError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from model_registry.history import NoEarlierVersionError
from server.admin.operations import (
    OperationNotFoundError,
    RetrainAlreadyRunningError,
    RetrainRequestError,
    RunnerStoppedError,
)
from server.errors import (
    AdminDisabledError,
    DeadlineExpiredError,
    FeatureDisabledError,
    InvalidInputError,
    ModelUnavailableError,
    PredictionNotFoundError,
    UnauthenticatedError,
)
from server.observe.feedback import FeedbackUnavailableError
from training.hyperparameters import HyperparameterError

logger = logging.getLogger(__name__)

# First match wins: subclasses before their bases.
STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (HyperparameterError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (AdminDisabledError, grpc.StatusCode.PERMISSION_DENIED),
    (RetrainAlreadyRunningError, grpc.StatusCode.ALREADY_EXISTS),
    (RetrainRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (RunnerStoppedError, grpc.StatusCode.UNAVAILABLE),
    (OperationNotFoundError, grpc.StatusCode.NOT_FOUND),
    (PredictionNotFoundError, grpc.StatusCode.NOT_FOUND),
    (FeatureDisabledError, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExpiredError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (FeedbackUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (VersionNotFoundError, grpc.StatusCode.NOT_FOUND),
    (AliasNotFoundError, grpc.StatusCode.NOT_FOUND),
    (AliasConflictError, grpc.StatusCode.ABORTED),
    (NoEarlierVersionError, grpc.StatusCode.FAILED_PRECONDITION),
    # What is left of the registry's refusals: a request it would not take (e.g. a reserved alias name).
    (RegistryError, grpc.StatusCode.INVALID_ARGUMENT),
)
INTERNAL_MESSAGE = "internal error"


def status_for(error: BaseException) -> grpc.StatusCode:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, error: BaseException | None = None) -> grpc.Status:
    """A status with google.rpc details: BadRequest field violations for invalid input."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if isinstance(error, InvalidInputError) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def public_status(error: BaseException, method: str, request: str) -> tuple[grpc.StatusCode, str]:
    """The code and message a caller sees for ``error``; an unexpected one is logged here and named only INTERNAL."""
    code = status_for(error)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("%s failed (request %s)", method, request, exc_info=error)
        return code, INTERNAL_MESSAGE
    return code, str(error)


def abort_for(error: Exception, context: grpc.ServicerContext, method: str, request: str) -> None:
    """Abort the RPC with the status ``error`` maps to (raises, like ``context.abort``)."""
    code, message = public_status(error, method, request)
    context.abort_with_status(rich_status(code, message, error))
