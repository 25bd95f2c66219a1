"""TLS for the gRPC port: the certificate files, read at start-up and again whenever they change on disk.

grpcio asks ``CertificateReloader`` before every new connection's handshake; it stats the files (cheap) and
re-reads them only when one changed, so a rotated certificate is served to new connections without a restart
while connections already open keep theirs. A rotation is two writes (certificate, key): a pair that does not
match yet, or a file that cannot be read, leaves the current certificate in place and is tried again at the
next connection, logged once per change.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server.settings import ServerSettings

logger = logging.getLogger(__name__)

# The security level grpc reports for a TLS (or otherwise encrypted and authenticated) connection.
PRIVATE_SECURITY_LEVEL = b"TSI_PRIVACY_AND_INTEGRITY"


class TlsConfigurationError(ValueError):
    """A TLS setting names a file that cannot be used; the message names the setting and the file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    require_client_cert: bool


@dataclass(frozen=True, slots=True)
class _Material:
    key: bytes
    chain: bytes
    client_ca: bytes | None


# What each file is called in messages: the environment variable an operator set.
_SETTING_OF = {
    "cert_file": "PREDICTOR_TLS_CERT_FILE",
    "key_file": "PREDICTOR_TLS_KEY_FILE",
    "client_ca_file": "PREDICTOR_TLS_CLIENT_CA_FILE",
}


def tls_files(settings: ServerSettings) -> TlsFiles | None:
    """The TLS files the settings name, or None for plaintext (the settings refuse a certificate without a key)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return TlsFiles(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file, settings.tls_require_client_cert
    )


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigurationError(f"{_SETTING_OF[setting]}: cannot read {path}: {exc.strerror}") from exc


def _certificates(setting: str, path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsConfigurationError(f"{_SETTING_OF[setting]}: {path} holds no PEM certificate") from exc
    return certificates


def load_material(files: TlsFiles) -> _Material:
    """Read and check every file: PEM certificates, a PEM private key that belongs to the first certificate."""
    chain = _read("cert_file", files.cert_file)
    key = _read("key_file", files.key_file)
    leaf = _certificates("cert_file", files.cert_file, chain)[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigurationError(
            f"{_SETTING_OF['key_file']}: {files.key_file} holds no unencrypted PEM private key"
        ) from exc
    if private_key.public_key() != leaf.public_key():
        raise TlsConfigurationError(
            f"{_SETTING_OF['key_file']}: the key in {files.key_file} does not belong to the certificate in "
            f"{files.cert_file}"
        )
    client_ca = None
    if files.client_ca_file is not None:
        client_ca = _read("client_ca_file", files.client_ca_file)
        _certificates("client_ca_file", files.client_ca_file, client_ca)
    return _Material(key=key, chain=chain, client_ca=client_ca)


def _configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(material.key, material.chain)], material.client_ca)


class CertificateReloader:
    """The certificate configuration fetcher of ``grpc.dynamic_ssl_server_credentials``."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._loaded = self._stamps()
        self.initial = _configuration(load_material(files))
        self._failed: tuple[tuple[int, int, int], ...] | None = None

    def _paths(self) -> tuple[Path, ...]:
        files = self._files
        return (files.cert_file, files.key_file) + (() if files.client_ca_file is None else (files.client_ca_file,))

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        # stat() follows symlinks: a Kubernetes secret volume swaps a symlink, and the inode changes with it.
        stamps = []
        for path in self._paths():
            try:
                status = path.stat()
            except OSError:
                stamps.append((-1, -1, -1))
            else:
                stamps.append((status.st_mtime_ns, status.st_size, status.st_ino))
        return tuple(stamps)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and are usable, else None (keep the current one)."""
        with self._lock:
            stamps = self._stamps()
            if stamps in (self._loaded, self._failed):
                return None
            try:
                material = load_material(self._files)
            except TlsConfigurationError as exc:
                self._failed = stamps
                logger.warning("TLS files changed but cannot be used yet, still serving the previous ones: %s", exc)
                return None
            self._loaded = stamps
            self._failed = None
        logger.info("TLS certificate reloaded from %s", self._files.cert_file)
        return _configuration(material)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that serve ``files`` and follow them as they change; raises TlsConfigurationError at once."""
    reloader = CertificateReloader(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader,  # type: ignore[arg-type]  # the stubs leave out None, which grpcio documents as "no change"
        require_client_authentication=files.require_client_cert,
    )


def bind_port(server: grpc.Server, address: str, settings: ServerSettings) -> int:
    """Bind ``address`` with TLS when the settings name a certificate, in plaintext otherwise; the bound port."""
    files = tls_files(settings)
    if files is None:
        return server.add_insecure_port(address)
    port = server.add_secure_port(address, server_credentials(files))
    logger.info(
        "TLS on the gRPC port (certificate %s%s)",
        files.cert_file,
        ", client certificates required" if files.require_client_cert else "",
    )
    return port


def is_private(context: grpc.ServicerContext) -> bool:
    """Whether the call came over an encrypted, authenticated connection (TLS), not plaintext."""
    return PRIVATE_SECURITY_LEVEL in context.auth_context().get("security_level", ())
