import numpy as np
import pytest

from data.schema import HOUSING_FEATURES, IRIS_FEATURES
from server.domain import FeatureBatch
from server.errors import InvalidInputError
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE, MAX_REPORTED_VIOLATIONS


def test_feature_tables_follow_the_column_order_the_models_were_trained_on():
    assert HOUSING_FEATURE_TABLE.names == HOUSING_FEATURES
    assert IRIS_FEATURE_TABLE.names == IRIS_FEATURES


def test_examples_are_valid_inputs():
    HOUSING_FEATURE_TABLE.validate(FeatureBatch(HOUSING_FEATURE_TABLE.example_row))
    IRIS_FEATURE_TABLE.validate(FeatureBatch(IRIS_FEATURE_TABLE.example_row))


def _violations(table, values, missing=None, *, is_batch=False):
    with pytest.raises(InvalidInputError) as raised:
        table.validate(FeatureBatch(np.asarray(values, dtype=np.float64), missing, is_batch=is_batch))
    return raised.value


def test_nan_infinite_and_out_of_range_values_are_each_named():
    row = IRIS_FEATURE_TABLE.example_row.copy()
    row[0, 0] = np.nan
    row[0, 1] = np.inf
    row[0, 2] = 0.0  # lengths must be strictly positive
    row[0, 3] = 101.0
    error = _violations(IRIS_FEATURE_TABLE, row)
    assert [(v.field, v.description) for v in error.violations] == [
        ("sepal_length_cm", "must be a finite number, got nan"),
        ("sepal_width_cm", "must be a finite number, got inf"),
        ("petal_length_cm", "must be greater than 0 and at most 100 (cm), got 0"),
        ("petal_width_cm", "must be greater than 0 and at most 100 (cm), got 101"),
    ]
    assert error.message == "sepal_length_cm: must be a finite number, got nan (and 3 more invalid fields)"


def test_missing_fields_are_reported_as_required_with_batch_paths():
    values = np.repeat(HOUSING_FEATURE_TABLE.example_row, 3, axis=0)
    missing = np.zeros_like(values, dtype=np.bool_)
    values[2, 6] = np.nan
    missing[2, 6] = True
    error = _violations(HOUSING_FEATURE_TABLE, values, missing, is_batch=True)
    assert [(v.field, v.description) for v in error.violations] == [
        ("instances[2].latitude", "is required but was not set")
    ]


def test_bounds_are_inclusive_where_documented():
    row = HOUSING_FEATURE_TABLE.example_row.copy()
    row[0, 6] = 32.0
    row[0, 7] = -114.0
    HOUSING_FEATURE_TABLE.validate(FeatureBatch(row))
    row[0, 6] = 31.999
    assert _violations(HOUSING_FEATURE_TABLE, row).violations[0].field == "latitude"


def test_a_huge_bad_batch_reports_a_bounded_number_of_violations():
    values = np.full((1000, 4), -1.0)
    error = _violations(IRIS_FEATURE_TABLE, values, is_batch=True)
    assert len(error.violations) == MAX_REPORTED_VIOLATIONS
    assert error.message.endswith("(and 3999 more invalid fields)")
