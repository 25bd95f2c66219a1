"""The prediction core: protocol-free. Servicers and REST routes convert to and from these calls.

Each endpoint takes one snapshot of its service's deployment from the store per request, validates the whole
batch, predicts in one estimator call and reports which version answered.
"""

import time
from dataclasses import dataclass

from server.domain import (
    NO_CONTEXT,
    Deployment,
    FeatureBatch,
    FloatMatrix,
    HousingPredictions,
    IrisClassifications,
    LoadedModel,
    ModelVersionRef,
    RequestContext,
)
from server.errors import FieldViolation, InvalidInputError
from server.execution import ModelRunner
from server.ids import new_prediction_ids
from server.metrics import BoundModelMetrics, ModelMetrics
from server.model_store import ModelStore
from server.observe.drift import DriftMonitor
from server.observe.prediction_log import PredictionEvent, PredictionLog
from server.observe.shadow import ShadowCopy, ShadowRunner
from server.router import CHAMPION, Router
from server.services import ServiceSpec


@dataclass(frozen=True, slots=True)
class Observers:
    """Where answered requests are also sent, off the request path (each ``offer`` is non-blocking)."""

    prediction_log: PredictionLog | None = None
    shadow: ShadowRunner | None = None
    drift: DriftMonitor | None = None


NO_OBSERVERS = Observers()


@dataclass(frozen=True, slots=True)
class Answer:
    output: FloatMatrix
    ref: ModelVersionRef
    variant: str
    prediction_ids: list[str]


class ModelEndpoint:
    """What the housing and iris endpoints share: snapshot, validation, metrics, runner."""

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        store: ModelStore,
        metrics: ModelMetrics,
        runner: ModelRunner,
        max_batch_size: int,
        router: Router | None = None,
        observers: Observers = NO_OBSERVERS,
    ) -> None:
        self.spec = spec
        self.slot = spec.slot
        self.features = spec.features
        self.max_batch_size = max_batch_size
        self._store = store
        self._metrics = metrics
        self._runner = runner
        self._router = router or Router()
        self._observers = observers
        self._bound: dict[tuple[ModelVersionRef, str], BoundModelMetrics] = {}

    def deployment(self) -> Deployment:
        return self._store.get(self.slot)

    def _run(self, batch: FeatureBatch, context: RequestContext) -> Answer:
        deployment = self._store.get(self.slot)
        model, variant = self._router.choose(deployment, context)
        ref = model.description.ref
        bound = self._bound.get((ref, variant))
        if bound is None:
            bound = self._bound.setdefault((ref, variant), self._metrics.bind(ref, variant))
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
        latency = time.perf_counter() - start
        bound.latency.observe(latency)
        bound.batch_size.observe(rows)
        bound.success.inc(rows)
        ids = new_prediction_ids(rows)
        self._observe(deployment, model, variant, ids, batch, output, latency, context)
        return Answer(output, ref, variant, ids)

    def _observe(  # noqa: PLR0917 - one call site, the request path; a parameter object would cost an allocation
        self,
        deployment: Deployment,
        model: LoadedModel,
        variant: str,
        ids: list[str],
        batch: FeatureBatch,
        output: FloatMatrix,
        latency: float,
        context: RequestContext,
    ) -> None:
        observers = self._observers
        if observers.prediction_log is not None:
            ref = model.description.ref
            observers.prediction_log.offer(
                PredictionEvent(
                    service=self.slot.value,
                    model=ref.name,
                    version=ref.version,
                    variant=variant,
                    prediction_ids=ids,
                    inputs=batch.values,
                    feature_names=self.features.names,
                    outputs=output,
                    output_names=self.spec.output_names,
                    latency_seconds=latency,
                    request_id=context.request_id,
                    routing_key=context.routing_key,
                    predicted_at=time.time(),
                )
            )
        if observers.drift is not None:
            observers.drift.offer(model, batch.values, output)
        if observers.shadow is not None and deployment.shadow and variant == CHAMPION:
            assert deployment.challenger is not None  # deployment.shadow says so
            observers.shadow.offer(ShadowCopy(self.slot.value, deployment.challenger, batch.values, output))

    def _check_size(self, batch: FeatureBatch) -> None:
        if not batch.is_batch:
            return
        field, unit = ("columns", "row") if batch.columnar else ("instances", "instance")
        if batch.rows == 0:
            raise InvalidInputError(
                f"{field}: a batch needs at least one {unit}",
                (FieldViolation(field, f"must hold at least one {unit}"),),
            )
        if batch.rows > self.max_batch_size:
            description = f"holds {batch.rows} {unit}s; at most {self.max_batch_size} are allowed"
            raise InvalidInputError(f"{field}: {description}", (FieldViolation(field, description),))


class HousingEndpoint(ModelEndpoint):
    def predict(self, batch: FeatureBatch, context: RequestContext = NO_CONTEXT) -> HousingPredictions:
        answer = self._run(batch, context)
        return HousingPredictions(answer.output, answer.ref, answer.variant, answer.prediction_ids)


class IrisEndpoint(ModelEndpoint):
    def classify(self, batch: FeatureBatch, context: RequestContext = NO_CONTEXT) -> IrisClassifications:
        answer = self._run(batch, context)
        return IrisClassifications(answer.output, answer.ref, answer.variant, answer.prediction_ids)
