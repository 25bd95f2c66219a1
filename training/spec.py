"""What the shared training flow needs to know about one model: estimator, metrics, gate rules."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator

from training.gate import GateRules

FloatArray = npt.NDArray[np.float64]
Target = npt.NDArray[Any]
Scorer = Callable[[Any, FloatArray, Target], dict[str, float]]


@dataclass(frozen=True)
class ModelSpec:
    kind: Literal["housing", "iris"]
    model_name: str
    experiment_name: str
    features: tuple[str, ...]
    target: str
    target_type: Literal["double", "long"]
    class_names: tuple[str, ...]
    """For a classifier, the name of each label 0, 1, ...: the fitted ``classes_`` must be exactly those labels."""
    estimator: BaseEstimator
    """Unfitted; the flow fits a clone."""
    params: Mapping[str, str | int | float]
    """Hyperparameters logged with the run: every overridable one with the value the estimator was built with."""
    stratify: bool
    score: Scorer
    """Held-out metrics of a fitted model; applied to the candidate and to the champion on the same split."""
    cross_validate: Scorer | None
    """Metrics of the unfitted estimator cross-validated on the training rows (it clones the estimator)."""
    rules: GateRules
    skops_trusted_types: tuple[str, ...]
    """Classes skops must trust to load the model; recorded in the MLmodel file so loading needs no arguments."""
    overrides: Mapping[str, int | float] = field(default_factory=dict)
    """The validated hyperparameter overrides the estimator was built with (``training.hyperparameters``)."""


def logged(value: object) -> str | int | float:
    """An estimator argument as a run parameter: numbers as they are, anything else (None) as text."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
