"""Admission under overload: calls that waited too long for a worker are shed with RESOURCE_EXHAUSTED and a
pushback, never computed; health keeps answering; once the load is gone, calls are answered at once again."""

import threading
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from data.schema import HOUSING_FEATURES
from model_registry.memory import InMemoryRegistry
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc
from server.interceptors import QueueTimingExecutor
from server.services import HOUSING
from tests.server.conftest import channel_to, in_memory_registry, running_server, sample, wait_until
from tests.server.estimators import GatedRegressor

ROW = housing_pb2.HousingFeatures(**dict(zip(HOUSING_FEATURES, HOUSING.features.example_row[0].tolist(), strict=True)))
PREDICT = {"grpc_service": "prediction.v1.HousingPredictor", "grpc_method": "Predict"}
# A channel option that gives a channel a connection of its own (gRPC otherwise shares one per target).
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


class SlowRegressor:
    """Five milliseconds a call, with the GIL released, like a model that takes its time."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, values: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(0.005)
        return np.ones(len(values))


def _registry(model: object) -> InMemoryRegistry:
    registry = in_memory_registry(housing=False)
    registry.register("CaliforniaHousingBestModel", model, alias="champion", input_names=HOUSING_FEATURES)
    return registry


def _trailer(error: grpc.RpcError, key: str) -> str | None:
    metadata: Any = error.trailing_metadata()
    return next((value for name, value in metadata or () if name == key), None)


def _shed(server) -> float:
    return sample(server.metrics_registry, "grpc_server_shed_total", **PREDICT)


def test_calls_that_waited_past_max_queue_are_shed_with_a_pushback_and_health_still_answers():
    model = GatedRegressor()
    with (
        running_server(_registry(model), max_workers=1, max_queue_ms=100, microbatch="off") as server,
        channel_to(server) as channel,
    ):
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        model.gated = True
        with futures.ThreadPoolExecutor(max_workers=5) as pool:
            holding = pool.submit(stub.Predict, ROW, timeout=30)
            assert model.entered.acquire(timeout=10)
            queued = [pool.submit(stub.Predict.with_call, ROW, timeout=30) for _ in range(3)]
            check = pool.submit(health.Check, health_pb2.HealthCheckRequest(service=""), timeout=30)
            time.sleep(0.3)  # longer than max_queue_ms: what is queued now has waited too long
            model.gated = False
            model.release.set()
            assert holding.result().median_house_value == 1.0
            refusals = []
            for call in queued:
                error = call.exception()
                assert isinstance(error, grpc.RpcError)
                refusals.append(error)
            assert check.result().status == health_pb2.HealthCheckResponse.SERVING
        assert {error.code() for error in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        pushbacks = [_trailer(error, "grpc-retry-pushback-ms") for error in refusals]
        assert pushbacks == ["100"] * 3
        assert "overloaded" in str(refusals[0].details())
        assert _shed(server) == 3
        # Shed by the thread pool before any interceptor (the cheap way), and still counted as py-grpc-prometheus
        # would have counted them, which the error-ratio alert reads.
        executor = server.executors[0]
        assert isinstance(executor, QueueTimingExecutor)
        assert executor.fast_sheds == 3
        handled = {"grpc_type": "UNARY", "grpc_code": "RESOURCE_EXHAUSTED", **PREDICT}
        assert sample(server.metrics_registry, "grpc_server_handled_total", **handled) == 3
        assert _started(server) == 4
        # Shed calls were never computed: the model saw the holding call (and its warm-up at load) only.
        assert not model.entered.acquire(blocking=False)
        assert stub.Predict(ROW, timeout=10).median_house_value == 1.0


def test_under_four_times_the_sustainable_load_the_server_sheds_health_answers_and_latency_recovers():
    model = SlowRegressor()
    with (
        running_server(_registry(model), max_workers=2, max_queue_ms=50, microbatch="off") as server,
        channel_to(server) as channel,
        # Health is asked on its own connection, as an orchestrator's probe does.
        grpc.insecure_channel(f"127.0.0.1:{server.port}", options=OWN_CONNECTION) as probe_channel,
    ):
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        probe = health_pb2_grpc.HealthStub(probe_channel)
        stop = threading.Event()
        codes: dict[grpc.StatusCode, int] = {}
        lock = threading.Lock()

        def caller() -> None:
            while not stop.is_set():
                try:
                    stub.Predict(ROW, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
                    # As a client with a retry policy does (gRFC A6): a shed call is retried after its pushback.
                    # Retried at once instead, the cheap refusals would turn 64 callers into a retry storm.
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        stop.wait(int(_trailer(error, "grpc-retry-pushback-ms") or 0) / 1000)
                with lock:
                    codes[code] = codes.get(code, 0) + 1

        # Two workers at 5 ms a call sustain 16 calls in flight within the 50 ms queue; 64 is four times that.
        callers = [threading.Thread(target=caller) for _ in range(64)]
        for thread in callers:
            thread.start()
        health_seconds = []
        try:
            wait_until(lambda: _shed(server) > 0, "load shed")
            for _ in range(10):
                started = time.monotonic()
                answer = probe.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                health_seconds.append(time.monotonic() - started)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in callers:
                thread.join(timeout=30)
        assert codes.get(grpc.StatusCode.RESOURCE_EXHAUSTED, 0) > 0
        assert codes.get(grpc.StatusCode.OK, 0) > 0
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert max(health_seconds) < 1.0
        # The load is gone: the next calls are answered at once, without queueing.
        wait_until(lambda: _latency(stub) < 0.05, "latency back to normal", timeout=5)


def _latency(stub: housing_pb2_grpc.HousingPredictorStub) -> float:
    started = time.monotonic()
    stub.Predict(ROW, timeout=10)
    return time.monotonic() - started


def _started(server) -> float:
    return sample(server.metrics_registry, "grpc_server_started_total", grpc_type="UNARY", **PREDICT)


def test_one_connection_has_at_most_max_streams_per_connection_calls_in_the_server():
    model = GatedRegressor()
    most = 3
    with (
        running_server(_registry(model), max_streams_per_connection=most, microbatch="off") as server,
        channel_to(server) as channel,
        # Its own connection, as an orchestrator's probe has (gRPC would otherwise share the one above).
        grpc.insecure_channel(f"127.0.0.1:{server.port}", options=OWN_CONNECTION) as probe,
    ):
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        # The client learns the connection's limit (HTTP/2 SETTINGS) with its first call.
        assert stub.Predict(ROW, timeout=10).median_house_value == 1.0
        model.gated = True
        calls = [stub.Predict.future(ROW, timeout=30) for _ in range(most + 4)]
        try:
            wait_until(lambda: _started(server) == 1 + most, "the connection's streams to be taken")
            time.sleep(0.3)  # what must not happen: more calls of this connection reaching the server
            assert _started(server) == 1 + most
            answer = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            model.gated = False
            model.release.set()
        # The others wait at the client and are answered once streams free up; a stream the client opened while
        # the server was still freeing an earlier one is refused in gRPC's core instead (REFUSED_STREAM), never
        # computed, and says so.
        refused: list[grpc.RpcError] = []
        for call in calls:
            error = call.exception(timeout=30)
            if error is not None:
                assert isinstance(error, grpc.RpcError), error
                refused.append(error)
        assert all(
            error.code() == grpc.StatusCode.UNAVAILABLE and "RST_STREAM" in str(error.details()) for error in refused
        ), refused
        assert len(refused) <= 4
        assert _started(server) == 1 + len(calls) - len(refused)
