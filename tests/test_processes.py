"""The child-process helper the end-to-end tests rely on."""

import re

from .processes import Process

# The child exits at once; the last line comes later from a process it started, on the same stderr, as a
# server's last log lines come from its log thread or its children after the exit status is known.
EXITS_BEFORE_ITS_LAST_LINE = (
    "import subprocess, sys; "
    "subprocess.Popen([sys.executable, '-c', \"import sys, time; time.sleep(0.5); sys.stderr.write('last')\"])"
)


def test_wait_for_reads_the_output_that_arrives_after_the_process_exited():
    process = Process(["-c", EXITS_BEFORE_ITS_LAST_LINE], {})
    try:
        assert process.process.wait(timeout=30) == 0
        assert process.wait_for(re.compile(r"^last$"), timeout=30)
    finally:
        process.kill()


def test_wait_for_gives_up_once_the_output_has_ended():
    process = Process(["-c", "import sys; sys.stderr.write('only line')"], {})
    try:
        try:
            process.wait_for(re.compile(r"never written"), timeout=60)
        except AssertionError as error:
            assert "only line" in str(error)
        else:
            raise AssertionError("wait_for matched a line that was never written")
    finally:
        process.kill()
