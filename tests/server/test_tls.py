"""TLS and mTLS on the gRPC port, with certificates made here: who may connect, start-up checks, rotation.

The certificate helpers are shared with ``tests/rest_bridge/test_tls.py`` and ``test_admin_auth.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from protos.prediction.v1 import iris_pb2, iris_pb2_grpc
from server.app import PredictionServer, build_server
from server.tls import TlsConfigurationError

from .conftest import in_memory_registry, running_server, server_settings

FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)
# A fresh connection per channel: grpc otherwise shares connections between channels with equal arguments.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
# Without TLS the handshake fails; the status depends on the TLS version and on who hangs up first.
REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN}


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, PEM-encoded."""

    certificate: x509.Certificate
    key: bytes

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``name``.pem and ``name``.key in ``directory``, each replaced at once (a new inode, as rotations do)."""
        paths = directory / f"{name}.pem", directory / f"{name}.key"
        for path, content in zip(paths, (self.pem, self.key), strict=True):
            staged = path.with_suffix(path.suffix + ".new")
            staged.write_bytes(content)
            staged.replace(path)
        return paths


class CertificateAuthority:
    """A CA that issues server and client certificates, valid from a few minutes ago for a day."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.issued = Issued(
            self._builder(subject, self._key.public_key())
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256()),
            _pem_key(self._key),
        )

    @property
    def pem(self) -> bytes:
        return self.issued.pem

    @staticmethod
    def _builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _leaf(self, name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
            .issuer_name(self.issued.certificate.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(builder.sign(self._key, hashes.SHA256()), _pem_key(key))

    def server(self, *dns_names: str) -> Issued:
        """A server certificate for ``dns_names``, or for localhost and 127.0.0.1 by default."""
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names] or [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        return self._leaf("prediction-server", ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, name: str = "rest-bridge") -> Issued:
        return self._leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def tls_settings(
    directory: Path, ca: CertificateAuthority, *, client_ca: CertificateAuthority | None = None
) -> dict[str, Any]:
    """Server settings that serve a fresh certificate of ``ca`` from ``directory`` (mTLS with ``client_ca``)."""
    cert_file, key_file = ca.server().write(directory, "server")
    settings: dict[str, Any] = {"tls_cert_file": cert_file, "tls_key_file": key_file}
    if client_ca is not None:
        (directory / "client-ca.pem").write_bytes(client_ca.pem)
        settings |= {"tls_client_ca_file": directory / "client-ca.pem", "tls_require_client_cert": True}
    return settings


@contextmanager
def tls_channel(
    server: PredictionServer, trusted: CertificateAuthority, client: Issued | None = None
) -> Iterator[grpc.Channel]:
    """A channel on a connection of its own that trusts only ``trusted`` and presents ``client``, if given."""
    credentials = grpc.ssl_channel_credentials(
        trusted.pem, client.key if client else None, client.pem if client else None
    )
    with grpc.secure_channel(f"localhost:{server.port}", credentials, options=OWN_CONNECTION) as channel:
        yield channel


def classify(channel: grpc.Channel) -> str:
    return str(iris_pb2_grpc.IrisClassifierStub(channel).Classify(FLOWER, timeout=10).model.version)


def refusal(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        classify(channel)
    return raised.value.code()


def served_certificate(port: int, trusted: CertificateAuthority, client: Issued | None, tmp_path: Path) -> bytes:
    """The certificate (DER) a new TLS connection to ``port`` is shown, read with the standard library's client."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=trusted.pem.decode())
    context.set_alpn_protocols(["h2"])
    if client is not None:
        cert_file, key_file = client.write(tmp_path, "stdlib-client")
        context.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        certificate = connection.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def test_a_tls_client_that_trusts_the_ca_is_served_and_a_plaintext_client_is_not(tmp_path: Path):
    ca, other = CertificateAuthority("ca"), CertificateAuthority("unrelated")
    with running_server(in_memory_registry(), **tls_settings(tmp_path, ca)) as server:
        with tls_channel(server, ca) as channel:
            assert classify(channel) == "2"
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=OWN_CONNECTION) as plaintext:
            assert refusal(plaintext) in REFUSED
        with tls_channel(server, other) as distrusting:
            assert refusal(distrusting) in REFUSED


def test_with_mtls_only_clients_with_a_certificate_of_the_client_ca_are_served(tmp_path: Path):
    ca, other = CertificateAuthority("ca"), CertificateAuthority("unrelated")
    with running_server(in_memory_registry(), **tls_settings(tmp_path, ca, client_ca=ca)) as server:
        with tls_channel(server, ca, ca.client()) as channel:
            assert classify(channel) == "2"
        with tls_channel(server, ca) as anonymous:
            assert refusal(anonymous) in REFUSED
        with tls_channel(server, ca, other.client()) as stranger:
            assert refusal(stranger) in REFUSED


def test_a_certificate_rotated_on_disk_is_served_to_new_connections_without_a_restart(tmp_path: Path):
    ca, successor = CertificateAuthority("ca"), CertificateAuthority("successor")
    first, renewed, moved = ca.server(), ca.server(), successor.server()
    cert_file, key_file = first.write(tmp_path, "server")
    with (
        running_server(in_memory_registry(), tls_cert_file=cert_file, tls_key_file=key_file) as server,
        tls_channel(server, ca) as before,
    ):
        assert classify(before) == "2"
        assert served_certificate(server.port, ca, None, tmp_path) == first.der

        renewed.write(tmp_path, "server")  # the same CA, a new certificate and key
        assert served_certificate(server.port, ca, None, tmp_path) == renewed.der

        moved.write(tmp_path, "server")  # a new CA: only clients that trust it connect from now on
        with tls_channel(server, successor) as trusting_the_new_ca:
            assert classify(trusting_the_new_ca) == "2"
        with tls_channel(server, ca) as trusting_the_old_ca:
            assert refusal(trusting_the_old_ca) in REFUSED
        # A connection made before keeps its session.
        assert classify(before) == "2"


def test_a_half_written_rotation_keeps_the_current_certificate_until_the_pair_matches(tmp_path: Path):
    ca = CertificateAuthority("ca")
    first, renewed = ca.server(), ca.server()
    cert_file, key_file = first.write(tmp_path, "server")
    with running_server(in_memory_registry(), tls_cert_file=cert_file, tls_key_file=key_file) as server:
        cert_file.write_bytes(renewed.pem)  # the key is still the old one
        assert served_certificate(server.port, ca, None, tmp_path) == first.der
        with tls_channel(server, ca) as channel:
            assert classify(channel) == "2"
        key_file.write_bytes(renewed.key)
        assert served_certificate(server.port, ca, None, tmp_path) == renewed.der


def test_the_client_ca_is_reloaded_too(tmp_path: Path):
    ca, clients, new_clients = CertificateAuthority("ca"), CertificateAuthority("clients"), CertificateAuthority("new")
    settings = tls_settings(tmp_path, ca, client_ca=clients)
    with running_server(in_memory_registry(), **settings) as server:
        with tls_channel(server, ca, clients.client()) as channel:
            assert classify(channel) == "2"
        staged = tmp_path / "client-ca.new"
        staged.write_bytes(new_clients.pem)
        staged.replace(tmp_path / "client-ca.pem")
        with tls_channel(server, ca, new_clients.client()) as channel:
            assert classify(channel) == "2"
        with tls_channel(server, ca, clients.client()) as retired:
            assert refusal(retired) in REFUSED


def test_settings_refuse_incomplete_tls():
    with pytest.raises(ValidationError, match="PREDICTOR_TLS_CERT_FILE and PREDICTOR_TLS_KEY_FILE"):
        server_settings(tls_cert_file="server.pem")
    with pytest.raises(ValidationError, match="PREDICTOR_TLS_CERT_FILE and PREDICTOR_TLS_KEY_FILE"):
        server_settings(tls_key_file="server.key")
    with pytest.raises(ValidationError, match="PREDICTOR_TLS_REQUIRE_CLIENT_CERT needs"):
        server_settings(tls_cert_file="server.pem", tls_key_file="server.key", tls_require_client_cert=True)
    with pytest.raises(ValidationError, match="only with PREDICTOR_TLS_REQUIRE_CLIENT_CERT"):
        server_settings(tls_cert_file="server.pem", tls_key_file="server.key", tls_client_ca_file="ca.pem")
    assert server_settings().tls_cert_file is None  # plaintext by default


def test_start_up_fails_on_unusable_tls_files_naming_the_setting_and_the_file(tmp_path: Path):
    ca = CertificateAuthority("ca")
    good = tls_settings(tmp_path, ca)
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(ca.server().key)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tls_cert_file": missing}, f"PREDICTOR_TLS_CERT_FILE: cannot read {missing}"),
        ({"tls_key_file": missing}, f"PREDICTOR_TLS_KEY_FILE: cannot read {missing}"),
        ({"tls_cert_file": garbage}, f"PREDICTOR_TLS_CERT_FILE: {garbage} holds no PEM certificate"),
        ({"tls_key_file": garbage}, "PREDICTOR_TLS_KEY_FILE"),
        ({"tls_key_file": other_key}, "does not belong to the certificate"),
        (
            {"tls_client_ca_file": missing, "tls_require_client_cert": True},
            f"PREDICTOR_TLS_CLIENT_CA_FILE: cannot read {missing}",
        ),
    ]
    # Nothing shared with other servers: a failed build leaves what it made before binding.
    isolated = {"state_dir": tmp_path / "state", "prediction_log": False}
    for change, message in cases:
        settings = server_settings(**(good | isolated | change))
        with pytest.raises(TlsConfigurationError) as raised:
            build_server(settings, in_memory_registry()).stop(grace=0)
        assert message in str(raised.value), change
