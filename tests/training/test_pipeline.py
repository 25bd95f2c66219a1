import json
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.models import get_model_info

import training.registry
from data.profile import ReferenceProfile
from data.schema import HOUSING_FEATURES, HOUSING_TARGET, IRIS_FEATURES, IRIS_SPECIES
from model_registry import RegistryUnavailableError
from model_registry.history import alias_history, move_alias
from model_registry.mlflow import MlflowRegistry
from training.hyperparameters import HYPERPARAMETERS
from training.outcome import TrainingOutcome
from training.pipeline import train_all, train_housing, train_iris
from training.settings import TrainingSettings

MakeSettings = Callable[..., TrainingSettings]


def client_for(settings: TrainingSettings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.registry_uri)


def adapter_for(settings: TrainingSettings) -> MlflowRegistry:
    return MlflowRegistry(settings.mlflow_tracking_uri, settings.registry_uri)


def champion_of(settings: TrainingSettings, name: str) -> int | None:
    version = client_for(settings).get_registered_model(name).aliases.get(settings.alias)
    return None if version is None else int(version)


def gate_tags(settings: TrainingSettings, outcome: TrainingOutcome) -> tuple[str, str]:
    tags = client_for(settings).get_model_version(outcome.model_name, str(outcome.version)).tags
    return tags["champion_gate"], tags["champion_gate_reason"]


def test_each_version_carries_the_reference_profile_of_its_training_rows(make_settings: MakeSettings) -> None:
    settings = make_settings()
    adapter = adapter_for(settings)
    for outcome, features, outputs in (
        (train_housing(settings), HOUSING_FEATURES, (HOUSING_TARGET,)),
        (train_iris(settings), IRIS_FEATURES, IRIS_SPECIES),
    ):
        loaded = adapter.load(outcome.model_name, str(outcome.version))
        assert loaded.reference_profile is not None
        profile = ReferenceProfile.from_json(loaded.reference_profile)
        assert (tuple(profile.features), tuple(profile.outputs)) == (features, outputs)
        run = client_for(settings).get_run(outcome.run_id)
        assert profile.rows == int(run.data.params["train_rows"])
        for column in (*profile.features.values(), *profile.outputs.values()):
            assert column.proportions.sum() == pytest.approx(1.0)
            assert len(column.edges) >= 1


def test_housing_run_is_logged_registered_and_promoted(make_settings: MakeSettings) -> None:
    settings = make_settings()
    outcome = train_housing(settings)

    assert (outcome.model_name, outcome.version, outcome.promoted, outcome.alias) == (
        "CaliforniaHousingBestModel",
        1,
        True,
        "champion",
    )
    assert outcome.reason.startswith("no champion yet")
    assert champion_of(settings, outcome.model_name) == 1
    assert gate_tags(settings, outcome) == ("promoted", outcome.reason)

    run = client_for(settings).get_run(outcome.run_id)
    assert {"rmse", "mae", "r2", "fit_seconds"} <= run.data.metrics.keys()
    assert {name: run.data.metrics[name] for name in outcome.metrics} == outcome.metrics
    assert run.data.params["max_iter"] == "50"
    assert run.data.params["rows_used"] == "2000"
    assert run.data.params["rows_available"] == "20640"
    assert run.data.params["test_rows"] == "400"
    assert len(run.data.params["data_sha256"]) == 64
    assert run.data.tags["champion_gate"] == "promoted"
    artifact_location = client_for(settings).get_experiment(run.info.experiment_id).artifact_location
    assert artifact_location == (settings.artifact_root / settings.housing_experiment_name).as_uri()

    signature = get_model_info(f"models:/{outcome.model_name}/1").signature
    assert signature is not None
    assert signature.inputs.input_names() == list(HOUSING_FEATURES)
    assert signature.outputs.input_names() == [HOUSING_TARGET]


