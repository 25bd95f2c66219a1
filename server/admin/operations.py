"""Retrain operations: one ``python -m training`` child per request, tracked as a persistent ``Operation``.

The server process never trains itself (no scikit-learn fit, no mlflow import here): a child process at lower
CPU priority does, through the ``training`` package, and reports through its ``--result-file``. Operations are
JSON files under ``<state_dir>/operations/``, so finished ones stay readable after a restart.

    OperationError
    ├── OperationNotFoundError      no operation has this id (NOT_FOUND)
    ├── RetrainAlreadyRunningError  the model already has a queued or running operation (ALREADY_EXISTS)
    ├── RetrainRequestError         unknown model or max_rows below the minimum (INVALID_ARGUMENT)
    └── RunnerStoppedError          ``start`` after ``stop`` (UNAVAILABLE)

plus ``training.hyperparameters.HyperparameterError`` for an override outside the allow-list (INVALID_ARGUMENT).
"""

import builtins
import contextlib
import json
import logging
import re
import signal
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from training.hyperparameters import HYPERPARAMETERS, validate_overrides
from training.outcome import ResultFileError, read_outcome, write_json_atomically
from training.settings import MIN_MAX_ROWS

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the server stopped while it ran"
STOPPED = "the server stopped while it ran"
_ID = re.compile(r"[0-9a-f]{32}")
# One output line longer than this is kept in pieces: a child printing without newlines cannot grow memory.
_MAX_LINE = 2000


class OperationError(Exception):
    """Base of the errors of retrain operations."""


class OperationNotFoundError(OperationError):
    def __init__(self, operation_id: str) -> None:
        super().__init__(f"no retrain operation has id {operation_id!r}")
        self.operation_id = operation_id


class RetrainAlreadyRunningError(OperationError):
    def __init__(self, model: str, running: str) -> None:
        super().__init__(f"a retrain of {model} is already in progress: operation {running}")
        self.model = model
        self.running = running


class RetrainRequestError(OperationError, ValueError):
    """A retrain request that cannot be run: unknown model, too few rows."""


class RunnerStoppedError(OperationError):
    """The runner is stopping or stopped and starts nothing more."""


class OperationState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (OperationState.SUCCEEDED, OperationState.FAILED)


