"""Reading ``docker-compose.yml`` the way Compose does: YAML (anchors and merge keys), then interpolation.

Compose validates a file after interpolating ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:?message}``, ``${VAR?message}`` and ``$$`` (a literal ``$``) in every string value; this module does
the same, so the vendored Compose Specification schema can be applied offline, with no Docker engine.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from ..prerequisites import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# compose-spec/compose-spec, schema/compose-spec.json (Apache-2.0, see compose-spec.LICENSE beside it).
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A required variable (``${VAR:?message}``) is unset or empty, or a ``$`` is malformed."""


def interpolate_text(text: str, environment: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        operator, argument = match.group("operator"), match.group("argument") or ""
        value = environment.get(name)
        # With a colon, an empty value counts as unset.
        missing = not value if operator in (":-", ":?") else value is None
        if not missing:
            return value or ""
        if operator in (":?", "?"):
            raise InterpolationError(f"{name}: {argument or 'required variable is missing'}")
        if operator in (":-", "-"):
            return interpolate_text(argument, environment)
        return ""

    result = _VARIABLE.sub(replace, text)
    # A `$` that is neither `$$` nor a variable is an error in Compose too.
    if re.search(r"\$(?![$A-Za-z_{])", text):
        raise InterpolationError(f"malformed '$' in {text!r}")
    return result


def interpolate(document: Any, environment: Mapping[str, str]) -> Any:
    if isinstance(document, str):
        return interpolate_text(document, environment)
    if isinstance(document, list):
        return [interpolate(item, environment) for item in document]
    if isinstance(document, dict):
        return {key: interpolate(value, environment) for key, value in document.items()}
    return document


def raw_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The file as YAML gives it: anchors and merge keys resolved, variables not yet interpolated."""
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded
