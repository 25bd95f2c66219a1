"""Retrain operations end to end: real ``python -m training`` children on a real SQLite MLflow registry."""

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import server.admin.operations
from data.raw import write_raw_datasets
from model_registry.mlflow import MlflowRegistry
from server.admin.operations import (
    INTERRUPTED,
    STOPPED,
    Operation,
    OperationNotFoundError,
    OperationState,
    OperationStore,
    RetrainAlreadyRunningError,
    RetrainRequestError,
    RetrainRunner,
    RunnerStoppedError,
)
from tests.prerequisites import REPO_ROOT
from training.hyperparameters import HyperparameterError

HOUSING_MODEL = "CaliforniaHousingBestModel"
MakeRunner = Callable[..., RetrainRunner]


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with every migration applied; each test works on its own copy."""
    path = tmp_path_factory.mktemp("operations_registry") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory, offline_data_home: Path) -> Path:
    directory = tmp_path_factory.mktemp("operations_raw")
    write_raw_datasets(directory, offline_data_home, allow_download=False)
    return directory


@pytest.fixture
def tracking_uri(tmp_path: Path, migrated_db: Path) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copyfile(migrated_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def child_env(tmp_path: Path, tracking_uri: str, raw_dir: Path, offline_data_home: Path) -> dict[str, str]:
    """What the server hands its training children: its environment plus the registry and cheap settings."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "TRAINING_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "TRAINING_DATA_DIR": str(raw_dir),
        "SCIKIT_LEARN_DATA": str(offline_data_home),
        "TRAINING_ALLOW_DOWNLOAD": "false",
        "TRAINING_HOUSING_MAX_ITER": "20",
        "TRAINING_HOUSING_MAX_RMSE": "2.0",
    }


@pytest.fixture
def make_runner(tmp_path: Path, child_env: dict[str, str]) -> Iterator[MakeRunner]:
    """Runners on ``tmp_path/state``; every one is stopped (its children killed and reaped) after the test."""
    runners: list[RetrainRunner] = []
    workdir = tmp_path / "work"
    workdir.mkdir()

    def make(**overrides: Any) -> RetrainRunner:
        options: dict[str, Any] = {
            "python_executable": sys.executable,
            "child_env": child_env,
            "niceness": 5,
            "openmp_threads": 1,
            "workdir": workdir,
            "on_finished": None,
        } | overrides
        runner = RetrainRunner(OperationStore(tmp_path / "state"), **options)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop(timeout=5)


def wait_finished(runner: RetrainRunner, operation_id: str, timeout: float = 180) -> Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation = runner.get(operation_id)
        if operation.state.finished:
            return operation
        time.sleep(0.05)
    raise AssertionError(f"operation {operation_id} did not finish: {runner.get(operation_id)}")


