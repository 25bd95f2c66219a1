"""The server's logging: records are formatted on the listener thread, never on the thread that logs, and the
queued lines of a start-up that fails still reach stderr."""

import logging
import re
import threading
from pathlib import Path

from server.logs import configure_logging

from ..processes import started


class RecordsWhereItIsFormatted:
    def __init__(self) -> None:
        self.threads: list[str] = []

    def __str__(self) -> str:
        self.threads.append(threading.current_thread().name)
        return "formatted"


def test_a_record_is_formatted_on_the_listener_thread_not_on_the_thread_that_logs():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    probe = RecordsWhereItIsFormatted()
    listener = configure_logging("INFO")
    try:
        logging.getLogger("server.test").info("value %s", probe)
    finally:
        listener.stop()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert probe.threads
    assert threading.current_thread().name not in probe.threads


def test_the_reason_a_start_up_failed_reaches_stderr_before_the_process_exits(tmp_path: Path):
    env = {
        "PREDICTOR_STATE_DIR": str(tmp_path / "state"),
        "PREDICTOR_PORT": "0",
        "PREDICTOR_METRICS_PORT": "0",
        "PREDICTOR_TLS_CERT_FILE": str(tmp_path / "missing-server.pem"),
        "PREDICTOR_TLS_KEY_FILE": str(tmp_path / "missing-server.key"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'unused.db'}",
    }
    with started("server", env) as process:
        assert process.process.wait(timeout=60) == 2
        line = process.wait_for(re.compile(r"cannot start: .*PREDICTOR_TLS_CERT_FILE"))
    assert "missing-server.pem" in line.string
    assert "Traceback" not in "".join(process.lines)