@dataclass(frozen=True)
class Operation:
    """One retrain request and, once it finished, what came of it."""

    id: str
    model: str
    """Service key of the model: ``housing`` or ``iris``."""
    state: OperationState
    hyperparameters: Mapping[str, float]
    """The validated overrides (ints for integer parameters); empty for the defaults."""
    max_rows: int | None
    created_at: datetime
    trigger: str = "manual"
    """What asked for it: ``manual`` for an admin call, else the automated trigger (``quality``, ...)."""
    trigger_reason: str = ""
    """What the automated trigger saw when it fired."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    candidate_metrics: Mapping[str, float] = field(default_factory=dict)
    champion_metrics: Mapping[str, float] = field(default_factory=dict)
    """The champion's metrics on the candidate's held-out rows (empty when there was no champion)."""
    champion_version: str | None = None
    """The champion the candidate was compared with."""
    registered_version: str | None = None
    promoted: bool | None = None
    """None until the gate decided (and for a failed operation)."""
    decision_reason: str = ""
    failure_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "state": self.state.value,
            "hyperparameters": dict(self.hyperparameters),
            "max_rows": self.max_rows,
            "trigger": self.trigger,
            "trigger_reason": self.trigger_reason,
            "created_at": self.created_at.isoformat(),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "candidate_metrics": dict(self.candidate_metrics),
            "champion_metrics": dict(self.champion_metrics),
            "champion_version": self.champion_version,
            "registered_version": self.registered_version,
            "promoted": self.promoted,
            "decision_reason": self.decision_reason,
            "failure_reason": self.failure_reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Operation":
        return cls(
            id=str(data["id"]),
            model=str(data["model"]),
            state=OperationState(data["state"]),
            hyperparameters=dict(data["hyperparameters"]),
            max_rows=data["max_rows"],
            trigger=str(data["trigger"]),
            trigger_reason=str(data.get("trigger_reason", "")),
            created_at=datetime.fromisoformat(data["created_at"]),
            started_at=_from_iso(data["started_at"]),
            finished_at=_from_iso(data["finished_at"]),
            candidate_metrics=dict(data["candidate_metrics"]),
            champion_metrics=dict(data["champion_metrics"]),
            champion_version=data["champion_version"],
            registered_version=data["registered_version"],
            promoted=data["promoted"],
            decision_reason=str(data["decision_reason"]),
            failure_reason=str(data["failure_reason"]),
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _now() -> datetime:
    return datetime.now(UTC)


class OperationStore:
    """Operations as one JSON file each under ``state_dir/operations/``, written atomically.

    Opening the store fails every operation a previous process left queued or running: nothing runs it any more.
    One server process per ``state_dir``: a second one would fail the first one's running operations.
    """

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "operations"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._operations: dict[str, Operation] = {}
        for path in sorted(self.directory.glob("*.json")):
            if not _ID.fullmatch(path.stem):
                continue  # result files (<id>.result.json) and temporary files
            try:
                operation = Operation.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring unreadable operation file %s: %s", path, exc)
                continue
            if not operation.state.finished:
                operation = replace(
                    operation, state=OperationState.FAILED, finished_at=_now(), failure_reason=INTERRUPTED
                )
                self._write(operation)
            self._operations[operation.id] = operation

    def path_of(self, operation_id: str) -> Path:
        return self.directory / f"{operation_id}.json"

    def result_path_of(self, operation_id: str) -> Path:
        """Where the training child of the operation writes its ``--result-file``."""
        return self.directory / f"{operation_id}.result.json"

    def save(self, operation: Operation) -> None:
        """Record ``operation``; this process sees it even if writing its file fails (and raises)."""
        with self._lock:
            self._operations[operation.id] = operation
            self._write(operation)

    def _write(self, operation: Operation) -> None:
        write_json_atomically(self.path_of(operation.id), operation.to_json())

    def get(self, operation_id: str) -> Operation:
        with self._lock:
            operation = self._operations.get(operation_id)
        if operation is None:
            raise OperationNotFoundError(operation_id)
        return operation

    def list(self, model: str | None = None) -> builtins.list[Operation]:
        """Operations of ``model`` (every model for None), newest first."""
        with self._lock:
            chosen = [each for each in self._operations.values() if model is None or each.model == model]
        return sorted(chosen, key=lambda each: (each.created_at, each.id), reverse=True)


@dataclass
class _Job:
    operation_id: str
    process: subprocess.Popen[str] | None = None


class RetrainRunner:
    """Runs retrain operations as ``python -m training`` children, at most one per model, thread-safe.

    ``child_env`` is the children's whole environment (the runner reads none itself); ``OMP_NUM_THREADS`` and
    ``MLFLOW_DISABLE_TELEMETRY`` are added to it. ``niceness`` (0-19) is added to this process's own, as
    ``nice -n`` does. ``on_finished`` is called with every operation that finishes while the runner runs (not
    those ``stop`` ends); what it raises is logged.
    """

    def __init__(
        self,
        store: OperationStore,
        *,
        python_executable: str,
        child_env: Mapping[str, str],
        niceness: int,
        openmp_threads: int,
        workdir: Path,
        on_finished: Callable[[Operation], None] | None = None,
        output_lines_kept: int = 20,
    ) -> None:
        if not 0 <= niceness <= 19:
            raise ValueError(f"niceness must be in [0, 19] (lower priority only), got {niceness}")
        if openmp_threads < 1 or output_lines_kept < 1:
            raise ValueError("openmp_threads and output_lines_kept must be at least 1")
        self._store = store
        self._python = python_executable
        # Unbuffered, so the last lines of a killed child are not lost in its stdout buffer.
        self._env = {
            **child_env,
            "OMP_NUM_THREADS": str(openmp_threads),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1",
        }
        self._niceness = niceness
        self._workdir = workdir
        self._on_finished = on_finished
        self._lines_kept = output_lines_kept
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}  # model -> its queued or running operation
        self._threads: builtins.list[threading.Thread] = []
        self._stopping = False
        self._training_slot = threading.Semaphore(1)

    def _wait_for_training_slot(self) -> bool:
        """Take the one training slot; False when the runner stops first.

        One training child at a time, whatever the model: two fits would share the serving cores, and MLflow's
        SQLite stores do not take concurrent schema checks and writers well. The others stay queued meanwhile.
        """
        while not self._training_slot.acquire(timeout=0.2):
            if self._is_stopping():
                return False
        if self._is_stopping():  # the slot was freed by stop() ending the child before this one
            self._training_slot.release()
            return False
        return True

    def start(
        self,
        model: str,
        hyperparameters: Mapping[str, float],
        max_rows: int | None,
        trigger: str = "manual",
        trigger_reason: str = "",
    ) -> Operation:
        """Record a retrain of ``model`` and start it in the background; returns the queued operation at once.

        Raises ``HyperparameterError`` for an override outside the allow-list, ``RetrainRequestError`` for an
        unknown model or too few rows, ``RetrainAlreadyRunningError`` while the model has an unfinished one.
        """
        if model not in HYPERPARAMETERS:
            raise RetrainRequestError(f"unknown model {model!r}; known: {', '.join(sorted(HYPERPARAMETERS))}")
        overrides = validate_overrides(model, hyperparameters)
        if max_rows is not None and max_rows < MIN_MAX_ROWS:
            raise RetrainRequestError(f"max_rows must be at least {MIN_MAX_ROWS}, got {max_rows}")
        with self._lock:
            if self._stopping:
                raise RunnerStoppedError("the server is stopping; no retrain is started")
            if (running := self._jobs.get(model)) is not None:
                raise RetrainAlreadyRunningError(model, running.operation_id)
            operation = Operation(
                id=uuid.uuid4().hex,
                model=model,
                state=OperationState.QUEUED,
                hyperparameters=overrides,
                max_rows=max_rows,
                created_at=_now(),
                trigger=trigger,
                trigger_reason=trigger_reason,
            )
            try:
                self._store.save(operation)
            except OSError as exc:
                # Saving records in memory first: leave it failed there, not queued with nothing to run it.
                with contextlib.suppress(OSError):
                    self._store.save(self._failed(operation, f"the operation could not be recorded: {exc}"))
                raise
            thread = threading.Thread(target=self._run, args=(operation,), name=f"retrain-{model}", daemon=True)
            self._jobs[model] = _Job(operation.id)
            self._threads = [*(each for each in self._threads if each.is_alive()), thread]
            thread.start()
        logger.info("retrain %s of %s queued (%s)", operation.id, model, trigger)
        return operation

    def get(self, operation_id: str) -> Operation:
        return self._store.get(operation_id)

    def list(self, model: str | None = None) -> builtins.list[Operation]:
        return self._store.list(model)

    def stop(self, timeout: float) -> None:
        """Terminate running children (SIGTERM, SIGKILL after ``timeout`` seconds) and wait for their threads."""
        with self._lock:
            self._stopping = True
            processes = [job.process for job in self._jobs.values() if job.process is not None]
            threads = list(self._threads)
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("training child %d ignored SIGTERM for %.1f s: killing it", process.pid, timeout)
                process.kill()
        for thread in threads:
            # The children are gone, so their threads only read the rest of the output and save.
            thread.join(timeout=timeout + 5)

    def _command(self, operation: Operation) -> builtins.list[str]:
        command = [self._python, "-m", "training", "--model", operation.model]
        if operation.max_rows is not None:
            command += ["--max-rows", str(operation.max_rows)]
        for name, value in operation.hyperparameters.items():
            command += ["--param", f"{name}={value!r}"]
        command += ["--result-file", str(self._store.result_path_of(operation.id))]
        if self._niceness:
            # Through nice(1), so the child and every thread it creates (OpenMP's) start at the lower priority;
            # setpriority after the start would only reach its main thread, and only once it runs.
            command = ["nice", "-n", str(self._niceness), *command]
        return command

    def _run(self, operation: Operation) -> None:
        try:
            if self._wait_for_training_slot():
                try:
                    operation, notify = self._execute(operation)
                finally:
                    self._training_slot.release()
            else:
                operation, notify = self._failed(operation, STOPPED), False
        except Exception as exc:
            # The thread must not die with its operation left "running" for ever.
            logger.exception("retrain %s failed in the runner", operation.id)
            operation, notify = self._failed(operation, f"runner error: {exc}"), True
        with self._lock:
            # Saved and released in one step: whoever reads the finished operation may start the next one.
            try:
                self._store.save(operation)
            except OSError:
                logger.exception("retrain %s finished %s but could not be saved", operation.id, operation.state.value)
            finally:
                self._jobs.pop(operation.model, None)
        logger.info("retrain %s of %s %s", operation.id, operation.model, operation.state.value)
        if notify and self._on_finished is not None:
            try:
                self._on_finished(operation)
            except Exception:
                logger.exception("on_finished failed for retrain %s", operation.id)

    def _execute(self, operation: Operation) -> tuple[Operation, bool]:
        """Run the child of ``operation``: the finished operation (unsaved), and whether to tell ``on_finished``."""
        operation = replace(operation, state=OperationState.RUNNING, started_at=_now())
        self._store.save(operation)
        with self._lock:
            if self._stopping:
                return self._failed(operation, STOPPED), False
            try:
                process = subprocess.Popen(  # noqa: S603 - a fixed command line of validated arguments
                    self._command(operation),
                    cwd=self._workdir,
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                )
            except OSError as exc:
                return self._failed(operation, f"training could not be started: {exc}"), True
            self._jobs[operation.model].process = process
        logger.info("retrain %s: training child %d started", operation.id, process.pid)

        tail: deque[str] = deque(maxlen=self._lines_kept)
        assert process.stdout is not None  # stdout=PIPE above
        with process.stdout:
            for line in iter(partial(process.stdout.readline, _MAX_LINE), ""):
                logger.debug("retrain %s: %s", operation.id, line.rstrip())
                tail.append(line.rstrip("\n"))
        code = process.wait()
        return self._conclude(operation, code, "\n".join(tail), stopped=self._is_stopping())

    def _is_stopping(self) -> bool:
        with self._lock:
            return self._stopping

    def _conclude(self, operation: Operation, code: int, output: str, *, stopped: bool) -> tuple[Operation, bool]:
        """The finished operation from the child's exit code and result file."""
        if stopped and code != 0:
            return self._failed(operation, STOPPED), False
        if code < 0:
            return self._failed(operation, f"training was killed by {_signal_name(-code)}", output), True
        if code != 0:
            return self._failed(operation, f"training exited with code {code}", output), True
        result_path = self._store.result_path_of(operation.id)
        try:
            outcome = read_outcome(result_path)
        except (OSError, ResultFileError) as exc:
            reason = f"training exited with code 0 but left no result ({exc})"
            return self._failed(operation, reason, output), True
        result_path.unlink(missing_ok=True)  # everything it says is in the operation now
        operation = replace(
            operation,
            state=OperationState.SUCCEEDED,
            finished_at=_now(),
            candidate_metrics=dict(outcome.metrics),
            champion_metrics=dict(outcome.champion_metrics),
            champion_version=None if outcome.champion_version is None else str(outcome.champion_version),
            registered_version=str(outcome.version),
            promoted=outcome.promoted,
            decision_reason=outcome.reason,
        )
        return operation, True

    def _failed(self, operation: Operation, reason: str, output: str = "") -> Operation:
        failure = f"{reason}; last output:\n{output}" if output else reason
        return replace(operation, state=OperationState.FAILED, finished_at=_now(), failure_reason=failure)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
