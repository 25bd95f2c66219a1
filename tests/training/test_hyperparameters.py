import math
from collections.abc import Callable

import pytest

from training.housing import housing_spec
from training.hyperparameters import HYPERPARAMETERS, HyperparameterError, validate_overrides
from training.iris import iris_spec
from training.settings import TrainingSettings
from training.spec import ModelSpec


def test_values_come_back_in_their_parameters_types() -> None:
    validated = validate_overrides("housing", {"max_iter": 20.0, "learning_rate": 1, "max_depth": 3})
    assert validated == {"max_iter": 20, "learning_rate": 1.0, "max_depth": 3}
    assert [type(value) for value in validated.values()] == [int, float, int]
    assert validate_overrides("iris", {}) == {}


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        ("housing", "max_iter", 1),
        ("housing", "max_iter", 2000),
        ("housing", "learning_rate", 0.001),
        ("housing", "l2_regularization", 0.0),
        ("housing", "max_leaf_nodes", 1024),
        ("iris", "C", 1e-4),
        ("iris", "C", 1e4),
        ("iris", "max_iter", 100000),
    ],
)
def test_bounds_are_inclusive(kind: str, name: str, value: float) -> None:
    assert validate_overrides(kind, {name: value}) == {name: value}


@pytest.mark.parametrize(
    ("kind", "name", "value", "message"),
    [
        ("housing", "max_iter", 0, "max_iter must be an integer in [1, 2000], got 0"),
        ("housing", "max_iter", 2001, "max_iter must be an integer in [1, 2000], got 2001"),
        ("housing", "max_iter", 2.5, "max_iter must be an integer in [1, 2000], got 2.5"),
        ("housing", "learning_rate", 1.5, "learning_rate must be a number in [0.001, 1.0], got 1.5"),
        ("housing", "max_leaf_nodes", 1, "max_leaf_nodes must be an integer in [2, 1024], got 1"),
        ("housing", "min_samples_leaf", 10001, "min_samples_leaf must be an integer in [1, 10000], got 10001"),
        ("housing", "l2_regularization", -0.1, "l2_regularization must be a number in [0.0, 1000.0], got -0.1"),
        ("housing", "max_depth", 101, "max_depth must be an integer in [1, 100], got 101"),
        ("housing", "learning_rate", math.nan, "learning_rate must be a number in [0.001, 1.0], got nan"),
        ("housing", "learning_rate", math.inf, "got inf"),
        ("housing", "max_iter", math.inf, "max_iter must be an integer in [1, 2000], got inf"),
        ("housing", "max_iter", math.nan, "max_iter must be an integer in [1, 2000], got nan"),
        ("housing", "max_iter", "20", "max_iter must be an integer in [1, 2000], got '20'"),
        ("housing", "max_iter", True, "got True"),
        ("iris", "C", 0.0, "C must be a number in [0.0001, 10000.0], got 0.0"),
        ("iris", "max_iter", 9, "max_iter must be an integer in [10, 100000], got 9"),
    ],
)
def test_values_outside_the_bounds_are_refused_naming_key_and_range(
    kind: str, name: str, value: float, message: str
) -> None:
    with pytest.raises(HyperparameterError) as raised:
        validate_overrides(kind, {name: value})
    assert message in str(raised.value)
    assert raised.value.parameter == name
    assert isinstance(raised.value, ValueError)


def test_unknown_names_list_the_allowed_ones() -> None:
    with pytest.raises(HyperparameterError) as raised:
        validate_overrides("iris", {"penalty": 1.0})
    assert str(raised.value) == (
        "'penalty' is not a hyperparameter of iris that may be overridden; "
        "allowed: C (a number in [0.0001, 10000.0]), max_iter (an integer in [10, 100000])"
    )
    assert raised.value.parameter == "penalty"
    # Names are per model: the housing model's learning rate is not the iris model's.
    with pytest.raises(HyperparameterError, match="'learning_rate' is not a hyperparameter of iris"):
        validate_overrides("iris", {"learning_rate": 0.1})


def test_unknown_model_kind_is_refused() -> None:
    with pytest.raises(HyperparameterError, match="unknown model kind 'wine'; known: housing, iris"):
        validate_overrides("wine", {})


def test_every_entry_is_documented_and_its_bounds_are_ordered() -> None:
    for parameters in HYPERPARAMETERS.values():
        for name, entry in parameters.items():
            assert entry.name == name and entry.doc
            assert entry.minimum <= entry.maximum


@pytest.mark.parametrize("spec", [housing_spec, iris_spec])
def test_the_defaults_the_models_train_with_are_inside_the_bounds(
    spec: Callable[[TrainingSettings], ModelSpec],
) -> None:
    built = spec(TrainingSettings())
    defaults = {name: built.params[name] for name in HYPERPARAMETERS[built.kind]}
    numbers = {name: value for name, value in defaults.items() if not isinstance(value, str)}
    assert defaults.keys() - numbers.keys() <= {"max_depth"}  # unset by default: "None"
    assert validate_overrides(built.kind, numbers) == numbers


def test_specs_refuse_overrides_that_were_not_validated() -> None:
    with pytest.raises(HyperparameterError, match="max_iter"):
        housing_spec(TrainingSettings(), {"max_iter": 0})
