import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prerequisites import REPO_ROOT
from training.__main__ import main


@pytest.fixture
def environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_registry_db: Path, offline_data_home: Path
) -> Path:
    """A newcomer's environment: no raw CSV files yet, an empty registry, cheap hyperparameters."""
    shutil.copyfile(empty_registry_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(offline_data_home))
    monkeypatch.setenv("TRAINING_ALLOW_DOWNLOAD", "false")
    monkeypatch.setenv("TRAINING_HOUSING_MAX_ITER", "20")
    monkeypatch.setenv("TRAINING_HOUSING_MAX_RMSE", "2.0")
    return tmp_path


def test_one_command_writes_data_trains_and_reports(environment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-rows", "1000"]) == 0
    housing, iris = capsys.readouterr().out.splitlines()
    assert housing.startswith("CaliforniaHousingBestModel v1: rmse=")
    assert iris.startswith("IrisBestModel v1: cv_accuracy=")
    assert all("; promoted to @champion: no champion yet" in line for line in (housing, iris))
    assert (environment / "data" / "housing_raw.csv").is_file()
    assert (environment / "mlartifacts" / "california-housing").is_dir()

    assert main(["--skip-if-served", "--model", "iris"]) == 0
    assert capsys.readouterr().out == "IrisBestModel: @champion is already v1; not retrained (--skip-if-served)\n"


def test_missing_data_fails_with_a_message_not_a_traceback(
    environment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(environment / "empty_home"))
    assert main(["--model", "housing"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: housing: The California housing data is not in")
    assert "Traceback" not in captured.err


def test_invalid_settings_are_reported(environment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-rows", "5"]) == 2
    assert capsys.readouterr().err.startswith("error: invalid settings:")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "housing", "--param", "depth=3"], "error: 'depth' is not a hyperparameter of housing"),
        (["--model", "housing", "--param", "max_iter=5000"], "error: max_iter must be an integer in [1, 2000], got"),
        (["--model", "housing", "--param", "max_iter=2.5"], "error: max_iter must be an integer in [1, 2000], got 2.5"),
        (["--model", "iris", "--param", "C=-1"], "error: C must be a number in [0.0001, 10000.0], got -1.0"),
        (["--model", "iris", "--param", "C=big"], "error: --param 'C=big': 'big' is not a number"),
        (["--model", "iris", "--param", "C"], "error: --param 'C': expected NAME=VALUE"),
        (["--model", "iris", "--param", "C=1", "--param", "C=2"], "error: --param C is given twice"),
        (["--param", "max_iter=20"], "error: --param needs one --model (housing or iris), not all"),
        (["--result-file", "out.json"], "error: --result-file needs one --model (housing or iris), not all"),
    ],
)
def test_bad_overrides_exit_2_with_a_message_and_train_nothing(
    environment: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message)
    assert captured.out == "" and "Traceback" not in captured.err
    assert not (environment / "data").exists()
    assert not (environment / "out.json").exists()


def test_bad_override_from_the_command_line(environment: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "training", "--model", "housing", "--param", "max_iter=2.5"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2
    assert finished.stderr == "error: max_iter must be an integer in [1, 2000], got 2.5\n"


def test_result_file_holds_the_outcome(environment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = environment / "results" / "iris.json"
    assert main(["--model", "iris", "--param", "C=5", "--result-file", str(result)]) == 0
    first = json.loads(result.read_text())
    assert first.keys() == {
        "model_kind",
        "model_name",
        "version",
        "run_id",
        "metrics",
        "promoted",
        "reason",
        "alias",
        "champion_version",
        "champion_metrics",
    }
    assert (first["model_kind"], first["model_name"], first["version"], first["alias"]) == (
        "iris",
        "IrisBestModel",
        1,
        "champion",
    )
    assert first["promoted"] is True and first["reason"].startswith("no champion yet")
    assert (first["champion_version"], first["champion_metrics"]) == (None, {})
    assert first["metrics"].keys() == {"cv_accuracy", "accuracy", "macro_f1"}
    assert len(first["run_id"]) == 32

    assert main(["--model", "iris", "--param", "C=0.001", "--result-file", str(result)]) == 0
    second = json.loads(result.read_text())
    assert (second["version"], second["promoted"], second["champion_version"]) == (2, False, 1)
    assert second["champion_metrics"] == {key: first["metrics"][key] for key in ("accuracy", "macro_f1")}
    assert second["reason"] == capsys.readouterr().out.splitlines()[-1].split("not promoted to @champion: ")[1]
    assert [path.name for path in result.parent.iterdir()] == ["iris.json"]  # no temporary file left behind


# ``python -m training`` itself, in a child: what its garbage collector looks like once the training is done.
RUN_AND_REPORT_THE_COLLECTOR = """
import gc, json, runpy, sys
sys.argv = ["training", "--model", "iris", "--max-rows", "500"]
try:
    runpy.run_module("training", run_name="__main__")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}))
"""


def test_the_training_process_freezes_what_its_imports_made_and_collects_the_rest(environment: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT_THE_COLLECTOR],
        cwd=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    seen = json.loads(finished.stdout.splitlines()[-1])
    assert seen["code"] == 0, finished.stderr[-3000:]
    # MLflow's, scikit-learn's and pandas' objects out of the full walks; the collector on for what training makes.
    assert seen["frozen"] > 100_000, seen
    assert seen["enabled"], seen
    # Called in process (as these tests do), main leaves the caller's collector alone.
    frozen_here = gc.get_freeze_count()
    assert main(["--model", "iris", "--max-rows", "500"]) == 0
    assert gc.get_freeze_count() == frozen_here
    assert gc.isenabled()
