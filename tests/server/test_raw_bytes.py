"""Raw bytes on the wire: whatever a client sends as a request message, to any method of our services or to the
health check, the call ends within its deadline with a status that is not INTERNAL or UNKNOWN, bytes that do not
parse are answered INVALID_ARGUMENT and counted, the log stays short, and the server keeps serving.

The methods come from the services' descriptors, so a method added to a proto is fuzzed without a change here.
The payloads are seeded: empty, a populated valid message and truncations of it, wrong wire types, invalid
UTF-8 in string fields, length prefixes far past the end, end-group tags, and plain random bytes.
"""

import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import admin_pb2, housing_pb2, housing_pb2_grpc, iris_pb2
from server.app import PredictionServer

from ..rest_bridge.conftest import fake_training
from .conftest import channel_to, in_memory_registry, running_server

PAYLOADS_PER_METHOD = 50
SEED = 20261201
CALL_TIMEOUT_SECONDS = 10.0
ADMIN_TOKEN = "raw-bytes-admin-token"  # noqa: S105  # a test server's own token
MALFORMED_LOG_INTERVAL_SECONDS = 10.0

METHODS: tuple[MethodDescriptor, ...] = (
    *housing_pb2.DESCRIPTOR.services_by_name["HousingPredictor"].methods,
    *iris_pb2.DESCRIPTOR.services_by_name["IrisClassifier"].methods,
    *admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].methods,
    health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"],
)


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _populate(message: Message, depth: int = 0) -> Message:
    """Every field set (one of each oneof, the last one set wins), nested messages two levels deep."""
    scalars: dict[int, object] = {
        FieldDescriptor.TYPE_DOUBLE: 1.5,
        FieldDescriptor.TYPE_FLOAT: 2.5,
        FieldDescriptor.TYPE_BOOL: True,
        FieldDescriptor.TYPE_STRING: "value",
        FieldDescriptor.TYPE_BYTES: b"value",
    }
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or field.message_type is None or field.message_type.GetOptions().map_entry:
                continue
            target = getattr(message, field.name)
            _populate(target.add() if field.is_repeated else target, depth + 1)
            continue
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            value: object = field.enum_type.values[-1].number
        else:
            value = scalars.get(field.type, 7)
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)
    return message


def _payloads(descriptor: Descriptor, rng: np.random.Generator) -> list[bytes]:
    valid = _populate(GetMessageClass(descriptor)()).SerializeToString()
    numbers = [field.number for field in descriptor.fields] or [1]
    strings = [field.number for field in descriptor.fields if field.type == FieldDescriptor.TYPE_STRING]
    payloads = [
        b"",
        valid,
        b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length-delimited, a length far past the end
        _tag(1, 2) + _varint(2**63 - 1) + b"x",
        _tag(numbers[-1], 2) + _varint(2**31),
        _tag(1, 0) + b"\xff" * 11,  # a varint longer than ten bytes
        _tag(1, 4),  # an end-group tag with no group
        _tag(1, 3),  # a group never closed
        _tag(1, 6) + b"\x00",  # wire types 6 and 7 do not exist
        _tag(1, 7) + b"\x00",
        b"\x00",  # field number 0
        _tag(1, 1) + b"\x00\x00\x00",  # a fixed64 cut short
        _tag(1, 5) + b"\x00",  # a fixed32 cut short
    ]
    payloads += [_tag(number, 2) + _varint(2) + b"\xff\xfe" for number in strings]  # invalid UTF-8
    payloads += [
        _tag(number, int(rng.choice((0, 1, 2, 5)))) + rng.bytes(int(rng.integers(0, 13))) for number in numbers
    ]
    if len(valid) > 1:
        payloads += [valid[: int(rng.integers(1, len(valid)))] for _ in range(8)]
    payloads = payloads[: PAYLOADS_PER_METHOD - 10]
    while len(payloads) < PAYLOADS_PER_METHOD:
        payloads.append(rng.bytes(int(rng.choice((1, 2, 5, 17, 64, 300)))))
    return payloads


def _parses(descriptor: Descriptor, payload: bytes) -> bool:
    try:
        GetMessageClass(descriptor).FromString(payload)
    except DecodeError:
        return False
    return True


@pytest.fixture(scope="module")
def raw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictionServer]:
    # A retrain that the bytes happen to ask for runs a stand-in that trains nothing.
    workdir = fake_training(tmp_path_factory.mktemp("retrain"))
    with running_server(in_memory_registry(), admin_token=ADMIN_TOKEN, retrain_workdir=workdir) as server:
        yield server


