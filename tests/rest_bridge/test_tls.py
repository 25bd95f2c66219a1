"""The bridge's channel to a TLS or mTLS prediction server, configured through its settings alone."""

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from rest_bridge.app import create_app
from rest_bridge.settings import BridgeSettings
from rest_bridge.upstream import UpstreamTlsError, upstream_tls

from ..server.conftest import in_memory_registry, running_server
from ..server.test_tls import CertificateAuthority
from .conftest import IRIS, bridge

pytestmark = pytest.mark.anyio

TOKEN = "bridge-tls-admin-token-91e0"  # noqa: S105 - a test credential


def _mtls_server_settings(directory: Path, ca: CertificateAuthority, name: str) -> dict[str, Any]:
    cert_file, key_file = ca.server(name).write(directory, "server")
    (directory / "ca.pem").write_bytes(ca.pem)
    return {
        "tls_cert_file": cert_file,
        "tls_key_file": key_file,
        "tls_client_ca_file": directory / "ca.pem",
        "tls_require_client_cert": True,
        "admin_token": TOKEN,
        "admin_allow_plaintext": False,
    }


async def test_the_bridge_calls_an_mtls_server_with_its_ca_and_client_certificate(tmp_path: Path):
    # The certificate names only predictor.internal: the target's IP address matches it through the override.
    ca = CertificateAuthority("ca")
    client_cert, client_key = ca.client().write(tmp_path, "bridge")
    tls = {
        "grpc_tls": True,
        "grpc_tls_ca_file": tmp_path / "ca.pem",
        "grpc_tls_cert_file": client_cert,
        "grpc_tls_key_file": client_key,
        "grpc_tls_server_name": "predictor.internal",
    }
    with running_server(in_memory_registry(), **_mtls_server_settings(tmp_path, ca, "predictor.internal")) as server:
        target = f"127.0.0.1:{server.port}"
        async with bridge(target, **tls) as client:
            answer = await client.post("/predict/iris", json=IRIS)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"]["version"] == "2"
            # Admin calls are allowed: the connection is TLS.
            versions = await client.get("/models/iris/versions", headers={"authorization": f"Bearer {TOKEN}"})
            assert versions.status_code == 200, versions.text

        without_client_certificate = {key: value for key, value in tls.items() if "cert_file" not in key}
        without_client_certificate.pop("grpc_tls_key_file")
        async with bridge(target, **without_client_certificate) as client:
            assert (await client.post("/predict/iris", json=IRIS)).status_code == 503
        async with bridge(target, **(tls | {"grpc_tls_server_name": None})) as client:
            assert (await client.post("/predict/iris", json=IRIS)).status_code == 503  # the name does not match
        async with bridge(target) as client:
            assert (await client.post("/predict/iris", json=IRIS)).status_code == 503  # plaintext


async def test_over_plaintext_the_server_refuses_admin_calls_and_the_bridge_says_why():
    with running_server(in_memory_registry(), admin_token=TOKEN, admin_allow_plaintext=False) as server:
        async with bridge(f"127.0.0.1:{server.port}") as client:
            answer = await client.get("/models/iris/versions", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 403
    assert "admin calls need TLS" in answer.text
    assert TOKEN not in answer.text


def test_settings_refuse_tls_files_without_tls_and_half_a_client_certificate(tmp_path: Path):
    with pytest.raises(ValidationError, match="only with BRIDGE_GRPC_TLS=true"):
        BridgeSettings(grpc_tls_ca_file=tmp_path / "ca.pem")
    with pytest.raises(ValidationError, match="BRIDGE_GRPC_TLS_CERT_FILE and BRIDGE_GRPC_TLS_KEY_FILE"):
        BridgeSettings(grpc_tls=True, grpc_tls_cert_file=tmp_path / "bridge.pem")
    assert upstream_tls(BridgeSettings()) is None  # plaintext by default


def test_an_unreadable_tls_file_fails_start_up_naming_the_setting(tmp_path: Path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(UpstreamTlsError, match=f"BRIDGE_GRPC_TLS_CA_FILE: cannot read {missing}"):
        create_app(BridgeSettings(grpc_tls=True, grpc_tls_ca_file=missing), CollectorRegistry())
