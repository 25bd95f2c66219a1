"""The one adapter over the model registry, shared by the server, its admin service and training.

    RegistryError
    ├── RegistryUnavailableError  the registry could not be reached or answered with a server error
    ├── ModelNotFoundError        no registered model has this name
    ├── AliasNotFoundError        the model exists, but no version holds this alias
    ├── VersionNotFoundError      the model has no such version
    ├── ArtifactError             the version exists, but its artifacts cannot be downloaded or read
    └── AliasConflictError        a compare-and-set found the alias somewhere the caller did not expect

``ModelRegistry`` is the protocol; ``model_registry.mlflow.MlflowRegistry`` talks to MLflow (a SQLite file or an
``mlflow server``), ``model_registry.memory.InMemoryRegistry`` keeps fitted estimators in memory for tests.
"""

from model_registry.base import (
    AliasConflictError,
    AliasNotFoundError,
    ArtifactError,
    LoadedArtifact,
    ModelNotFoundError,
    ModelRegistry,
    RegistryError,
    RegistryUnavailableError,
    VersionInfo,
    VersionNotFoundError,
)

__all__ = [
    "AliasConflictError",
    "AliasNotFoundError",
    "ArtifactError",
    "LoadedArtifact",
    "ModelNotFoundError",
    "ModelRegistry",
    "RegistryError",
    "RegistryUnavailableError",
    "VersionInfo",
    "VersionNotFoundError",
]
