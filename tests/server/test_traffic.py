"""Champion/challenger traffic: the A/B split, sticky routing keys, shadow traffic and the prediction log."""

import sqlite3
import time
from collections import Counter
from contextlib import AbstractContextManager, closing

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from data.schema import IRIS_FEATURES
from model_registry.memory import InMemoryRegistry
from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server.app import PredictionServer

from .conftest import channel_to, in_memory_registry, running_server, wait_until
from .test_metrics import _scrape, _value

TOKEN = "traffic-token"  # noqa: S105 - a test credential
AUTH = (("authorization", f"Bearer {TOKEN}"),)
FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)
IRIS = "IrisBestModel"


def _with_challenger(estimator: object | None = None) -> InMemoryRegistry:
    """Iris v2 is the champion; v1 (or ``estimator`` as v3) the challenger."""
    registry = in_memory_registry()
    challenger = "1"
    if estimator is not None:
        challenger = registry.register(IRIS, estimator, input_names=IRIS_FEATURES)
    registry.set_alias(IRIS, "challenger", challenger, expected=None)
    return registry


def _info(channel: grpc.Channel) -> model_pb2.ModelInfo:
    return iris_pb2_grpc.IrisClassifierStub(channel).GetModelInfo(model_pb2.GetModelInfoRequest())


def _split(channel: grpc.Channel, percent: float, *, shadow: bool = False) -> None:
    request = admin_pb2.SetTrafficSplitRequest(model="iris", challenger_percent=percent, shadow=shadow)
    answer = admin_pb2_grpc.ModelAdminStub(channel).SetTrafficSplit(request, metadata=AUTH)
    assert (answer.name, answer.challenger_percent, answer.shadow) == (IRIS, percent, shadow)
    wait_until(lambda: (_info(channel).challenger_percent, _info(channel).shadow) == (percent, shadow), "split served")


def _serving(registry: InMemoryRegistry, **overrides: object) -> AbstractContextManager[PredictionServer]:
    return running_server(registry, admin_token=TOKEN, model_poll_seconds=0, **overrides)  # type: ignore[arg-type]


def test_the_observed_split_matches_the_configured_one_and_keys_are_sticky():
    calls = 2000
    with _serving(_with_challenger()) as server, channel_to(server) as channel:
        info = _info(channel)
        assert (info.challenger.version, info.challenger.variant, info.challenger_percent) == ("1", "challenger", 0.0)
        _split(channel, 20.0)
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        variants = Counter(stub.Classify(FLOWER).model.variant for _ in range(calls))
        # Binomial(2000, 0.2): a standard deviation of 0.0089; 4.5 of them is a false alarm once in 10^5 runs.
        assert abs(variants["challenger"] / calls - 0.2) < 0.04, variants
        assert set(variants) == {"champion", "challenger"}

        by_key: dict[str, set[str]] = {}
        for key in range(300):
            metadata = (("x-routing-key", f"user-{key}"),)
            for _ in range(3):
                by_key.setdefault(f"user-{key}", set()).add(stub.Classify(FLOWER, metadata=metadata).model.variant)
        assert all(len(seen) == 1 for seen in by_key.values()), "a routing key reached both variants"
        keyed = Counter(seen.pop() for seen in by_key.values())
        assert abs(keyed["challenger"] / 300 - 0.2) < 0.11, keyed  # 4.5 standard deviations of Binomial(300, 0.2)

        # A batch is answered whole by one variant, and every response names its version and variant.
        batch = stub.ClassifyBatch(iris_pb2.IrisBatchRequest(instances=[FLOWER] * 4))
        assert (batch.model.version, batch.model.variant) in {("2", "champion"), ("1", "challenger")}

        assert server.metrics_port is not None
        samples = _scrape(server.metrics_port)
        assert _value(samples, "model_traffic_challenger_percent", service="prediction.v1.IrisClassifier") == 20
        challenger = {"model": IRIS, "version": "1", "variant": "challenger", "outcome": "success"}
        assert _value(samples, "model_predictions_total", **challenger) >= variants["challenger"]


def test_a_split_change_takes_effect_without_a_restart_and_survives_one():
    registry = _with_challenger()
    with _serving(registry) as server, channel_to(server) as channel:
        _split(channel, 100.0)
        assert iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER).model.variant == "challenger"
        _split(channel, 0.0)
        assert iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER).model.variant == "champion"
        _split(channel, 100.0)
    with _serving(registry) as server, channel_to(server) as channel:
        assert _info(channel).challenger_percent == 100.0
        assert iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER).model.variant == "challenger"


