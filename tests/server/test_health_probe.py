"""The container health probe, run as the HEALTHCHECK runs it: a process against a real server."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from server.app import PredictionServer

from ..prerequisites import REPO_ROOT
from .conftest import in_memory_registry, running_server
from .test_tls import CertificateAuthority, tls_settings

HOUSING = "prediction.v1.HousingPredictor"
IRIS = "prediction.v1.IrisClassifier"


def _probe(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.health_probe", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def iris_only_server() -> Iterator[PredictionServer]:
    """Iris loaded and SERVING; housing has no model, so it and the overall status are NOT_SERVING."""
    with running_server(in_memory_registry(housing=False), metrics_port=None) as server:
        yield server


def test_a_serving_server_passes_with_no_output():
    with running_server(in_memory_registry(), metrics_port=None) as server:
        probed = _probe("--address", f"127.0.0.1:{server.port}")
        named = _probe("--address", f"127.0.0.1:{server.port}", "--service", HOUSING)
    assert (probed.returncode, probed.stderr) == (0, "")
    assert (named.returncode, named.stderr) == (0, "")


def test_a_service_with_no_model_fails_with_one_line(iris_only_server):
    address = f"127.0.0.1:{iris_only_server.port}"
    housing = _probe("--address", address, "--service", HOUSING)
    overall = _probe("--address", address)
    iris = _probe("--address", address, "--service", IRIS)
    assert housing.returncode == 1
    assert housing.stderr.splitlines() == [f"health check of {HOUSING} at {address} failed: NOT_SERVING"]
    assert overall.returncode == 1
    assert overall.stderr.splitlines() == [f"health check of (overall) at {address} failed: NOT_SERVING"]
    assert (iris.returncode, iris.stderr) == (0, "")


def test_an_unknown_service_fails(iris_only_server):
    probed = _probe("--address", f"127.0.0.1:{iris_only_server.port}", "--service", "prediction.v1.Nope")
    assert probed.returncode == 1
    assert "NOT_FOUND" in probed.stderr
    assert len(probed.stderr.splitlines()) == 1


def test_a_refused_connection_fails_at_once():
    # Bound but not listening: the port stays ours, and connecting to it is refused.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        started = time.monotonic()
        probed = _probe("--address", f"127.0.0.1:{reserved.getsockname()[1]}", "--timeout", "20")
        elapsed = time.monotonic() - started
    assert probed.returncode == 1
    assert "UNAVAILABLE" in probed.stderr
    assert len(probed.stderr.splitlines()) == 1
    # Far below the 20 s timeout: a refused connection is not waited out.
    assert elapsed < 10


def test_a_server_that_never_answers_fails_within_the_timeout():
    # Accepts TCP connections (the kernel does, from the backlog) but never speaks HTTP/2.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        probed = _probe("--address", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1")
        elapsed = time.monotonic() - started
    assert probed.returncode == 1
    assert "DEADLINE_EXCEEDED" in probed.stderr
    assert len(probed.stderr.splitlines()) == 1
    assert 1 <= elapsed < 8


def test_a_bad_timeout_is_a_usage_error():
    probed = _probe("--address", "127.0.0.1:1", "--timeout", "0")
    assert probed.returncode == 2
    assert "must be more than 0 seconds" in probed.stderr


def test_over_mtls_the_probe_passes_with_the_ca_and_its_certificate_and_fails_in_plaintext(tmp_path):
    ca = CertificateAuthority("ca")
    with running_server(in_memory_registry(), **tls_settings(tmp_path, ca, client_ca=ca)) as server:
        (tmp_path / "ca.pem").write_bytes(ca.pem)
        cert, key = ca.client("health-probe").write(tmp_path, "probe")
        address = f"localhost:{server.port}"
        tls = ("--tls-ca", str(tmp_path / "ca.pem"))
        passed = _probe("--address", address, *tls, "--tls-cert", str(cert), "--tls-key", str(key))
        plaintext = _probe("--address", address, "--timeout", "2")
        anonymous = _probe("--address", address, *tls, "--timeout", "2")
    assert (passed.returncode, passed.stderr) == (0, "")
    assert plaintext.returncode == 1
    assert anonymous.returncode == 1
    assert len(anonymous.stderr.splitlines()) == 1
