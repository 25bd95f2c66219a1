"""Domain errors of the prediction core and the admin service.

    PredictionServiceError
    ├── InvalidInputError      the caller sent something the model must not see (INVALID_ARGUMENT)
    ├── ModelUnavailableError  no model is loaded for the service yet (UNAVAILABLE)
    ├── UnauthenticatedError   an admin call without the right bearer token (UNAUTHENTICATED)
    ├── AdminDisabledError     an admin call to a server with no admin token configured (PERMISSION_DENIED)
    ├── PredictionNotFoundError  no logged prediction has this id (NOT_FOUND)
    ├── FeatureDisabledError   the call needs a part this server runs without (FAILED_PRECONDITION)
    └── DeadlineExpiredError   the call's deadline passed before its model was called (DEADLINE_EXCEEDED)

The registry adapter's errors (``model_registry``), the retrain operations' (``server.admin.operations``) and
the hyper-parameter allow-list's (``training.hyperparameters``) travel up unchanged. The gRPC layer maps all of
them to status codes in one table (``server.grpc_errors``); nothing else does.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: ``field`` is a path such as ``instances[3].median_income``."""

    field: str
    description: str


class PredictionServiceError(Exception):
    """Base of every error the core raises on purpose."""


class InvalidInputError(PredictionServiceError):
    """The request cannot be served as sent; ``violations`` names each bad field."""

    def __init__(self, message: str, violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations


class ModelUnavailableError(PredictionServiceError):
    """The service has no model loaded (still loading, or loading failed)."""


class UnauthenticatedError(PredictionServiceError):
    """An admin call carried no bearer token, or the wrong one."""


class AdminDisabledError(PredictionServiceError):
    """The server has no admin token configured, so it refuses every admin call."""


class PredictionNotFoundError(PredictionServiceError):
    """No logged prediction has this id (NOT_FOUND)."""


class FeatureDisabledError(PredictionServiceError):
    """The call needs a part the server was configured without (drift off, no prediction log, no triggers)."""


class DeadlineExpiredError(PredictionServiceError):
    """The caller's deadline passed while the request waited for the model; it was not computed."""
