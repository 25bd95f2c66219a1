"""The Dockerfile, read as Docker reads its instructions (no engine runs here), and its HEALTHCHECK run for real."""

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ..prerequisites import REPO_ROOT
from ..server.conftest import in_memory_registry, running_server

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _ignored(path: str) -> bool:
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes)


def test_a_builder_stage_and_a_runtime_stage_that_copies_its_virtualenv():
    builder, runtime = _stages()
    assert builder[0][1].endswith(" AS builder")
    assert runtime[0][1].endswith(" AS runtime")
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    # Nothing is installed into the runtime stage: it only copies.
    assert not any(keyword == "RUN" and "pip" in arguments for keyword, arguments in runtime)


def _requested(command: str) -> list[str] | None:
    """What a pip or uv install/sync command asks for (its positional arguments), or None for other commands."""
    words = shlex.split(command)
    verbs = [index for index, word in enumerate(words) if word in ("install", "sync")]
    if "pip" not in words or not verbs:
        return None
    requested, arguments = [], iter(words[verbs[0] + 1 :])
    for word in arguments:
        if word == "--python":
            next(arguments)
        elif not word.startswith("-"):
            requested.append(word)
    return requested


def test_packages_come_from_the_lock_alone():
    commands = [command for keyword, arguments in _stages()[0] if keyword == "RUN" for command in arguments.split("&&")]
    requested = [found for command in commands if (found := _requested(command)) is not None]
    # The pinned uv itself, then exactly the lock, synced (nothing the lock does not name stays installed).
    assert requested == [["uv==${UV_VERSION}"], ["/tmp/requirements.lock"]]
    assert any("uv pip sync" in command for command in commands)
    assert ("COPY", "requirements.lock /tmp/requirements.lock") in _stages()[0]


def test_every_package_of_the_project_is_copied_and_not_ignored():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = [pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {arguments.split()[0].rstrip("/") for keyword, arguments in _stages()[1] if keyword == "COPY"}
    for package in packages:
        assert package in copied, f"{package}/ is not copied into the image"
        assert not _ignored(package), f".dockerignore leaves out {package}/"
    for secret_or_local in (".venv", "mlflow.db", ".env", "state", "tests", ".git"):
        assert _ignored(secret_or_local), secret_or_local


def test_the_image_builds_the_forest_kernel_as_make_install_does_and_ships_it_beside_the_server():
    builder, runtime = _stages()
    # The Makefile's recipe: $(CC) <flags> -o $@ $<
    make_flags = re.search(r"\$\(CC\) (-[^$]+) -o \$@ \$<", (REPO_ROOT / "Makefile").read_text())
    assert make_flags is not None
    flags = make_flags.group(1).split()
    assert "-ffast-math" not in flags and not any(flag.startswith("-Ofast") for flag in flags)
    compiles = [
        shlex.split(command)
        for keyword, arguments in builder
        if keyword == "RUN"
        for command in arguments.split("&&")
        if "forest_kernel.c" in command
    ]
    assert [words[1 : 1 + len(flags)] for words in compiles] == [flags]
    assert compiles[0][-1] == "/tmp/forest_kernel.c" and compiles[0][0] == "cc"
    copies = [arguments for keyword, arguments in runtime if keyword == "COPY"]
    shipped = f"--from=builder {compiles[0][compiles[0].index('-o') + 1]} server/_forest_kernel.so"
    # After the code, so that no host-built library could take its place (and .dockerignore leaves it out).
    assert copies.index(shipped) > copies.index("server/ server/")
    assert _ignored("server/_forest_kernel.so")


def test_the_image_runs_as_a_non_root_user_with_no_secrets():
    runtime = _stages()[1]
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    keywords = [keyword for keyword, _ in runtime]
    assert keywords.index("USER") < keywords.index("CMD")
    for keyword, arguments in _instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET)\w*=", arguments), arguments


def test_the_default_command_is_the_grpc_server():
    commands = [arguments for keyword, arguments in _stages()[1] if keyword == "CMD"]
    assert commands == ['["python", "-m", "server"]']


def _healthcheck_command() -> str:
    (healthcheck,) = [arguments for keyword, arguments in _instructions() if keyword == "HEALTHCHECK"]
    options, separator, command = healthcheck.partition(" CMD ")
    assert separator, healthcheck
    assert "--interval=" in options
    assert "--timeout=" in options
    return command


def _run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    # Shell form, as Docker runs it: /bin/sh -c, with the image's PATH (python is the virtualenv's).
    environment = {
        **os.environ,
        "PREDICTOR_PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        ["/bin/sh", "-c", _healthcheck_command()],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_healthcheck_passes_on_a_serving_server_and_fails_on_one_that_is_not():
    assert "server.health_probe" in _healthcheck_command()
    with running_server(in_memory_registry(), metrics_port=None) as server:
        healthy = _run_healthcheck(server.port)
    with running_server(in_memory_registry(iris=False), metrics_port=None) as server:
        unhealthy = _run_healthcheck(server.port)
    assert (healthy.returncode, healthy.stderr) == (0, "")
    assert unhealthy.returncode == 1
    assert "NOT_SERVING" in unhealthy.stderr


@pytest.mark.parametrize("path", ["server", "rest_bridge", "training", "model_registry", "protos", "data"])
def test_the_code_the_image_copies_exists(path):
    assert (REPO_ROOT / path / "__init__.py").is_file()
