"""What operators and engineers see: health per service, reflection, and grpcurl working from it alone."""

import json
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.app import PredictionServer, build_server

from ..prerequisites import GRPCURL
from .conftest import channel_to, in_memory_registry, running_server, server_settings, small_housing_model

HOUSING = "prediction.v1.HousingPredictor"
IRIS = "prediction.v1.IrisClassifier"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(channel: grpc.Channel, service: str) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status)


def test_every_service_and_the_server_report_serving_once_models_are_loaded(channel):
    assert _status(channel, HOUSING) == SERVING
    assert _status(channel, IRIS) == SERVING
    assert _status(channel, "") == SERVING


def test_unknown_service_names_are_not_found(channel):
    with pytest.raises(grpc.RpcError) as raised:
        _status(channel, "prediction.v1.Nope")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_services_are_not_serving_until_their_model_is_loaded():
    server = build_server(server_settings(), in_memory_registry())
    server.start()
    try:
        with channel_to(server) as channel:
            assert [_status(channel, s) for s in (HOUSING, IRIS, "")] == [NOT_SERVING] * 3
            with pytest.raises(grpc.RpcError) as raised:
                housing_pb2_grpc.HousingPredictorStub(channel).Predict(housing_pb2.HousingFeatures())
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            server.load_models()
            assert [_status(channel, s) for s in (HOUSING, IRIS, "")] == [SERVING] * 3
    finally:
        server.stop(grace=0)


def test_a_model_that_fails_to_load_leaves_only_its_service_down():
    with running_server(in_memory_registry(housing=False)) as server, channel_to(server) as channel:
        assert _status(channel, HOUSING) == NOT_SERVING
        assert _status(channel, IRIS) == SERVING
        assert _status(channel, "") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as raised:
            housing_pb2_grpc.HousingPredictorStub(channel).Predict(housing_pb2.HousingFeatures())
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == "the housing model is not loaded"
        flower = iris_pb2.IrisFeatures(sepal_length_cm=5.0, sepal_width_cm=3.4, petal_length_cm=1.5, petal_width_cm=0.2)
        assert iris_pb2_grpc.IrisClassifierStub(channel).Classify(flower).species_name == "setosa"


def test_reflection_lists_every_service_health_and_reflection(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == {
        HOUSING,
        IRIS,
        "prediction.v1.ModelAdmin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


@pytest.fixture(scope="module")
def grpcurl() -> str:
    """The grpcurl binary the dev dependencies install next to this interpreter."""
    return str(GRPCURL.require())


def _grpcurl(grpcurl: str, server: PredictionServer, *command: str, data: str | None = None) -> str:
    """Run ``grpcurl -plaintext [-d data] 127.0.0.1:PORT command...`` and return what it printed."""
    flags = ["-plaintext"] + (["-d", data] if data is not None else [])
    result = subprocess.run(
        [grpcurl, *flags, f"127.0.0.1:{server.port}", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_lists_and_describes_services_from_reflection_alone(grpcurl, mlflow_server):
    listed = _grpcurl(grpcurl, mlflow_server, "list").split()
    assert {HOUSING, IRIS, "grpc.health.v1.Health"} <= set(listed)
    described = _grpcurl(grpcurl, mlflow_server, "describe", "prediction.v1.HousingFeatures")
    assert "optional double median_income = 1;" in described


def test_grpcurl_calls_predict_with_json_and_checks_health(grpcurl, mlflow_server):
    body = json.dumps(
        {
            "median_income": 8.3252,
            "house_age": 41,
            "average_rooms": 6.98,
            "average_bedrooms": 1.02,
            "population": 322,
            "average_occupancy": 2.55,
            "latitude": 37.88,
            "longitude": -122.23,
        }
    )
    answer = json.loads(_grpcurl(grpcurl, mlflow_server, f"{HOUSING}/Predict", data=body))
    assert answer["median_house_value"] > 0
    assert answer["model"]["version"] == "1"
    health = json.loads(
        _grpcurl(grpcurl, mlflow_server, "grpc.health.v1.Health/Check", data=json.dumps({"service": IRIS}))
    )
    assert health == {"status": "SERVING"}


def test_grpcurl_shows_invalid_argument_with_field_violations(grpcurl, mlflow_server):
    result = subprocess.run(
        [grpcurl, "-plaintext", "-d", '{"sepal_length_cm": -1}', f"127.0.0.1:{mlflow_server.port}", f"{IRIS}/Classify"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "sepal_length_cm" in result.stderr


def test_a_model_that_failed_to_load_is_retried_until_it_serves():
    registry = in_memory_registry(housing=False)
    with running_server(registry, model_poll_seconds=0.1) as server, channel_to(server) as channel:
        assert _status(channel, HOUSING) == NOT_SERVING
        # The alias appears in the registry after start-up, as when training finishes later.
        registry.register("CaliforniaHousingBestModel", small_housing_model(), alias="champion")
        deadline = time.monotonic() + 10
        while _status(channel, HOUSING) != SERVING:
            assert time.monotonic() < deadline, "the housing model was never retried"
            time.sleep(0.05)
        assert _status(channel, "") == SERVING
