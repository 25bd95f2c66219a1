"""Settings and the forms of the gRPC target, including round_robin over several real servers."""

import pytest
from pydantic import ValidationError

from rest_bridge.settings import BridgeSettings, channel_target

from .conftest import IRIS, bridge
from .scripted_server import scripted_server

pytestmark = pytest.mark.anyio


def test_defaults(monkeypatch: pytest.MonkeyPatch):
    for name in ("BRIDGE_HOST", "BRIDGE_PORT", "BRIDGE_GRPC_TARGET", "BRIDGE_UPSTREAM_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = BridgeSettings()
    assert (settings.host, settings.port, settings.grpc_target) == ("0.0.0.0", 8000, "localhost:50051")
    assert settings.upstream_timeout_seconds == 5.0
    assert all(field.description for field in BridgeSettings.model_fields.values())


def test_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BRIDGE_GRPC_TARGET", "10.0.0.1:50051, 10.0.0.2:50052")
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "debug")
    monkeypatch.setenv("BRIDGE_UPSTREAM_TIMEOUT_SECONDS", "0.5")
    settings = BridgeSettings()
    assert settings.channel_target == "ipv4:10.0.0.1:50051,10.0.0.2:50052"
    assert settings.log_level == "DEBUG"
    assert settings.upstream_timeout_seconds == 0.5


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:50051", "localhost:50051"),
        ("dns:///predictor.default.svc:50051", "dns:///predictor.default.svc:50051"),
        ("127.0.0.1:1,127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        ("[::1]:1, [fe80::1]:2", "ipv6:[::1]:1,[fe80::1]:2"),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2"),
    ],
)
def test_target_forms(target: str, expected: str):
    assert channel_target(target) == expected


@pytest.mark.parametrize("target", ["", "a.example:1,b.example:2", "127.0.0.1:1,[::1]:2", "127.0.0.1,127.0.0.2:1"])
def test_bad_targets_are_refused(target: str):
    with pytest.raises(ValidationError):
        BridgeSettings(grpc_target=target)


@pytest.mark.parametrize("value", [{"log_level": "LOUD"}, {"upstream_timeout_seconds": 0}, {"port": 70000}])
def test_bad_values_are_refused(value: dict[str, object]):
    with pytest.raises(ValidationError):
        BridgeSettings(**value)  # type: ignore[arg-type]


async def test_a_list_of_servers_shares_the_load_round_robin():
    with scripted_server() as first, scripted_server() as second:
        async with bridge(f"127.0.0.1:{first.port},127.0.0.1:{second.port}") as client:
            # round_robin only picks connected subchannels: wait until both took a call.
            for _ in range(200):
                assert (await client.post("/predict/iris", json=IRIS)).status_code == 200
                if first.script.metadata and second.script.metadata:
                    break
            before = (len(first.script.metadata), len(second.script.metadata))
            for _ in range(20):
                assert (await client.post("/predict/iris", json=IRIS)).status_code == 200
    assert len(first.script.metadata) - before[0] == 10
    assert len(second.script.metadata) - before[1] == 10
