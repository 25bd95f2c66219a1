"""Run the gRPC server and the REST bridge together until Ctrl-C or SIGTERM, then stop both cleanly.

Each runs as its own process with its own settings from the environment. On SIGINT/SIGTERM both get
SIGTERM (a terminal's Ctrl-C reaches them directly too) and get time to drain; if one exits on its own,
the other is stopped as well, so the pair never half-runs.

Unless ``BRIDGE_GRPC_TARGET`` is set, the bridge is pointed at the server's port on localhost. With
``PREDICTOR_PORT=0`` the server picks a free port: the bridge then starts once the server has logged
the port it bound (its stderr passes through this process).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import IO

from server.settings import ServerSettings

SERVER = [sys.executable, "-m", "server"]
BRIDGE = [sys.executable, "-m", "rest_bridge"]
BOUND_PORT = re.compile(r"gRPC on port (\d+)")
STOP_TIMEOUT_SECONDS = 30.0


class PortWatcher:
    """Copies the server's stderr to ours and picks out the port it bound."""

    def __init__(self, stream: IO[str]) -> None:
        self.port: int | None = None
        self.found = threading.Event()
        self._thread = threading.Thread(target=self._copy, args=(stream,), daemon=True)
        self._thread.start()

    def _copy(self, stream: IO[str]) -> None:
        for line in stream:
            sys.stderr.write(line)
            if self.port is None and (match := BOUND_PORT.search(line)):
                self.port = int(match.group(1))
                self.found.set()
        self.found.set()

    def join(self) -> None:
        self._thread.join(timeout=5)


def start_server(*, report_port: bool) -> tuple[subprocess.Popen[str], PortWatcher | None]:
    if not report_port:
        return subprocess.Popen(SERVER, text=True), None
    server = subprocess.Popen(SERVER, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    return server, PortWatcher(server.stderr)


def stop(processes: dict[str, subprocess.Popen[str]]) -> dict[str, int]:
    """SIGTERM to each process still running, then their exit codes (killed after the timeout)."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    codes = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = process.wait()
    return codes


def main() -> int:
    port = ServerSettings().port
    target = os.environ.get("BRIDGE_GRPC_TARGET")
    server, watcher = start_server(report_port=target is None and port == 0)
    processes = {"server": server}
    stopping = False

    def stop_all(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    if watcher is not None:
        while not stopping and not watcher.found.wait(timeout=0.2):
            pass
        port = watcher.port or 0
    if not stopping and server.poll() is None:
        if target is None and port == 0:
            print("the server never logged its port (is PREDICTOR_LOG_LEVEL above INFO?)", file=sys.stderr)
            stopping = True
        else:
            bridge_env = {**os.environ, "BRIDGE_GRPC_TARGET": target or f"localhost:{port}"}
            processes["rest_bridge"] = subprocess.Popen(BRIDGE, env=bridge_env, text=True)
    while not stopping and all(process.poll() is None for process in processes.values()):
        time.sleep(0.2)

    codes = stop(processes)
    if watcher is not None:
        watcher.join()
    failed = {name: code for name, code in codes.items() if code not in (0, -signal.SIGTERM, -signal.SIGINT)}
    if failed:
        reason = "while stopping" if stopping else "and stopped the others"
        print(f"exited with an error {reason}: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
