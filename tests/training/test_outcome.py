import json
from pathlib import Path

import pytest

from training.outcome import ResultFileError, TrainingOutcome, read_outcome, write_json_atomically, write_outcome

OUTCOME = TrainingOutcome(
    kind="housing",
    model_name="CaliforniaHousingBestModel",
    version=4,
    run_id="r" * 32,
    metrics={"rmse": 0.45, "mae": 0.3, "r2": 0.8},
    promoted=False,
    reason="rmse 0.4500 is worse than champion v3's 0.4400",
    alias="champion",
    champion_version=3,
    champion_metrics={"rmse": 0.44, "mae": 0.29, "r2": 0.81},
)


def test_outcome_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "result.json"
    write_outcome(path, OUTCOME)
    assert read_outcome(path) == OUTCOME
    assert json.loads(path.read_text())["champion_version"] == 3


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_outcome(path, OUTCOME)
    before = path.read_text()
    with pytest.raises(TypeError):
        write_json_atomically(path, {"metrics": object()})  # fails halfway through serialising
    assert path.read_text() == before
    assert [each.name for each in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": True}, "expected int in a training result, got True"),
        ({"version": "4"}, "expected int in a training result, got '4'"),
        ({"metrics": {"rmse": "low"}}, "metrics in a training result map names to numbers"),
        ({"champion_version": 2.5}, "expected int in a training result, got 2.5"),
    ],
)
def test_malformed_results_are_refused(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(OUTCOME.to_json() | change))
    with pytest.raises(ResultFileError, match=message):
        read_outcome(path)


def test_missing_fields_and_non_json_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps({key: value for key, value in OUTCOME.to_json().items() if key != "reason"}))
    with pytest.raises(ResultFileError, match="a training result has no 'reason'"):
        read_outcome(path)
    path.write_text('{"version": 4')
    with pytest.raises(ResultFileError, match=r"result\.json is not JSON"):
        read_outcome(path)
    path.write_text("[]")
    with pytest.raises(ResultFileError, match="a training result is a JSON object, not list"):
        read_outcome(path)
