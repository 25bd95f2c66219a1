"""Which versions held an alias before, kept in the registry itself so that rollback survives restarts.

The history of alias ``a`` is a tag ``alias_history.a`` on the registered model: a JSON list of the versions
that held it, oldest first. Every move of the alias through ``move_alias`` appends the version it leaves;
``roll_back`` moves the alias to the last one and drops it from the list, so repeated rollbacks walk further
back instead of swinging between two versions.
"""

import json

from model_registry.base import ModelRegistry, RegistryError

# A registered-model tag value holds at most 5,000 characters in MLflow: keep the newest entries.
MAX_HISTORY = 200


class NoEarlierVersionError(RegistryError):
    """Rollback asked for, but no version held the alias before the current one."""


def history_tag(alias: str) -> str:
    return f"alias_history.{alias}"


def alias_history(registry: ModelRegistry, name: str, alias: str) -> list[str]:
    raw = registry.model_tags(name).get(history_tag(alias))
    if not raw:
        return []
    try:
        versions = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [str(version) for version in versions] if isinstance(versions, list) else []


def _write(registry: ModelRegistry, name: str, alias: str, versions: list[str]) -> None:
    registry.set_model_tag(name, history_tag(alias), json.dumps(versions[-MAX_HISTORY:]))


def move_alias(registry: ModelRegistry, name: str, alias: str, version: str, *, expected: str | None) -> None:
    """Point ``alias`` at ``version`` if it is on ``expected`` now (compare-and-set), remembering ``expected``."""
    registry.set_alias(name, alias, version, expected=expected)
    if expected is not None and expected != version:
        _write(registry, name, alias, [*alias_history(registry, name, alias), expected])


def roll_back(registry: ModelRegistry, name: str, alias: str) -> tuple[str, str]:
    """Move ``alias`` back to the version that held it before; returns (from, to)."""
    current = registry.aliases(name).get(alias)
    history = alias_history(registry, name, alias)
    # Skip entries equal to the current version (an alias set again to where it already was).
    while history and history[-1] == current:
        history.pop()
    if current is None or not history:
        raise NoEarlierVersionError(f"{name}@{alias} has no earlier version to roll back to")
    previous = history.pop()
    registry.set_alias(name, alias, previous, expected=current)
    _write(registry, name, alias, history)
    return current, previous
