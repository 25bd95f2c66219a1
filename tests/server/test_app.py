"""The assembled server: what ``stop()`` leaves behind."""

import threading

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.prediction.v1 import iris_pb2, iris_pb2_grpc

from .conftest import channel_to, in_memory_registry, running_server

FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)


def _pool_threads() -> set[threading.Thread]:
    # The RPC workers (thread_name_prefix "rpc") and the health servicer's pool ("health").
    return {thread for thread in threading.enumerate() if thread.name.startswith(("rpc", "health"))}


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
    assert len(server.thread_pools) == 2
    for pool in server.thread_pools:
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit(int)
