"""Failures inside the server: INTERNAL with a fixed message, the cause logged and never sent."""

import logging
import threading
import time

import grpc
import numpy as np
import pytest

from model_registry.memory import InMemoryRegistry
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc

from .conftest import channel_to, in_memory_registry, running_server
from .estimators import GatedRegressor
from .test_metrics import _scrape, _value

INTERNAL_DETAIL = "connection string postgres://admin:hunter2@db"


class FragileRegressor:
    """Predicts 1.0, fails on an income of exactly 25 and answers NaN for exactly 35.

    The smoke predictions at load time (random rows over the accepted ranges) never hit those values.
    """

    def predict(self, values: np.ndarray) -> np.ndarray:
        if (values[:, 0] == 35).any():
            return np.full(len(values), np.nan)
        if (values[:, 0] == 25).any():
            raise RuntimeError(INTERNAL_DETAIL)
        return np.ones(len(values))


def _house(income: float) -> housing_pb2.HousingFeatures:
    return housing_pb2.HousingFeatures(
        median_income=income,
        house_age=20,
        average_rooms=5,
        average_bedrooms=1,
        population=1000,
        average_occupancy=3,
        latitude=34,
        longitude=-118,
    )


def _registry_with(estimator: object) -> InMemoryRegistry:
    registry = in_memory_registry(housing=False)
    registry.register("CaliforniaHousingBestModel", estimator, alias="champion", version="9")
    return registry


def test_an_estimator_failure_is_internal_without_leaking_its_cause(caplog):
    with running_server(_registry_with(FragileRegressor())) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        with caplog.at_level(logging.ERROR, logger="server.grpc_errors"), pytest.raises(grpc.RpcError) as raised:
            stub.Predict(_house(25.0), metadata=(("x-request-id", "req-42"),))
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert raised.value.details() == "internal error"
        assert INTERNAL_DETAIL not in str(raised.value.trailing_metadata())
        assert stub.Predict(_house(5.0)).median_house_value == 1.0
        assert server.metrics_port is not None
        samples = _scrape(server.metrics_port)
    assert any(INTERNAL_DETAIL in record.exc_text and "req-42" in record.getMessage() for record in caplog.records)
    model = {"model": "CaliforniaHousingBestModel", "version": "9", "variant": "champion"}
    assert _value(samples, "model_predictions_total", outcome="error", **model) == 1
    assert _value(samples, "model_predictions_total", outcome="success", **model) == 1


def test_a_non_finite_prediction_is_never_returned():
    with running_server(_registry_with(FragileRegressor())) as server, channel_to(server) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            housing_pb2_grpc.HousingPredictorStub(channel).Predict(_house(35.0))
        assert raised.value.code() == grpc.StatusCode.INTERNAL


def test_a_model_that_fails_its_warm_up_is_not_served():
    class Broken:
        def predict(self, values: np.ndarray) -> np.ndarray:
            return np.ones((len(values), 2))

    with running_server(_registry_with(Broken())) as server, channel_to(server) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            housing_pb2_grpc.HousingPredictorStub(channel).Predict(_house(5.0))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones():
    model = GatedRegressor()
    with running_server(_registry_with(model)) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        model.gated = True
        try:
            in_flight = stub.Predict.future(_house(5.0), timeout=60)
            assert model.entered.acquire(timeout=30), "the call never reached the model"
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 30.0})
            stopper.start()
            # Refused while the first call is still inside the model.
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as newcomer:
                refused = _first_refusal(housing_pb2_grpc.HousingPredictorStub(newcomer))
            assert not in_flight.done()
        finally:
            model.release.set()
        assert in_flight.result(timeout=30).median_house_value == 1.0
        stopper.join(timeout=30)
        assert not stopper.is_alive()
    assert refused == grpc.StatusCode.UNAVAILABLE


def _first_refusal(stub: housing_pb2_grpc.HousingPredictorStub) -> grpc.StatusCode:
    """Call until refused (UNAVAILABLE). Calls made before stop() closes the listener are admitted (and wait
    at the gate too) or, when they arrive as it begins, cancelled."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stub.Predict(_house(5.0), timeout=0.5)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                return error.code()
    raise AssertionError("new calls were never refused")
