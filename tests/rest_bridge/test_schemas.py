"""The REST models and the protobuf messages have the same fields, both ways, all the way down."""

import types
import typing
from datetime import datetime
from enum import Enum

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from pydantic import BaseModel, ValidationError

from protos.prediction.v1 import housing_pb2, iris_pb2, model_pb2
from rest_bridge import schemas
from rest_bridge.converters import SPECIES_TO_PROTO
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE

# Every message the bridge exposes, with its REST model.
EXPOSED: list[tuple[Descriptor, type[BaseModel]]] = [
    (housing_pb2.HousingFeatures.DESCRIPTOR, schemas.HousingFeatures),
    (housing_pb2.HousingBatchRequest.DESCRIPTOR, schemas.HousingBatchRequest),
    (housing_pb2.HousingPrediction.DESCRIPTOR, schemas.HousingPrediction),
    (housing_pb2.HousingBatchPrediction.DESCRIPTOR, schemas.HousingBatchPrediction),
    (iris_pb2.IrisFeatures.DESCRIPTOR, schemas.IrisFeatures),
    (iris_pb2.IrisBatchRequest.DESCRIPTOR, schemas.IrisBatchRequest),
    (iris_pb2.IrisPrediction.DESCRIPTOR, schemas.IrisPrediction),
    (iris_pb2.IrisBatchPrediction.DESCRIPTOR, schemas.IrisBatchPrediction),
    (model_pb2.ModelInfo.DESCRIPTOR, schemas.ModelInfo),
]
SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_UINT32: int,
    FieldDescriptor.TYPE_INT32: int,
    FieldDescriptor.TYPE_INT64: int,
    FieldDescriptor.TYPE_UINT64: int,
    FieldDescriptor.TYPE_BOOL: bool,
}
WELL_KNOWN = {"google.protobuf.Timestamp": datetime}


def _unwrap(annotation: object) -> tuple[str, object]:
    """('list', item) / ('dict', value) / ('one', type) for a pydantic field annotation."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return "list", typing.get_args(annotation)[0]
    if origin is dict:
        key, value = typing.get_args(annotation)
        assert key is str
        return "dict", value
    assert origin not in (typing.Union, types.UnionType), f"{annotation} is optional; proto responses never are"
    return "one", annotation


def _check_enum(enum: EnumDescriptor, rest: object) -> None:
    assert isinstance(rest, type)
    assert issubclass(rest, Enum)
    members = [schemas.IrisSpecies(member.value) for member in rest]
    assert {SPECIES_TO_PROTO[member] for member in members} == {value.number for value in enum.values if value.number}
    for member in members:
        proto_name = enum.values_by_number[SPECIES_TO_PROTO[member]].name
        assert proto_name == "IRIS_SPECIES_" + member.value.upper()


def _check_type(field: FieldDescriptor, rest: object, path: str, seen: set[str]) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        kind, value = _unwrap(rest)
        assert kind == "dict", path
        _check_type(field.message_type.fields_by_name["value"], value, path + "{}", seen)
        return
    kind, inner = _unwrap(rest)
    assert kind == ("list" if field.is_repeated else "one"), path
    if field.message_type is not None:
        well_known = WELL_KNOWN.get(field.message_type.full_name)
        if well_known is not None:
            assert inner is well_known, path
            return
        assert isinstance(inner, type)
        assert issubclass(inner, BaseModel), path
        _check_message(field.message_type, inner, path, seen)
    elif field.enum_type is not None:
        _check_enum(field.enum_type, inner)
    else:
        assert inner is SCALARS[field.type], path


def _check_message(descriptor: Descriptor, model: type[BaseModel], path: str, seen: set[str]) -> None:
    seen.add(descriptor.full_name)
    assert set(model.model_fields) == set(descriptor.fields_by_name), f"{path}: {model.__name__} fields differ"
    for name, field in descriptor.fields_by_name.items():
        _check_type(field, model.model_fields[name].annotation, f"{path}.{name}", seen)


@pytest.mark.parametrize(("descriptor", "model"), EXPOSED, ids=lambda each: getattr(each, "name", ""))
def test_every_proto_field_has_its_rest_counterpart_and_back(descriptor: Descriptor, model: type[BaseModel]):
    _check_message(descriptor, model, descriptor.name, set())


def test_every_message_of_the_services_is_covered():
    covered: set[str] = set()
    for descriptor, model in EXPOSED:
        _check_message(descriptor, model, descriptor.name, covered)
    services = [*housing_pb2.DESCRIPTOR.services_by_name.values(), *iris_pb2.DESCRIPTOR.services_by_name.values()]
    used = {m.input_type.full_name for s in services for m in s.methods} | {
        m.output_type.full_name for s in services for m in s.methods
    }
    # GetModelInfoRequest is empty: GET /models has no body.
    assert used - covered == {"prediction.v1.GetModelInfoRequest"}


@pytest.mark.parametrize(
    ("model", "table"), [(schemas.HousingFeatures, HOUSING_FEATURE_TABLE), (schemas.IrisFeatures, IRIS_FEATURE_TABLE)]
)
def test_feature_fields_follow_the_server_table(model: type[BaseModel], table):
    assert tuple(model.model_fields) == table.names
    properties = model.model_json_schema()["properties"]
    for spec in table.specs:
        field = properties[spec.name]
        low = "exclusiveMinimum" if spec.exclusive_minimum else "minimum"
        assert (field[low], field["maximum"], field["examples"]) == (spec.minimum, spec.maximum, [spec.example])
        assert spec.unit in field["description"]
        assert spec.name in model.model_fields
        assert model.model_fields[spec.name].is_required()
    assert model.model_validate(model.model_json_schema()["examples"][0])


def test_request_models_are_strict():
    flower = {"sepal_length_cm": 5.1, "sepal_width_cm": 3, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
    assert schemas.IrisFeatures.model_validate(flower).sepal_width_cm == 3.0
    for bad in ("3", True, float("nan"), float("inf"), None, 0, 101):
        with pytest.raises(ValidationError):
            schemas.IrisFeatures.model_validate({**flower, "sepal_width_cm": bad})
    with pytest.raises(ValidationError):
        schemas.IrisFeatures.model_validate({**flower, "extra": 1})
