"""Input features of each model, their units and accepted ranges, and the validation of a batch.

The ranges are physical plausibility limits, deliberately wider than the training data: they reject
values that cannot be real (a latitude outside California, a negative income), not merely rare ones.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.schema import IRIS_FEATURES
from server.domain import FeatureBatch
from server.errors import FieldViolation, InvalidInputError

# Bounds how much one bad batch can make us format and send back.
MAX_REPORTED_VIOLATIONS = 50


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature: accepted when ``minimum <= value <= maximum`` (``minimum < value`` if exclusive)."""

    name: str
    unit: str
    minimum: float
    maximum: float
    # A typical value (about the training mean): used to warm models up and as the API's example.
    example: float
    exclusive_minimum: bool = False

    def range_text(self) -> str:
        low = "greater than" if self.exclusive_minimum else "at least"
        return f"{low} {self.minimum:g} and at most {self.maximum:g} ({self.unit})"


class FeatureTable:
    """The ordered features of one model, with vectorised validation of a whole batch."""

    def __init__(self, specs: Sequence[FeatureSpec]) -> None:
        self.specs = tuple(specs)
        self.names = tuple(spec.name for spec in self.specs)
        self._minimums = np.array([spec.minimum for spec in self.specs], dtype=np.float64)
        self._maximums = np.array([spec.maximum for spec in self.specs], dtype=np.float64)
        self._exclusive = np.array([spec.exclusive_minimum for spec in self.specs], dtype=np.bool_)
        self.example_row = np.array([[spec.example for spec in self.specs]], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.specs)

    def validate(self, batch: FeatureBatch) -> None:
        """Raise InvalidInputError naming every missing, non-finite or out-of-range field."""
        values = batch.values
        if values.ndim != 2 or values.shape[1] != len(self.specs):
            raise InvalidInputError(f"expected {len(self.specs)} features per instance")
        above_minimum = np.where(self._exclusive, values > self._minimums, values >= self._minimums)
        # NaN fails both comparisons, so non-finite values land in `bad` too.
        bad = ~(above_minimum & (values <= self._maximums))
        if batch.missing is not None:
            bad |= batch.missing
        if not bad.any():
            return
        violations: list[FieldViolation] = []
        for row, column in zip(*np.nonzero(bad), strict=True):
            if len(violations) == MAX_REPORTED_VIOLATIONS:
                break
            violations.append(self._violation(batch, int(row), int(column)))
        count = int(bad.sum())
        first = violations[0]
        message = f"{first.field}: {first.description}"
        if count > 1:
            message += f" (and {count - 1} more invalid field{'s' if count > 2 else ''})"
        raise InvalidInputError(message, tuple(violations))

    def _violation(self, batch: FeatureBatch, row: int, column: int) -> FieldViolation:
        spec = self.specs[column]
        if batch.columnar:
            path = f"{spec.name}[{row}]"
        else:
            path = f"instances[{row}].{spec.name}" if batch.is_batch else spec.name
        value = float(batch.values[row, column])
        if batch.missing is not None and batch.missing[row, column]:
            return FieldViolation(path, "is required but was not set")
        if not np.isfinite(value):
            return FieldViolation(path, f"must be a finite number, got {value}")
        return FieldViolation(path, f"must be {spec.range_text()}, got {value:g}")


HOUSING_FEATURE_TABLE = FeatureTable(
    [
        FeatureSpec("median_income", "tens of thousands of US dollars", 0.0, 50.0, 3.87),
        FeatureSpec("house_age", "years", 0.0, 200.0, 28.6),
        FeatureSpec("average_rooms", "rooms per household", 0.0, 1_000.0, 5.43),
        FeatureSpec("average_bedrooms", "bedrooms per household", 0.0, 1_000.0, 1.1),
        FeatureSpec("population", "people", 0.0, 1_000_000.0, 1425.0),
        FeatureSpec("average_occupancy", "people per household", 0.0, 10_000.0, 3.07),
        FeatureSpec("latitude", "decimal degrees north", 32.0, 42.5, 35.63),
        FeatureSpec("longitude", "decimal degrees east", -124.5, -114.0, -119.57),
    ]
)

IRIS_FEATURE_TABLE = FeatureTable(
    [
        FeatureSpec(name, "cm", 0.0, 100.0, example, exclusive_minimum=True)
        for name, example in zip(IRIS_FEATURES, (5.84, 3.06, 3.76, 1.2), strict=True)
    ]
)
