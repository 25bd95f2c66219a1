"""The /metrics endpoint after real traffic: gRPC series from the interceptor and our model series."""

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos.prediction.v1 import iris_pb2, iris_pb2_grpc

from .conftest import channel_to, in_memory_registry, running_server, small_housing_model

FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


def test_metrics_count_rpcs_predictions_batches_and_the_loaded_versions():
    with running_server(in_memory_registry()) as server, channel_to(server) as channel:
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        for _ in range(3):
            stub.Classify(FLOWER)
        stub.ClassifyBatch(iris_pb2.IrisBatchRequest(instances=[FLOWER] * 5))
        with pytest.raises(grpc.RpcError):
            stub.Classify(iris_pb2.IrisFeatures())
        assert server.metrics_port is not None
        samples = _scrape(server.metrics_port)

    rpc = {"grpc_service": "prediction.v1.IrisClassifier", "grpc_type": "UNARY"}
    assert _value(samples, "grpc_server_started_total", grpc_method="Classify", **rpc) == 4
    assert _value(samples, "grpc_server_handled_total", grpc_method="Classify", grpc_code="OK", **rpc) == 3
    assert (
        _value(samples, "grpc_server_handled_total", grpc_method="Classify", grpc_code="INVALID_ARGUMENT", **rpc) == 1
    )
    assert _value(samples, "grpc_server_handling_seconds_count", grpc_method="ClassifyBatch", **rpc) == 1

    model = {"model": "IrisBestModel", "version": "2", "variant": "champion"}
    assert _value(samples, "model_predictions_total", outcome="success", **model) == 8
    assert _value(samples, "model_predictions_total", outcome="invalid_input", **model) == 1
    assert _value(samples, "model_prediction_duration_seconds_count", **model) == 4
    assert _value(samples, "model_batch_size_bucket", model="IrisBestModel", variant="champion", le="5.0") == 4
    assert _value(samples, "model_batch_size_count", model="IrisBestModel", variant="champion") == 4
    loaded = {
        "service": "prediction.v1.IrisClassifier",
        "model": "IrisBestModel",
        "version": "2",
        "alias": "champion",
        "run_id": "",
        "variant": "champion",
    }
    assert _value(samples, "model_loaded_info", **loaded) == 1
    housing = {"service": "prediction.v1.HousingPredictor", "variant": "champion"}
    assert _value(samples, "model_loaded_timestamp_seconds", **housing) > 0


def test_the_training_metrics_of_each_served_version_are_exported_until_it_stops_being_served():
    registry = in_memory_registry(housing=False)
    registry.register("CaliforniaHousingBestModel", small_housing_model(), alias="champion", metrics={"rmse": 0.5})
    with running_server(registry) as server:
        assert server.metrics_port is not None
        first = {"model": "CaliforniaHousingBestModel", "version": "1", "variant": "champion", "metric": "rmse"}
        assert _value(_scrape(server.metrics_port), "model_training_metric", **first) == 0.5
        registry.register("CaliforniaHousingBestModel", small_housing_model(), alias="champion", metrics={"rmse": 0.4})
        server.watcher.sync_all()
        samples = _scrape(server.metrics_port)
    assert _value(samples, "model_training_metric", **(first | {"version": "2"})) == 0.4
    assert not any(name == "model_training_metric" and ("version", "1") in labels for name, labels in samples)


def test_failed_model_loads_are_counted():
    with running_server(in_memory_registry(iris=False)) as server:
        assert server.metrics_port is not None
        samples = _scrape(server.metrics_port)
    failure = {"service": "prediction.v1.IrisClassifier", "reason": "not_found"}
    assert _value(samples, "model_load_failures_total", **failure) == 1
    assert _value(samples, "model_service_serving", service="prediction.v1.IrisClassifier") == 0
    assert _value(samples, "model_service_serving", service="prediction.v1.HousingPredictor") == 1
    assert not any(name == "model_loaded_info" and ("model", "IrisBestModel") in labels for name, labels in samples)
