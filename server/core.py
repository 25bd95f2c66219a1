"""The prediction core: protocol-free. Servicers and REST routes convert to and from these calls.

Each endpoint takes one snapshot of its model from the store per request, validates the whole batch,
predicts in one estimator call and reports which version answered.
"""

import dataclasses
import logging
import time
from abc import ABC, abstractmethod

import numpy as np

from server.domain import (
    FeatureBatch,
    FloatMatrix,
    HousingPredictions,
    IrisClassifications,
    LoadedModel,
    ModelDescription,
    ModelVersionRef,
)
from server.errors import FieldViolation, InvalidInputError, ModelLoadError
from server.fast_paths import compile_fast_path, reproduces
from server.features import FeatureTable
from server.metrics import BoundModelMetrics, ModelMetrics
from server.model_store import ModelSlot, ModelStore
from server.runtime import PredictRuntime

logger = logging.getLogger(__name__)

IRIS_CLASS_COUNT = 3
# Rows on which a fast path must reproduce the estimator exactly before it is used.
VERIFICATION_ROWS = 256


class ModelOutputError(Exception):
    """The estimator answered with something we must not pass on (wrong shape, NaN, ...)."""


class ModelEndpoint(ABC):
    """What the housing and iris endpoints share: snapshot, validation, metrics, runtime."""

    # The estimator method this endpoint calls: "predict" or "predict_proba".
    estimator_method = "predict"

    def __init__(
        self,
        slot: ModelSlot,
        *,
        store: ModelStore,
        features: FeatureTable,
        metrics: ModelMetrics,
        runtime: PredictRuntime,
        max_batch_size: int,
        small_batch_rows: int = 0,
    ) -> None:
        self.slot = slot
        self.features = features
        self.max_batch_size = max_batch_size
        self._small_batch_rows = small_batch_rows
        self._store = store
        self._metrics = metrics
        self._runtime = runtime
        self._bound: dict[ModelVersionRef, BoundModelMetrics] = {}

    def describe(self) -> ModelDescription:
        return self._store.get(self.slot).description

    def prepare(self, model: LoadedModel) -> LoadedModel:
        """Check a candidate model, attach any fast path and warm it up; ModelLoadError if it is unfit."""
        fast_path = compile_fast_path(model.estimator, self.estimator_method) if self._small_batch_rows else None
        if fast_path is not None:
            sample = self.sample_rows(VERIFICATION_ROWS)
            if reproduces(fast_path, model.estimator, self.estimator_method, sample):
                model = dataclasses.replace(model, small_batch_predict=fast_path)
            else:
                logger.warning("%s: fast path disagrees with scikit-learn; not used", model.description.model_uri)
        try:
            self._predict_with(model, self.features.example_row)
        except Exception as exc:
            raise ModelLoadError(f"{model.description.model_uri} failed its warm-up prediction: {exc}") from exc
        return model

    def sample_rows(self, count: int) -> FloatMatrix:
        """Valid inputs (fixed seed): the example row, rows around it, and rows over the whole accepted range."""
        generator = np.random.default_rng(0)
        low = np.array([spec.minimum for spec in self.features.specs])
        high = np.array([spec.maximum for spec in self.features.specs])
        near = count // 2
        typical = self.features.example_row * generator.uniform(0.5, 1.5, size=(near, len(self.features)))
        spread = generator.uniform(low, high, size=(count - near - 1, len(self.features)))
        return np.vstack([self.features.example_row, np.clip(typical, low, high), spread])

    def _predict_with(self, model: LoadedModel, values: FloatMatrix) -> FloatMatrix:
        fast_path = model.small_batch_predict
        if fast_path is not None and values.shape[0] <= self._small_batch_rows:
            output = fast_path(values)
        else:
            output = np.asarray(
                self._runtime.run(getattr(model.estimator, self.estimator_method), values), dtype=np.float64
            )
        if output.shape != self._output_shape(values.shape[0]):
            raise ModelOutputError(
                f"model returned shape {output.shape}, expected {self._output_shape(values.shape[0])}"
            )
        if not np.isfinite(output).all():
            raise ModelOutputError("model returned a non-finite value")
        return output

    @abstractmethod
    def _output_shape(self, rows: int) -> tuple[int, ...]:
        """The shape a correct answer for ``rows`` rows has."""

    def _run(self, batch: FeatureBatch) -> tuple[FloatMatrix, ModelVersionRef]:
        model = self._store.get(self.slot)
        ref = model.description.ref
        bound = self._bound.get(ref)
        if bound is None:
            bound = self._bound.setdefault(ref, self._metrics.bind(ref))
        rows = batch.rows
        start = time.perf_counter()
        try:
            self._check_size(batch)
            self.features.validate(batch)
        except InvalidInputError:
            bound.invalid_input.inc(rows)
            raise
        try:
            output = self._predict_with(model, batch.values)
        except Exception:
            bound.error.inc(rows)
            raise
        bound.latency.observe(time.perf_counter() - start)
        bound.batch_size.observe(rows)
        bound.success.inc(rows)
        return output, ref

    def _check_size(self, batch: FeatureBatch) -> None:
        if not batch.is_batch:
            return
        if batch.rows == 0:
            raise InvalidInputError(
                "instances: a batch needs at least one instance",
                (FieldViolation("instances", "must hold at least one instance"),),
            )
        if batch.rows > self.max_batch_size:
            description = f"holds {batch.rows} instances; at most {self.max_batch_size} are allowed"
            raise InvalidInputError(f"instances: {description}", (FieldViolation("instances", description),))


class HousingEndpoint(ModelEndpoint):
    def predict(self, batch: FeatureBatch) -> HousingPredictions:
        values, ref = self._run(batch)
        return HousingPredictions(values=values, model=ref)

    def _output_shape(self, rows: int) -> tuple[int, ...]:
        return (rows,)


class IrisEndpoint(ModelEndpoint):
    estimator_method = "predict_proba"

    def classify(self, batch: FeatureBatch) -> IrisClassifications:
        probabilities, ref = self._run(batch)
        return IrisClassifications(probabilities=probabilities, model=ref)

    def prepare(self, model: LoadedModel) -> LoadedModel:
        classes = getattr(model.estimator, "classes_", None)
        if classes is None or list(classes) != list(range(IRIS_CLASS_COUNT)):
            raise ModelLoadError(
                f"{model.description.model_uri} has classes {classes!r}; expected 0, 1, 2 "
                "(setosa, versicolor, virginica)"
            )
        return super().prepare(model)

    def _output_shape(self, rows: int) -> tuple[int, ...]:
        return (rows, IRIS_CLASS_COUNT)
