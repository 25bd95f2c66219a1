"""The REST models and the protobuf messages have the same fields, both ways, all the way down."""

import types
import typing
from datetime import datetime
from enum import Enum
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, MethodDescriptor
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from protos.prediction.v1 import admin_pb2, housing_pb2, iris_pb2, model_pb2
from rest_bridge import schemas
from rest_bridge.app import create_app
from rest_bridge.converters import (
    DECISION_TO_PROTO,
    DRIFT_STATUS_TO_PROTO,
    FEEDBACK_CODE_TO_PROTO,
    SPECIES_TO_PROTO,
    STATE_TO_PROTO,
)
from rest_bridge.errors import http_status_for
from rest_bridge.settings import BridgeSettings
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE

from .conftest import enum_prefix

# Every message the bridge exposes, with its REST model.
EXPOSED: list[tuple[Descriptor, type[BaseModel]]] = [
    (housing_pb2.HousingFeatures.DESCRIPTOR, schemas.HousingFeatures),
    (housing_pb2.HousingBatchRequest.DESCRIPTOR, schemas.HousingBatchRequest),
    (housing_pb2.HousingPrediction.DESCRIPTOR, schemas.HousingPrediction),
    (housing_pb2.HousingBatchPrediction.DESCRIPTOR, schemas.HousingBatchPrediction),
    (housing_pb2.HousingColumns.DESCRIPTOR, schemas.HousingColumns),
    (housing_pb2.HousingColumnsPrediction.DESCRIPTOR, schemas.HousingColumnsPrediction),
    (iris_pb2.IrisFeatures.DESCRIPTOR, schemas.IrisFeatures),
    (iris_pb2.IrisBatchRequest.DESCRIPTOR, schemas.IrisBatchRequest),
    (iris_pb2.IrisPrediction.DESCRIPTOR, schemas.IrisPrediction),
    (iris_pb2.IrisBatchPrediction.DESCRIPTOR, schemas.IrisBatchPrediction),
    (iris_pb2.IrisColumns.DESCRIPTOR, schemas.IrisColumns),
    (iris_pb2.IrisColumnsPrediction.DESCRIPTOR, schemas.IrisColumnsPrediction),
    (model_pb2.ModelInfo.DESCRIPTOR, schemas.ModelInfo),
    (admin_pb2.RetrainRequest.DESCRIPTOR, schemas.RetrainRequest),
    (admin_pb2.Operation.DESCRIPTOR, schemas.Operation),
    (admin_pb2.ListOperationsResponse.DESCRIPTOR, schemas.ListOperationsResponse),
    (admin_pb2.ListModelVersionsResponse.DESCRIPTOR, schemas.ListModelVersionsResponse),
    (admin_pb2.AliasChange.DESCRIPTOR, schemas.AliasChange),
    (admin_pb2.TrafficSplit.DESCRIPTOR, schemas.TrafficSplit),
    (admin_pb2.LoggedPrediction.DESCRIPTOR, schemas.LoggedPrediction),
    (admin_pb2.DriftReport.DESCRIPTOR, schemas.DriftReport),
    (admin_pb2.SubmitFeedbackRequest.DESCRIPTOR, schemas.SubmitFeedbackRequest),
    (admin_pb2.SubmitFeedbackResponse.DESCRIPTOR, schemas.SubmitFeedbackResponse),
    (admin_pb2.ModelQuality.DESCRIPTOR, schemas.ModelQuality),
    (admin_pb2.AutoRetrain.DESCRIPTOR, schemas.AutoRetrain),
]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"]
# Each admin route and its gRPC method: the route's path, query and body fields together are the request
# message's fields, and its success answer is the response message.
ADMIN_ROUTES: dict[tuple[str, str], MethodDescriptor] = {
    ("post", "/retrain"): ADMIN.methods_by_name["Retrain"],
    ("get", "/operations/{id}"): ADMIN.methods_by_name["GetOperation"],
    ("get", "/operations"): ADMIN.methods_by_name["ListOperations"],
    ("get", "/models/{model}/versions"): ADMIN.methods_by_name["ListModelVersions"],
    ("put", "/models/{model}/aliases/{alias}"): ADMIN.methods_by_name["SetAlias"],
    ("post", "/models/{model}/rollback"): ADMIN.methods_by_name["Rollback"],
    ("put", "/models/{model}/traffic"): ADMIN.methods_by_name["SetTrafficSplit"],
    ("get", "/predictions/{prediction_id}"): ADMIN.methods_by_name["GetPrediction"],
    ("get", "/drift/{model}"): ADMIN.methods_by_name["GetDriftReport"],
    ("post", "/feedback"): ADMIN.methods_by_name["SubmitFeedback"],
    ("get", "/quality/{model}"): ADMIN.methods_by_name["GetModelQuality"],
    ("put", "/models/{model}/auto-retrain"): ADMIN.methods_by_name["SetAutoRetrain"],
}
SERVICES = [
    *housing_pb2.DESCRIPTOR.services_by_name.values(),
    *iris_pb2.DESCRIPTOR.services_by_name.values(),
    *admin_pb2.DESCRIPTOR.services_by_name.values(),
]
# REST has no bidirectional streams: the stream RPCs are gRPC only (their messages are the unary ones, in replies).
STREAMS = {method.full_name for service in SERVICES for method in service.methods if method.client_streaming}
UNARY = [method for service in SERVICES for method in service.methods if not method.client_streaming]
ANSWERS = {method.output_type.full_name for method in UNARY}
# Enum fields whose zero value the server sends, meaning "not yet": null in REST.
NULLABLE_ENUM_FIELDS = {"prediction.v1.Operation.decision"}
ENUMS: dict[type[Enum], tuple[str, dict[Any, int]]] = {
    schemas.IrisSpecies: ("prediction.v1.IrisSpecies", dict(SPECIES_TO_PROTO)),
    schemas.OperationState: ("prediction.v1.OperationState", dict(STATE_TO_PROTO)),
    schemas.GateDecision: ("prediction.v1.GateDecision", dict(DECISION_TO_PROTO)),
    schemas.DriftStatus: ("prediction.v1.DriftStatus", dict(DRIFT_STATUS_TO_PROTO)),
}
# Proto fields the REST model spells differently (documented in rest_bridge.schemas): FeedbackResult.code is the
# name of its gRPC code and the HTTP status of that code.
RENAMED = {"prediction.v1.FeedbackResult.code": ("status", "http_status")}
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


