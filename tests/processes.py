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

from .conftest import REPO_ROOT


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
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: Pattern[str], timeout: float = 60) -> Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := pattern.search(line):
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern.pattern!r}:\n{''.join(self.lines)}")

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
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
