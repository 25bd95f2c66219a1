"""Types and errors of the registry adapter, and the protocol every implementation follows."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class RegistryError(Exception):
    """Base of every error the registry adapter raises."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached, or failed on its side: nothing is known about the model."""


class ModelNotFoundError(RegistryError):
    """No registered model has this name."""


class AliasNotFoundError(RegistryError):
    """The registered model exists, but no version holds the alias."""


class VersionNotFoundError(RegistryError):
    """The registered model has no such version."""


class ArtifactError(RegistryError):
    """The version is registered, but its artifacts are missing or cannot be deserialised."""


class AliasConflictError(RegistryError):
    """``set_alias`` found the alias on another version than the caller expected; nothing was changed."""

    def __init__(self, message: str, current: str | None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One registered version as the registry describes it (no artifact downloaded)."""

    name: str
    version: str
    run_id: str
    created_at: datetime
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    """The held-out metrics its training run logged (empty when the run is gone or logged none)."""


@dataclass(frozen=True, slots=True)
class LoadedArtifact:
    """A version's fitted estimator with what its artifact says about its inputs."""

    info: VersionInfo
    estimator: Any
    input_names: tuple[str, ...] | None
    """Column names of the logged input signature, in order; None when the version has no signature."""
    reference_profile: Mapping[str, Any] | None = None
    """The training run's reference profile document (``data.profile``); None when the run logged none."""


class ModelRegistry(Protocol):
    """Everything the project asks of a model registry.

    Every method raises ``RegistryUnavailableError`` when the registry cannot be reached, and the specific
    ``RegistryError`` subclass when it answered that something does not exist.
    """

    def resolve(self, name: str, alias: str) -> VersionInfo:
        """The version holding ``alias``, cheaply: no artifact is downloaded."""
        ...

    def version(self, name: str, version: str) -> VersionInfo: ...

    def load(self, name: str, version: str) -> LoadedArtifact:
        """Download and deserialise one version (by number, never by alias: the alias may move meanwhile)."""
        ...

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first, with aliases, tags and run metrics."""
        ...

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version of ``name``."""
        ...

    def set_alias(self, name: str, alias: str, version: str, *, expected: str | None) -> None:
        """Point ``alias`` at ``version`` only if it now points at ``expected`` (None: is not set).

        Raises ``AliasConflictError`` (and changes nothing) when it points elsewhere.
        """
        ...

    def model_tags(self, name: str) -> dict[str, str]: ...

    def set_model_tag(self, name: str, key: str, value: str) -> None: ...

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...
