"""What one training run produced, and its JSON form (``python -m training --result-file``).

Light on purpose (no scikit-learn, no mlflow): the server reads result files written by training children.
"""

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ResultFileError(ValueError):
    """A result file is missing a field or holds one of the wrong type."""


@dataclass(frozen=True)
class TrainingOutcome:
    kind: str
    """``housing`` or ``iris``."""
    model_name: str
    version: int
    run_id: str
    metrics: Mapping[str, float]
    """The candidate's quality metrics (the ones the gate reads)."""
    promoted: bool
    """Whether ``alias`` now points at ``version``."""
    reason: str
    alias: str
    champion_version: int | None = None
    """The champion the candidate was compared with; None when there was none."""
    champion_metrics: Mapping[str, float] = field(default_factory=dict)
    """That champion's metrics on the candidate's held-out rows (empty without a champion)."""

    def summary(self) -> str:
        metrics = " ".join(f"{name}={value:.4f}" for name, value in self.metrics.items())
        verdict = f"promoted to @{self.alias}" if self.promoted else f"not promoted to @{self.alias}"
        return f"{self.model_name} v{self.version}: {metrics}; {verdict}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "model_kind": self.kind,
            "model_name": self.model_name,
            "version": self.version,
            "run_id": self.run_id,
            "metrics": dict(self.metrics),
            "promoted": self.promoted,
            "reason": self.reason,
            "alias": self.alias,
            "champion_version": self.champion_version,
            "champion_metrics": dict(self.champion_metrics),
        }

    @classmethod
    def from_json(cls, data: object) -> "TrainingOutcome":
        """The inverse of ``to_json``; ``ResultFileError`` when ``data`` does not have its shape."""
        if not isinstance(data, dict):
            raise ResultFileError(f"a training result is a JSON object, not {type(data).__name__}")
        try:
            champion = data["champion_version"]
            outcome = cls(
                kind=_typed(data["model_kind"], str),
                model_name=_typed(data["model_name"], str),
                version=_typed(data["version"], int),
                run_id=_typed(data["run_id"], str),
                metrics=_metrics(data["metrics"]),
                promoted=_typed(data["promoted"], bool),
                reason=_typed(data["reason"], str),
                alias=_typed(data["alias"], str),
                champion_version=None if champion is None else _typed(champion, int),
                champion_metrics=_metrics(data["champion_metrics"]),
            )
        except KeyError as exc:
            raise ResultFileError(f"a training result has no {exc.args[0]!r}") from exc
        return outcome


def write_outcome(path: Path, outcome: TrainingOutcome) -> None:
    """Write ``outcome`` to ``path`` atomically: a reader sees the whole file or none."""
    write_json_atomically(path, outcome.to_json())


def read_outcome(path: Path) -> TrainingOutcome:
    """Raises ``OSError`` when the file cannot be read, ``ResultFileError`` when it is not a training result."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path.name} is not JSON: {exc}") from exc
    return TrainingOutcome.from_json(data)


def write_json_atomically(path: Path, data: object) -> None:
    """``data`` as JSON in a temporary file next to ``path``, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _typed(value: object, expected: type[T]) -> T:
    # bool is an int to Python; a version number of True is a broken file.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ResultFileError(f"expected {expected.__name__} in a training result, got {value!r}")
    return value


def _metrics(value: object) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(name, str) and isinstance(number, int | float) and not isinstance(number, bool)
        for name, number in value.items()
    ):
        raise ResultFileError(f"metrics in a training result map names to numbers, got {value!r}")
    return {name: float(number) for name, number in value.items()}
