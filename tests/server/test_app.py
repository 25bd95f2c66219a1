"""The assembled server: admission of calls, and what ``stop()`` leaves behind."""

import os
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.services import HOUSING
from server.settings import ServerSettings

from .conftest import channel_to, in_memory_registry, running_server
from .estimators import GatedRegressor

FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)


def _pool_threads() -> set[threading.Thread]:
    # The RPC workers (thread_name_prefix "rpc"), the health servicer's pool ("health") and the batch parts' ("part").
    return {thread for thread in threading.enumerate() if thread.name.startswith(("rpc", "health", "part"))}


def test_stop_shuts_down_the_rpc_and_health_thread_pools_it_started():
    before = _pool_threads()
    with running_server(in_memory_registry()) as server, channel_to(server) as channel:
        assert iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER).species_name == "setosa"
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = _pool_threads() - before
        assert started
        watch.cancel()
    assert not any(thread.is_alive() for thread in started)
    # The batch parts' pool exists when there is another core to give a part to.
    assert len(server.executors) == (3 if len(os.sched_getaffinity(0)) > 1 else 2)
    for pool in server.executors:
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit(int)


def _house() -> housing_pb2.HousingFeatures:
    names = HOUSING.features.names
    return housing_pb2.HousingFeatures(**dict(zip(names, HOUSING.features.example_row.ravel().tolist(), strict=True)))


def test_calls_beyond_max_concurrent_rpcs_are_refused_with_resource_exhausted(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PREDICTOR_MAX_CONCURRENT_RPCS", "2")
    gate = GatedRegressor()
    registry = in_memory_registry(housing=False)
    registry.register("CaliforniaHousingBestModel", gate, alias="champion")
    # Enough workers and prediction slots that only the admission limit can refuse a call.
    with (
        running_server(registry, max_workers=6, max_concurrent_predictions=6) as server,
        channel_to(server) as channel,
    ):
        assert server.settings.max_concurrent_rpcs == 2
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        gate.gated = True
        try:
            admitted = [stub.Predict.future(_house(), timeout=60) for _ in range(2)]
            for _ in admitted:
                assert gate.entered.acquire(timeout=30), "an admitted call never reached the model"

            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(_house(), timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            gate.gated = False
            gate.release.set()
        assert [call.result(timeout=30).median_house_value for call in admitted] == [1.0, 1.0]
        # Admitted again once those are done (the server counts a call finished just after answering it).
        deadline = time.monotonic() + 10
        while True:
            try:
                assert stub.Predict(_house(), timeout=30).median_house_value == 1.0
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "calls were still refused after the others finished"


def test_none_in_the_environment_unsets_a_setting_whose_default_is_a_number(monkeypatch: pytest.MonkeyPatch):
    for name in ("MAX_QUEUE_MS", "MAX_CONCURRENT_RPCS", "MAX_STREAMS_PER_CONNECTION", "MAX_CONNECTION_AGE_SECONDS"):
        monkeypatch.setenv(f"PREDICTOR_{name}", "none")
    settings = ServerSettings()
    unset = (settings.max_queue_ms, settings.max_concurrent_rpcs, settings.max_streams_per_connection)
    assert unset == (None, None, None)
    assert settings.max_connection_age_seconds is None
    monkeypatch.setenv("PREDICTOR_MAX_QUEUE_MS", "250")
    assert ServerSettings().max_queue_ms == 250
