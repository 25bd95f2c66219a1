"""What the suite needs beyond Python: looked for, and missing ones failing under CI and skipped elsewhere."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .prerequisites import HOUSING_CACHE_FILE, HOUSING_DATA, REPO_ROOT, Prerequisite


def _nowhere() -> Path | None:
    return None


ABSENT = Prerequisite("the widget", "install the widget", _nowhere)


def test_a_missing_prerequisite_fails_under_ci(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing prerequisite: the widget is missing: install the widget"):
        ABSENT.require()


def test_a_missing_prerequisite_skips_elsewhere(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="the widget is missing: install the widget"):
        ABSENT.require()


def test_the_housing_data_is_found_where_scikit_learn_data_points(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    (tmp_path / HOUSING_CACHE_FILE).write_bytes(b"")
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path))
    assert HOUSING_DATA.require() == tmp_path


def test_under_ci_the_run_stops_before_any_test_naming_what_is_missing_and_how_to_get_it(tmp_path: Path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_anything.py").write_text("def test_anything():\n    pass\n")
    # No PATH: Node.js cannot be found (the interpreter and grpcurl are found beside sys.executable). Only
    # this plugin is loaded: the installed ones would take seconds to import.
    env = {**os.environ, "CI": "true", "PATH": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.prerequisites", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "CI=true and the test suite's prerequisites are missing" in output
    assert "Node.js (`node` on PATH) is missing: install Node.js and npm" in output
    assert " passed" not in output
