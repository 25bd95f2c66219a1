"""The suite as a gate that cannot quietly shrink (a pytest plugin, loaded by ``tests/conftest.py``).

Under CI (``CI=true``) a run fails, whatever its tests said, when any test was skipped (or xfailed: it
proved nothing either) or when fewer tests ran than the floor, the ini option ``minimum_test_count`` in
``pyproject.toml``. A test that ran is one whose body was called, passed or failed. Off CI the floor is
not enforced, but every skip is listed at the end of the run with its reason, so a skip is never quiet.
"""

from collections import Counter
from dataclasses import dataclass, field

import pytest

from .prerequisites import running_in_ci

FLOOR_OPTION = "minimum_test_count"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        FLOOR_OPTION,
        "Under CI the run fails when fewer tests than this ran (raise it when tests are added).",
        default="0",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker sees only its share of the tests: the controller, which receives every
    # worker's reports, is the one that counts and enforces.
    if hasattr(config, "workerinput"):
        return
    config.pluginmanager.register(SuiteGate(int(config.getini(FLOOR_OPTION)), enforced=running_in_ci()))


# eq=False keeps it hashable, as pytest's plugin manager needs its plugins to be.
@dataclass(eq=False)
class SuiteGate:
    floor: int
    enforced: bool
    ran: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and not report.skipped:
            self.ran.add(report.nodeid)
        if report.skipped:
            self.skipped[report.nodeid] = _skip_reason(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if len(self.ran) < self.floor:
            self.failures.append(
                f"{len(self.ran)} tests ran, fewer than the floor of {self.floor} "
                f"({FLOOR_OPTION} in pyproject.toml): tests were lost, deselected or never collected"
            )
        if self.skipped:
            self.failures.append(f"{len(self.skipped)} tests were skipped; under CI every test must run")
        # Only a run that would otherwise pass is turned into a failure: interruptions and usage errors keep
        # their own exit status.
        passing = session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.enforced and self.failures and passing:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            terminalreporter.section("SKIPPED TESTS: these proved nothing", sep="!", red=True, bold=True)
            for reason, count in Counter(self.skipped.values()).most_common():
                terminalreporter.write_line(f"{count:4d} skipped: {reason}", yellow=True, bold=True)
            if not self.enforced:
                terminalreporter.write_line("Under CI (CI=true) any skip fails the run.", yellow=True)
        if self.enforced:
            terminalreporter.section("suite gate (CI)", sep="=", red=bool(self.failures), green=not self.failures)
            for failure in self.failures:
                terminalreporter.write_line(f"FAILED: {failure}", red=True, bold=True)
            if not self.failures:
                terminalreporter.write_line(f"{len(self.ran)} tests ran (floor {self.floor}), none skipped")


def _skip_reason(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail or 'no reason given'}"
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)
