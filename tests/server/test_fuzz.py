"""Property tests of the converters and of validation: whatever floats, batch sizes and column lengths come in,
valid input is read back bit for bit, invalid input raises InvalidInputError naming exactly the bad fields, and
nothing else is ever raised; end to end, any feature message gets OK or INVALID_ARGUMENT, never INTERNAL.

The expected outcome is worked out cell by cell in plain Python (``_bad_cells``), independently of the
vectorised checks in ``server.features``. The hypothesis profiles are in ``tests/conftest.py``: the same examples
every run under CI, a local example database elsewhere.
"""

import math
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.app import PredictionServer
from server.converters import columns_to_batch, features_to_batch
from server.errors import InvalidInputError
from server.features import (
    HOUSING_FEATURE_TABLE,
    IRIS_FEATURE_TABLE,
    MAX_REPORTED_VIOLATIONS,
    FeatureSpec,
    FeatureTable,
)
from server.settings import ServerSettings

from .conftest import channel_to, in_memory_registry, running_server

# Bounded so that the whole file stays within about 15 s on a shared 2-core machine.
CONVERTER_EXAMPLES = 60
MAX_BATCH_SIZE = ServerSettings.model_fields["max_batch_size"].default
TABLES = {"housing": HOUSING_FEATURE_TABLE, "iris": IRIS_FEATURE_TABLE}
FEATURE_MESSAGES: dict[str, type[Message]] = {"housing": housing_pb2.HousingFeatures, "iris": iris_pb2.IrisFeatures}
COLUMN_MESSAGES: dict[str, type[Message]] = {"housing": housing_pb2.HousingColumns, "iris": iris_pb2.IrisColumns}
Cell = float | None  # None: the field is not set


def _bits(value: float) -> bytes:
    """The IEEE 754 bytes of ``value``: tells -0.0 from 0.0 (and NaNs apart), which == does not."""
    return struct.pack("<d", value)


def _edges(spec: FeatureSpec) -> list[float]:
    return [
        spec.minimum,
        spec.maximum,
        math.nextafter(spec.minimum, -math.inf),
        math.nextafter(spec.minimum, math.inf),
        math.nextafter(spec.maximum, -math.inf),
        math.nextafter(spec.maximum, math.inf),
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        2.2250738585072009e-308,  # the largest subnormal
        1.7976931348623157e308,
        -1.7976931348623157e308,
        math.inf,
        -math.inf,
        math.nan,
        -math.nan,
    ]


def _value(spec: FeatureSpec) -> st.SearchStrategy[float]:
    """Plausible values and edges, and any float at all besides."""
    return st.one_of(_plausible(spec), st.sampled_from(_edges(spec)), st.floats())


def _plausible(spec: FeatureSpec) -> st.SearchStrategy[float]:
    """Only values in range, the edges included (-0.0 and subnormals where the range holds them)."""
    inside = [edge for edge in _edges(spec) if not _is_bad(spec, edge)]
    return st.one_of(st.floats(spec.minimum, spec.maximum, exclude_min=spec.exclusive_minimum), st.sampled_from(inside))


@st.composite
def _row(draw: st.DrawFn, table: FeatureTable) -> tuple[Cell, ...]:
    """Half the rows valid throughout; the others any mixture of set, unset, good and bad fields."""
    if draw(st.booleans()):
        return tuple(draw(_plausible(spec)) for spec in table.specs)
    return tuple(draw(st.one_of(_value(spec), st.none())) for spec in table.specs)


@st.composite
def _rows(draw: st.DrawFn, table: FeatureTable, max_rows: int, min_rows: int = 0) -> list[list[Cell]]:
    """Up to ``max_rows`` rows: a few drawn field by field, the rest copies of them, so a full batch stays cheap."""
    count = draw(st.one_of(st.integers(min_rows, max_rows), st.just(max_rows)))
    distinct = draw(st.lists(_row(table), min_size=1, max_size=max(1, min(4, max_rows))))
    if count <= 64:
        picks = draw(st.lists(st.integers(0, len(distinct) - 1), min_size=count, max_size=count))
    else:
        # Large batches: the distinct rows in turn, so that drawing a full batch costs a few rows' worth.
        picks = [index % len(distinct) for index in range(count)]
    return [list(distinct[index]) for index in picks]


def _is_bad(spec: FeatureSpec, cell: Cell) -> bool:
    if cell is None or not math.isfinite(cell):
        return True
    low_ok = cell > spec.minimum if spec.exclusive_minimum else cell >= spec.minimum
    return not (low_ok and cell <= spec.maximum)


def _bad_cells(table: FeatureTable, rows: Sequence[Sequence[Cell]]) -> list[tuple[int, int]]:
    """(row, column) of every bad cell, row by row: the order in which validation reports them."""
    return [
        (row, column)
        for row, cells in enumerate(rows)
        for column, (spec, cell) in enumerate(zip(table.specs, cells, strict=True))
        if _is_bad(spec, cell)
    ]


def _message(kind: str, cells: Sequence[Cell]) -> Any:
    table = TABLES[kind]
    return FEATURE_MESSAGES[kind](
        **{name: cell for name, cell in zip(table.names, cells, strict=True) if cell is not None}
    )