def test_registered_versions_load_and_predict_on_numpy_without_warnings(make_settings: MakeSettings) -> None:
    settings = make_settings()
    housing, iris = train_all(settings)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)

    regressor = mlflow.sklearn.load_model(f"models:/{housing.model_name}/{housing.version}")
    classifier = mlflow.sklearn.load_model(f"models:/{iris.model_name}@{iris.alias}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prediction = regressor.predict(np.array([[8.3252, 41.0, 6.98, 1.02, 322.0, 2.56, 37.88, -122.23]]))
        probabilities = classifier.predict_proba(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    assert prediction.shape == (1,) and 0.0 < prediction[0] < 6.0
    assert classifier.classes_.tolist() == [0, 1, 2]
    assert probabilities.argmax(axis=1).tolist() == [0, 2]
    assert regressor.n_features_in_ == len(HOUSING_FEATURES) and classifier.n_features_in_ == len(IRIS_FEATURES)


def test_worse_model_is_registered_but_not_promoted(make_settings: MakeSettings) -> None:
    settings = make_settings()
    first = train_housing(settings)
    worse = train_housing(settings, {"max_iter": 1})

    assert (worse.version, worse.promoted) == (2, False)
    assert worse.metrics["rmse"] > first.metrics["rmse"]
    assert worse.reason == f"rmse {worse.metrics['rmse']:.4f} is worse than champion v1's {first.metrics['rmse']:.4f}"
    # The champion was scored on the candidate's held-out rows: the same rows it was scored on when trained.
    assert (worse.champion_version, worse.champion_metrics) == (1, first.metrics)
    assert champion_of(settings, worse.model_name) == 1
    assert gate_tags(settings, worse) == ("rejected", worse.reason)
    run = client_for(settings).get_run(worse.run_id)
    assert run.data.tags["champion_gate"] == "rejected"
    assert run.data.tags["champion_gate_reason"] == worse.reason
    assert run.data.tags["champion_gate_compared_version"] == "1"
    assert not any(name.startswith("champion") for name in run.data.metrics)


def test_better_model_is_promoted_and_the_left_champion_is_remembered(make_settings: MakeSettings) -> None:
    train_housing(make_settings(housing_max_iter=5))
    settings = make_settings()
    better = train_housing(settings)
    assert better.promoted and "beats champion v1" in better.reason
    assert better.champion_version == 1
    assert champion_of(settings, better.model_name) == 2
    assert alias_history(adapter_for(settings), better.model_name, settings.alias) == ["1"]


def test_equal_model_is_promoted(make_settings: MakeSettings) -> None:
    settings = make_settings()
    train_iris(settings)
    again = train_iris(settings)
    assert again.promoted and again.reason.startswith("ties champion v1")
    assert champion_of(settings, again.model_name) == 2


def test_floor_blocks_promotion(make_settings: MakeSettings) -> None:
    settings = make_settings(housing_max_rmse=0.1)
    outcome = train_housing(settings)
    assert (outcome.version, outcome.promoted) == (1, False)
    assert outcome.reason.endswith("is above the floor housing_max_rmse=0.1")
    assert champion_of(settings, outcome.model_name) is None
    assert gate_tags(settings, outcome)[0] == "rejected"


def test_iris_metrics_floor_and_class_names(make_settings: MakeSettings) -> None:
    settings = make_settings(iris_min_accuracy=1.0)
    outcome = train_iris(settings)
    assert outcome.metrics.keys() == {"cv_accuracy", "accuracy", "macro_f1"}
    assert outcome.metrics["cv_accuracy"] < 1.0
    assert not outcome.promoted and "below the floor iris_min_accuracy=1.0" in outcome.reason
    version = client_for(settings).get_model_version(outcome.model_name, "1")
    assert version.tags["class_names"] == "setosa,versicolor,virginica"
    run = client_for(settings).get_run(outcome.run_id)
    assert run.data.params["test_rows"] == "30"


def test_missing_raw_data_is_written_first(make_settings: MakeSettings, tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path / "data")
    train_iris(settings)
    assert (tmp_path / "data" / "iris_raw.csv").is_file()
    assert not (tmp_path / "data" / "housing_raw.csv").exists()


def test_full_data_housing_model_meets_the_floor(make_settings: MakeSettings) -> None:
    outcome = train_housing(make_settings(max_rows=None, housing_max_iter=300, housing_max_rmse=0.45))
    assert outcome.promoted
    assert outcome.metrics["rmse"] <= 0.45


def test_overrides_change_the_fitted_estimator_and_the_logged_params(make_settings: MakeSettings) -> None:
    settings = make_settings()
    outcome = train_housing(settings, {"max_iter": 7, "learning_rate": 0.3, "max_depth": 3, "min_samples_leaf": 5})
    pipeline = adapter_for(settings).load(outcome.model_name, str(outcome.version)).estimator
    regressor = pipeline.named_steps["regressor"]
    assert type(pipeline.named_steps["coordinates"]).__name__ == "RotatedCoordinates"
    assert (regressor.max_iter, regressor.n_iter_, regressor.learning_rate) == (7, 7, 0.3)
    assert (regressor.max_depth, regressor.min_samples_leaf, regressor.max_leaf_nodes) == (3, 5, 63)
    assert max(predictor.get_max_depth() for (predictor,) in regressor._predictors) <= 3

    run = client_for(settings).get_run(outcome.run_id)
    logged = {name: run.data.params[name] for name in HYPERPARAMETERS["housing"]}
    assert logged == {
        "max_iter": "7",
        "learning_rate": "0.3",
        "max_leaf_nodes": "63",
        "min_samples_leaf": "5",
        "l2_regularization": "0.0",
        "max_depth": "3",
    }
    assert json.loads(run.data.tags["hyperparameter_overrides"]) == {
        "learning_rate": 0.3,
        "max_depth": 3,
        "max_iter": 7,
        "min_samples_leaf": 5,
    }

    iris = train_iris(settings, {"C": 0.5, "max_iter": 50})
    classifier = adapter_for(settings).load(iris.model_name, str(iris.version)).estimator
    assert (classifier.named_steps["classifier"].C, classifier.named_steps["classifier"].max_iter) == (0.5, 50)
    params = client_for(settings).get_run(iris.run_id).data.params
    assert (params["C"], params["max_iter"]) == ("0.5", "50")


def test_without_overrides_the_defaults_are_logged(make_settings: MakeSettings) -> None:
    settings = make_settings()
    outcome = train_iris(settings)
    run = client_for(settings).get_run(outcome.run_id)
    assert (run.data.params["C"], run.data.params["max_iter"]) == ("10.0", "1000")
    assert "hyperparameter_overrides" not in run.data.tags


def test_champion_moved_during_training_is_not_overwritten(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    name = settings.iris_model_name
    train_iris(settings)
    train_iris(settings, {"C": 0.01})  # v2, too weak to be promoted: the other writer's choice below
    other_writer = adapter_for(settings)
    register = training.registry.log_and_register

    def register_while_someone_moves_the_alias(*args: Any, **kwargs: Any) -> int:
        # Runs after the candidate was compared with champion v1 and before it may take the alias.
        version = register(*args, **kwargs)
        move_alias(other_writer, name, settings.alias, "2", expected="1")
        return version

    monkeypatch.setattr(training.registry, "log_and_register", register_while_someone_moves_the_alias)
    outcome = train_iris(settings)

    assert (outcome.version, outcome.champion_version, outcome.promoted) == (3, 1, False)
    assert outcome.reason.startswith("the champion moved to v2 during training (it was v1 when compared); not promoted")
    assert champion_of(settings, name) == 2
    assert gate_tags(settings, outcome) == ("rejected", outcome.reason)
    assert client_for(settings).get_run(outcome.run_id).data.tags["champion_gate"] == "rejected"
    assert alias_history(other_writer, name, settings.alias) == ["1"]


def test_registry_uri_apart_from_the_tracking_store(make_settings: MakeSettings, tmp_path: Path) -> None:
    registry_db = tmp_path / "registry" / "models.db"
    settings = make_settings(mlflow_registry_uri=f"sqlite:///{registry_db}")
    first = train_iris(settings)
    second = train_iris(settings)

    assert second.champion_version == 1 and second.promoted
    registered = MlflowRegistry(settings.mlflow_tracking_uri, settings.registry_uri).aliases(first.model_name)
    assert registered == {"champion": "2"}
    tracking_only = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    assert tracking_only.search_registered_models() == []
    assert tracking_only.get_run(second.run_id).data.tags["champion_gate"] == "promoted"


def test_unreachable_registry_is_an_error_not_no_champion(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(mlflow_registry_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryUnavailableError):
        train_iris(settings)
