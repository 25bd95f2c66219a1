import subprocess
import sys

from ..prerequisites import REPO_ROOT


def test_the_runtime_controls_openmp_even_when_made_before_any_model_is_loaded():
    # A fresh interpreter, as in `python -m server`, where scikit-learn is not imported until models load.
    probe = "from server.runtime import PredictRuntime; print(sorted(PredictRuntime(256).controlled_apis))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert "openmp" in result.stdout
