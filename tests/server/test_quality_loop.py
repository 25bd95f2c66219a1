"""Closing the loop on real servers: drift against training profiles, feedback, live quality, retrain triggers.

Drift and triggers run on a copy of the session's MLflow registry, whose versions were trained by the real
pipeline and so carry the reference profiles it logs; feedback and quality use small in-memory models.
"""

import math
import time
from functools import partial

import grpc
import numpy as np
import pytest

from data.raw import RawDatasets, load_housing
from data.schema import HOUSING_FEATURES, IRIS_FEATURES
from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.app import PredictionServer
from server.features import HOUSING_FEATURE_TABLE
from server.model_store import ModelSlot
from server.preparation import sample_rows

from .conftest import channel_to, in_memory_registry, mlflow_server_on, running_server, wait_until

TOKEN = "quality-token"  # noqa: S105 - a test credential
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SPECIES = (iris_pb2.IRIS_SPECIES_SETOSA, iris_pb2.IRIS_SPECIES_VERSICOLOR, iris_pb2.IRIS_SPECIES_VIRGINICA)
FINISHED = (admin_pb2.OPERATION_STATE_SUCCEEDED, admin_pb2.OPERATION_STATE_FAILED)


def _housing_batch(rows: np.ndarray) -> housing_pb2.HousingBatchRequest:
    return housing_pb2.HousingBatchRequest(
        instances=[housing_pb2.HousingFeatures(**dict(zip(HOUSING_FEATURES, row, strict=True))) for row in rows]
    )


def _iris_batch(rows: np.ndarray) -> iris_pb2.IrisBatchRequest:
    return iris_pb2.IrisBatchRequest(
        instances=[iris_pb2.IrisFeatures(**dict(zip(IRIS_FEATURES, row, strict=True))) for row in rows]
    )


def _valid_housing_rows(count: int, skip: int) -> np.ndarray:
    """Rows within every feature's accepted range (the ones the server checks versions with)."""
    return sample_rows(HOUSING_FEATURE_TABLE, skip + count)[skip:]


def _gauge(server: PredictionServer, name: str, **labels: str) -> float | None:
    return server.metrics_registry.get_sample_value(name, labels)


def _live_housing_rows(settings) -> np.ndarray:
    x, _ = load_housing(RawDatasets.in_dir(settings.data_dir).housing)
    return x[np.random.default_rng(7).permutation(len(x))[:600]]


def test_drift_is_near_zero_for_training_like_traffic_and_flags_shifted_incomes(registry_copy):
    live = _live_housing_rows(registry_copy)
    with (
        mlflow_server_on(
            registry_copy.mlflow_tracking_uri, admin_token=TOKEN, drift_window_rows=600, drift_interval_seconds=3600
        ) as server,
        channel_to(server) as channel,
    ):
        housing = housing_pb2_grpc.HousingPredictorStub(channel)
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        report = admin.GetDriftReport(admin_pb2.GetDriftReportRequest(model="housing"), metadata=AUTH)
        (champion,) = report.versions
        assert (champion.status, champion.window_rows, champion.window_capacity) == (
            admin_pb2.DRIFT_STATUS_INSUFFICIENT_DATA,
            0,
            600,
        )
        assert not champion.HasField("oldest_at")

        for start in range(0, 600, 200):
            housing.PredictBatch(_housing_batch(live[start : start + 200]))
        report = admin.GetDriftReport(admin_pb2.GetDriftReportRequest(model="housing"), metadata=AUTH)
        (champion,) = report.versions
        assert (report.name, report.threshold, champion.variant) == ("CaliforniaHousingBestModel", 0.2, "champion")
        assert (champion.status, champion.window_rows) == (admin_pb2.DRIFT_STATUS_OK, 600)
        assert champion.oldest_at.ToDatetime() <= champion.newest_at.ToDatetime()
        psi = {column.name: column.psi for column in champion.features}
        assert list(psi) == list(HOUSING_FEATURES)
        assert max(psi.values()) < 0.1, psi
        assert [column.name for column in champion.outputs] == ["median_house_value"]
        assert champion.outputs[0].psi < 0.1
        assert not champion.drifted
        version = champion.version
        # The gauges hold the very numbers of the report.
        for name, value in psi.items():
            assert _gauge(server, "model_feature_psi", model=report.name, version=version, feature=name) == value
        assert _gauge(server, "model_drift", model=report.name, version=version) == 0

        richer = live.copy()
        richer[:, 0] = np.minimum(richer[:, 0] * 1.5, HOUSING_FEATURE_TABLE.specs[0].maximum)
        for start in range(0, 600, 200):
            housing.PredictBatch(_housing_batch(richer[start : start + 200]))
        report = admin.GetDriftReport(admin_pb2.GetDriftReportRequest(model="housing"), metadata=AUTH)
        (champion,) = report.versions
        drifted = {column.name: column for column in champion.features}
        assert drifted["median_income"].psi > 0.2 and drifted["median_income"].drifted
        assert not drifted["house_age"].drifted
        assert champion.drifted
        assert _gauge(server, "model_feature_drift", model=report.name, version=version, feature="median_income") == 1
        assert _gauge(server, "model_drift", model=report.name, version=version) == 1


