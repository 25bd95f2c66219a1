"""Hot reload: the server follows its aliases while it runs, and refuses versions that must not be served."""

import logging
import threading
import time
from datetime import UTC, datetime
from functools import partial

import grpc
import numpy as np
from sklearn.linear_model import LinearRegression

from data.schema import HOUSING_FEATURES
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server.app import PredictionServer
from server.domain import Deployment, LoadedModel, ModelDescription, ModelVersionRef
from server.model_store import ModelSlot, ModelStore

from .conftest import channel_to, in_memory_registry, running_server, small_housing_model, wait_until
from .test_metrics import _scrape, _value

HOUSING_NAME = "CaliforniaHousingBestModel"
HOUSING_SERVICE = "prediction.v1.HousingPredictor"
HOUSE = housing_pb2.HousingFeatures(
    median_income=3.0,
    house_age=20,
    average_rooms=5,
    average_bedrooms=1,
    population=1000,
    average_occupancy=3,
    latitude=34,
    longitude=-118,
)
FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)


def _info(channel: grpc.Channel) -> model_pb2.ModelInfo:
    return housing_pb2_grpc.HousingPredictorStub(channel).GetModelInfo(model_pb2.GetModelInfoRequest())


def _serves(server: PredictionServer, version: str) -> bool:
    return server.store.get(ModelSlot.HOUSING).champion.description.ref.version == version


def _constant_model(value: float) -> LinearRegression:
    """A housing model that always answers ``value``: which version answered is visible in the answer."""
    model = LinearRegression().fit(np.random.default_rng(1).uniform(size=(20, 8)), np.full(20, value))
    model.coef_[:] = 0.0
    return model


def test_an_alias_moved_by_another_writer_is_served_within_the_poll_interval():
    registry = in_memory_registry()
    with running_server(registry, model_poll_seconds=0.2) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        assert stub.Predict(HOUSE).model.version == "1"
        version = registry.register(HOUSING_NAME, _constant_model(2.5), input_names=HOUSING_FEATURES)
        registry.set_alias(HOUSING_NAME, "champion", version, expected="1")
        wait_until(lambda: stub.Predict(HOUSE).model.version == "2", "version 2 is served")
        assert stub.Predict(HOUSE).median_house_value == 2.5
        assert server.metrics_port is not None
        assert _value(_scrape(server.metrics_port), "model_swaps_total", service=HOUSING_SERVICE) == 1


def test_no_call_fails_while_versions_are_swapped_under_concurrent_load():
    registry = in_memory_registry()
    second = registry.register(HOUSING_NAME, _constant_model(2.5), input_names=HOUSING_FEATURES)
    failures: list[BaseException] = []
    seen: set[str] = set()
    calls = [0]
    stop = threading.Event()

    with running_server(registry, model_poll_seconds=0, max_workers=8) as server, channel_to(server) as channel:
        housing = housing_pb2_grpc.HousingPredictorStub(channel)
        iris = iris_pb2_grpc.IrisClassifierStub(channel)

        def caller(index: int) -> None:
            while not stop.is_set():
                try:
                    if index % 2:
                        answer = housing.Predict(HOUSE, timeout=10)
                        # The answer and the version it names always belong together.
                        assert (answer.median_house_value == 2.5) == (answer.model.version == second)
                        seen.add(answer.model.version)
                    else:
                        iris.Classify(FLOWER, timeout=10)
                    calls[0] += 1
                except BaseException as error:
                    failures.append(error)

        callers = [threading.Thread(target=caller, args=(index,)) for index in range(8)]
        for thread in callers:
            thread.start()
        try:
            current = "1"
            for _ in range(10):
                target = second if current == "1" else "1"
                registry.set_alias(HOUSING_NAME, "champion", target, expected=current)
                server.watcher.nudge()
                current = target
                wait_until(partial(_serves, server, target), f"version {target} is served")
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in callers:
                thread.join(timeout=30)
        assert server.metrics_port is not None
        swaps = _value(_scrape(server.metrics_port), "model_swaps_total", service=HOUSING_SERVICE)
    assert failures == []
    assert seen == {"1", second}
    assert swaps == 10
    assert calls[0] > 100


def test_a_version_with_the_wrong_features_is_refused_and_the_old_one_keeps_serving(caplog):
    registry = in_memory_registry()
    five_columns = LinearRegression().fit(np.random.default_rng(2).uniform(size=(30, 5)), np.ones(30))
    with running_server(registry, model_poll_seconds=0.05) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        with caplog.at_level(logging.ERROR, logger="server.lifecycle"):
            bad = registry.register(HOUSING_NAME, five_columns, input_names=HOUSING_FEATURES[:5])
            registry.set_alias(HOUSING_NAME, "champion", bad, expected="1")
            wait_until(lambda: _info(channel).last_load_failure.version == bad, "the bad version is refused")
            time.sleep(0.5)  # about ten more polls: the refused version must not be loaded again
        info = _info(channel)
        assert info.model.version == "1"
        assert info.last_load_failure.reason == "signature"
        assert "takes inputs" in info.last_load_failure.message
        assert stub.Predict(HOUSE).model.version == "1"
        assert len([r for r in caplog.records if "model not loaded" in r.getMessage()]) == 1
        assert server.metrics_port is not None
        samples = _scrape(server.metrics_port)
        assert _value(samples, "model_load_failures_total", service=HOUSING_SERVICE, reason="signature") == 1

        # The alias moves on to a good version: it is served and the failure is cleared.
        good = registry.register(HOUSING_NAME, small_housing_model(), input_names=HOUSING_FEATURES)
        registry.set_alias(HOUSING_NAME, "champion", good, expected=bad)
        wait_until(lambda: _info(channel).model.version == good, "the good version is served")
        assert not _info(channel).HasField("last_load_failure")


