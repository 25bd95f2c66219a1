"""The prediction core: protocol-free. Servicers and REST routes convert to and from these calls.

Each endpoint takes one snapshot of its service's deployment from the store per request, validates the whole
batch, predicts in one estimator call and reports which version answered.
"""

import time

from server.domain import (
    NO_CONTEXT,
    FeatureBatch,
    FloatMatrix,
    HousingPredictions,
    IrisClassifications,
    ModelDescription,
    ModelVersionRef,
    RequestContext,
)
from server.errors import FieldViolation, InvalidInputError
from server.execution import ModelRunner
from server.metrics import BoundModelMetrics, ModelMetrics
from server.model_store import ModelStore
from server.services import ServiceSpec


class ModelEndpoint:
    """What the housing and iris endpoints share: snapshot, validation, metrics, runner."""

    def __init__(
        self, spec: ServiceSpec, *, store: ModelStore, metrics: ModelMetrics, runner: ModelRunner, max_batch_size: int
    ) -> None:
        self.spec = spec
        self.slot = spec.slot
        self.features = spec.features
        self.max_batch_size = max_batch_size
        self._store = store
        self._metrics = metrics
        self._runner = runner
        self._bound: dict[ModelVersionRef, BoundModelMetrics] = {}

    def describe(self) -> ModelDescription:
        return self._store.get(self.slot).champion.description

    def _run(self, batch: FeatureBatch, context: RequestContext) -> tuple[FloatMatrix, ModelVersionRef]:
        model = self._store.get(self.slot).champion
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
            output = self._runner.predict(model, batch.values)
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
    def predict(self, batch: FeatureBatch, context: RequestContext = NO_CONTEXT) -> HousingPredictions:
        values, ref = self._run(batch, context)
        return HousingPredictions(values=values, model=ref)


class IrisEndpoint(ModelEndpoint):
    def classify(self, batch: FeatureBatch, context: RequestContext = NO_CONTEXT) -> IrisClassifications:
        probabilities, ref = self._run(batch, context)
        return IrisClassifications(probabilities=probabilities, model=ref)
