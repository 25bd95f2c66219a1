"""Reference profiles: how each column of a model's inputs and outputs was distributed on its training rows.

Training computes one per model version and stores it with the version's run (``PROFILE_ARTIFACT``); the
server compares a rolling window of live rows against it (``server.observe.drift``). Both sides use this module,
so a column is binned the same way when the profile is made and when live rows are counted.

A column's profile is its quantile bin edges (the inner cut points, deciles by default, duplicates removed so
a column with many equal values gets fewer, wider bins) and the proportion of training rows in each bin. Bin
``i`` holds the values ``edges[i-1] <= v < edges[i]``; the first and last bins are open-ended, so a live value
outside the training range still lands in a bin. Proportions are counted, not assumed to be 1/bins, which keeps
discrete columns honest.

The population stability index of live counts ``a`` against reference proportions ``e`` is
``sum((a_i - e_i) * ln(a_i / e_i))``, with both floored at ``PROPORTION_FLOOR`` so an empty bin costs a large but
finite amount. Rule of thumb: below 0.1 stable, 0.1 to 0.2 a moderate shift, above 0.2 a significant one.

Pure numpy (no scikit-learn, no MLflow): the server imports it.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

PROFILE_ARTIFACT: Final = "reference_profile.json"
"""File name of the profile among the artifacts of the version's training run."""
PROFILE_FORMAT: Final = 1
DEFAULT_BINS: Final = 10
PROPORTION_FLOOR: Final = 1e-4

FloatArray = npt.NDArray[np.float64]
CountArray = npt.NDArray[np.int64]


class ProfileError(ValueError):
    """A stored profile that cannot be read: wrong format, missing columns, inconsistent bins."""


@dataclass(frozen=True, slots=True)
class ColumnProfile:
    edges: FloatArray
    """Inner cut points, strictly increasing: ``len(edges) + 1`` bins."""
    proportions: FloatArray
    """Share of reference rows in each bin; sums to 1."""

    def counts(self, values: FloatArray) -> CountArray:
        """How many of ``values`` fall into each bin."""
        bins = np.searchsorted(self.edges, values, side="right")
        return np.bincount(bins, minlength=len(self.edges) + 1).astype(np.int64)

    def psi(self, values: FloatArray) -> float:
        """Population stability index of ``values`` against this reference (``values`` not empty)."""
        return population_stability_index(self.proportions, self.counts(values))

    def to_json(self) -> dict[str, list[float]]:
        return {"edges": [float(edge) for edge in self.edges], "proportions": [float(p) for p in self.proportions]}


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    features: Mapping[str, ColumnProfile]
    """Per input column, in the model's column order."""
    outputs: Mapping[str, ColumnProfile]
    """Per output column: the prediction (regression) or each class's probability (classification)."""
    rows: int
    """Reference rows the profile was computed on."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "rows": self.rows,
            "features": {name: column.to_json() for name, column in self.features.items()},
            "outputs": {name: column.to_json() for name, column in self.outputs.items()},
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> "ReferenceProfile":
        """The profile ``to_json`` wrote; ``ProfileError`` on anything else."""
        try:
            if document["format"] != PROFILE_FORMAT:
                raise ProfileError(f"profile format {document['format']!r}; this server reads {PROFILE_FORMAT}")
            return cls(
                features=_columns(document["features"]),
                outputs=_columns(document["outputs"]),
                rows=int(document["rows"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ProfileError):
                raise
            raise ProfileError(f"not a reference profile: {exc!r}") from exc


def profile_column(values: FloatArray, bins: int = DEFAULT_BINS) -> ColumnProfile:
    """Quantile bins of ``values`` (finite, not empty) and the share of them in each."""
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = np.unique(quantiles)
    counts = ColumnProfile(edges, np.empty(0)).counts(values)
    return ColumnProfile(edges=edges, proportions=counts / counts.sum())


def reference_profile(
    inputs: FloatArray,
    outputs: FloatArray,
    feature_names: Sequence[str],
    output_names: Sequence[str],
    bins: int = DEFAULT_BINS,
) -> ReferenceProfile:
    """The profile of ``inputs`` (rows, features) and ``outputs`` (rows,) or (rows, outputs)."""
    outputs = outputs.reshape(len(outputs), -1)
    if inputs.shape[1] != len(feature_names) or outputs.shape[1] != len(output_names):
        raise ValueError(
            f"{inputs.shape[1]} input and {outputs.shape[1]} output columns for "
            f"{len(feature_names)} feature and {len(output_names)} output names"
        )
    return ReferenceProfile(
        features={name: profile_column(inputs[:, i], bins) for i, name in enumerate(feature_names)},
        outputs={name: profile_column(outputs[:, i], bins) for i, name in enumerate(output_names)},
        rows=len(inputs),
    )


def population_stability_index(expected: FloatArray, actual_counts: CountArray) -> float:
    total = int(actual_counts.sum())
    if total == 0:
        raise ValueError("no live values to compare")
    actual = np.maximum(actual_counts / total, PROPORTION_FLOOR)
    reference = np.maximum(expected, PROPORTION_FLOOR)
    return float(np.sum((actual - reference) * np.log(actual / reference)))


def _columns(document: Mapping[str, Any]) -> dict[str, ColumnProfile]:
    columns: dict[str, ColumnProfile] = {}
    for name, column in document.items():
        edges = np.asarray(column["edges"], dtype=np.float64).reshape(-1)
        proportions = np.asarray(column["proportions"], dtype=np.float64).reshape(-1)
        if len(proportions) != len(edges) + 1:
            raise ProfileError(f"{name}: {len(edges)} edges need {len(edges) + 1} proportions, not {len(proportions)}")
        if np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
            raise ProfileError(f"{name}: edges must be finite and strictly increasing")
        if np.any(proportions < 0) or not math.isclose(float(proportions.sum()), 1.0, abs_tol=1e-6):
            raise ProfileError(f"{name}: proportions must be non-negative and sum to 1")
        columns[str(name)] = ColumnProfile(edges=edges, proportions=proportions)
    return columns
