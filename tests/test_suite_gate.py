"""The suite gate (``tests/suite_gate.py``) run on small suites of its own, in a pytest of their own."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .prerequisites import REPO_ROOT

PASSING = "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n"
SKIPPING = "import pytest\n\n\ndef test_skipped():\n    pytest.skip('the widget is missing')\n"
FAILING = "def test_failing():\n    assert False\n"


def _run_gate(directory: Path, files: dict[str, str], *, ci: bool, floor: int) -> subprocess.CompletedProcess[str]:
    (directory / "pytest.ini").write_text("[pytest]\n")
    for name, source in files.items():
        (directory / name).write_text(source)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    # Only the gate: the installed plugins (schemathesis, hypothesis, ...) would take seconds to import.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if ci:
        env["CI"] = "true"
    command = [sys.executable, "-m", "pytest", "-p", "tests.suite_gate", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "-o", f"minimum_test_count={floor}", str(directory)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_under_ci_a_run_with_enough_tests_and_no_skip_passes(tmp_path: Path):
    result = _run_gate(tmp_path, {"test_passing.py": PASSING}, ci=True, floor=2)
    assert result.returncode == 0, result.stdout
    assert "2 tests ran (floor 2), none skipped" in result.stdout


def test_under_ci_any_skip_fails_the_run(tmp_path: Path):
    result = _run_gate(tmp_path, {"test_passing.py": PASSING, "test_skipping.py": SKIPPING}, ci=True, floor=2)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "FAILED: 1 tests were skipped; under CI every test must run" in result.stdout
    assert "1 skipped: the widget is missing" in result.stdout


def test_under_ci_fewer_tests_than_the_floor_fail_the_run(tmp_path: Path):
    result = _run_gate(tmp_path, {"test_passing.py": PASSING}, ci=True, floor=3)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "FAILED: 2 tests ran, fewer than the floor of 3" in result.stdout


def test_under_ci_a_run_that_collects_nothing_fails_rather_than_reporting_no_tests(tmp_path: Path):
    result = _run_gate(tmp_path, {}, ci=True, floor=1)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout


def test_a_failing_test_still_fails_the_run_with_its_own_status(tmp_path: Path):
    result = _run_gate(tmp_path, {"test_passing.py": PASSING, "test_failing.py": FAILING}, ci=True, floor=3)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "3 tests ran (floor 3), none skipped" in result.stdout


def test_off_ci_skips_pass_but_are_listed_loudly_and_the_floor_is_not_enforced(tmp_path: Path):
    result = _run_gate(tmp_path, {"test_passing.py": PASSING, "test_skipping.py": SKIPPING}, ci=False, floor=10)
    assert result.returncode == 0, result.stdout
    assert "SKIPPED TESTS: these proved nothing" in result.stdout
    assert "1 skipped: the widget is missing" in result.stdout
    assert "Under CI (CI=true) any skip fails the run." in result.stdout