def child_pid(operation_id: str, timeout: float = 60) -> int:
    """The pid of the training child of ``operation_id``, found among this process's children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError):
                continue  # gone meanwhile
            # Once nice(1) has exec'd python: before that the process is not yet at its lower priority.
            running_python = command[1:3] == [b"-m", b"training"]
            if parent == os.getpid() and running_python and any(operation_id.encode() in part for part in command):
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no child process runs operation {operation_id}")


def is_alive(pid: int) -> bool:
    """True for a running process and for an unreaped (zombie) one."""
    return Path(f"/proc/{pid}").exists()


def test_retrain_promotes_then_a_weaker_one_is_rejected_with_the_reason(
    make_runner: MakeRunner, tracking_uri: str, tmp_path: Path
) -> None:
    finished: list[Operation] = []
    # At normal priority (no nice(1) in the command): this test waits for two whole trainings.
    runner = make_runner(on_finished=finished.append, niceness=0)

    queued = runner.start("housing", {"max_iter": 5.0}, max_rows=1000)
    assert (queued.state, queued.model, queued.trigger, queued.max_rows) == (
        OperationState.QUEUED,
        "housing",
        "manual",
        1000,
    )
    assert queued.hyperparameters == {"max_iter": 5} and isinstance(queued.hyperparameters["max_iter"], int)
    assert queued.created_at.tzinfo is UTC
    first = wait_finished(runner, queued.id)
    assert first.state is OperationState.SUCCEEDED, first.failure_reason
    assert (first.registered_version, first.promoted, first.champion_version) == ("1", True, None)
    assert first.decision_reason.startswith("no champion yet and rmse ")
    assert first.candidate_metrics.keys() == {"rmse", "mae", "r2"} and first.champion_metrics == {}
    assert first.started_at is not None and first.finished_at is not None
    assert queued.created_at <= first.started_at <= first.finished_at
    assert first.failure_reason == ""

    registry = MlflowRegistry(tracking_uri)
    assert registry.aliases(HOUSING_MODEL) == {"champion": "1"}
    run = MlflowClient(tracking_uri=tracking_uri).get_run(registry.version(HOUSING_MODEL, "1").run_id)
    assert (run.data.params["max_iter"], run.data.params["rows_used"]) == ("5", "1000")

    weaker = wait_finished(runner, runner.start("housing", {"max_iter": 1}, max_rows=1000).id)
    assert weaker.state is OperationState.SUCCEEDED, weaker.failure_reason
    assert (weaker.registered_version, weaker.promoted, weaker.champion_version) == ("2", False, "1")
    # The champion was scored on the candidate's held-out rows, which are the ones it was trained against.
    assert weaker.champion_metrics == first.candidate_metrics
    rmse, champion_rmse = weaker.candidate_metrics["rmse"], first.candidate_metrics["rmse"]
    assert weaker.decision_reason == f"rmse {rmse:.4f} is worse than champion v1's {champion_rmse:.4f}"
    assert registry.aliases(HOUSING_MODEL) == {"champion": "1"}

    assert [each.id for each in finished] == [first.id, weaker.id]
    assert finished == [first, weaker]
    assert runner.list() == [weaker, first] and runner.list("iris") == []
    # Finished operations are read back after a restart, exactly as they were; result files are consumed.
    assert OperationStore(tmp_path / "state").list("housing") == [weaker, first]
    assert sorted(path.name for path in (tmp_path / "state" / "operations").iterdir()) == sorted(
        [f"{first.id}.json", f"{weaker.id}.json"]
    )


def test_second_start_of_a_model_is_refused_while_one_runs_and_stop_ends_them(make_runner: MakeRunner) -> None:
    runner = make_runner()
    first = runner.start("iris", {}, max_rows=None)
    with pytest.raises(
        RetrainAlreadyRunningError, match=f"a retrain of iris is already in progress: operation {first.id}"
    ):
        runner.start("iris", {"C": 1.0}, max_rows=None)
    # Another model is accepted, and waits for the one training slot.
    other_model = runner.start("housing", {}, max_rows=1000)
    pids = [child_pid(first.id)]
    assert [runner.get(each.id).state for each in (first, other_model)] == [
        OperationState.RUNNING,
        OperationState.QUEUED,
    ]

    runner.stop(timeout=5)

    for operation in (first, other_model):
        stopped = runner.get(operation.id)
        assert (stopped.state, stopped.failure_reason) == (OperationState.FAILED, STOPPED)
        assert stopped.finished_at is not None
    assert runner.get(other_model.id).started_at is None  # it never ran
    assert not any(is_alive(pid) for pid in pids)  # terminated and reaped
    assert not any(thread.name.startswith("retrain-") for thread in threading.enumerate())  # joined
    with pytest.raises(RunnerStoppedError):
        runner.start("iris", {}, max_rows=None)
    assert len(runner.list("iris")) == 1  # the refused start recorded nothing


def test_failing_child_reports_its_exit_code_and_only_its_last_lines(
    make_runner: MakeRunner, child_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Refused by the child's settings: it exits 2 after a four-line message, of which the last two are kept.
    child_env["TRAINING_HOUSING_MAX_RMSE"] = "-1"

    def broken_callback(operation: Operation) -> None:
        raise RuntimeError(f"callback broke on {operation.id}")

    runner = make_runner(output_lines_kept=2, on_finished=broken_callback)
    failed = wait_finished(runner, runner.start("housing", {}, max_rows=1000).id)

    assert failed.state is OperationState.FAILED
    header, *lines = failed.failure_reason.splitlines()
    assert header == "training exited with code 2; last output:"
    assert len(lines) == 2
    assert lines[0].startswith("  Input should be greater than 0")
    assert lines[1].startswith("    For further information visit https://errors.pydantic.dev")
    assert failed.promoted is None and failed.registered_version is None
    # The finished operation is released at once: the next retrain of the model is accepted.
    again = runner.start("housing", {}, max_rows=1000)
    assert again.state is OperationState.QUEUED and again.id != failed.id
    # The callback's error is logged, and did not stop the runner thread from finishing its work.
    deadline = time.monotonic() + 30
    while "on_finished failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert f"on_finished failed for retrain {failed.id}" in caplog.text
    assert any(record.exc_info and "callback broke" in str(record.exc_info[1]) for record in caplog.records)


def test_killed_child_fails_with_the_signal_named(make_runner: MakeRunner) -> None:
    finished: list[Operation] = []
    runner = make_runner(on_finished=finished.append)
    operation = runner.start("iris", {}, max_rows=None)
    pid = child_pid(operation.id)
    os.kill(pid, signal.SIGKILL)

    killed = wait_finished(runner, operation.id)
    assert killed.state is OperationState.FAILED
    assert killed.failure_reason.startswith("training was killed by SIGKILL")
    assert not is_alive(pid)
    deadline = time.monotonic() + 30
    while not finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert finished == [killed]


def test_child_runs_at_lower_priority_with_the_asked_environment(make_runner: MakeRunner, tmp_path: Path) -> None:
    runner = make_runner(niceness=7, openmp_threads=1)
    operation = runner.start("iris", {}, max_rows=None)
    pid = child_pid(operation.id)
    # nice(1) adds to this process's niceness; the kernel caps it at 19.
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    threads = [int(stat.read_text().rsplit(")", 1)[1].split()[16]) for stat in Path(f"/proc/{pid}/task").glob("*/stat")]
    assert threads and set(threads) == {expected}
    environment = dict(
        entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in entry
    )
    assert (environment["OMP_NUM_THREADS"], environment["MLFLOW_DISABLE_TELEMETRY"]) == ("1", "true")
    assert Path(f"/proc/{pid}/cwd").resolve() == (tmp_path / "work").resolve()
    command = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    assert command[1:5] == ["-m", "training", "--model", "iris"]
    assert command[-3:-1] == ["--result-file", str(tmp_path / "state" / "operations" / f"{operation.id}.result.json")]


def test_overrides_reach_the_child_command_line(make_runner: MakeRunner) -> None:
    runner = make_runner()
    operation = runner.start("housing", {"learning_rate": 0.25, "max_depth": 4.0}, max_rows=500)
    command = Path(f"/proc/{child_pid(operation.id)}/cmdline").read_text().split("\0")
    assert command[5:11] == ["--max-rows", "500", "--param", "learning_rate=0.25", "--param", "max_depth=4"]


def stand_in_child(tmp_path: Path, program: str) -> str:
    """An executable that ignores the training command line and runs ``program``: for output and exit handling."""
    script = tmp_path / "stand-in-python"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -c {shlex.quote(program)}\n")
    script.chmod(0o755)
    return str(script)


def test_output_kept_is_bounded_in_lines_and_line_length(make_runner: MakeRunner, tmp_path: Path) -> None:
    # A thousand lines, then a megabyte with no newline at all.
    program = "import sys\nfor i in range(1000): print(i)\nsys.stdout.write('x' * 1_000_000)\nsys.exit(3)"
    runner = make_runner(python_executable=stand_in_child(tmp_path, program), output_lines_kept=3)
    failed = wait_finished(runner, runner.start("iris", {}, max_rows=None).id)
    header, *lines = failed.failure_reason.splitlines()
    assert header == "training exited with code 3; last output:"
    assert len(lines) == 3
    assert all(0 < len(line) <= 2000 and set(line) == {"x"} for line in lines)


def test_exit_0_without_a_result_file_fails(make_runner: MakeRunner, tmp_path: Path) -> None:
    runner = make_runner(python_executable=stand_in_child(tmp_path, "print('trained, honestly')"))
    failed = wait_finished(runner, runner.start("iris", {}, max_rows=None).id)
    assert failed.state is OperationState.FAILED
    assert failed.failure_reason.startswith("training exited with code 0 but left no result (")
    assert failed.failure_reason.endswith("; last output:\ntrained, honestly")


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (("housing", {"max_iter": 2.5}, None), HyperparameterError, "max_iter must be an integer in"),
        (("housing", {"n_estimators": 10}, None), HyperparameterError, "'n_estimators' is not a hyperparameter"),
        (("iris", {"C": 1e9}, None), HyperparameterError, "C must be a number in"),
        (("wine", {}, None), RetrainRequestError, "unknown model 'wine'"),
        (("iris", {}, 5), RetrainRequestError, "max_rows must be at least 20"),
    ],
)
def test_invalid_requests_are_refused_before_anything_starts(
    make_runner: MakeRunner,
    request_: tuple[str, dict[str, float], int | None],
    error: type[Exception],
    message: str,
) -> None:
    model, hyperparameters, max_rows = request_
    runner = make_runner()
    with pytest.raises(error, match=message):
        runner.start(model, hyperparameters, max_rows)
    assert runner.list() == []
    assert not any(thread.name.startswith("retrain-") for thread in threading.enumerate())


NOW = datetime.now(UTC)


def operation(state: OperationState, *, model: str = "housing", minutes_ago: int = 0, **fields: Any) -> Operation:
    created = NOW - timedelta(minutes=minutes_ago)
    return Operation(
        id=f"{minutes_ago:032x}",
        model=model,
        state=state,
        hyperparameters={"max_iter": 5},
        max_rows=1000,
        created_at=created,
        **fields,
    )


def test_operations_survive_reopening_and_unfinished_ones_are_marked_interrupted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = OperationStore(tmp_path)
    done = operation(
        OperationState.SUCCEEDED,
        minutes_ago=3,
        trigger="drift",
        started_at=NOW - timedelta(minutes=2, seconds=59),
        finished_at=NOW - timedelta(minutes=2),
        candidate_metrics={"rmse": 0.5},
        champion_metrics={"rmse": 0.6},
        champion_version="3",
        registered_version="4",
        promoted=True,
        decision_reason="rmse 0.5000 beats champion v3's 0.6000",
    )
    running = operation(OperationState.RUNNING, minutes_ago=2, started_at=NOW - timedelta(minutes=1, seconds=59))
    queued = operation(OperationState.QUEUED, model="iris", minutes_ago=1)
    for each in (done, running, queued):
        store.save(each)
    (tmp_path / "operations" / f"{'f' * 32}.json").write_text("{not json")  # a torn file from another tool
    (tmp_path / "operations" / f"{done.id}.result.json").write_text("{}")  # not an operation

    reopened = OperationStore(tmp_path)

    assert reopened.get(done.id) == done
    for before in (running, queued):
        after = reopened.get(before.id)
        assert (after.state, after.failure_reason) == (OperationState.FAILED, INTERRUPTED)
        assert after.finished_at is not None and after.finished_at > before.created_at
        assert after.started_at == before.started_at
    assert [each.id for each in reopened.list()] == [queued.id, running.id, done.id]
    assert [each.id for each in reopened.list("housing")] == [running.id, done.id]
    # The interruption is on disk too: a second restart does not see them running either.
    assert OperationStore(tmp_path).get(running.id).failure_reason == INTERRUPTED
    assert json.loads((tmp_path / "operations" / f"{done.id}.json").read_text())["state"] == "succeeded"
    # Only the torn file is reported: result files are no operations, not broken ones.
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warned and all(f"{'f' * 32}.json" in message for message in warned)


@pytest.mark.parametrize("unknown", ["0" * 32, "../../etc/passwd", ""])
def test_unknown_operation_ids_are_not_found(tmp_path: Path, unknown: str) -> None:
    with pytest.raises(OperationNotFoundError, match="no retrain operation has id"):
        OperationStore(tmp_path).get(unknown)


def test_a_later_save_replaces_the_file_and_leaves_no_temporary_one(tmp_path: Path) -> None:
    store = OperationStore(tmp_path)
    queued = operation(OperationState.QUEUED)
    store.save(queued)
    store.save(replace(queued, state=OperationState.FAILED, failure_reason="x"))
    assert [path.name for path in (tmp_path / "operations").iterdir()] == [f"{queued.id}.json"]
    assert OperationStore(tmp_path).get(queued.id).failure_reason == "x"


def test_the_runner_module_imports_neither_protocols_nor_training_libraries() -> None:
    probe = (
        "import sys, server.admin.operations, training.hyperparameters, training.outcome; "
        "print(sorted({'sklearn', 'mlflow', 'grpc', 'fastapi'} & {name.split('.')[0] for name in sys.modules}))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert finished.stdout == "[]\n"


def test_an_operation_that_cannot_be_recorded_is_not_left_queued(
    make_runner: MakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner()

    def disk_full(path: Path, data: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(server.admin.operations, "write_json_atomically", disk_full)
        with pytest.raises(OSError, match="No space left"):
            runner.start("iris", {}, max_rows=None)
    [refused] = runner.list()
    assert refused.state is OperationState.FAILED
    assert refused.failure_reason == "the operation could not be recorded: [Errno 28] No space left on device"
    assert not any(thread.name.startswith("retrain-") for thread in threading.enumerate())
    assert runner.start("iris", {}, max_rows=None).state is OperationState.QUEUED  # nothing holds the model


def test_runner_refuses_to_raise_priority(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="niceness"):
        RetrainRunner(
            OperationStore(tmp_path),
            python_executable=sys.executable,
            child_env={},
            niceness=-5,
            openmp_threads=1,
            workdir=tmp_path,
            on_finished=None,
        )
