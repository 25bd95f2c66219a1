"""docker-compose.yml: valid against the Compose Specification, and the promises a schema cannot check."""

import json
import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from rest_bridge.settings import BridgeSettings
from server.settings import ServerSettings
from training.settings import TrainingSettings

from ..prerequisites import REPO_ROOT
from .compose import COMPOSE_SCHEMA, InterpolationError, interpolate, interpolate_text, raw_compose

TOKEN_ENV = {"PREDICTOR_ADMIN_TOKEN": "a-token-for-the-test"}
EXPECTED_PORTS = {
    "bridge": {8000},
    "server": {50051, 8001},
    "mlflow": {5000},
    "prometheus": {9090},
    "grafana": {3000},
}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|CREDENTIAL|_KEY$", re.IGNORECASE)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return raw_compose()


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    interpolated: dict[str, Any] = interpolate(raw, TOKEN_ENV)
    return interpolated


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _dependents(services: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    """Every service that depends on ``name``, with the condition it waits for."""
    return {
        other: dependency["condition"]
        for other, service in services.items()
        for dependency_name, dependency in service.get("depends_on", {}).items()
        if dependency_name == name
    }


def test_the_file_is_valid_against_the_compose_specification(compose):
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    problems = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(compose)
    ]
    assert problems == []


def test_the_schema_rejects_what_compose_rejects(compose):
    # The schema is applied for real: a misspelt key and a bad condition are refused.
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["server"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["bridge"]["depends_on"]["server"]["condition"] = "service_ready"
    messages = [error.message for error in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("intervall" in message for message in messages)
    assert any("service_ready" in message for message in messages)


def test_the_admin_token_is_required_and_never_written_down(raw):
    server = raw["services"]["server"]
    required = "${PREDICTOR_ADMIN_TOKEN:?set PREDICTOR_ADMIN_TOKEN}"
    assert server["environment"]["PREDICTOR_ADMIN_TOKEN"] == required
    with pytest.raises(InterpolationError, match="set PREDICTOR_ADMIN_TOKEN"):
        interpolate(raw, {})
    with pytest.raises(InterpolationError):
        interpolate(raw, {"PREDICTOR_ADMIN_TOKEN": ""})


def test_no_secret_has_a_literal_value_in_the_file(raw):
    # Every token or password comes from the environment: required (:?) or a documented default (:-).
    for name, service in raw["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:[?-][^}]*\}", value), f"{name}: {key} is written down"


def test_every_long_running_service_has_a_healthcheck(services):
    for name, service in services.items():
        healthcheck = service.get("healthcheck", {})
        if healthcheck.get("disable"):
            # Only a one-shot job may go without: everything that waits for it waits for it to finish.
            dependents = _dependents(services, name)
            assert dependents, f"{name} has no healthcheck and nothing waits for it"
            assert set(dependents.values()) == {"service_completed_successfully"}, name
            assert service.get("restart") == "no", name
        else:
            test = healthcheck.get("test")
            assert isinstance(test, list), f"{name} has no healthcheck"
            assert test[0] in ("CMD", "CMD-SHELL"), name
            assert len(test) > 1, name


def test_the_server_is_checked_with_the_health_probe(services):
    test = services["server"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "server.health_probe"]
    assert test[test.index("--address") + 1] == "127.0.0.1:50051"


def test_startup_waits_on_health_and_on_training(services):
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), (name, dependency)
    assert services["server"]["depends_on"] == {
        "mlflow": {"condition": "service_healthy"},
        "train": {"condition": "service_completed_successfully"},
    }
    assert services["train"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["bridge"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_the_published_ports(services):
    published: dict[str, set[int]] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert host == container, f"{name}: {port} maps to another port"
            published.setdefault(name, set()).add(int(container))
    assert published == EXPECTED_PORTS
    assert "ports" not in services["postgres"]


def test_the_registry_is_mlflow_on_postgresql_serving_artifacts_from_a_volume(services):
    command = services["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    options = dict(option.partition("=")[::2] for option in command[2:])
    assert options["--backend-store-uri"].startswith("postgresql+psycopg2://mlflow:")
    assert options["--backend-store-uri"].endswith("@postgres:5432/mlflow")
    assert "--serve-artifacts" in options
    destination = options["--artifacts-destination"]
    assert any(volume.endswith(f":{destination}") for volume in services["mlflow"]["volumes"])
    assert "mlflow:*" in options["--allowed-hosts"].split(",")
    for client in ("train", "server"):
        assert _environment(services[client])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", client
    assert services["postgres"]["healthcheck"]["test"][1].startswith("pg_isready")


def test_training_runs_once_and_skips_served_models(services):
    assert services["train"]["command"] == ["python", "-m", "training", "--skip-if-served"]


def test_the_bridge_spreads_calls_over_every_server_address(services):
    assert _environment(services["bridge"])["BRIDGE_GRPC_TARGET"] == "dns:///server:50051"


def test_monitoring_mounts_the_folders_of_the_repository(services):
    mounts = {
        name: {volume.split(":")[0] for volume in service.get("volumes", []) if volume.startswith("./")}
        for name, service in services.items()
    }
    assert mounts["prometheus"] == {"./monitoring/prometheus"}
    assert mounts["grafana"] == {"./monitoring/grafana/provisioning", "./monitoring/grafana/dashboards"}
    for paths in mounts.values():
        for path in paths:
            assert (REPO_ROOT / path).is_dir(), f"{path} is mounted but missing"
    grafana = _environment(services["grafana"])
    assert grafana["GF_SECURITY_ADMIN_USER"] == "admin"
    # The documented defaults, for a local stack only.
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "admin"  # noqa: S105


def test_the_application_services_run_the_image_built_here(raw):
    for name in ("mlflow", "train", "server", "bridge"):
        service = raw["services"][name]
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert service["image"] == "${PREDICTOR_IMAGE:-prediction-service:local}", name
    assert (REPO_ROOT / "Dockerfile").is_file()


@pytest.mark.parametrize(
    ("text", "environment", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {}, "x"),
        ("$$A", {"A": "1"}, "$A"),
        ("$A/b", {"A": "1"}, "1/b"),
        ("${A:?need A}", {"A": "v"}, "v"),
    ],
)
def test_interpolation_follows_compose(text, environment, expected):
    assert interpolate_text(text, environment) == expected


def test_every_setting_given_is_one_the_processes_read(services):
    # The settings ignore unknown variables: a misspelt name would be silently without effect.
    server_fields = {f"PREDICTOR_{name.upper()}" for name in ServerSettings.model_fields}
    bridge_fields = {f"BRIDGE_{name.upper()}" for name in BridgeSettings.model_fields}
    training_fields = {f"TRAINING_{name.upper()}" for name in TrainingSettings.model_fields}
    for name, service in services.items():
        for key in _environment(service):
            for prefix, fields in (
                ("PREDICTOR_", server_fields),
                ("BRIDGE_", bridge_fields),
                ("TRAINING_", training_fields),
            ):
                if key.startswith(prefix):
                    assert key in fields, f"{name}: nothing reads {key}"
