"""The hyperparameters a retrain may override, per model kind, with their types and inclusive bounds.

Pure data and validation: the server imports this module to refuse a bad retrain request before it starts a
training process, so it must not import scikit-learn or mlflow. ``training.housing`` and ``training.iris`` apply
the validated values to their estimators.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal


class HyperparameterError(ValueError):
    """An override that is not allowed: unknown name, wrong type or out of bounds. ``parameter`` names it."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class Hyperparameter:
    """One overridable estimator argument and the values it may take (``minimum``/``maximum`` inclusive)."""

    name: str
    type: Literal["int", "float"]
    minimum: float
    maximum: float
    doc: str

    @property
    def allowed(self) -> str:
        """The accepted values in words, as error messages quote them."""
        kind = "an integer" if self.type == "int" else "a number"
        bounds = (int(self.minimum), int(self.maximum)) if self.type == "int" else (self.minimum, self.maximum)
        return f"{kind} in [{bounds[0]}, {bounds[1]}]"

    def check(self, value: object) -> int | float:
        """``value`` converted to this parameter's type, or ``HyperparameterError`` naming it and its range."""
        refused = HyperparameterError(f"{self.name} must be {self.allowed}, got {value!r}", self.name)
        # bool is an int to Python, and True would quietly become 1.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise refused
        if self.type == "int" and value != int(value):
            raise refused
        if not self.minimum <= value <= self.maximum:
            raise refused
        return int(value) if self.type == "int" else float(value)


def _parameters(*entries: Hyperparameter) -> Mapping[str, Hyperparameter]:
    return {entry.name: entry for entry in entries}


HOUSING = _parameters(
    Hyperparameter("max_iter", "int", 1, 2000, "Boosting iterations (trees); single-row latency grows with it."),
    Hyperparameter("learning_rate", "float", 0.001, 1.0, "Shrinkage of each tree's contribution."),
    Hyperparameter("max_leaf_nodes", "int", 2, 1024, "Most leaves a tree may grow."),
    Hyperparameter("min_samples_leaf", "int", 1, 10000, "Fewest training rows a leaf may hold."),
    Hyperparameter("l2_regularization", "float", 0.0, 1000.0, "L2 penalty on the leaf values (0: none)."),
    Hyperparameter("max_depth", "int", 1, 100, "Deepest a tree may grow (unset: limited by max_leaf_nodes only)."),
)
"""``HistGradientBoostingRegressor`` arguments of the housing model."""

IRIS = _parameters(
    Hyperparameter("C", "float", 1e-4, 1e4, "Inverse regularization strength of the logistic regression."),
    Hyperparameter("max_iter", "int", 10, 100000, "Most solver iterations of the logistic regression."),
)
"""``LogisticRegression`` arguments of the iris pipeline (the scaler has none to tune)."""

HYPERPARAMETERS: Mapping[str, Mapping[str, Hyperparameter]] = {"housing": HOUSING, "iris": IRIS}
"""Model kind -> name -> what it may be set to."""


def validate_overrides(kind: str, overrides: Mapping[str, float]) -> dict[str, int | float]:
    """``overrides`` checked against the allow-list of ``kind``, each converted to its parameter's type.

    Raises ``HyperparameterError`` on the first name that is unknown or value that is out of bounds.
    """
    allowed = HYPERPARAMETERS.get(kind)
    if allowed is None:
        raise HyperparameterError(f"unknown model kind {kind!r}; known: {', '.join(sorted(HYPERPARAMETERS))}")
    validated: dict[str, int | float] = {}
    for name, value in overrides.items():
        parameter = allowed.get(name)
        if parameter is None:
            raise HyperparameterError(
                f"{name!r} is not a hyperparameter of {kind} that may be overridden; allowed: "
                + ", ".join(f"{entry.name} ({entry.allowed})" for entry in allowed.values()),
                name,
            )
        validated[name] = parameter.check(value)
    return validated