def _check(table: FeatureTable, batch: Any, rows: Sequence[Sequence[Cell]], paths: list[str]) -> None:
    """Validate ``batch``: accepted iff no cell is bad, and then holding exactly ``rows``; else naming ``paths``."""
    try:
        table.validate(batch)
    except InvalidInputError as error:
        event("refused")
        assert paths, f"a valid batch was refused: {error.message}"
        assert [violation.field for violation in error.violations] == paths[:MAX_REPORTED_VIOLATIONS]
        assert error.message.startswith(f"{paths[0]}: ")
        if len(paths) > 1:
            assert f"(and {len(paths) - 1} more invalid field" in error.message
        return
    assert not paths, f"bad fields were accepted: {paths[:5]}"
    event("accepted")
    assert batch.values.shape == (len(rows), len(table))
    assert [[_bits(value) for value in row] for row in batch.values.tolist()] == [
        [_bits(math.nan if cell is None else cell) for cell in row] for row in rows
    ]


@pytest.mark.parametrize("kind", TABLES)
@settings(max_examples=CONVERTER_EXAMPLES)
@given(data=st.data())
def test_any_single_message_is_read_back_exactly_or_refused_naming_each_bad_field(kind: str, data: st.DataObject):
    table = TABLES[kind]
    rows = data.draw(_rows(table, 1, 1))
    batch = features_to_batch([_message(kind, rows[0])], table, is_batch=False)
    _check(table, batch, rows, [table.names[column] for _, column in _bad_cells(table, rows)])


@pytest.mark.parametrize("kind", TABLES)
# No deadline: a full batch of messages takes tens of milliseconds, more on a busy machine.
@settings(
    max_examples=CONVERTER_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_any_batch_up_to_the_limit_is_read_back_exactly_or_refused_naming_each_bad_field(
    kind: str, data: st.DataObject
):
    table = TABLES[kind]
    rows = data.draw(st.one_of(_rows(table, 64), _rows(table, MAX_BATCH_SIZE)))
    batch = features_to_batch([_message(kind, cells) for cells in rows], table, is_batch=True)
    paths = [f"instances[{row}].{table.names[column]}" for row, column in _bad_cells(table, rows)]
    _check(table, batch, rows, paths)


@st.composite
def _columns(draw: st.DrawFn, table: FeatureTable) -> list[list[float]]:
    """One list per feature; usually all of one length, sometimes of any lengths up to the batch limit."""
    length = draw(st.one_of(st.integers(0, 8), st.integers(0, MAX_BATCH_SIZE)))
    equal = draw(st.booleans())
    valid = draw(st.booleans())
    columns = []
    for spec in table.specs:
        own = length if equal else draw(st.one_of(st.just(length), st.integers(0, 8), st.integers(0, MAX_BATCH_SIZE)))
        element = _plausible(spec) if valid else st.one_of(_plausible(spec), _value(spec))
        distinct = draw(st.lists(element, min_size=1, max_size=4))
        columns.append([distinct[index % len(distinct)] for index in range(own)])
    return columns


@pytest.mark.parametrize("kind", TABLES)
# No deadline: a full batch of messages takes tens of milliseconds, more on a busy machine.
@settings(
    max_examples=CONVERTER_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_any_columns_are_read_back_exactly_or_refused_naming_the_short_columns_or_each_bad_value(
    kind: str, data: st.DataObject
):
    table = TABLES[kind]
    columns = data.draw(_columns(table))
    message = COLUMN_MESSAGES[kind](**dict(zip(table.names, columns, strict=True)))
    lengths = [len(column) for column in columns]
    if len(set(lengths)) > 1:
        event("unequal columns")
        with pytest.raises(InvalidInputError) as refused:
            columns_to_batch(message, table)
        short = [name for name, length in zip(table.names, lengths, strict=True) if length < max(lengths)]
        assert [violation.field for violation in refused.value.violations] == short
        assert refused.value.message.startswith(f"{short[0]}: has {lengths[table.names.index(short[0])]} values")
        return
    batch = columns_to_batch(message, table)
    rows: list[list[Cell]] = [list(row) for row in zip(*columns, strict=True)] if lengths[0] else []
    paths = [f"{table.names[column]}[{row}]" for row, column in _bad_cells(table, rows)]
    _check(table, batch, rows, paths)


# End to end: bounded, each example is a real call.
END_TO_END_EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[PredictionServer]:
    with running_server(in_memory_registry(), prediction_log=False) as server:
        yield server


@pytest.mark.parametrize("kind", TABLES)
@settings(max_examples=END_TO_END_EXAMPLES, deadline=None)
@given(data=st.data())
def test_any_feature_message_sent_to_a_real_server_gets_ok_or_invalid_argument(
    fuzzed_server: PredictionServer, kind: str, data: st.DataObject
):
    table = TABLES[kind]
    rows = data.draw(_rows(table, 5, 1))
    messages = [_message(kind, cells) for cells in rows]
    bad = _bad_cells(table, rows)
    with channel_to(fuzzed_server) as channel:
        if kind == "housing":
            housing = housing_pb2_grpc.HousingPredictorStub(channel)
            calls = [
                (lambda: housing.Predict(messages[0], timeout=10), not _bad_cells(table, rows[:1])),
                (
                    lambda: housing.PredictBatch(housing_pb2.HousingBatchRequest(instances=messages), timeout=10),
                    not bad,
                ),
            ]
        else:
            iris = iris_pb2_grpc.IrisClassifierStub(channel)
            calls = [
                (lambda: iris.Classify(messages[0], timeout=10), not _bad_cells(table, rows[:1])),
                (lambda: iris.ClassifyBatch(iris_pb2.IrisBatchRequest(instances=messages), timeout=10), not bad),
            ]
        for call, valid in calls:
            try:
                call()
            except grpc.RpcError as error:
                code = error.code()
                assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {error.details()}"
                assert not valid, f"a valid request was refused: {error.details()}"
            else:
                assert valid, "a request with bad fields was answered OK"
