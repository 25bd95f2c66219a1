"""Real child processes for end-to-end tests: started, read line by line, always stopped."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from re import Match, Pattern

from .prerequisites import REPO_ROOT


class Process:
    """A Python child (``python <command>``) whose stderr is collected line by line."""

    def __init__(self, command: list[str], env: dict[str, str], *, new_session: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *command],
            cwd=REPO_ROOT,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR", "MLFLOW_DISABLE_TELEMETRY": "true", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Its own process group, so a test can signal it and its children together, as a terminal does.
            start_new_session=new_session,
        )
        self._new_session = new_session
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for(self, pattern: Pattern[str], timeout: float = 60) -> Match[str]:
        """The first line matching ``pattern``, waiting for it until ``timeout`` or the end of the output."""
        deadline = time.monotonic() + timeout
        searched = 0
        with self._new_line:
            while True:
                for line in self.lines[searched:]:
                    if match := pattern.search(line):
                        return match
                searched = len(self.lines)
                # The reader ends only after the last line is in: once it has, no line can come any more.
                remaining = deadline - time.monotonic()
                if not self._reader.is_alive() or remaining <= 0:
                    break
                self._new_line.wait(timeout=min(remaining, 0.5))
        raise AssertionError(f"no line matching {pattern.pattern!r}:\n{''.join(self.lines)}")

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited and its last line is in ``lines``."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def interrupt_group(self) -> None:
        """What Ctrl-C in a terminal does: SIGINT to every process of the group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def kill(self) -> None:
        if self._new_session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        self.process.stderr.close()


@contextmanager
def started(module: str, env: dict[str, str]) -> Iterator[Process]:
    """``python -m module`` for the length of the block."""
    process = Process(["-m", module], env)
    try:
        yield process
    finally:
        process.kill()
