"""``python -m benchmarks.plain_models``: register plain scikit-learn models under the served names.

The benchmark's second model set, so that its figures do not rest on the shape of one model: a
``HistGradientBoostingRegressor(random_state=0)`` (default hyper-parameters, raw features) for housing and
``StandardScaler + LogisticRegression()`` (defaults) for iris. Both go through the training flow itself
(``training.pipeline.train_model``: the same split, metrics, reference profile, signature and registration, and
the champion gate moving the alias), into the registry that ``MLFLOW_TRACKING_URI`` names, with the same
settings as ``python -m training`` except a housing quality floor loose enough for the default model.
"""

import dataclasses
import logging

from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from data.raw import load_housing, load_iris_raw
from training.gate import Floor
from training.housing import RMSE, housing_spec
from training.iris import iris_spec
from training.pipeline import ensure_housing_csv, ensure_iris_csv, train_model
from training.settings import TrainingSettings

# The default regressor's held-out RMSE is about 0.46, above the production floor (0.45).
PLAIN_HOUSING_MAX_RMSE = 0.6


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = TrainingSettings()
    housing = housing_spec(settings)
    housing = dataclasses.replace(
        housing,
        estimator=HistGradientBoostingRegressor(random_state=0),
        params={"estimator": "HistGradientBoostingRegressor(random_state=0)"},
        rules=dataclasses.replace(housing.rules, floor=Floor(RMSE, PLAIN_HOUSING_MAX_RMSE, "plain_housing_max_rmse")),
        skops_trusted_types=("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",),
    )
    iris = dataclasses.replace(
        iris_spec(settings),
        estimator=Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression())]),
        params={"estimator": "StandardScaler+LogisticRegression()"},
    )
    housing_path, iris_path = ensure_housing_csv(settings), ensure_iris_csv(settings)
    for spec, path, (x, y) in (
        (housing, housing_path, load_housing(housing_path)),
        (iris, iris_path, load_iris_raw(iris_path)),
    ):
        outcome = train_model(spec, x, y, path, settings)
        if not outcome.promoted:
            raise SystemExit(f"{spec.model_name} v{outcome.version} was not promoted: {outcome.reason}")


if __name__ == "__main__":
    main()
