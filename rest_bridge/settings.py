"""Settings of the REST bridge process: built once in ``__main__`` and passed down."""

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
# What a browser sends as Origin: scheme, host and optional port, no path and no trailing slash.
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
# Targets that already name a gRPC resolver are used as they are.
RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


def _split_host_port(address: str) -> tuple[str, int]:
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{address!r} is not ip:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def channel_target(target: str) -> str:
    """The gRPC channel target for a ``grpc_target`` setting (see its description for the accepted forms).

    A comma-separated list of literal addresses becomes gRPC's ``ipv4:`` or ``ipv6:`` URI, the only forms
    in which one channel can name several servers without DNS; one URI holds one address family.
    """
    target = target.strip()
    if not target:
        raise ValueError("the gRPC target is empty")
    if "," not in target or target.startswith(RESOLVER_SCHEMES):
        return target
    addresses = [_split_host_port(part.strip()) for part in target.split(",")]
    families = set()
    for host, _port in addresses:
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(f"{host!r} in a list of servers must be an IP address; use dns:/// for names") from None
    if families == {4}:
        return "ipv4:" + ",".join(f"{host}:{port}" for host, port in addresses)
    if families == {6}:
        return "ipv6:" + ",".join(f"[{host}]:{port}" for host, port in addresses)
    raise ValueError("a list of servers must be all IPv4 or all IPv6 addresses")


class BridgeSettings(BaseSettings):
    """Every knob of the REST bridge. Environment variables use the ``BRIDGE_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="ignore", frozen=True)

    host: str = Field("0.0.0.0", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port of the bridge.")
    grpc_target: str = Field(
        "localhost:50051",
        description="The prediction server(s): 'host:port' (every address the name resolves to), "
        "'dns:///name:port' (every address the name resolves to, re-resolved as replicas come and go), or a "
        "comma-separated list of 'ip:port' ('10.0.0.1:50051,10.0.0.2:50051', all IPv4 or all IPv6, '[::1]:50051' "
        "for IPv6), or any gRPC target URI ('ipv4:', 'ipv6:', 'unix:'). Calls are spread over every address with "
        "round_robin load balancing.",
    )
    upstream_timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="Deadline of every gRPC call to the prediction server; 504 when it passes."
    )
    max_upstream_calls: int = Field(
        200,
        ge=1,
        description="gRPC calls the bridge has open at once; further requests wait for one to end, within the same "
        "deadline. Keep it below the server's PREDICTOR_MAX_STREAMS_PER_CONNECTION (256), beyond which the server "
        "refuses some of a connection's calls (503 here).",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger ones get 413 before any of it is parsed.",
    )
    log_level: str = Field("INFO", description="Logging level of the bridge process.")
    access_log: bool = Field(True, description="Log one line per request, with its request id, status and time.")
    grpc_tls: bool = Field(
        False,
        description="Call the prediction server over TLS (plaintext when off). Without grpc_tls_ca_file the "
        "server's certificate must chain to a CA of the system's trust store.",
    )
    grpc_tls_ca_file: Path | None = Field(
        None, description="PEM CA certificate(s) the prediction server's certificate must chain to."
    )
    grpc_tls_cert_file: Path | None = Field(
        None, description="PEM client certificate chain the bridge presents to the server (mTLS); needs the key."
    )
    grpc_tls_key_file: Path | None = Field(None, description="PEM private key (unencrypted) of grpc_tls_cert_file.")
    grpc_tls_server_name: str | None = Field(
        None,
        description="The name the server's certificate is checked against instead of the target's host (for "
        "tests, or a target given as an IP address).",
    )
    cors_allow_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Web origins whose pages may call the bridge from a browser (CORS), comma-separated, each as "
        "the browser sends it: 'https://app.example.com', 'http://localhost:3000' (no path, no trailing slash); '*' "
        "for any origin. Empty (the default): no CORS headers at all, so browsers allow only same-origin pages.",
    )

    @field_validator("grpc_target")
    @classmethod
    def _valid_target(cls, value: str) -> str:
        channel_target(value)
        return value.strip()

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @field_validator("cors_allow_origins")
    @classmethod
    def _valid_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], no path or trailing slash")
        if "*" in value and len(value) > 1:
            raise ValueError("'*' already allows every origin: list origins or '*' alone")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _complete_tls(self) -> Self:
        # A TLS file with TLS off would silently leave the bridge on plaintext.
        tls_only = (self.grpc_tls_ca_file, self.grpc_tls_cert_file, self.grpc_tls_key_file, self.grpc_tls_server_name)
        if not self.grpc_tls and any(value is not None for value in tls_only):
            raise ValueError("BRIDGE_GRPC_TLS_* files and server name are used only with BRIDGE_GRPC_TLS=true")
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError("BRIDGE_GRPC_TLS_CERT_FILE and BRIDGE_GRPC_TLS_KEY_FILE must be set together")
        return self

    @property
    def channel_target(self) -> str:
        return channel_target(self.grpc_target)