def test_a_challenger_that_fails_to_load_leaves_all_traffic_with_the_champion():
    data, target = load_iris(return_X_y=True)
    two_classes = LogisticRegression(max_iter=300).fit(data[target < 2], target[target < 2])
    registry = _with_challenger(two_classes)
    with _serving(registry) as server, channel_to(server) as channel:
        _split(channel, 0.0)  # served at once: the challenger never loaded
        admin_pb2_grpc.ModelAdminStub(channel).SetTrafficSplit(
            admin_pb2.SetTrafficSplitRequest(model="iris", challenger_percent=50.0), metadata=AUTH
        )
        wait_until(lambda: _info(channel).configured_challenger_percent == 50.0, "the split is read")
        info = _info(channel)
        assert not info.HasField("challenger")
        assert info.challenger_percent == 0.0
        assert info.challenger_load_failure.reason == "classes"
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        assert {stub.Classify(FLOWER).model.variant for _ in range(50)} == {"champion"}
        assert server.metrics_port is not None
        assert _value(_scrape(server.metrics_port), "model_traffic_challenger_percent", service=IRIS_SERVICE) == 0


IRIS_SERVICE = "prediction.v1.IrisClassifier"


class SlowClassifier:
    """The champion's own answers, a little later: a challenger whose shadow work must never be waited for."""

    def __init__(self, seconds: float) -> None:
        data, target = load_iris(return_X_y=True)
        self._model = LogisticRegression(max_iter=500).fit(data, target)
        self.classes_ = self._model.classes_
        self.seconds = seconds
        self.gated = False

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        if self.gated:
            time.sleep(self.seconds)
        return np.asarray(self._model.predict_proba(values))


def test_shadow_traffic_returns_only_champion_answers_and_measures_the_challenger():
    slow = SlowClassifier(0.05)
    registry = _with_challenger(slow)
    with _serving(registry, shadow_queue_size=5) as server, channel_to(server) as channel:
        _split(channel, 0.0, shadow=True)
        slow.gated = True
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        answers = [stub.Classify(FLOWER) for _ in range(100)]
        assert {answer.model.variant for answer in answers} == {"champion"}
        assert {answer.model.version for answer in answers} == {"2"}
        port = server.metrics_port
        assert port is not None

        def shadowed() -> float:
            labels = {"model": IRIS, "version": "3", "variant": "challenger"}
            return _value(_scrape(port), "model_shadow_agreement_total", agreed="true", **labels)

        wait_until(lambda: shadowed() > 0, "the challenger's shadow answers are measured")
        samples = _scrape(port)
        # 100 calls against a 50 ms challenger and a queue of 5: most copies are dropped, never waited for.
        assert _value(samples, "model_shadow_dropped_total", model=IRIS) > 0
        assert _value(samples, "model_traffic_shadow", service=IRIS_SERVICE) == 1
        confusion = {"model": IRIS, "version": "3", "variant": "challenger"}
        same = _value(
            samples, "model_shadow_confusion_total", champion_class="setosa", challenger_class="setosa", **confusion
        )
        assert same >= 1


def test_every_prediction_is_logged_once_with_its_id_version_and_variant(tmp_path):
    log_path = tmp_path / "predictions.db"
    with (
        _serving(_with_challenger(), prediction_log_path=str(log_path)) as server,
        channel_to(server) as channel,
    ):
        _split(channel, 50.0)
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        singles = [stub.Classify(FLOWER, metadata=(("x-routing-key", f"k{n}"),)) for n in range(20)]
        batch = stub.ClassifyBatch(iris_pb2.IrisBatchRequest(instances=[FLOWER] * 5))
        ids = [answer.prediction_id for answer in singles] + [row.prediction_id for row in batch.classifications]
        assert len(set(ids)) == 25 and all(ids)
        admin = admin_pb2_grpc.ModelAdminStub(channel)

        def logged(prediction_id: str) -> admin_pb2.LoggedPrediction | None:
            try:
                return admin.GetPrediction(admin_pb2.GetPredictionRequest(prediction_id=prediction_id), metadata=AUTH)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
                return None

        wait_until(lambda: logged(ids[-1]) is not None, "the writer has flushed")
        first = logged(ids[0])
        assert first is not None
        assert (first.version, first.variant) == (singles[0].model.version, singles[0].model.variant)
        assert first.routing_key == "k0"
        assert dict(first.inputs) == pytest.approx({name: getattr(FLOWER, name) for name in IRIS_FEATURES})
        assert first.output["setosa"] == singles[0].probabilities.setosa
        with pytest.raises(grpc.RpcError) as raised:
            admin.GetPrediction(admin_pb2.GetPredictionRequest(prediction_id="0" * 32), metadata=AUTH)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with closing(sqlite3.connect(log_path)) as database:
        rows = dict(database.execute("SELECT prediction_id, variant FROM predictions").fetchall())
    assert sorted(rows) == sorted(ids)
    assert rows[ids[-1]] == batch.model.variant
