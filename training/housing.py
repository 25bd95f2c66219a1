"""California housing regressor: a histogram gradient-boosting model scored by held-out RMSE."""

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from data.schema import HOUSING_FEATURES, HOUSING_TARGET
from training.gate import Criterion, Floor, GateRules
from training.hyperparameters import HOUSING, validate_overrides
from training.settings import TrainingSettings
from training.spec import FloatArray, ModelSpec, Target, logged

# 300 trees of up to 63 leaves at rate 0.1, no early stopping: held-out RMSE 0.4405. Single-row latency grows
# with the tree count (~8 us a tree), so this beats rate 0.05 with 1,000 trees (0.432, 3.4x slower to predict)
# and early stopping (0.448 after ~276 trees, too close to the 0.45 floor).
LEARNING_RATE = 0.1
MAX_LEAF_NODES = 63
RMSE = Criterion("rmse", higher_is_better=False)


def housing_spec(settings: TrainingSettings, overrides: Mapping[str, float] | None = None) -> ModelSpec:
    """The housing model; ``overrides`` (see ``training.hyperparameters.HOUSING``) replace the defaults."""
    chosen = validate_overrides("housing", overrides or {})
    defaults = {"max_iter": settings.housing_max_iter, "learning_rate": LEARNING_RATE, "max_leaf_nodes": MAX_LEAF_NODES}
    estimator = HistGradientBoostingRegressor(
        early_stopping=False, random_state=settings.random_seed, **(defaults | chosen)
    )
    # Read back from the estimator, so the run records what was fitted, whether overridden or not.
    fitted_with = estimator.get_params()
    return ModelSpec(
        kind="housing",
        model_name=settings.housing_model_name,
        experiment_name=settings.housing_experiment_name,
        features=HOUSING_FEATURES,
        target=HOUSING_TARGET,
        target_type="double",
        class_names=(),
        estimator=estimator,
        params={
            "estimator": type(estimator).__name__,
            **{name: logged(fitted_with[name]) for name in HOUSING},
            "early_stopping": str(estimator.early_stopping),
        },
        overrides=chosen,
        stratify=False,
        score=score_housing,
        cross_validate=None,
        rules=GateRules(floor=Floor(RMSE, settings.housing_max_rmse, "housing_max_rmse"), ranking=(RMSE,)),
        skops_trusted_types=("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",),
    )


def score_housing(model: Any, x: FloatArray, y: Target) -> dict[str, float]:
    predicted = np.asarray(model.predict(x), dtype=np.float64)
    return {
        "rmse": float(root_mean_squared_error(y, predicted)),
        "mae": float(mean_absolute_error(y, predicted)),
        "r2": float(r2_score(y, predicted)),
    }
