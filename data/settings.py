"""Settings of the raw-data step (``python -m data``)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DataSettings(BaseSettings):
    """Read once in ``data.__main__`` and passed down; nothing else in the step reads the environment."""

    model_config = SettingsConfigDict(env_prefix="DATA_", use_attribute_docstrings=True, validate_by_name=True)

    scikit_learn_data: Path | None = Field(default=None, validation_alias="SCIKIT_LEARN_DATA")
    """scikit-learn's data home, the folder that holds (or receives) ``cal_housing_py3.pkz``.
    None lets scikit-learn use ``~/scikit_learn_data``."""

    output_dir: Path = Path("data")
    """Folder that receives ``housing_raw.csv`` and ``iris_raw.csv``."""

    allow_download: bool = True
    """Download the housing data when it is not in the data home (needs internet)."""