def _malformed(server: PredictionServer, method: MethodDescriptor) -> float:
    labels = {"grpc_service": method.containing_service.full_name, "grpc_method": method.name}
    return server.metrics_registry.get_sample_value("grpc_server_malformed_requests_total", labels) or 0.0


def test_the_fuzzed_methods_are_every_method_of_our_services_and_the_health_check():
    assert len(METHODS) == 5 + 5 + len(admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].methods) + 1
    assert {method.containing_service.full_name for method in METHODS} == {
        "prediction.v1.HousingPredictor",
        "prediction.v1.IrisClassifier",
        "prediction.v1.ModelAdmin",
        "grpc.health.v1.Health",
    }


def test_random_bytes_to_every_method_get_no_internal_error_and_the_server_keeps_serving(
    raw_server: PredictionServer, caplog: pytest.LogCaptureFixture
):
    rng = np.random.default_rng(SEED)
    metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    unparsable: dict[str, int] = {}
    before = {_path(method): _malformed(raw_server, method) for method in METHODS}
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), channel_to(raw_server) as channel:
        for method in METHODS:
            path = _path(method)
            payloads = _payloads(method.input_type, rng)
            unparsable[path] = sum(not _parses(method.input_type, payload) for payload in payloads)
            assert unparsable[path] > 0, f"{path}: every payload parses, so none tests the error path"
            if method.client_streaming:
                _stream(channel, method, payloads, metadata)
            else:
                _unary(channel, method, payloads, metadata)
        elapsed = time.monotonic() - started

        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        features = housing_pb2.HousingFeatures(
            median_income=3.9,
            house_age=28.0,
            average_rooms=5.4,
            average_bedrooms=1.1,
            population=1400.0,
            average_occupancy=3.1,
            latitude=35.6,
            longitude=-119.6,
        )
        assert housing_pb2_grpc.HousingPredictorStub(channel).Predict(features, timeout=10).prediction_id

    for method in METHODS:
        path = _path(method)
        assert _malformed(raw_server, method) - before[path] == unparsable[path], path
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [f"{record.name}: {record.getMessage()}" for record in errors[:3]]
    most_per_method = 1 + int(elapsed // MALFORMED_LOG_INTERVAL_SECONDS)
    for method in METHODS:
        path = _path(method)
        lines = [record for record in caplog.records if record.getMessage().startswith(f"{path}: ")]
        assert len(lines) <= most_per_method, f"{path}: {len(lines)} malformed-message lines in {elapsed:.1f} s"
    assert len(caplog.records) <= len(METHODS) * most_per_method


def _refusal_ok(path: str, code: grpc.StatusCode, details: str | None, parses: bool) -> None:
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), f"{path}: {code}: {details}"
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{path}: the call did not end within its deadline"
    if not parses:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{path}: unparsable bytes answered {code}: {details}"


def _unary(
    channel: grpc.Channel, method: MethodDescriptor, payloads: list[bytes], metadata: tuple[tuple[str, str], ...]
) -> None:
    path = _path(method)
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
    for payload in payloads:
        parses = _parses(method.input_type, payload)
        try:
            call(payload, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
        except grpc.RpcError as error:
            _refusal_ok(path, error.code(), error.details(), parses)
        else:
            assert parses, f"{path}: unparsable bytes {payload[:20]!r} answered OK"


def _stream(
    channel: grpc.Channel, method: MethodDescriptor, payloads: list[bytes], metadata: tuple[tuple[str, str], ...]
) -> None:
    """All payloads on one stream: one reply each, an error reply for every one that does not parse."""
    path = _path(method)
    reply_class: Any = GetMessageClass(method.output_type)  # a stream reply: sequence, and a result oneof
    stream: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(path)
    try:
        replies = [
            reply_class.FromString(raw)
            for raw in stream(iter(payloads), timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
        ]
    except grpc.RpcError as error:
        _refusal_ok(path, error.code(), error.details(), True)
        raise AssertionError(f"{path}: the stream ended {error.code()}") from error
    assert [reply.sequence for reply in replies] == list(range(len(payloads)))
    for payload, reply in zip(payloads, replies, strict=True):
        if not _parses(method.input_type, payload):
            assert reply.WhichOneof("result") == "error", f"{path}: {payload[:20]!r} was answered"
            assert reply.error.status == "INVALID_ARGUMENT"
