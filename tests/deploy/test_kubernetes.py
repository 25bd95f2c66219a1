"""deploy/kubernetes: schema-valid manifests (kubernetes-validate, offline) that keep the service's promises."""

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from rest_bridge.settings import BridgeSettings
from server.settings import ServerSettings

from ..prerequisites import REPO_ROOT

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests promise to work on: native gRPC probes are GA since 1.27.
KUBERNETES_VERSIONS = ("1.30", "1.37")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    (document,) = _documents(MANIFESTS / "kustomization.yaml")
    return document


@pytest.fixture(scope="module")
def resources(kustomization: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for name in kustomization["resources"]:
        for document in _documents(MANIFESTS / name):
            found[document["kind"], document["metadata"]["name"]] = document
    return found


def _container(resources: dict[tuple[str, str], dict[str, Any]], deployment: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = resources["Deployment", deployment]["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def _config(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = resources["ConfigMap", "prediction-service"]["data"]
    return data


def test_the_kustomization_lists_every_manifest_in_the_folder(kustomization):
    on_disk = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    # The image is an overlay's choice (CI writes one with the tag it pushed), never a tag committed here.
    assert "images" not in kustomization


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(resources, version):
    for (kind, name), document in resources.items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_the_validator_refuses_a_broken_manifest(resources):
    broken = yaml.safe_load(yaml.safe_dump(resources["Deployment", "prediction-server"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(resources["Service", "prediction-server"]))
    broken["spec"]["clusterIp"] = "None"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_no_secret_is_committed_and_the_admin_token_comes_from_one(resources):
    assert not any(kind == "Secret" for kind, _ in resources)
    server = _container(resources, "prediction-server")
    assert _env(server)["PREDICTOR_ADMIN_TOKEN"] == {"secretKeyRef": {"name": "prediction-admin", "key": "token"}}


def test_the_server_is_probed_with_native_grpc_health(resources):
    server = _container(resources, "prediction-server")
    grpc_port = next(port["containerPort"] for port in server["ports"] if port["name"] == "grpc")
    assert grpc_port == 50051
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": 50051}, probe


def test_termination_leaves_time_to_drain(resources):
    pod = resources["Deployment", "prediction-server"]["spec"]["template"]["spec"]
    server = _container(resources, "prediction-server")
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop, grace = float(command[1]), float(_env(server)["PREDICTOR_GRACE_SECONDS"])
    assert pre_stop >= 5
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace


def test_the_server_runs_non_root_on_a_read_only_root_with_writable_dirs(resources):
    pod = resources["Deployment", "prediction-server"]["spec"]["template"]["spec"]
    server = _container(resources, "prediction-server")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["securityContext"]["capabilities"]["drop"] == ["ALL"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    writable = {mount["mountPath"] for mount in server["volumeMounts"] if mount["name"] in empty_dirs}
    env = _env(server)
    needed = {
        env["PREDICTOR_STATE_DIR"],
        str(Path(env["PREDICTOR_PREDICTION_LOG_PATH"]).parent),
        env["PREDICTOR_RETRAIN_WORKDIR"],
        "/tmp",
    }
    assert needed <= writable
    for resource in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(server["resources"][resource]), resource


def test_every_container_is_locked_down_and_sized(resources):
    for (kind, name), document in resources.items():
        if kind != "Deployment":
            continue
        pod = document["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["image"] == "prediction-service", name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert "readinessProbe" in container, name
            assert "livenessProbe" in container, name


def test_a_headless_service_lets_the_bridge_reach_every_replica(resources):
    service = resources["Service", "prediction-server"]
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = resources["Deployment", "prediction-server"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    target = _config(resources)["BRIDGE_GRPC_TARGET"]
    assert target == f"dns:///{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    # The bridge accepts the target, and hands it to gRPC as it is (the dns resolver, re-resolving).
    assert BridgeSettings(grpc_target=target).channel_target == target
    bridge = _container(resources, "rest-bridge")
    assert bridge["envFrom"] == [{"configMapRef": {"name": "prediction-service"}}]


def test_the_registry_is_the_mlflow_service(resources):
    service = resources["Service", "mlflow"]
    assert _config(resources)["MLFLOW_TRACKING_URI"] == f"http://mlflow:{service['spec']['ports'][0]['port']}"
    mlflow = _container(resources, "mlflow")
    assert mlflow["command"][:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in mlflow["command"]
    assert _env(mlflow)["MLFLOW_BACKEND_STORE_URI"] == {
        "secretKeyRef": {"name": "mlflow-backend", "key": "backend-store-uri"}
    }


def test_autoscaling_and_disruption_budget_fit_together(resources):
    autoscaler = resources["HorizontalPodAutoscaler", "prediction-server"]
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "prediction-server",
    }
    budget = resources["PodDisruptionBudget", "prediction-server"]
    pod_labels = resources["Deployment", "prediction-server"]["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # Evictions can always proceed: the budget keeps fewer pods than the autoscaler's floor.
    assert budget["spec"]["minAvailable"] < autoscaler["spec"]["minReplicas"]


def test_every_setting_given_is_one_the_processes_read(resources):
    server_fields = {f"PREDICTOR_{name.upper()}" for name in ServerSettings.model_fields}
    bridge_fields = {f"BRIDGE_{name.upper()}" for name in BridgeSettings.model_fields}
    names = set(_config(resources))
    for deployment in ("prediction-server", "rest-bridge"):
        names |= set(_env(_container(resources, deployment)))
    for name in names:
        if name.startswith("PREDICTOR_"):
            assert name in server_fields, f"the server has no setting {name}"
        if name.startswith("BRIDGE_"):
            assert name in bridge_fields, f"the bridge has no setting {name}"
