"""The feedback store's reads of the prediction log, on real SQLite databases."""

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from server.observe.feedback import _RECENT, FEEDBACK_SCHEMA
from server.observe.prediction_log import SCHEMA

MODEL, VERSION = "IrisBestModel", "1"


def _log_with(path: Path, unlabelled: int, labelled: int) -> None:
    """A prediction log holding ``unlabelled + labelled`` predictions of one version, ``labelled`` with labels."""
    rows = [
        (f"id-{n}", float(n), "iris", MODEL, VERSION, "champion", "{}", json.dumps({"setosa": 1.0}), 1.0, "r", None)
        for n in range(unlabelled + labelled)
    ]
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(SCHEMA + FEEDBACK_SCHEMA)
        connection.executemany("INSERT INTO predictions VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        connection.executemany(
            "INSERT INTO feedback VALUES (?, 0, ?)", [(f"id-{n}", float(n)) for n in range(unlabelled, len(rows))]
        )


def _steps_to_read_recent_labels(path: Path, limit: int) -> tuple[int, int]:
    """How many labels the start-up restore query finds, and how many SQLite VM steps it takes."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    with closing(sqlite3.connect(path)) as connection:
        connection.set_progress_handler(count, 1)
        found = connection.execute(_RECENT, (MODEL, VERSION, limit)).fetchall()
    return len(found), steps[0]


def test_restoring_live_quality_reads_the_labels_not_every_logged_prediction(tmp_path: Path) -> None:
    # A server restarted on a long log must not walk it all, nor every label: the work follows the labels it
    # returns, newest first.
    _log_with(tmp_path / "short.db", unlabelled=20, labelled=5)
    _log_with(tmp_path / "long.db", unlabelled=20_000, labelled=20_000)
    found_short, steps_short = _steps_to_read_recent_labels(tmp_path / "short.db", limit=3)
    found_long, steps_long = _steps_to_read_recent_labels(tmp_path / "long.db", limit=3)
    assert found_short == found_long == 3
    assert steps_long <= 2 * steps_short, (steps_short, steps_long)