def test_a_version_without_a_signature_is_checked_by_its_column_count():
    registry = in_memory_registry()
    five_columns = LinearRegression().fit(np.random.default_rng(2).uniform(size=(30, 5)), np.ones(30))
    with running_server(registry, model_poll_seconds=0.05) as server, channel_to(server) as channel:
        bad = registry.register(HOUSING_NAME, five_columns)
        registry.set_alias(HOUSING_NAME, "champion", bad, expected="1")
        wait_until(lambda: _info(channel).last_load_failure.version == bad, "the bad version is refused")
        assert _info(channel).last_load_failure.message.endswith("takes 5 features; the service sends 8")
        assert server.store.get(ModelSlot.HOUSING).champion.description.ref.version == "1"


def test_a_version_whose_artifacts_are_missing_is_refused():
    registry = in_memory_registry()
    with running_server(registry, model_poll_seconds=0.05) as server, channel_to(server) as channel:
        missing = registry.register(HOUSING_NAME, small_housing_model(), loadable=False)
        registry.set_alias(HOUSING_NAME, "champion", missing, expected="1")
        wait_until(lambda: _info(channel).last_load_failure.version == missing, "the broken version is refused")
        assert _info(channel).last_load_failure.reason == "artifact"
        assert housing_pb2_grpc.HousingPredictorStub(channel).Predict(HOUSE).model.version == "1"
        assert server.metrics_port is not None
        samples = _scrape(server.metrics_port)
        assert _value(samples, "model_load_failures_total", service=HOUSING_SERVICE, reason="artifact") == 1


def test_an_iris_version_with_other_classes_is_refused():
    from sklearn.datasets import load_iris  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    registry = in_memory_registry()
    data, target = load_iris(return_X_y=True)
    two_classes = LogisticRegression(max_iter=500).fit(data[target < 2], target[target < 2])
    with running_server(registry, model_poll_seconds=0.05) as server, channel_to(server) as channel:
        bad = registry.register("IrisBestModel", two_classes)
        registry.set_alias("IrisBestModel", "champion", bad, expected="2")
        info = iris_pb2_grpc.IrisClassifierStub(channel).GetModelInfo

        wait_until(lambda: info(model_pb2.GetModelInfoRequest()).last_load_failure.reason == "classes", "refused")
        assert iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER).model.version == "2"
        assert server.store.get(ModelSlot.IRIS).champion.description.ref.version == "2"


def test_an_unreachable_registry_changes_nothing_for_callers_and_is_logged_once(caplog):
    registry = in_memory_registry()
    with running_server(registry, model_poll_seconds=0.05) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        assert server.metrics_port is not None
        assert _value(_scrape(server.metrics_port), "model_registry_up") == 1
        with caplog.at_level(logging.INFO, logger="server.lifecycle"):
            registry.available = False
            wait_until(lambda: not _info(channel).registry_reachable, "the outage is seen")
            assert _value(_scrape(server.metrics_port), "model_registry_up") == 0
            time.sleep(0.5)  # about ten polls during the outage
            assert stub.Predict(HOUSE).model.version == "1"
            registry.available = True
            wait_until(lambda: _info(channel).registry_reachable, "the registry is seen again")
        assert _value(_scrape(server.metrics_port), "model_registry_up") == 1
        messages = [record.getMessage() for record in caplog.records]
        assert len([m for m in messages if "model registry unreachable" in m]) == 1
        assert len([m for m in messages if "model registry reachable again" in m]) == 1
        assert not _info(channel).HasField("last_load_failure")


def test_a_listener_that_raises_skips_no_other_listener(caplog):
    store = ModelStore()
    heard: list[str] = []

    def broken(*_args: object) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    store.subscribe(lambda slot, _old, _new: heard.append(slot))
    model = LoadedModel(
        ModelDescription(ModelVersionRef("m", "1", "champion", ""), "models:/m/1", "none", datetime.now(UTC)),
        estimator=None,
    )
    with caplog.at_level(logging.ERROR, logger="server.model_store"):
        store.put(ModelSlot.HOUSING, Deployment(champion=model))
        store.put(ModelSlot.HOUSING, Deployment(champion=model))
    assert heard == [ModelSlot.HOUSING, ModelSlot.HOUSING]
    assert store.get(ModelSlot.HOUSING).champion is model
    assert sum("listener of the housing slot failed" in r.getMessage() for r in caplog.records) == 2
