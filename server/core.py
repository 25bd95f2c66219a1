"""The prediction core: protocol-free. Servicers and REST routes convert to and from these calls.

Each endpoint takes one snapshot of its service's deployment from the store per request, validates the whole
batch, predicts in one estimator call and reports which version answered.
"""

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.batching import BatchingMetrics, Coalescer
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
from server.errors import DeadlineExpiredError, FieldViolation, InvalidInputError, ModelUnavailableError
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
class Batching:
    """How small requests of the versions prepared with ``coalesce`` are predicted together."""

    metrics: BatchingMetrics
    permits: int
    max_rows: int
    max_wait_seconds: float = 0.0


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
        batching: Batching | None = None,
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
        self._batching = batching
        self._coalescers: dict[int, tuple[LoadedModel, Coalescer]] = {}
        self._coalescers_lock = threading.Lock()

    def deployment(self) -> Deployment:
        return self._store.get(self.slot)

    def _bound_metrics(self, model: LoadedModel, variant: str) -> BoundModelMetrics:
        ref = model.description.ref
        bound = self._bound.get((ref, variant))
        if bound is None:
            bound = self._bound.setdefault((ref, variant), self._metrics.bind(ref, variant))
        return bound

    def _run(self, batch: FeatureBatch, context: RequestContext, *, validated: bool = False) -> Answer:
        deployment = self._store.get(self.slot)
        model, variant = self._router.choose(deployment, context)
        ref = model.description.ref
        bound = self._bound_metrics(model, variant)
        rows = batch.rows
        start = time.perf_counter()
        try:
            self._check_size(batch)
            if not validated:
                self.features.validate(batch)
        except InvalidInputError:
            bound.invalid_input.inc(rows)
            raise
        try:
            output = self._predict(deployment, model, batch, context)
        except DeadlineExpiredError:
            raise
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

    def _run_each(self, batches: Sequence[FeatureBatch], context: RequestContext) -> list[Answer | Exception]:
        """Answer independent single-row requests together (a stream's waiting messages): one answer or error each.

        Each is validated on its own, the valid ones are predicted in one call by one variant; when that call
        fails for another reason than the whole service's (no model, deadline), each is predicted on its own.
        """
        results: list[Answer | Exception | None] = [None] * len(batches)
        valid: list[int] = []
        for index, batch in enumerate(batches):
            try:
                self.features.validate(batch)
                valid.append(index)
            except InvalidInputError as exc:
                results[index] = exc
        if len(valid) < len(batches):
            self._count_invalid(len(batches) - len(valid), context)
        if valid and not self._rows_share_calls():
            for index in valid:
                results[index] = self._run_alone(batches[index], context)
        elif valid:
            combined = FeatureBatch(np.concatenate([batches[index].values for index in valid]), is_batch=True)
            try:
                answer = self._run(combined, context, validated=True)
            except (ModelUnavailableError, DeadlineExpiredError) as exc:
                for index in valid:
                    results[index] = exc
            except Exception:
                for index in valid:
                    results[index] = self._run_alone(batches[index], context)
            else:
                for row, index in enumerate(valid):
                    output = answer.output[row : row + 1]
                    results[index] = Answer(output, answer.ref, answer.variant, answer.prediction_ids[row : row + 1])
        return [result for result in results if result is not None]

    def _rows_share_calls(self) -> bool:
        """Whether every variant of the deployment answers a row the same whatever rows share its call."""
        try:
            deployment = self._store.get(self.slot)
        except ModelUnavailableError:
            return True  # each gets UNAVAILABLE either way
        return all(model.row_independent for model in deployment.variants().values())

    def _run_alone(self, batch: FeatureBatch, context: RequestContext) -> Answer | Exception:
        try:
            return self._run(batch, context)
        except Exception as exc:
            return exc

    def _count_invalid(self, rows: int, context: RequestContext) -> None:
        try:
            deployment = self._store.get(self.slot)
        except ModelUnavailableError:
            return
        model, variant = self._router.choose(deployment, context)
        self._bound_metrics(model, variant).invalid_input.inc(rows)

    def _predict(
        self, deployment: Deployment, model: LoadedModel, batch: FeatureBatch, context: RequestContext
    ) -> FloatMatrix:
        batching = self._batching
        if batching is not None and model.coalesce and batch.rows < batching.max_rows:
            return self._coalescer(deployment, model, batching).predict(batch.values, context.deadline)
        if context.deadline is not None and context.deadline <= time.monotonic():
            # It waited for a worker thread past its deadline: nobody would read the answer.
            if batching is not None:
                batching.metrics.expired.labels(model.description.ref.name).inc()
            raise DeadlineExpiredError("the deadline passed before the model was called")
        return self._runner.predict(model, batch.values)

    def _coalescer(self, deployment: Deployment, model: LoadedModel, batching: Batching) -> Coalescer:
        found = self._coalescers.get(id(model))
        if found is not None:
            return found[1]
        with self._coalescers_lock:
            found = self._coalescers.get(id(model))
            if found is not None:
                return found[1]
            served = {id(each) for each in deployment.variants().values()}
            self._coalescers = {key: kept for key, kept in self._coalescers.items() if key in served}
            coalescer = Coalescer(
                lambda values: self._runner.predict(model, values),
                model=model.description.ref.name,
                metrics=batching.metrics,
                permits=batching.permits,
                max_rows=batching.max_rows,
                max_wait_seconds=batching.max_wait_seconds,
            )
            self._coalescers = {**self._coalescers, id(model): (model, coalescer)}
            return coalescer

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

    def predict_each(
        self, batches: Sequence[FeatureBatch], context: RequestContext = NO_CONTEXT
    ) -> list[HousingPredictions | Exception]:
        return [
            answer
            if isinstance(answer, Exception)
            else HousingPredictions(answer.output, answer.ref, answer.variant, answer.prediction_ids)
            for answer in self._run_each(batches, context)
        ]


class IrisEndpoint(ModelEndpoint):
    def classify(self, batch: FeatureBatch, context: RequestContext = NO_CONTEXT) -> IrisClassifications:
        answer = self._run(batch, context)
        return IrisClassifications(answer.output, answer.ref, answer.variant, answer.prediction_ids)

    def classify_each(
        self, batches: Sequence[FeatureBatch], context: RequestContext = NO_CONTEXT
    ) -> list[IrisClassifications | Exception]:
        return [
            answer
            if isinstance(answer, Exception)
            else IrisClassifications(answer.output, answer.ref, answer.variant, answer.prediction_ids)
            for answer in self._run_each(batches, context)
        ]
