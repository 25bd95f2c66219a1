"""The model lifecycle against a real MLflow registry: retrain, follow aliases, validate, roll back after restart.

Each test works on its own copy of the session's trained registry (the SQLite file; the artifacts it points at
are shared and only read), so that registering versions and moving aliases leaves other tests alone.
"""

import gc
import weakref

import grpc
import pytest
from mlflow import MlflowClient

from model_registry.mlflow import MlflowRegistry
from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2
from server.model_store import ModelSlot
from training.settings import TrainingSettings

from .conftest import channel_to, mlflow_server_on, running_server, wait_until

TOKEN = "lifecycle-token"  # noqa: S105 - a test credential
AUTH = (("authorization", f"Bearer {TOKEN}"),)
FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)
FINISHED = (admin_pb2.OPERATION_STATE_SUCCEEDED, admin_pb2.OPERATION_STATE_FAILED)


def _client(settings: TrainingSettings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def _register_copy_of_v1(settings: TrainingSettings, name: str) -> str:
    """A new version of ``name`` with v1's artifacts, as another process registering it would make."""
    client = _client(settings)
    first = client.get_model_version(name, "1")
    # The artifact location, not v1's "models:/m-..." source: resolving that goes through mlflow's process-wide
    # tracking URI rather than this client's.
    source = client.get_model_version_download_uri(name, "1")
    return str(client.create_model_version(name, source, run_id=first.run_id).version)


def _served_iris(channel: grpc.Channel) -> str:
    return str(iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER).model.version)


def _finished(admin: admin_pb2_grpc.ModelAdminStub, operation_id: str) -> admin_pb2.Operation:
    holder: list[admin_pb2.Operation] = []

    def done() -> bool:
        holder[:] = [admin.GetOperation(admin_pb2.GetOperationRequest(id=operation_id), metadata=AUTH)]
        return holder[0].state in FINISHED

    wait_until(done, f"operation {operation_id} finishes", timeout=120)
    return holder[0]


