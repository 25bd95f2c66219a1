"""A registry of fitted estimators kept in memory: the same contract as MLflow's, for fast tests."""

import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from model_registry.base import (
    AliasConflictError,
    AliasNotFoundError,
    ArtifactError,
    LoadedArtifact,
    ModelNotFoundError,
    RegistryUnavailableError,
    VersionInfo,
    VersionNotFoundError,
)


@dataclass
class _Version:
    info: VersionInfo
    estimator: Any
    input_names: tuple[str, ...] | None
    loadable: bool = True
    reference_profile: dict[str, Any] | None = None


@dataclass
class _Model:
    versions: dict[str, _Version] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class InMemoryRegistry:
    """``model_registry.ModelRegistry`` in memory. ``available = False`` makes every call fail as unreachable."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self.available = True

    def register(
        self,
        name: str,
        estimator: Any,
        *,
        alias: str | None = None,
        input_names: tuple[str, ...] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        run_id: str = "",
        loadable: bool = True,
        version: str | None = None,
        reference_profile: dict[str, Any] | None = None,
    ) -> str:
        """Add a new version (numbered after the last, unless ``version`` says) and optionally point ``alias`` at
        it; returns its number."""
        with self._lock:
            model = self._models.setdefault(name, _Model())
            number = version or str(max((int(v) for v in model.versions), default=0) + 1)
            info = VersionInfo(
                name=name,
                version=number,
                run_id=run_id,
                created_at=datetime.now(UTC),
                tags=dict(tags or {}),
                metrics=dict(metrics or {}),
            )
            model.versions[number] = _Version(info, estimator, input_names, loadable, reference_profile)
            if alias is not None:
                model.aliases[alias] = number
            return number

    def _model(self, name: str) -> _Model:
        if not self.available:
            raise RegistryUnavailableError("the model registry is unreachable (in-memory registry switched off)")
        model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(f"no registered model is named {name!r}")
        return model

    def _version(self, name: str, version: str) -> _Version:
        found = self._model(name).versions.get(version)
        if found is None:
            raise VersionNotFoundError(f"{name} v{version} does not exist")
        return found

    def _described(self, model: _Model, entry: _Version) -> VersionInfo:
        aliases = tuple(sorted(alias for alias, number in model.aliases.items() if number == entry.info.version))
        return replace(entry.info, aliases=aliases, tags=dict(entry.info.tags))

    def resolve(self, name: str, alias: str) -> VersionInfo:
        with self._lock:
            model = self._model(name)
            number = model.aliases.get(alias)
            if number is None:
                raise AliasNotFoundError(f"no version of {name!r} has alias {alias!r}")
            return self._described(model, model.versions[number])

    def version(self, name: str, version: str) -> VersionInfo:
        with self._lock:
            return self._described(self._model(name), self._version(name, version))

    def versions(self, name: str) -> list[VersionInfo]:
        with self._lock:
            model = self._model(name)
            ordered = sorted(model.versions.values(), key=lambda entry: int(entry.info.version), reverse=True)
            return [self._described(model, entry) for entry in ordered]

    def aliases(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._model(name).aliases)

    def load(self, name: str, version: str) -> LoadedArtifact:
        with self._lock:
            model = self._model(name)
            entry = self._version(name, version)
            if not entry.loadable:
                raise ArtifactError(f"the artifacts of {name} v{version} cannot be loaded: they are missing")
            return LoadedArtifact(
                self._described(model, entry), entry.estimator, entry.input_names, entry.reference_profile
            )

    def set_alias(self, name: str, alias: str, version: str, *, expected: str | None) -> None:
        with self._lock:
            model = self._model(name)
            self._version(name, version)
            current = model.aliases.get(alias)
            if current != expected:
                raise AliasConflictError(f"{name}@{alias} is on {current}, not {expected} as expected", current)
            model.aliases[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        with self._lock:
            self._model(name).aliases.pop(alias, None)

    def model_tags(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._model(name).tags)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with self._lock:
            self._model(name).tags[key] = value

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        with self._lock:
            entry = self._version(name, version)
            entry.info = replace(entry.info, tags={**entry.info.tags, key: value})