def test_a_version_registered_without_a_profile_is_served_and_reported_as_such():
    with running_server(in_memory_registry(), admin_dev_mode=True) as server, channel_to(server) as channel:
        flowers = np.tile([5.1, 3.5, 1.4, 0.2], (150, 1))
        iris_pb2_grpc.IrisClassifierStub(channel).ClassifyBatch(_iris_batch(flowers))
        report = admin_pb2_grpc.ModelAdminStub(channel).GetDriftReport(admin_pb2.GetDriftReportRequest(model="iris"))
        (champion,) = report.versions
        assert (champion.status, champion.window_rows) == (admin_pb2.DRIFT_STATUS_NO_REFERENCE_PROFILE, 150)
        assert not champion.features and not champion.drifted
        assert _gauge(server, "model_drift_reference_missing", model="IrisBestModel", version="2") == 1


def _serves_iris(server: PredictionServer, version: str) -> bool:
    return server.store.get(ModelSlot.IRIS).champion.description.ref.version == version


def test_a_version_rolled_back_to_measures_drift_on_its_calls_since_it_returned():
    # Its rows from before the swap were still queued (drift_interval_seconds: nothing drains them meanwhile), and
    # more come after it: they leave with its window, rather than making that window again behind the swap.
    with (
        running_server(in_memory_registry(), admin_dev_mode=True, drift_interval_seconds=3600) as server,
        channel_to(server) as channel,
    ):
        iris = iris_pb2_grpc.IrisClassifierStub(channel)
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        flowers = np.tile([5.1, 3.5, 1.4, 0.2], (150, 1))
        assert iris.ClassifyBatch(_iris_batch(flowers)).model.version == "2"
        second = server.store.get(ModelSlot.IRIS).champion
        assert server.observers.drift is not None
        for version in ("1", "2"):
            admin.SetAlias(admin_pb2.SetAliasRequest(model="iris", alias="champion", version=version))
            wait_until(partial(_serves_iris, server, version), f"v{version} is served")
            if version == "1":
                # A call that was still running on v2 at the swap offers its rows afterwards: dropped too.
                server.observers.drift.offer(second, flowers[:30], np.full((30, 3), 1 / 3))
        iris.ClassifyBatch(_iris_batch(flowers[:40]))
        report = admin.GetDriftReport(admin_pb2.GetDriftReportRequest(model="iris"))
        (champion,) = report.versions
        assert (champion.version, champion.window_rows) == ("2", 40)


def _feedback(admin: admin_pb2_grpc.ModelAdminStub, *items: admin_pb2.FeedbackItem) -> list[admin_pb2.FeedbackResult]:
    return list(admin.SubmitFeedback(admin_pb2.SubmitFeedbackRequest(items=items)).results)


