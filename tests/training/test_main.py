import shutil
from pathlib import Path

import pytest

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
