"""Faster paths that give exactly scikit-learn's answers: for small requests, and for gradient boosting at any size.

scikit-learn spends most of a one-row call on input validation and per-step bookkeeping, not on the
model's arithmetic. For the model families we serve, the arithmetic is reproduced here with the same
numpy operations in the same order, so the answers are bit-for-bit identical; ``compile_fast_path``
returns None for anything else, and the endpoints prove equality on sample rows before they use a path.
Inputs must be finite (the endpoints validate every value before predicting).

Gradient boosting: scikit-learn predicts a HistGradientBoostingRegressor tree by tree, paying a fixed
~8 us per tree per call: one row through a 300-tree model costs ~2.5 ms, almost all of it overhead. Here
the same flattened trees are walked in C (``server.forest_kernel``, built by ``make install``): on 600 trees one
row costs ~0.17 ms and 1,000 rows 15-23 ms against scikit-learn's 10.8 and 34-45 ms on one thread, so this path
answers every request. Without the built kernel all trees advance one level per numpy step: one row costs ~0.2 ms
on 300 trees and ~0.6 ms on 600, but past a few dozen rows scikit-learn is faster, so that walk answers small
requests only. Either way the decisions are the
same comparisons (``value <= threshold`` goes left) and the leaf values are summed in scikit-learn's order.
Categorical splits and non-identity links stay on scikit-learn; NaN would go left here but follow
``missing_go_to_left`` there, which is why inputs must be finite.

A gradient-boosting regressor may sit behind ``data.transforms.RotatedCoordinates`` in a pipeline: the
transform's own numpy code runs first, as the pipeline runs it, then the compiled trees.

Logistic regression (optionally after a StandardScaler): a one-row ``predict_proba`` through a pipeline
costs ~400 us in scikit-learn, nearly all of it validation; standardise, one matrix product and the
softmax cost ~10 us.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from server.domain import FloatMatrix
from server.forest_kernel import ForestKernel, KernelTrees, load_forest_kernel

logger = logging.getLogger(__name__)

IndexArray = npt.NDArray[np.intp]
FastPath = Callable[[FloatMatrix], FloatMatrix]


def compile_fast_path(estimator: Any, method: str) -> FastPath | None:
    """A fast equivalent of ``getattr(estimator, method)``, or None when there is none."""
    if method == "predict":
        transforms, final = _exact_transforms(estimator)
        forest = CompiledForest.from_estimator(final)
        if forest is None:
            return None
        return forest if not transforms else _Composed(transforms, forest)
    if method == "predict_proba":
        logistic = CompiledLogistic.from_estimator(estimator)
        return None if logistic is None else logistic.predict_proba
    return None


def _exact_transforms(estimator: Any) -> tuple[list[Callable[[FloatMatrix], FloatMatrix]], Any]:
    """A pipeline's leading steps when each is a transform whose own numpy code may run as is, and its last step.

    Only transforms known to be plain numpy with no input checks of their own qualify (``data.transforms``):
    calling their ``transform`` is then exactly what the pipeline does, minus its bookkeeping.
    """
    from sklearn.pipeline import Pipeline  # noqa: PLC0415

    from data.transforms import RotatedCoordinates  # noqa: PLC0415

    if type(estimator) is not Pipeline:
        return [], estimator
    steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
    transforms = steps[:-1]
    if not steps or any(type(step) is not RotatedCoordinates for step in transforms):
        return [], None
    return [step.transform for step in transforms], steps[-1]


class _Composed:
    """The transforms in order, then the compiled model."""

    def __init__(self, transforms: list[Callable[[FloatMatrix], FloatMatrix]], final: FastPath) -> None:
        self._transforms = transforms
        self._final = final
        # The transforms are numpy over whole arrays: the composition is as fast at any size as its model.
        self.any_size = fast_path_any_size(final)

    def __call__(self, values: FloatMatrix) -> FloatMatrix:
        for transform in self._transforms:
            values = transform(values)
        return self._final(values)


def fast_path_any_size(fast_path: FastPath) -> bool:
    """Whether ``fast_path`` is faster than scikit-learn for any number of rows, not only a few (its own
    ``any_size``; a path without one serves small requests only)."""
    return bool(getattr(fast_path, "any_size", False))


def reproduces(fast_path: FastPath, estimator: Any, method: str, sample: FloatMatrix) -> bool:
    """Whether ``fast_path`` gives exactly the estimator's answers on ``sample``."""
    expected = np.asarray(getattr(estimator, method)(sample), dtype=np.float64)
    return bool(np.array_equal(fast_path(sample), expected))


