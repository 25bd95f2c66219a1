"""Run the gRPC server and the REST bridge together until Ctrl-C or SIGTERM, then stop both cleanly.

Each runs as its own process with its own settings from the environment. On SIGINT/SIGTERM both get
SIGTERM (a terminal's Ctrl-C reaches them directly too) and get time to drain; if one exits on its own,
the other is stopped as well, so the pair never half-runs.
"""

import signal
import subprocess
import sys
import time
from types import FrameType

COMMANDS = (("server", [sys.executable, "-m", "server"]), ("rest_bridge", [sys.executable, "-m", "rest_bridge"]))
STOP_TIMEOUT_SECONDS = 30.0


def main() -> int:
    processes = {name: subprocess.Popen(command) for name, command in COMMANDS}
    stopping = False

    def stop_all(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    while not stopping and all(process.poll() is None for process in processes.values()):
        time.sleep(0.2)

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
    failed = {name: code for name, code in codes.items() if code not in (0, -signal.SIGTERM, -signal.SIGINT)}
    if failed and not stopping:
        print(f"stopped because a process exited: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
