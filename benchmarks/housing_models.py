"""``python -m benchmarks.housing_models``: held-out RMSE and single-row cost of housing model candidates.

Each candidate is fitted on the standard split (the training pipeline's ``split_rows``, seed 42, 20% held out)
and timed predicting one row through the server's fast path and through scikit-learn, in alternating rounds
(medians of the rounds' p50). The fast path is checked to give scikit-learn's exact answers first.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from data.raw import load_housing
from data.transforms import RotatedCoordinates
from server.fast_paths import compile_fast_path
from training.housing import housing_spec, score_housing
from training.pipeline import ensure_housing_csv, split_rows
from training.settings import TrainingSettings


def _raw(trees: int, rate: float) -> Any:
    return HistGradientBoostingRegressor(
        max_iter=trees, learning_rate=rate, max_leaf_nodes=63, early_stopping=False, random_state=42
    )


CANDIDATES: dict[str, Callable[[], Any]] = {
    "raw features, 300 trees, rate 0.1 (before)": lambda: _raw(300, 0.1),
    "raw features, 1000 trees, rate 0.05": lambda: _raw(1000, 0.05),
    "rotated coordinates, 300 trees, rate 0.05": lambda: Pipeline(
        [("coordinates", RotatedCoordinates()), ("regressor", _raw(300, 0.05))]
    ),
    "rotated coordinates, 600 trees, rate 0.05 (now)": lambda: Pipeline(
        [("coordinates", RotatedCoordinates()), ("regressor", _raw(600, 0.05))]
    ),
    "rotated coordinates, 800 trees, rate 0.05": lambda: Pipeline(
        [("coordinates", RotatedCoordinates()), ("regressor", _raw(800, 0.05))]
    ),
}


def _p50_us(call: Callable[[np.ndarray], object], row: np.ndarray, calls: int) -> float:
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        call(row)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.housing_models", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000, help="single-row calls per round")
    args = parser.parse_args()
    settings = TrainingSettings()
    spec = housing_spec(settings)
    x, y = load_housing(ensure_housing_csv(settings))
    split = split_rows(x, y, spec, settings)
    print("| candidate | held-out RMSE | MAE | fit s | fast path 1-row p50 us | scikit-learn 1-row p50 us |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, build in CANDIDATES.items():
        model = build()
        started = time.perf_counter()
        model.fit(split.x_train, split.y_train)
        fit_seconds = time.perf_counter() - started
        scores = score_housing(model, split.x_test, split.y_test)
        fast = compile_fast_path(model, "predict")
        assert fast is not None, name
        assert np.array_equal(fast(split.x_test[:256]), model.predict(split.x_test[:256])), name
        row = split.x_test[:1]
        fast_rounds, slow_rounds = [], []
        for _ in range(args.rounds):
            fast_rounds.append(_p50_us(fast, row, args.calls))
            slow_rounds.append(_p50_us(model.predict, row, max(50, args.calls // 10)))
        print(
            f"| {name} | {scores['rmse']:.4f} | {scores['mae']:.4f} | {fit_seconds:.1f} | "
            f"{statistics.median(fast_rounds):.0f} | {statistics.median(slow_rounds):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
