"""Domain errors of the prediction core.

    PredictionServiceError
    ├── InvalidInputError      the caller sent something the model must not see (INVALID_ARGUMENT)
    ├── ModelUnavailableError  no model is loaded for the service yet (UNAVAILABLE)
    └── ModelLoadError         the registry could not give us a usable model (raised at load, not per call)

The gRPC layer maps these to status codes in one table (``server.grpc_errors``); nothing else does.
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
    """The request cannot be predicted as sent; ``violations`` names each bad field."""

    def __init__(self, message: str, violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations


class ModelUnavailableError(PredictionServiceError):
    """The service has no model loaded (still loading, or loading failed)."""


class ModelLoadError(PredictionServiceError):
    """Resolving, downloading, deserializing or warming up a model failed."""
