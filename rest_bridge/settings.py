"""Settings of the REST bridge process: built once in ``__main__`` and passed down."""

import ipaddress

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
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
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger ones get 413 before any of it is parsed.",
    )
    log_level: str = Field("INFO", description="Logging level of the bridge process.")
    access_log: bool = Field(True, description="Log one line per request, with its request id, status and time.")

    @field_validator("grpc_target")
    @classmethod
    def _valid_target(cls, value: str) -> str:
        channel_target(value)
        return value.strip()

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @property
    def channel_target(self) -> str:
        return channel_target(self.grpc_target)