def test_feedback_joins_its_prediction_and_live_rmse_and_mae_follow_the_labels(tmp_path):
    registry = in_memory_registry()
    log = tmp_path / "predictions.db"
    with (
        running_server(registry, admin_dev_mode=True, prediction_log_path=log) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        rows = _valid_housing_rows(6, skip=1)
        answer = housing_pb2_grpc.HousingPredictorStub(channel).PredictBatch(_housing_batch(rows))
        predicted = np.array([each.median_house_value for each in answer.predictions])
        ids = [each.prediction_id for each in answer.predictions]
        truth = predicted + np.array([0.5, -0.5, 1.0, -1.0, 2.0, 0.0])

        # Submitted at once: the log may still hold the predictions in its queue, and must be read through.
        results = _feedback(
            admin, *(admin_pb2.FeedbackItem(prediction_id=i, value=v) for i, v in zip(ids[:5], truth, strict=False))
        )
        assert [(r.prediction_id, r.code, r.recorded) for r in results] == [
            (i, admin_pb2.FEEDBACK_CODE_OK, True) for i in ids[:5]
        ]
        quality = admin.GetModelQuality(admin_pb2.GetModelQualityRequest(model="housing"))
        (champion,) = quality.variants
        errors = np.array([0.5, -0.5, 1.0, -1.0, 2.0])
        assert (quality.name, champion.version, champion.variant, champion.labels) == (
            "CaliforniaHousingBestModel",
            "1",
            "champion",
            5,
        )
        assert champion.live["rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)))
        assert champion.live["mae"] == pytest.approx(np.mean(np.abs(errors)))
        labels = {"model": "CaliforniaHousingBestModel", "version": "1", "variant": "champion"}
        assert _gauge(server, "model_live_rmse", **labels) == pytest.approx(champion.live["rmse"])
        assert _gauge(server, "model_live_labels", **labels) == 5

        retry, conflict, unknown, wrong_kind, fresh = _feedback(
            admin,
            admin_pb2.FeedbackItem(prediction_id=ids[0], value=truth[0]),
            admin_pb2.FeedbackItem(prediction_id=ids[1], value=truth[1] + 3.0),
            admin_pb2.FeedbackItem(prediction_id="0192f0c4-7b1e-7c3a-9d2e-4f5a6b7c8d9e", value=1.0),
            admin_pb2.FeedbackItem(prediction_id=ids[5], species=iris_pb2.IRIS_SPECIES_SETOSA),
            admin_pb2.FeedbackItem(prediction_id=ids[5], value=truth[5]),
        )
        assert (retry.code, retry.recorded) == (admin_pb2.FEEDBACK_CODE_OK, False)
        assert conflict.code == admin_pb2.FEEDBACK_CODE_ALREADY_EXISTS and "another label" in conflict.message
        assert unknown.code == admin_pb2.FEEDBACK_CODE_NOT_FOUND
        assert wrong_kind.code == admin_pb2.FEEDBACK_CODE_INVALID_ARGUMENT
        assert (fresh.code, fresh.recorded) == (admin_pb2.FEEDBACK_CODE_OK, True)
        # The retry and the conflict changed nothing; the sixth label (error 0) joined the window.
        (champion,) = admin.GetModelQuality(admin_pb2.GetModelQualityRequest(model="housing")).variants
        with_sixth = np.array([0.5, -0.5, 1.0, -1.0, 2.0, 0.0])
        assert champion.labels == 6
        assert champion.live["rmse"] == pytest.approx(math.sqrt(np.mean(with_sixth**2)))
        assert _gauge(server, "model_feedback_total", outcome="already_exists") == 1
        assert _gauge(server, "model_feedback_total", outcome="recorded") == 6

    # Restarted on the same log: the labels are still there, and a retry is still recognised.
    with running_server(registry, admin_dev_mode=True, prediction_log_path=log) as again, channel_to(again) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        (champion,) = admin.GetModelQuality(admin_pb2.GetModelQualityRequest(model="housing")).variants
        assert champion.labels == 6
        (retry,) = _feedback(admin, admin_pb2.FeedbackItem(prediction_id=ids[1], value=truth[1]))
        assert (retry.code, retry.recorded) == (admin_pb2.FEEDBACK_CODE_OK, False)


def test_live_accuracy_recall_and_confidence_of_the_iris_model():
    with running_server(in_memory_registry(), admin_dev_mode=True) as server, channel_to(server) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1], [5.0, 3.4, 1.5, 0.2]])
        answer = iris_pb2_grpc.IrisClassifierStub(channel).ClassifyBatch(_iris_batch(flowers))
        chosen = [SPECIES.index(each.species) for each in answer.classifications]
        assert chosen == [0, 1, 2, 0]
        # Truth: setosa, versicolor, versicolor (the model said virginica), virginica (it said setosa).
        truth = [0, 1, 1, 2]
        results = _feedback(
            admin,
            *(
                admin_pb2.FeedbackItem(prediction_id=each.prediction_id, species=SPECIES[label])
                for each, label in zip(answer.classifications, truth, strict=True)
            ),
        )
        assert all(result.recorded for result in results)
        (champion,) = admin.GetModelQuality(admin_pb2.GetModelQualityRequest(model="iris")).variants
        assert champion.live["accuracy"] == pytest.approx(0.5)
        assert champion.live["recall_setosa"] == 1.0
        assert champion.live["recall_versicolor"] == 0.5
        assert champion.live["recall_virginica"] == 0.0
        confidences = sorted(each.confidence for each in answer.classifications)
        buckets = {bucket.upper_bound: bucket.cumulative_count for bucket in champion.confidence}
        assert buckets[1.0] == 4
        assert buckets[0.5] == sum(confidence <= 0.5 for confidence in confidences)
        labels = {"model": "IrisBestModel", "version": "2", "variant": "champion"}
        assert _gauge(server, "model_live_accuracy", **labels) == 0.5
        assert _gauge(server, "model_live_recall", **labels, **{"class": "virginica"}) == 0.0
        assert _gauge(server, "model_live_confidence_count", **labels, correct="false") == 2

        value_for_iris, empty = (
            _feedback(admin, admin_pb2.FeedbackItem(prediction_id=answer.classifications[0].prediction_id, value=1.0)),
            None,
        )
        assert value_for_iris[0].code == admin_pb2.FEEDBACK_CODE_INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as refused:
            admin.SubmitFeedback(admin_pb2.SubmitFeedbackRequest())
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert empty is None


