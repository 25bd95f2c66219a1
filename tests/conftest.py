import os
from pathlib import Path

import pytest

# MLflow decides about telemetry when it is first imported, which happens while tests are collected.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def offline_data_home() -> Path:
    """scikit-learn's data home holding the California housing cache: tests never download."""
    configured = os.environ.get("SCIKIT_LEARN_DATA")
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "scikit_learn_data")
    for candidate in candidates:
        if (candidate / "cal_housing_py3.pkz").is_file():
            return candidate
    pytest.skip("California housing data is not available offline; set SCIKIT_LEARN_DATA")
