"""Settings of the training process (``python -m training``)."""

from pathlib import Path
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_MAX_ROWS = 20
"""The smallest ``max_rows``: fewer rows leave too little to split, cross-validate and score."""


def _default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class TrainingSettings(BaseSettings):
    """Read once in ``training.__main__`` (or built by a test) and passed down; nothing else reads the environment."""

    model_config = SettingsConfigDict(env_prefix="TRAINING_", use_attribute_docstrings=True, validate_by_name=True)

    mlflow_tracking_uri: str = Field(
        default_factory=_default_tracking_uri,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "TRAINING_MLFLOW_TRACKING_URI"),
    )
    """MLflow tracking store (and registry, unless ``mlflow_registry_uri`` is set): ``sqlite:///...`` for a local
    store (the default, ``./mlflow.db`` in the working directory) or ``http://host:5000`` for an ``mlflow server``."""

    mlflow_registry_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_REGISTRY_URI", "TRAINING_MLFLOW_REGISTRY_URI")
    )
    """MLflow model registry, when it is not the tracking store: where versions are registered and the alias
    moves (the registry the server loads from). None uses ``mlflow_tracking_uri``."""

    artifact_root: Path = Field(default_factory=lambda: Path.cwd() / "mlartifacts")
    """Where new experiments keep their artifacts when the tracking store is local (sqlite or file).
    Ignored with an ``mlflow server``, which decides artifact locations itself."""

    data_dir: Path = Field(default_factory=lambda: Path.cwd() / "data")
    """Folder of ``housing_raw.csv`` and ``iris_raw.csv``; they are written there first if missing."""

    scikit_learn_data: Path | None = Field(default=None, validation_alias="SCIKIT_LEARN_DATA")
    """scikit-learn's data home holding ``cal_housing_py3.pkz``; None lets scikit-learn choose."""

    allow_download: bool = True
    """Download the housing data when it is not in the data home (needs internet)."""

    housing_model_name: str = "CaliforniaHousingBestModel"
    """Registered model name of the housing regressor."""

    iris_model_name: str = "IrisBestModel"
    """Registered model name of the iris classifier."""

    housing_experiment_name: str = "california-housing"
    """MLflow experiment of the housing runs."""

    iris_experiment_name: str = "iris"
    """MLflow experiment of the iris runs."""

    alias: str = "champion"
    """Registry alias that marks the version to serve; moved only to a version that passes the gate."""

    random_seed: int = 42
    """Seed of the row subset, the train/test split, the cross-validation folds and the estimators."""

    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Fraction of the rows held out for the metrics and the champion comparison."""

    max_rows: int | None = Field(default=None, ge=MIN_MAX_ROWS)
    """Train on a random subset of at most this many rows (quick runs and tests); None uses all rows."""

    housing_max_iter: int = Field(default=600, ge=1)
    """Boosting iterations (trees) of the housing model; lower it for fast tests."""

    housing_max_rmse: float = Field(default=0.45, gt=0.0)
    """Quality floor: a housing model with a held-out RMSE above this is registered but never promoted."""

    iris_min_accuracy: float = Field(default=0.95, ge=0.0, le=1.0)
    """Quality floor: an iris model with a cross-validated accuracy below this is never promoted."""

    @field_validator("artifact_root", "data_dir", "scikit_learn_data")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # MLflow stores artifact locations as absolute URIs; relative paths would depend on the cwd of
        # whichever process reads them later.
        return None if path is None else path.absolute()

    @property
    def registry_uri(self) -> str:
        """Where models are registered and aliases moved."""
        return self.mlflow_registry_uri or self.mlflow_tracking_uri

    @property
    def tracking_store_is_local(self) -> bool:
        """True for a sqlite or file store, where this process chooses the artifact location."""
        return urlparse(self.mlflow_tracking_uri).scheme in ("sqlite", "file", "")
