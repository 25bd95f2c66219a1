"""Prediction ids: RFC 9562 UUIDv7 text, increasing within a process, unique across processes and forks."""

import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

import server.ids
from server.ids import new_prediction_id, new_prediction_ids, prediction_id_millisecond
from tests.prerequisites import REPO_ROOT

# Batch sizes on both sides of the switch from per-id formatting to numpy (24).
SIZES = (1, 2, 23, 24, 25, 100, 1000)

# A child that imports the module, says it is ready, waits for the word, then writes its ids to a file. With
# a third argument its clock stands still at that many nanoseconds: every id in one millisecond.
CHILD = """
import sys
import types
import server.ids
sizes = (1, 7, 16, 100, 1000)
if len(sys.argv) > 3:
    server.ids.time = types.SimpleNamespace(time_ns=lambda: int(sys.argv[3]))
print("ready", flush=True)
sys.stdin.readline()
ids = []
index = 0
while len(ids) < int(sys.argv[2]):
    ids.extend(server.ids.new_prediction_ids(sizes[index % len(sizes)]))
    index += 1
with open(sys.argv[1], "w") as output:
    output.write("\\n".join(ids[: int(sys.argv[2])]))
"""


def assert_uuid7(text: str) -> uuid.UUID:
    parsed = uuid.UUID(text)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == text  # canonical form: lowercase, dashed, 36 characters
    return parsed


@pytest.mark.parametrize("count", SIZES)
def test_ids_are_uuid7_carrying_the_time_they_were_made(count: int) -> None:
    before = time.time_ns() // 1_000_000
    ids = new_prediction_ids(count)
    after = time.time_ns() // 1_000_000
    assert len(ids) == count
    for text in ids:
        parsed = assert_uuid7(text)
        assert parsed.int >> 80 == prediction_id_millisecond(text)
        assert before <= prediction_id_millisecond(text) <= after
    assert_uuid7(new_prediction_id())


def test_zero_ids_and_a_negative_count() -> None:
    assert new_prediction_ids(0) == []
    with pytest.raises(ValueError, match="negative"):
        new_prediction_ids(-1)


def test_ids_increase_across_calls_and_are_unique_within_a_batch() -> None:
    made: list[str] = []
    for round_ in range(700):
        made.extend(new_prediction_ids(SIZES[round_ % len(SIZES)]) if round_ % 3 else [new_prediction_id()])
    # Strictly increasing as text (what a database index sorts by) and as 128-bit numbers.
    assert all(earlier < later for earlier, later in itertools.pairwise(made))
    numbers = [uuid.UUID(text).int for text in made]
    assert all(earlier < later for earlier, later in itertools.pairwise(numbers))
    assert len(set(made)) == len(made)


def test_ids_keep_increasing_when_the_clock_stands_still_or_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.time_ns()]
    monkeypatch.setattr(server.ids, "time", SimpleNamespace(time_ns=lambda: now[0]))
    first = new_prediction_ids(20)
    second = new_prediction_ids(20)  # same millisecond
    now[0] -= 5_000_000_000  # NTP steps the clock 5 s back
    third = [*new_prediction_ids(20), new_prediction_id()]
    made = first + second + third
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    # Until the clock passes it again, the last millisecond handed out is kept.
    assert {prediction_id_millisecond(text) for text in made} == {prediction_id_millisecond(first[0])}


def test_batch_ids_carry_across_the_variant_bits() -> None:
    # The 74-bit counter is split around the variant bits; a batch whose low 62 bits wrap must carry into the
    # high 12, exactly as one id at a time would. A random start lands there once in ~2**62 batches, hence
    # the private functions.
    start = (5 << 62) - 3
    millisecond = time.time_ns() // 1_000_000
    expected = [server.ids._format(millisecond, start + offset) for offset in range(40)]
    assert server.ids._format_many(millisecond, start, 40) == expected
    assert expected == sorted(expected)
    for text in expected:
        assert_uuid7(text)


def test_ids_are_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        for round_ in range(500):
            into.extend(new_prediction_ids(SIZES[round_ % len(SIZES)]))

    threads = [threading.Thread(target=make, args=(into,)) for into in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    for made in results:
        assert made == sorted(made)  # each thread's ids increase
    everything = [text for made in results for text in made]
    assert len(set(everything)) == len(everything)


@pytest.mark.parametrize("clock", ["running", "frozen"])
def test_ids_are_unique_across_100k_here_and_two_processes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: str
) -> None:
    # "running": three processes started together (on a shared machine they may not overlap much);
    # "frozen": all three make every id in the same millisecond, where only the random starts keep them apart.
    count = 100_000
    frozen = [str(time.time_ns())] if clock == "frozen" else []
    if frozen:
        monkeypatch.setattr(server.ids, "time", SimpleNamespace(time_ns=lambda: int(frozen[0])))
    files = [tmp_path / "first.txt", tmp_path / "second.txt"]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(count), *frozen],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        here: list[str] = []
        for round_ in range(count):
            here.extend(new_prediction_ids(SIZES[round_ % len(SIZES)]))
            if len(here) >= count:
                break
        here = here[:count]
        for child in children:
            assert child.wait(timeout=120) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
            assert child.stdout is not None
            child.stdout.close()
    theirs = [path.read_text().split("\n") for path in files]
    assert [len(ids) for ids in theirs] == [count, count]
    everything = here + theirs[0] + theirs[1]
    assert len(set(everything)) == len(everything)
    if frozen:
        assert {prediction_id_millisecond(text) for text in everything} == {int(frozen[0]) // 1_000_000}


def test_a_forked_child_starts_its_own_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    # A frozen clock puts parent and child in the same millisecond, where an inherited counter would make the
    # child hand out exactly the ids the parent hands out next.
    frozen = time.time_ns()
    monkeypatch.setattr(server.ids, "time", SimpleNamespace(time_ns=lambda: frozen))
    before = new_prediction_ids(10)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its ids and leave without running any of pytest's clean-up
        status = 1
        try:
            os.close(reader)
            with os.fdopen(writer, "w") as pipe:
                pipe.write("\n".join(new_prediction_ids(10)))
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    parent = new_prediction_ids(10)
    with os.fdopen(reader) as pipe:
        child = pipe.read().split("\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child) == 10
    assert not set(child) & set(parent + before)