def test_retrain_over_grpc_promotes_or_rejects_through_the_gate_and_is_served_without_a_restart(
    registry_copy, retrain_env, tmp_path
):
    uri = registry_copy.mlflow_tracking_uri
    state = str(tmp_path / "state")
    with (
        mlflow_server_on(
            uri, child_env=retrain_env, admin_token=TOKEN, model_poll_seconds=0, state_dir=state
        ) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        assert _served_iris(channel) == "1"

        # The same estimator on the same split ties the champion, and a tie promotes.
        started = admin.Retrain(admin_pb2.RetrainRequest(model="iris"), metadata=AUTH)
        assert started.state in (admin_pb2.OPERATION_STATE_QUEUED, admin_pb2.OPERATION_STATE_RUNNING)
        assert started.trigger == "manual"
        iris = _finished(admin, started.id)
        assert iris.state == admin_pb2.OPERATION_STATE_SUCCEEDED, iris.failure_reason
        assert (iris.registered_version, iris.champion_version) == ("2", "1")
        assert iris.decision == admin_pb2.GATE_DECISION_PROMOTED
        assert iris.decision_reason.startswith("ties champion v1")
        assert iris.candidate_metrics["accuracy"] == iris.champion_metrics["accuracy"]
        assert iris.started_at.ToDatetime() <= iris.finished_at.ToDatetime()
        wait_until(lambda: _served_iris(channel) == "2", "the promoted version is served")

        # One tree is a deliberately weaker candidate: registered, not promoted, and the reason says why.
        weak = admin.Retrain(admin_pb2.RetrainRequest(model="housing", hyperparameters={"max_iter": 1}), metadata=AUTH)
        housing = _finished(admin, weak.id)
        assert housing.state == admin_pb2.OPERATION_STATE_SUCCEEDED, housing.failure_reason
        assert housing.decision == admin_pb2.GATE_DECISION_REJECTED
        assert housing.registered_version == "2"
        assert "worse than champion v1" in housing.decision_reason
        assert housing.candidate_metrics["rmse"] > housing.champion_metrics["rmse"]
        assert dict(housing.hyperparameters) == {"max_iter": 1}
        assert str(_client(registry_copy).get_registered_model("CaliforniaHousingBestModel").aliases["champion"]) == "1"

        listed = admin.ListModelVersions(admin_pb2.ListModelVersionsRequest(model="housing"), metadata=AUTH)
        assert [(v.version, v.gate_decision, v.serving) for v in listed.versions] == [
            ("2", "rejected", False),
            ("1", "promoted", True),
        ]
        assert "rmse" in listed.versions[0].metrics
        operations = admin.ListOperations(admin_pb2.ListOperationsRequest(), metadata=AUTH).operations
        assert [op.id for op in operations] == [weak.id, started.id]

    # Finished operations are still there after a restart (same state directory).
    with (
        mlflow_server_on(uri, admin_token=TOKEN, state_dir=state) as restarted,
        channel_to(restarted) as channel,
    ):
        again = admin_pb2_grpc.ModelAdminStub(channel).GetOperation(
            admin_pb2.GetOperationRequest(id=weak.id), metadata=AUTH
        )
        assert again.decision == admin_pb2.GATE_DECISION_REJECTED


def test_a_second_retrain_of_a_model_is_refused_and_other_models_wait_their_turn(registry_copy, retrain_env):
    with (
        running_server(
            MlflowRegistry(registry_copy.mlflow_tracking_uri), child_env=retrain_env, admin_token=TOKEN
        ) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        first = admin.Retrain(admin_pb2.RetrainRequest(model="housing"), metadata=AUTH)
        with pytest.raises(grpc.RpcError) as raised:
            admin.Retrain(admin_pb2.RetrainRequest(model="housing"), metadata=AUTH)
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert first.id in str(raised.value.details())
        # Another model's retrain is accepted, and waits its turn: one training child at a time.
        other = admin.Retrain(admin_pb2.RetrainRequest(model="iris"), metadata=AUTH)
        assert other.state == admin_pb2.OPERATION_STATE_QUEUED
        for operation in (first, other):
            finished = _finished(admin, operation.id)
            assert finished.state == admin_pb2.OPERATION_STATE_SUCCEEDED, finished.failure_reason
        first_done = _finished(admin, first.id).finished_at.ToDatetime()
        assert _finished(admin, other.id).started_at.ToDatetime() >= first_done


def test_an_alias_moved_by_another_process_is_served_within_the_poll_interval(registry_copy):
    client = _client(registry_copy)
    with (
        mlflow_server_on(registry_copy.mlflow_tracking_uri, model_poll_seconds=0.3) as server,
        channel_to(server) as channel,
    ):
        assert _served_iris(channel) == "1"
        second = _register_copy_of_v1(registry_copy, "IrisBestModel")
        client.set_registered_model_alias("IrisBestModel", "champion", second)
        wait_until(lambda: _served_iris(channel) == second, "the moved alias is served", timeout=15)


def test_a_version_whose_artifacts_are_gone_is_refused_while_the_old_one_answers(registry_copy, tmp_path):
    client = _client(registry_copy)
    run_id = client.get_model_version("IrisBestModel", "1").run_id
    with (
        mlflow_server_on(registry_copy.mlflow_tracking_uri, model_poll_seconds=0.1) as server,
        channel_to(server) as channel,
    ):
        broken = str(
            client.create_model_version("IrisBestModel", (tmp_path / "nothing-here").as_uri(), run_id=run_id).version
        )
        client.set_registered_model_alias("IrisBestModel", "champion", broken)
        info = iris_pb2_grpc.IrisClassifierStub(channel).GetModelInfo
        wait_until(lambda: info(model_pb2.GetModelInfoRequest()).last_load_failure.version == broken, "refused")
        assert info(model_pb2.GetModelInfoRequest()).last_load_failure.reason == "artifact"
        assert _served_iris(channel) == "1"


def test_rollback_after_a_restart_serves_the_previous_champion(registry_copy):
    client = _client(registry_copy)
    second = _register_copy_of_v1(registry_copy, "IrisBestModel")
    uri = registry_copy.mlflow_tracking_uri
    with mlflow_server_on(uri, admin_token=TOKEN) as server, channel_to(server) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        admin.SetAlias(admin_pb2.SetAliasRequest(model="iris", alias="champion", version=second), metadata=AUTH)
        wait_until(lambda: _served_iris(channel) == second, "the promoted version is served")

    with mlflow_server_on(uri, admin_token=TOKEN) as server, channel_to(server) as channel:
        assert _served_iris(channel) == second
        back = admin_pb2_grpc.ModelAdminStub(channel).Rollback(admin_pb2.RollbackRequest(model="iris"), metadata=AUTH)
        assert (back.previous_version, back.version) == (second, "1")
        wait_until(lambda: _served_iris(channel) == "1", "the previous champion is served")
    assert str(client.get_registered_model("IrisBestModel").aliases["champion"]) == "1"


def test_a_version_swapped_out_is_freed_by_reference_counting_while_the_start_up_heap_is_frozen(registry_copy):
    # python -m server freezes what start-up made (server.__main__.settle_start_up_objects): whatever of a served
    # version gets frozen is never collected as cyclic garbage, so once swapped out it must go by refcount alone.
    client = _client(registry_copy)
    with (
        mlflow_server_on(registry_copy.mlflow_tracking_uri, model_poll_seconds=0.1) as server,
        channel_to(server) as channel,
    ):
        for _ in range(20):
            _served_iris(channel)  # answered, logged and offered to drift, as in production
        served = server.store.get(ModelSlot.IRIS).champion
        estimator = weakref.ref(served.estimator)
        del served
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            second = _register_copy_of_v1(registry_copy, "IrisBestModel")
            client.set_registered_model_alias("IrisBestModel", "champion", second)
            wait_until(lambda: _served_iris(channel) == second, "the new version is served")
            assert server.observers.drift is not None
            server.observers.drift.refresh()  # its queue held the old version's last calls
            assert estimator() is None, "the swapped-out estimator is still referenced"
        finally:
            gc.unfreeze()
            gc.enable()
