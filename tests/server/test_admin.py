"""The admin service over gRPC: who may call it, versions, promotion, compare-and-set and rollback."""

import logging
from collections.abc import Callable

import grpc
import pytest

from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, iris_pb2, iris_pb2_grpc

from .conftest import channel_to, in_memory_registry, running_server, wait_until

TOKEN = "s3cret-admin-token"  # noqa: S105 - a test credential
AUTH = (("authorization", f"Bearer {TOKEN}"),)
FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), str(raised.value.details())


def _served_iris(channel: grpc.Channel) -> str:
    return str(iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER).model.version)


def test_with_no_token_configured_every_admin_call_is_refused_and_says_which_setting():
    with running_server(in_memory_registry()) as server, channel_to(server) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        code, details = _code(lambda: admin.ListModelVersions(admin_pb2.ListModelVersionsRequest(model="iris")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "PREDICTOR_ADMIN_TOKEN" in details
        code, _ = _code(lambda: admin.Rollback(admin_pb2.RollbackRequest(model="iris"), metadata=AUTH))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # Prediction calls stay open.
        assert _served_iris(channel) == "2"


def test_admin_calls_need_the_right_bearer_token_which_is_never_logged(caplog):
    with (
        caplog.at_level(logging.DEBUG),
        running_server(in_memory_registry(), admin_token=TOKEN) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        request = admin_pb2.ListModelVersionsRequest(model="iris")
        assert _code(lambda: admin.ListModelVersions(request))[0] == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer not-the-token"),)
        assert _code(lambda: admin.ListModelVersions(request, metadata=wrong)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "the admin token is not valid",
        )
        basic = (("authorization", f"Basic {TOKEN}"),)
        assert _code(lambda: admin.ListModelVersions(request, metadata=basic))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert admin.ListModelVersions(request, metadata=AUTH).name == "IrisBestModel"
        assert _served_iris(channel) == "2"
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


def test_dev_mode_opens_admin_calls_and_says_so_loudly(caplog):
    with (
        caplog.at_level(logging.WARNING, logger="server.admin.auth"),
        running_server(in_memory_registry(), admin_dev_mode=True) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        assert admin.ListModelVersions(admin_pb2.ListModelVersionsRequest(model="iris")).versions
    assert any("ADMIN CALLS ARE OPEN" in record.getMessage() for record in caplog.records)


def test_a_configured_token_wins_over_dev_mode():
    with (
        running_server(in_memory_registry(), admin_token=TOKEN, admin_dev_mode=True) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        request = admin_pb2.ListModelVersionsRequest(model="iris")
        assert _code(lambda: admin.ListModelVersions(request))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_versions_show_their_aliases_and_which_one_is_served():
    with running_server(in_memory_registry(), admin_token=TOKEN) as server, channel_to(server) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        listed = admin.ListModelVersions(admin_pb2.ListModelVersionsRequest(model="IrisBestModel"), metadata=AUTH)
        assert listed.name == "IrisBestModel"
        assert [(v.version, list(v.aliases), v.serving) for v in listed.versions] == [
            ("2", ["champion"], True),
            ("1", [], False),
        ]
        code, details = _code(
            lambda: admin.ListModelVersions(admin_pb2.ListModelVersionsRequest(model="penguins"), metadata=AUTH)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown model 'penguins'" in details


def test_promotion_is_served_at_once_and_rollback_walks_back():
    # No polling at all: only the admin call's nudge can make the server load the new version.
    with (
        running_server(in_memory_registry(), admin_token=TOKEN, model_poll_seconds=0) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        promoted = admin.SetAlias(admin_pb2.SetAliasRequest(model="iris", alias="champion", version="1"), metadata=AUTH)
        assert (promoted.name, promoted.alias, promoted.version, promoted.previous_version) == (
            "IrisBestModel",
            "champion",
            "1",
            "2",
        )
        wait_until(lambda: _served_iris(channel) == "1", "version 1 is served")

        back = admin.Rollback(admin_pb2.RollbackRequest(model="iris"), metadata=AUTH)
        assert (back.version, back.previous_version) == ("2", "1")
        wait_until(lambda: _served_iris(channel) == "2", "version 2 is served again")

        code, details = _code(lambda: admin.Rollback(admin_pb2.RollbackRequest(model="iris"), metadata=AUTH))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details == "IrisBestModel@champion has no earlier version to roll back to"


def test_set_alias_with_a_stale_expectation_is_aborted_and_changes_nothing():
    registry = in_memory_registry()
    with running_server(registry, admin_token=TOKEN) as server, channel_to(server) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        stale = admin_pb2.SetAliasRequest(model="iris", alias="champion", version="1", expected_version="1")
        code, details = _code(lambda: admin.SetAlias(stale, metadata=AUTH))
        assert code == grpc.StatusCode.ABORTED
        assert "is on 2" in details
        assert registry.aliases("IrisBestModel")["champion"] == "2"
        # "" expects the alias to be unset: a new alias can be created that way, once.
        fresh = admin_pb2.SetAliasRequest(model="iris", alias="challenger", version="1", expected_version="")
        assert admin.SetAlias(fresh, metadata=AUTH).previous_version == ""
        assert _code(lambda: admin.SetAlias(fresh, metadata=AUTH))[0] == grpc.StatusCode.ABORTED
        missing = admin_pb2.SetAliasRequest(model="iris", alias="champion", version="7")
        assert _code(lambda: admin.SetAlias(missing, metadata=AUTH))[0] == grpc.StatusCode.NOT_FOUND


def test_operations_of_an_unknown_id_are_not_found_and_bad_overrides_are_invalid():
    with running_server(in_memory_registry(), admin_token=TOKEN) as server, channel_to(server) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        code, _ = _code(lambda: admin.GetOperation(admin_pb2.GetOperationRequest(id="0" * 32), metadata=AUTH))
        assert code == grpc.StatusCode.NOT_FOUND
        bad = admin_pb2.RetrainRequest(model="housing", hyperparameters={"max_iter": 2.5})
        code, details = _code(lambda: admin.Retrain(bad, metadata=AUTH))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_iter" in details
        unknown = admin_pb2.RetrainRequest(model="housing", hyperparameters={"n_estimators": 10})
        assert _code(lambda: admin.Retrain(unknown, metadata=AUTH))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert list(admin.ListOperations(admin_pb2.ListOperationsRequest(), metadata=AUTH).operations) == []