def test_the_quality_window_keeps_only_the_newest_labels():
    with (
        running_server(in_memory_registry(), admin_dev_mode=True, quality_window_labels=3) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        rows = _valid_housing_rows(5, skip=10)
        answer = housing_pb2_grpc.HousingPredictorStub(channel).PredictBatch(_housing_batch(rows))
        errors = [10.0, 10.0, 1.0, 2.0, 3.0]  # the first two fall out of a three-label window
        _feedback(
            admin,
            *(
                admin_pb2.FeedbackItem(prediction_id=p.prediction_id, value=p.median_house_value + error)
                for p, error in zip(answer.predictions, errors, strict=True)
            ),
        )
        quality = admin.GetModelQuality(admin_pb2.GetModelQualityRequest(model="housing"))
        (champion,) = quality.variants
        assert (quality.window_labels, champion.labels) == (3, 3)
        assert champion.live["mae"] == pytest.approx(2.0)


def _operations(admin: admin_pb2_grpc.ModelAdminStub) -> list[admin_pb2.Operation]:
    return list(admin.ListOperations(admin_pb2.ListOperationsRequest(model="iris"), metadata=AUTH).operations)


def test_a_quality_trigger_fires_once_through_the_gate_and_not_while_switched_off(registry_copy, retrain_env):
    # A floor no candidate reaches: the triggered retrain is rejected by the gate, the champion stays, and so
    # does its bad live accuracy; only the cool-down keeps the trigger from firing again.
    child_env = {**retrain_env, "TRAINING_IRIS_MIN_ACCURACY": "1.0"}
    with (
        mlflow_server_on(
            registry_copy.mlflow_tracking_uri,
            child_env=child_env,
            admin_token=TOKEN,
            retrain_on_quality_for_seconds=0.3,
            retrain_quality_min_labels=20,
            retrain_trigger_check_seconds=0.1,
            retrain_trigger_cooldown_seconds=3600,
        ) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        switched = admin.SetAutoRetrain(admin_pb2.SetAutoRetrainRequest(model="iris", enabled=False), metadata=AUTH)
        assert (switched.name, switched.enabled, list(switched.triggers)) == ("IrisBestModel", False, ["quality"])

        flowers = np.tile([5.1, 3.5, 1.4, 0.2], (30, 1))  # setosa, every one
        answer = iris_pb2_grpc.IrisClassifierStub(channel).ClassifyBatch(_iris_batch(flowers))
        wrong = [
            admin_pb2.FeedbackItem(prediction_id=each.prediction_id, species=iris_pb2.IRIS_SPECIES_VIRGINICA)
            for each in answer.classifications
        ]
        admin.SubmitFeedback(admin_pb2.SubmitFeedbackRequest(items=wrong), metadata=AUTH)
        time.sleep(1.0)  # ten checks with the condition held for longer than its 0.3 s
        assert _operations(admin) == []

        admin.SetAutoRetrain(admin_pb2.SetAutoRetrainRequest(model="iris", enabled=True), metadata=AUTH)
        wait_until(lambda: len(_operations(admin)) == 1, "the quality trigger starts a retrain")
        (operation,) = _operations(admin)
        assert operation.trigger == "quality"
        assert "live accuracy 0 " in operation.trigger_reason and "training accuracy" in operation.trigger_reason

        wait_until(lambda: _operations(admin)[0].state in FINISHED, "the triggered retrain finishes", timeout=120)
        (finished,) = _operations(admin)
        assert finished.state == admin_pb2.OPERATION_STATE_SUCCEEDED, finished.failure_reason
        # The manual gate's own verdict: the floor on cross-validated accuracy.
        assert finished.decision == admin_pb2.GATE_DECISION_REJECTED
        assert "cv_accuracy" in finished.decision_reason
        time.sleep(0.5)  # more checks: the condition still holds, the cool-down holds it back
        assert len(_operations(admin)) == 1
        started = {"model": "iris", "trigger": "quality", "outcome": "started"}
        assert _gauge(server, "model_retrain_triggered_total", **started) == 1


def test_a_version_no_longer_served_leaves_live_quality_and_comes_back_with_its_labels(tmp_path):
    registry = in_memory_registry()  # iris v2 is champion, v1 is registered
    log = tmp_path / "predictions.db"
    labels = {"model": "IrisBestModel", "version": "2", "variant": "champion"}
    with (
        running_server(registry, admin_dev_mode=True, prediction_log_path=log) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        answer = iris_pb2_grpc.IrisClassifierStub(channel).ClassifyBatch(
            _iris_batch(np.tile([5.1, 3.5, 1.4, 0.2], (4, 1)))
        )
        _feedback(
            admin,
            *(
                admin_pb2.FeedbackItem(prediction_id=each.prediction_id, species=iris_pb2.IRIS_SPECIES_SETOSA)
                for each in answer.classifications
            ),
        )
        assert _gauge(server, "model_live_labels", **labels) == 4
        admin.SetAlias(admin_pb2.SetAliasRequest(model="iris", alias="champion", version="1"))
        wait_until(lambda: server.store.get(ModelSlot.IRIS).champion.description.ref.version == "1", "v1 is served")
        # v2's series are gone rather than frozen at their last value; v1 has no labels yet.
        assert _gauge(server, "model_live_labels", **labels) is None
        assert _gauge(server, "model_live_accuracy", **labels) is None
        (champion,) = admin.GetModelQuality(admin_pb2.GetModelQualityRequest(model="iris")).variants
        assert (champion.version, champion.labels) == ("1", 0)

    # Restarted with v1 served, v2's labels stay out of memory; served again, they are back.
    with running_server(registry, admin_dev_mode=True, prediction_log_path=log) as again:
        assert _gauge(again, "model_live_labels", **labels) is None
    registry.set_alias("IrisBestModel", "champion", "2", expected="1")
    with running_server(registry, admin_dev_mode=True, prediction_log_path=log) as again:
        assert _gauge(again, "model_live_labels", **labels) == 4