class CompiledForest:
    """A fitted HistGradientBoostingRegressor's trees as flat arrays, walked in C (any number of rows) when the
    native kernel is built (``server.forest_kernel``), else in numpy (a few rows)."""

    def __init__(
        self,
        *,
        roots: IndexArray,
        features: IndexArray,
        thresholds: FloatMatrix,
        children: IndexArray,
        values: FloatMatrix,
        baseline: float,
        tree_depths: IndexArray,
        kernel: ForestKernel | None = None,
    ) -> None:
        self._baseline = baseline
        # A row must have every column a split reads: the kernel indexes rows without bounds checks.
        self._columns_needed = int(features.max()) + 1
        self._kernel = kernel
        if kernel is not None:
            # Trees in the model's order, indices as the C code declares them.
            self._kernel_trees = KernelTrees(
                roots=roots.astype(np.int64),
                depths=tree_depths.astype(np.int32),
                features=features.astype(np.int32),
                thresholds=np.ascontiguousarray(thresholds, dtype=np.float64),
                children=children.astype(np.int32),
                leaf_values=np.ascontiguousarray(values, dtype=np.float64),
                baseline=baseline,
            )
            return
        # The numpy walk. Trees are walked deepest first, so that at each level only a prefix of them is still
        # moving; their leaf values are put back in the model's order before summing.
        walk_order = np.argsort(-tree_depths, kind="stable")
        self._roots = roots[walk_order]
        self._sum_order = np.argsort(walk_order)
        self._moving_per_level = [int((tree_depths > level).sum()) for level in range(int(tree_depths.max()))]
        self._features = features
        self._thresholds = thresholds
        # children[2 * node] is the left child, children[2 * node + 1] the right; a leaf points at itself.
        self._children = children
        self._values = values

    @property
    def any_size(self) -> bool:
        """Whether any number of rows is fast here (the native kernel), not only a few (the numpy walk)."""
        return self._kernel is not None

    @classmethod
    def from_estimator(cls, estimator: Any, *, native: bool = True) -> CompiledForest | None:
        """Flatten a fitted HistGradientBoostingRegressor; None for anything this path does not cover.

        ``native``: walk the trees with the C kernel when it is built (False: always the numpy walk).
        """
        from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415

        if type(estimator) is not HistGradientBoostingRegressor:
            return None
        try:
            # Private attributes: if a scikit-learn release renames them, we fall back, we do not fail.
            link = type(estimator._loss.link).__name__
            trees = [predictor.nodes for iteration in estimator._predictors for predictor in iteration]
            baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64)
        except AttributeError:
            return None
        if link != "IdentityLink" or estimator.n_trees_per_iteration_ != 1 or baseline.size != 1 or not trees:
            return None
        nodes = np.concatenate(trees)
        if nodes["is_categorical"].any() or 2 * len(nodes) >= np.iinfo(np.int32).max:
            return None
        sizes = np.array([len(tree) for tree in trees])
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
        tree_of_node = np.repeat(offsets, sizes)
        own_index = np.arange(len(nodes), dtype=np.intp)
        is_leaf = nodes["is_leaf"].astype(np.bool_)
        children = np.empty(2 * len(nodes), dtype=np.intp)
        children[0::2] = np.where(is_leaf, own_index, nodes["left"].astype(np.intp) + tree_of_node)
        children[1::2] = np.where(is_leaf, own_index, nodes["right"].astype(np.intp) + tree_of_node)
        return cls(
            roots=offsets,
            features=np.where(is_leaf, 0, nodes["feature_idx"]).astype(np.intp),
            # +inf at leaves: every comparison goes "left", which is the leaf itself.
            thresholds=np.where(is_leaf, np.inf, nodes["num_threshold"]).astype(np.float64),
            children=children,
            values=nodes["value"].astype(np.float64),
            baseline=float(baseline.ravel()[0]),
            tree_depths=np.array([tree["depth"].max() for tree in trees], dtype=np.intp),
            kernel=load_forest_kernel() if native else None,
        )

    def __call__(self, values: FloatMatrix) -> FloatMatrix:
        return self.predict(values)

    def predict(self, values: FloatMatrix) -> FloatMatrix:
        if values.ndim != 2 or values.shape[1] < self._columns_needed:
            raise ValueError(f"expected rows of at least {self._columns_needed} columns, got shape {values.shape}")
        if self._kernel is not None:
            return self._kernel.predict(values, self._kernel_trees)
        rows = values.shape[0]
        nodes = np.broadcast_to(self._roots, (rows, self._roots.size)).copy()
        row_index = np.arange(rows)[:, None]
        for moving in self._moving_per_level:
            current = nodes[:, :moving]
            goes_right = values[row_index, self._features[current]] > self._thresholds[current]
            nodes[:, :moving] = self._children[2 * current + goes_right]
        # scikit-learn adds the baseline, then each tree in order: accumulate reproduces that rounding.
        terms = np.empty((rows, self._roots.size + 1), dtype=np.float64)
        terms[:, 0] = self._baseline
        terms[:, 1:] = self._values[nodes[:, self._sum_order]]
        result: FloatMatrix = np.add.accumulate(terms, axis=1)[:, -1]
        return result


class CompiledLogistic:
    """``predict_proba`` of a multinomial LogisticRegression, optionally behind a StandardScaler."""

    def __init__(
        self, *, mean: FloatMatrix | None, scale: FloatMatrix | None, coef: FloatMatrix, intercept: FloatMatrix
    ) -> None:
        self._mean = mean
        self._scale = scale
        self._coef_t = np.ascontiguousarray(coef.T)
        self._intercept = intercept

    @classmethod
    def from_estimator(cls, estimator: Any) -> CompiledLogistic | None:
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        from sklearn.pipeline import Pipeline  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

        scaler = None
        if type(estimator) is Pipeline:
            steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
            if len(steps) != 2 or type(steps[0]) is not StandardScaler:
                return None
            scaler, estimator = steps
        if type(estimator) is not LogisticRegression or len(estimator.classes_) <= 2:
            # Binary models go through a different scikit-learn code path (expit); not covered.
            return None
        mean = scale = None
        if scaler is not None:
            mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
            scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None
        return cls(
            mean=mean,
            scale=scale,
            coef=np.asarray(estimator.coef_, dtype=np.float64),
            intercept=np.asarray(estimator.intercept_, dtype=np.float64),
        )

    def predict_proba(self, values: FloatMatrix) -> FloatMatrix:
        # The same operations, in the same order, as StandardScaler.transform, decision_function and
        # sklearn.utils.extmath.softmax.
        if self._mean is not None:
            values = values - self._mean
        if self._scale is not None:
            values = values / self._scale
        scores: FloatMatrix = values @ self._coef_t + self._intercept
        scores -= np.max(scores, axis=1).reshape((-1, 1))
        np.exp(scores, out=scores)
        scores /= np.sum(scores, axis=1).reshape((-1, 1))
        return scores
