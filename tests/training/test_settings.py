from pathlib import Path

import pytest

from training.settings import TrainingSettings

ENV = (
    "MLFLOW_TRACKING_URI",
    "TRAINING_MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "TRAINING_MLFLOW_REGISTRY_URI",
    "SCIKIT_LEARN_DATA",
    "TRAINING_MAX_ROWS",
)


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_are_absolute_paths_in_the_working_directory(clean_env: Path) -> None:
    settings = TrainingSettings()
    assert settings.mlflow_tracking_uri == f"sqlite:///{clean_env}/mlflow.db"
    assert settings.artifact_root == clean_env / "mlartifacts"
    assert settings.data_dir == clean_env / "data"
    assert settings.scikit_learn_data is None
    assert (settings.housing_model_name, settings.iris_model_name, settings.alias) == (
        "CaliforniaHousingBestModel",
        "IrisBestModel",
        "champion",
    )
    assert settings.tracking_store_is_local


def test_environment_names(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("SCIKIT_LEARN_DATA", "sk_data")
    monkeypatch.setenv("TRAINING_MAX_ROWS", "500")
    settings = TrainingSettings()
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert not settings.tracking_store_is_local
    assert settings.scikit_learn_data == clean_env / "sk_data"
    assert settings.max_rows == 500


def test_prefixed_tracking_uri_is_accepted(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINING_MLFLOW_TRACKING_URI", "sqlite:////srv/mlflow.db")
    assert TrainingSettings().mlflow_tracking_uri == "sqlite:////srv/mlflow.db"


def test_registry_defaults_to_the_tracking_store(clean_env: Path) -> None:
    settings = TrainingSettings()
    assert settings.mlflow_registry_uri is None
    assert settings.registry_uri == settings.mlflow_tracking_uri


@pytest.mark.parametrize("variable", ["MLFLOW_REGISTRY_URI", "TRAINING_MLFLOW_REGISTRY_URI"])
def test_registry_uri_from_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/tracking.db")
    monkeypatch.setenv(variable, "sqlite:////srv/registry.db")
    settings = TrainingSettings()
    assert settings.registry_uri == settings.mlflow_registry_uri == "sqlite:////srv/registry.db"
    assert settings.mlflow_tracking_uri == "sqlite:////srv/tracking.db"


def test_fields_are_set_by_name(clean_env: Path) -> None:
    settings = TrainingSettings(mlflow_tracking_uri="file:///x", scikit_learn_data=Path("/d"), artifact_root=Path("a"))
    assert (settings.mlflow_tracking_uri, settings.scikit_learn_data) == ("file:///x", Path("/d"))
    assert settings.artifact_root == clean_env / "a"


def test_every_field_is_documented() -> None:
    assert all(field.description for field in TrainingSettings.model_fields.values())


@pytest.mark.parametrize("field", [{"test_size": 1.0}, {"max_rows": 5}, {"iris_min_accuracy": 1.5}])
def test_nonsense_is_refused(clean_env: Path, field: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrainingSettings(**field)  # type: ignore[arg-type]


def test_misspelt_fields_are_refused(clean_env: Path) -> None:
    with pytest.raises(ValueError, match="max_row"):
        TrainingSettings(max_row=5)  # type: ignore[call-arg]
