"""The prediction streams on a real server: order, per-message errors, the cap, their metrics; and request
messages that do not parse, on unary calls and on streams."""

import logging
import queue
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from data.schema import HOUSING_FEATURES, IRIS_FEATURES
from model_registry.memory import InMemoryRegistry
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.services import HOUSING
from tests.server.conftest import channel_to, in_memory_registry, running_server, sample, wait_until

PREDICT_STREAM = "/prediction.v1.HousingPredictor/PredictStream"
HOUSING_STREAM = {"grpc_service": "prediction.v1.HousingPredictor", "grpc_method": "PredictStream"}


def _row(median_income: float, **overrides: float) -> housing_pb2.HousingFeatures:
    row = dict(zip(HOUSING_FEATURES, HOUSING.features.example_row[0].tolist(), strict=True))
    return housing_pb2.HousingFeatures(**(row | {"median_income": median_income} | overrides))


@pytest.fixture(scope="module")
def server():
    with running_server(in_memory_registry(), max_workers=6, max_concurrent_streams=2) as started:
        yield started


@pytest.fixture
def channel(server) -> Iterator[grpc.Channel]:
    with channel_to(server) as opened:
        yield opened


def test_a_stream_answers_every_message_in_order_with_the_unary_answers_and_bad_messages_get_their_own_error(
    channel, server
):
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    messages = [_row(1.0 + n / 10) for n in range(60)]
    messages[3] = _row(2.0, latitude=99.0)
    messages[41] = housing_pb2.HousingFeatures(median_income=3.0)  # every other field unset
    before = sample(server.metrics_registry, "grpc_server_stream_messages_total", grpc_code="OK", **HOUSING_STREAM)

    replies = list(stub.PredictStream(iter(messages), timeout=30))

    assert [reply.sequence for reply in replies] == list(range(60))
    bad = {reply.sequence: reply.error for reply in replies if reply.WhichOneof("result") == "error"}
    assert sorted(bad) == [3, 41]
    assert bad[3].status == "INVALID_ARGUMENT"
    assert bad[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [violation.field for violation in bad[3].field_violations] == ["latitude"]
    assert "latitude" in bad[3].message
    assert len(bad[41].field_violations) == 7
    for reply, message in zip(replies, messages, strict=True):
        if reply.sequence in bad:
            continue
        unary = stub.Predict(message, timeout=10)
        assert reply.prediction.median_house_value == unary.median_house_value
        assert reply.prediction.model.version == unary.model.version
    assert len({reply.prediction.prediction_id for reply in replies if reply.sequence not in bad}) == 58
    ok = sample(server.metrics_registry, "grpc_server_stream_messages_total", grpc_code="OK", **HOUSING_STREAM)
    assert ok - before == 58
    assert (
        sample(
            server.metrics_registry, "grpc_server_stream_messages_total", grpc_code="INVALID_ARGUMENT", **HOUSING_STREAM
        )
        >= 2
    )


def _tree_registry() -> InMemoryRegistry:
    rng = np.random.default_rng(0)
    rows = HOUSING.features.example_row * rng.uniform(0.99, 1.01, size=(400, 8))
    rows[:, 0] = rng.uniform(1.0, 10.0, size=400)
    model = HistGradientBoostingRegressor(max_iter=30, random_state=0).fit(rows, rows[:, 0] ** 0.5)
    registry = in_memory_registry(housing=False)
    registry.register("CaliforniaHousingBestModel", model, alias="champion", input_names=HOUSING_FEATURES)
    return registry


def test_a_stream_predicts_its_waiting_messages_together_for_a_tree_model_with_the_unary_answers_bit_for_bit():
    messages = [_row(1.0 + n / 7) for n in range(200)]
    with running_server(_tree_registry()) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        replies = list(stub.PredictStream(iter(messages), timeout=30))
        calls = sample(
            server.metrics_registry, "model_batch_size_count", model="CaliforniaHousingBestModel", variant="champion"
        )
        unary = [stub.Predict(message, timeout=10).median_house_value for message in messages]
    assert [reply.sequence for reply in replies] == list(range(200))
    assert [reply.prediction.median_house_value for reply in replies] == unary
    # The reader ran ahead while the model predicted, so groups of messages shared calls.
    assert calls < 200


def test_an_iris_stream_classifies_like_the_unary_call(channel):
    stub = iris_pb2_grpc.IrisClassifierStub(channel)
    flowers = [
        iris_pb2.IrisFeatures(**dict(zip(IRIS_FEATURES, (5.0 + n / 10, 3.4, 1.5 + n / 5, 0.2), strict=True)))
        for n in range(20)
    ]
    replies = list(stub.ClassifyStream(iter(flowers), timeout=30))
    assert [reply.sequence for reply in replies] == list(range(20))
    for reply, flower in zip(replies, flowers, strict=True):
        unary = stub.Classify(flower, timeout=10)
        assert reply.prediction.species == unary.species
        assert reply.prediction.probabilities == unary.probabilities


class OpenStream:
    """A stream the test feeds one message at a time, reading each reply before it sends the next."""

    def __init__(self, stub: housing_pb2_grpc.HousingPredictorStub) -> None:
        self._outgoing: queue.Queue[housing_pb2.HousingFeatures | None] = queue.Queue()
        self.replies = stub.PredictStream(iter(self._outgoing.get, None), timeout=30)

    def ask(self, message: housing_pb2.HousingFeatures) -> housing_pb2.HousingStreamReply:
        self._outgoing.put(message)
        return next(self.replies)

    def close(self) -> None:
        self._outgoing.put(None)
        assert list(self.replies) == []


def test_streams_beyond_the_cap_are_refused_with_resource_exhausted_and_counted(channel, server):
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    held = [OpenStream(stub), OpenStream(stub)]
    for stream in held:
        assert stream.ask(_row(3.0)).WhichOneof("result") == "prediction"
    assert sample(server.metrics_registry, "grpc_server_streams_active", **HOUSING_STREAM) == 2
    rejected = sample(server.metrics_registry, "grpc_server_streams_rejected_total", **HOUSING_STREAM)

    with pytest.raises(grpc.RpcError) as refused:
        list(stub.PredictStream(iter([_row(3.0)]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 concurrent streams" in str(refused.value.details())
    assert sample(server.metrics_registry, "grpc_server_streams_rejected_total", **HOUSING_STREAM) == rejected + 1
    # Unary calls still have threads: the cap is below the worker count.
    assert stub.Predict(_row(3.0), timeout=10).median_house_value > 0

    held[0].close()
    wait_until(
        lambda: sample(server.metrics_registry, "grpc_server_streams_active", **HOUSING_STREAM) == 1,
        "the stream closed",
    )
    again = OpenStream(stub)
    assert again.ask(_row(4.0)).WhichOneof("result") == "prediction"
    again.close()
    held[1].close()


def test_a_stream_to_a_service_with_no_model_answers_each_message_unavailable_and_goes_on():
    with (
        running_server(in_memory_registry(iris=False)) as server,
        channel_to(server) as channel,
    ):
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        flower = iris_pb2.IrisFeatures(**dict.fromkeys(IRIS_FEATURES, 1.0))
        replies = list(stub.ClassifyStream(iter([flower] * 3), timeout=30))
    assert [reply.error.status for reply in replies] == ["UNAVAILABLE"] * 3
    assert [reply.sequence for reply in replies] == [0, 1, 2]


MALFORMED = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, with a length far past the end


def test_unparsable_request_bytes_get_invalid_argument_are_counted_and_logged_at_a_bounded_rate(
    channel, server, caplog
):
    predict = channel.unary_unary("/prediction.v1.HousingPredictor/Predict")
    labels = {"grpc_service": "prediction.v1.HousingPredictor", "grpc_method": "Predict"}
    before = sample(server.metrics_registry, "grpc_server_malformed_requests_total", **labels)
    with caplog.at_level(logging.WARNING):
        for _ in range(40):
            with pytest.raises(grpc.RpcError) as refused:
                predict(MALFORMED, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be parsed" in str(refused.value.details())
    assert sample(server.metrics_registry, "grpc_server_malformed_requests_total", **labels) == before + 40
    lines = [record for record in caplog.records if "could not be parsed" in record.getMessage()]
    assert len(lines) <= 1
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    # The server still answers well-formed calls.
    assert housing_pb2_grpc.HousingPredictorStub(channel).Predict(_row(3.0), timeout=10).median_house_value > 0


def test_an_unparsable_message_in_a_stream_gets_its_own_error_reply_and_the_stream_goes_on(channel):
    stream = channel.stream_stream(PREDICT_STREAM, response_deserializer=housing_pb2.HousingStreamReply.FromString)
    good = _row(3.0).SerializeToString()
    replies = list(stream(iter([good, MALFORMED, good]), timeout=30))
    assert [reply.WhichOneof("result") for reply in replies] == ["prediction", "error", "prediction"]
    assert replies[1].error.status == "INVALID_ARGUMENT"
    assert replies[0].prediction.median_house_value == replies[2].prediction.median_house_value


@pytest.mark.parametrize(
    "method", ["/grpc.health.v1.Health/Watch", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]
)
def test_unparsable_bytes_on_the_health_watch_and_reflection_streams_get_invalid_argument(
    channel, server, method, caplog
):
    service, name = method.strip("/").split("/")
    before = sample(
        server.metrics_registry, "grpc_server_malformed_requests_total", grpc_service=service, grpc_method=name
    )
    with caplog.at_level(logging.WARNING):
        if name == "Watch":
            call = channel.unary_stream(method)(MALFORMED, timeout=10)
        else:
            call = channel.stream_stream(method)(iter([MALFORMED]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        sample(server.metrics_registry, "grpc_server_malformed_requests_total", grpc_service=service, grpc_method=name)
        == before + 1
    )
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_client_that_cancels_its_stream_ends_it_quietly_and_frees_its_slot(channel, server, caplog):
    stub = housing_pb2_grpc.HousingPredictorStub(channel)
    with caplog.at_level(logging.INFO):
        stream = OpenStream(stub)
        assert stream.ask(_row(3.0)).WhichOneof("result") == "prediction"
        stream.replies.cancel()
        wait_until(
            lambda: sample(server.metrics_registry, "grpc_server_streams_active", **HOUSING_STREAM) == 0,
            "the stream closed",
        )
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_connections_older_than_the_maximum_age_are_recycled_without_cutting_an_open_stream():
    with (
        running_server(in_memory_registry(), max_connection_age_seconds=1.0) as server,
        channel_to(server) as channel,
    ):
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        stream = OpenStream(stub)
        first = stream.ask(_row(3.0))
        time.sleep(2.5)  # past the connection's maximum age: the server has sent its GOAWAY
        assert stub.Predict(_row(3.0), timeout=10).median_house_value == first.prediction.median_house_value
        assert stream.ask(_row(3.0)).prediction.median_house_value == first.prediction.median_house_value
        stream.close()
