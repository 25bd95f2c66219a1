import warnings
from collections.abc import Callable
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
from mlflow import MlflowClient
from mlflow.models import get_model_info

from data.schema import HOUSING_FEATURES, HOUSING_TARGET, IRIS_FEATURES
from training.pipeline import TrainingOutcome, train_all, train_housing, train_iris
from training.settings import TrainingSettings

MakeSettings = Callable[..., TrainingSettings]


def client_for(settings: TrainingSettings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def champion_of(settings: TrainingSettings, name: str) -> int | None:
    version = client_for(settings).get_registered_model(name).aliases.get(settings.alias)
    return None if version is None else int(version)


def gate_tags(settings: TrainingSettings, outcome: TrainingOutcome) -> tuple[str, str]:
    tags = client_for(settings).get_model_version(outcome.model_name, str(outcome.version)).tags
    return tags["champion_gate"], tags["champion_gate_reason"]


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
    first = train_housing(make_settings())
    settings = make_settings(housing_max_iter=1)
    worse = train_housing(settings)

    assert (worse.version, worse.promoted) == (2, False)
    assert worse.metrics["rmse"] > first.metrics["rmse"]
    assert worse.reason == f"rmse {worse.metrics['rmse']:.4f} is worse than champion v1's {first.metrics['rmse']:.4f}"
    assert champion_of(settings, worse.model_name) == 1
    assert gate_tags(settings, worse) == ("rejected", worse.reason)
    run = client_for(settings).get_run(worse.run_id)
    assert run.data.tags["champion_gate"] == "rejected"
    assert run.data.tags["champion_gate_reason"] == worse.reason
    assert run.data.tags["champion_gate_compared_version"] == "1"
    assert not any(name.startswith("champion") for name in run.data.metrics)


def test_better_model_is_promoted(make_settings: MakeSettings) -> None:
    train_housing(make_settings(housing_max_iter=5))
    settings = make_settings()
    better = train_housing(settings)
    assert better.promoted and "beats champion v1" in better.reason
    assert champion_of(settings, better.model_name) == 2


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