def _unwrap(annotation: object) -> tuple[str, object, bool]:
    """('list', item) / ('dict', value) / ('one', type), and whether it may be None, for a pydantic annotation."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [each for each in typing.get_args(annotation) if each is not type(None)]
        assert len(members) == 1, annotation
        annotation, optional = members[0], True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
        origin = typing.get_origin(annotation)
    if origin is list:
        item = typing.get_args(annotation)[0]
        if typing.get_origin(item) is typing.Annotated:  # a column's values carry their bounds
            item = typing.get_args(item)[0]
        return "list", item, optional
    if origin is dict:
        key, value = typing.get_args(annotation)
        if typing.get_origin(key) is typing.Annotated:
            key = typing.get_args(key)[0]
        assert key is str
        if typing.get_origin(value) is typing.Annotated:
            value = typing.get_args(value)[0]
        return "dict", value, optional
    return "one", annotation, optional


def _check_enum(enum: EnumDescriptor, rest: object) -> None:
    assert isinstance(rest, type)
    assert issubclass(rest, Enum)
    full_name, to_proto = ENUMS[rest]
    assert enum.full_name == full_name
    assert {to_proto[member] for member in rest} == {value.number for value in enum.values if value.number}
    for member in rest:
        assert enum.values_by_number[to_proto[member]].name == enum_prefix(enum) + str(member.value).upper()


def _check_type(field: FieldDescriptor, rest: object, path: str, seen: set[str], *, answer: bool = False) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        kind, value, optional = _unwrap(rest)
        assert (kind, optional) == ("dict", False), path
        _check_type(field.message_type.fields_by_name["value"], value, path + "{}", seen, answer=answer)
        return
    kind, inner, optional = _unwrap(rest)
    assert kind == ("list" if field.is_repeated else "one"), path
    # null only where the field may be unset; in answers, an unset optional scalar must be able to say so (a
    # request may instead require it: the features are optional in proto only so that the server sees them unset).
    if optional:
        assert field.has_presence or field.full_name in NULLABLE_ENUM_FIELDS, f"{path} is nullable, the proto field not"
    if answer and field.has_presence and field.message_type is None:
        assert optional, f"{path}: an optional scalar of an answer must be nullable"
    if field.message_type is not None:
        well_known = WELL_KNOWN.get(field.message_type.full_name)
        if well_known is not None:
            assert inner is well_known, path
            return
        assert isinstance(inner, type)
        assert issubclass(inner, BaseModel), path
        _check_message(field.message_type, inner, path, seen, answer=answer)
    elif field.enum_type is not None:
        # An enum in a oneof (FeedbackItem.species) has presence: null, or rather absent, when the other is set.
        assert optional == (field.full_name in NULLABLE_ENUM_FIELDS or field.has_presence), path
        _check_enum(field.enum_type, inner)
    else:
        assert inner is SCALARS[field.type], path


def _check_message(
    descriptor: Descriptor, model: type[BaseModel], path: str, seen: set[str], *, answer: bool | None = None
) -> None:
    if answer is None:
        answer = descriptor.full_name in ANSWERS
    seen.add(descriptor.full_name)
    expected = set(descriptor.fields_by_name)
    for field in descriptor.fields:
        expected = expected - {field.name} | set(RENAMED.get(field.full_name, (field.name,)))
    assert set(model.model_fields) == expected, f"{path}: {model.__name__} fields differ"
    for name, field in descriptor.fields_by_name.items():
        if field.full_name in RENAMED:
            _check_renamed(field, model)
            continue
        _check_type(field, model.model_fields[name].annotation, f"{path}.{name}", seen, answer=answer)


def _check_renamed(field: FieldDescriptor, model: type[BaseModel]) -> None:
    # FeedbackResult.code: every FeedbackCode (its zero value too, which means OK) has a name, the gRPC code's.
    name, http_status = RENAMED[field.full_name]
    assert model.model_fields[name].annotation is schemas.FeedbackCode
    assert model.model_fields[http_status].annotation is int
    assert field.enum_type is not None
    assert field.enum_type.full_name == "prediction.v1.FeedbackCode"
    assert set(FEEDBACK_CODE_TO_PROTO) == set(schemas.FeedbackCode)
    assert set(FEEDBACK_CODE_TO_PROTO.values()) == {value.number for value in field.enum_type.values}
    for code, number in FEEDBACK_CODE_TO_PROTO.items():
        assert field.enum_type.values_by_number[number].name == enum_prefix(field.enum_type) + code.value


@pytest.mark.parametrize(("descriptor", "model"), EXPOSED, ids=lambda each: getattr(each, "name", ""))
def test_every_proto_field_has_its_rest_counterpart_and_back(descriptor: Descriptor, model: type[BaseModel]):
    _check_message(descriptor, model, descriptor.name, set())


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    reference = node.get("$ref")
    return schema["components"]["schemas"][reference.rsplit("/", 1)[1]] if reference else node


@pytest.mark.parametrize(("route", "method"), ADMIN_ROUTES.items(), ids=lambda each: getattr(each, "name", ""))
def test_every_field_of_an_admin_request_is_in_its_route_and_back(route: tuple[str, str], method: MethodDescriptor):
    verb, path = route
    schema = create_app(BridgeSettings(), CollectorRegistry()).openapi()
    operation = schema["paths"][path][verb]
    parameters = {each["name"]: each for each in operation.get("parameters", [])}
    assert {each["in"] for each in parameters.values()} <= {"path", "query"}
    body: dict[str, Any] = {}
    if "requestBody" in operation:
        body = _resolve(schema, operation["requestBody"]["content"]["application/json"]["schema"])["properties"]
    assert not set(parameters) & set(body), "a field is taken twice"
    assert set(parameters) | set(body) == set(method.input_type.fields_by_name)
    for name in parameters:
        assert method.input_type.fields_by_name[name].type == FieldDescriptor.TYPE_STRING, name
        assert parameters[name]["schema"]["type"] == "string"
        assert "pattern" in parameters[name]["schema"], f"{path}: {name} is not constrained"
    answers = {status: answer for status, answer in operation["responses"].items() if status.startswith("2")}
    assert len(answers) == 1
    (answer,) = answers.values()
    assert answer["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{method.output_type.name}"
    }


@pytest.mark.parametrize(
    ("descriptor", "body", "path"),
    [
        (admin_pb2.SetAliasRequest.DESCRIPTOR, schemas.SetAliasBody, {"model", "alias"}),
        (admin_pb2.SetTrafficSplitRequest.DESCRIPTOR, schemas.SetTrafficSplitBody, {"model"}),
        (admin_pb2.SetAutoRetrainRequest.DESCRIPTOR, schemas.SetAutoRetrainBody, {"model"}),
    ],
    ids=lambda each: getattr(each, "name", ""),
)
def test_the_body_models_of_admin_routes_match_their_proto_fields(
    descriptor: Descriptor, body: type[BaseModel], path: set[str]
):
    # The request takes its names from the path; its other fields are the body's, type for type.
    assert set(body.model_fields) == set(descriptor.fields_by_name) - path
    for name, field in body.model_fields.items():
        _check_type(descriptor.fields_by_name[name], field.annotation, f"{descriptor.name}.{name}", set())


def test_every_message_of_the_services_is_covered():
    covered: set[str] = set()
    for descriptor, model in EXPOSED:
        _check_message(descriptor, model, descriptor.name, covered)
    # Requests whose fields are the route's path and query (checked above, with the SetAlias body).
    covered |= {method.input_type.full_name for method in ADMIN_ROUTES.values()}
    assert set(ADMIN_ROUTES.values()) == set(ADMIN.methods)
    used = {method.input_type.full_name for method in UNARY} | ANSWERS
    assert {"prediction.v1.HousingPredictor.PredictStream", "prediction.v1.IrisClassifier.ClassifyStream"} == STREAMS
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


@pytest.mark.parametrize(
    ("model", "table"), [(schemas.HousingColumns, HOUSING_FEATURE_TABLE), (schemas.IrisColumns, IRIS_FEATURE_TABLE)]
)
def test_column_fields_follow_the_server_table(model: type[BaseModel], table):
    # Every column is required, 1 to MAX_COLUMN_ROWS values, each value with the bounds of its feature; the JSON
    # schema says so, so that schemathesis' valid columns are valid to the bridge.
    assert tuple(model.model_fields) == table.names
    schema = model.model_json_schema()
    assert schema["required"] == list(table.names)
    assert schema["additionalProperties"] is False
    for spec in table.specs:
        column = schema["properties"][spec.name]
        assert (column["type"], column["minItems"], column["maxItems"]) == ("array", 1, schemas.MAX_COLUMN_ROWS)
        low = "exclusiveMinimum" if spec.exclusive_minimum else "minimum"
        assert column["items"] == {"type": "number", low: spec.minimum, "maximum": spec.maximum}
        assert spec.unit in column["description"]
    assert schemas.MAX_COLUMN_ROWS == 1000  # the server's default max_batch_size
    assert model.model_validate(schema["examples"][0])


def test_request_models_are_strict():
    flower = {"sepal_length_cm": 5.1, "sepal_width_cm": 3, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
    assert schemas.IrisFeatures.model_validate(flower).sepal_width_cm == 3.0
    for bad in ("3", True, float("nan"), float("inf"), None, 0, 101):
        with pytest.raises(ValidationError):
            schemas.IrisFeatures.model_validate({**flower, "sepal_width_cm": bad})
    with pytest.raises(ValidationError):
        schemas.IrisFeatures.model_validate({**flower, "extra": 1})


def test_feedback_codes_are_grpc_codes_of_the_same_name():
    # The proto promises FeedbackCode's numbers are gRPC's; the bridge names each by its gRPC code and gives it the
    # HTTP status of the one table.
    for code, number in FEEDBACK_CODE_TO_PROTO.items():
        grpc_code = grpc.StatusCode[code.value]
        assert grpc_code.value[0] == number
    assert {code: http_status_for(grpc.StatusCode[code.value]) for code in schemas.FeedbackCode} == {
        schemas.FeedbackCode.OK: 200,
        schemas.FeedbackCode.INVALID_ARGUMENT: 422,
        schemas.FeedbackCode.NOT_FOUND: 404,
        schemas.FeedbackCode.ALREADY_EXISTS: 409,
    }


def test_a_feedback_item_documents_exactly_one_label():
    # The JSON schema says what the model enforces, so that schemathesis' valid items are valid to the bridge.
    item = schemas.FeedbackItem.model_json_schema()
    assert item["oneOf"] == [{"required": ["value"]}, {"required": ["species"]}]
    assert item["required"] == ["prediction_id"]
    assert item["additionalProperties"] is False
    assert item["properties"]["value"]["type"] == "number"
    assert item["properties"]["species"]["$ref"].endswith("/IrisSpecies")
    for label in ("value", "species"):
        assert "anyOf" not in item["properties"][label], f"{label} is documented as nullable"
        assert "default" not in item["properties"][label]
    items = schemas.SubmitFeedbackRequest.model_json_schema()["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (1, 1000)
    assert schemas.SubmitFeedbackRequest.model_validate(
        schemas.SubmitFeedbackRequest.model_json_schema()["examples"][0]
    )
