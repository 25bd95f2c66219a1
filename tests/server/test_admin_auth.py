"""Who may call the admin service, by transport: TLS, plaintext (refused unless allowed), development mode.

``test_admin.py`` covers the token itself over the test servers' plaintext ports (they allow it explicitly).
"""

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import pytest

from protos.prediction.v1 import admin_pb2, admin_pb2_grpc
from server.admin.auth import AdminAuthenticator
from server.app import PredictionServer
from server.errors import UnauthenticatedError

from .conftest import channel_to, in_memory_registry, running_server
from .test_tls import CertificateAuthority, tls_channel, tls_settings

TOKEN = "tls-admin-token-4f1c9e"  # noqa: S105 - a test credential
WRONG_TOKEN = "wrong-admin-token-77d2"  # noqa: S105 - a test credential
REQUEST = admin_pb2.ListModelVersionsRequest(model="iris")


def _refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), str(raised.value.details())


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _handled(server: PredictionServer, code: str) -> float:
    labels = {
        "grpc_type": "UNARY",
        "grpc_service": "prediction.v1.ModelAdmin",
        "grpc_method": "ListModelVersions",
        "grpc_code": code,
    }
    return server.metrics_registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


def test_over_plaintext_a_token_call_is_refused_whatever_the_token_and_counted():
    with (
        running_server(in_memory_registry(), admin_token=TOKEN, admin_allow_plaintext=False) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        for metadata in (_bearer(TOKEN), _bearer(WRONG_TOKEN), ()):
            code, details = _refusal(partial(admin.ListModelVersions, REQUEST, metadata=metadata))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "admin calls need TLS" in details
            assert "PREDICTOR_ADMIN_ALLOW_PLAINTEXT" in details
        assert _handled(server, "PERMISSION_DENIED") == 3


def test_plaintext_admin_calls_work_when_explicitly_allowed():
    with (
        running_server(in_memory_registry(), admin_token=TOKEN, admin_allow_plaintext=True) as server,
        channel_to(server) as channel,
    ):
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        assert admin.ListModelVersions(REQUEST, metadata=_bearer(TOKEN)).name == "IrisBestModel"
        code, _ = _refusal(lambda: admin.ListModelVersions(REQUEST, metadata=_bearer(WRONG_TOKEN)))
        assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("token", [None, TOKEN])
def test_development_mode_keeps_plaintext_admin_calls_working(token: str | None):
    # What `make run` does (PREDICTOR_ADMIN_DEV_MODE=true over plaintext), with or without a token.
    with (
        running_server(
            in_memory_registry(), admin_dev_mode=True, admin_token=token, admin_allow_plaintext=False
        ) as server,
        channel_to(server) as channel,
    ):
        metadata = _bearer(token) if token else ()
        listed = admin_pb2_grpc.ModelAdminStub(channel).ListModelVersions(REQUEST, metadata=metadata)
        assert listed.name == "IrisBestModel"


def test_over_tls_the_token_decides(tmp_path: Path):
    ca = CertificateAuthority("ca")
    settings = tls_settings(tmp_path, ca) | {"admin_token": TOKEN, "admin_allow_plaintext": False}
    with running_server(in_memory_registry(), **settings) as server, tls_channel(server, ca) as channel:
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        assert admin.ListModelVersions(REQUEST, metadata=_bearer(TOKEN)).name == "IrisBestModel"
        assert _refusal(lambda: admin.ListModelVersions(REQUEST, metadata=_bearer(WRONG_TOKEN))) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "the admin token is not valid",
        )
        assert _refusal(lambda: admin.ListModelVersions(REQUEST))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert _handled(server, "OK") == 1
        assert _handled(server, "UNAUTHENTICATED") == 2


def test_no_token_presented_or_configured_ever_reaches_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    ca = CertificateAuthority("ca")
    settings = tls_settings(tmp_path, ca) | {"admin_token": TOKEN, "admin_allow_plaintext": False}
    with caplog.at_level(logging.DEBUG), running_server(in_memory_registry(), **settings) as server:
        with tls_channel(server, ca) as channel:
            admin = admin_pb2_grpc.ModelAdminStub(channel)
            admin.ListModelVersions(REQUEST, metadata=_bearer(TOKEN))
            _refusal(lambda: admin.ListModelVersions(REQUEST, metadata=_bearer(WRONG_TOKEN)))
            _refusal(lambda: admin.ListModelVersions(REQUEST, metadata=(("authorization", f"Basic {TOKEN}"),)))
        with channel_to(server) as plaintext:
            plaintext_admin = admin_pb2_grpc.ModelAdminStub(plaintext)
            _refusal(lambda: plaintext_admin.ListModelVersions(REQUEST, metadata=_bearer(TOKEN)))
    text = "\n".join(caplog.text.splitlines() + [repr(record.__dict__) for record in caplog.records])
    assert "ListModelVersions" in text  # the access log saw every call
    assert TOKEN not in text
    assert WRONG_TOKEN not in text


def test_the_comparison_is_on_bytes_so_any_configured_token_compares():
    # hmac.compare_digest refuses str with non-ASCII characters (TypeError, an INTERNAL error for the caller).
    authenticator = AdminAuthenticator("pässwörd-ünïcode", dev_mode=False)
    authenticator.check("Bearer pässwörd-ünïcode", private=True)
    with pytest.raises(UnauthenticatedError):
        authenticator.check("Bearer password-unicode", private=True)
