"""Turning a registry artifact into a version fit to serve, or refusing it with a reason.

Runs on the load path (start-up and hot reload, in the background), never on the request path. A version is
served only after all of this passed:

- its logged input signature names the service's features, in number and order (a version registered by hand
  without a signature must at least take the right number of columns);
- a classifier's ``classes_`` are exactly the service's labels (answers are mapped to species by position);
- any fast path reproduced scikit-learn exactly on sample rows (else it is dropped, the version still serves);
- smoke predictions on those sample rows, through the code that will answer requests, are finite and of the
  right shape.

Preparation also decides whether rows of different requests may share one call. A version is
``row_independent`` when each sample row's answer alone is bit-for-bit its answer inside a small and a large
batch: trees are; linear models often are not, since BLAS rounds a product by its shape. With
``microbatch="auto"`` small requests are coalesced (``server.batching``) only for row-independent versions, so
coalescing never changes an answer, and only when it pays: the served code is timed on one row and on
``COALESCE_PROBE_ROWS`` rows, and one call on those rows must save more than coalescing costs (a queued request's
wake-up, ``HANDOFF_SECONDS`` a row). A random forest saves milliseconds a row, and so does gradient boosting on
the C walk (its cost is mostly per call); the numpy fast paths cost the same per row however many rows they get,
so coalescing would only add the hand-offs. Streams group their waiting
messages into one call for row-independent versions only.
"""

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from data.profile import ProfileError, ReferenceProfile
from model_registry import LoadedArtifact
from server.domain import FloatMatrix, LoadedModel, ModelDescription, ModelVersionRef
from server.execution import ModelOutputError, ModelRunner
from server.fast_paths import compile_fast_path, fast_path_any_size, reproduces
from server.features import FeatureTable

logger = logging.getLogger(__name__)

# Rows on which a fast path must reproduce the estimator exactly, and on which smoke predictions run.
VERIFICATION_ROWS = 256
# Rows of the probe that decides coalescing: as many as the RPC threads can queue on a model at once (8 by default).
COALESCE_PROBE_ROWS = 8
# What coalescing costs per queued request: its thread's wake-up and the slicing (measured: benchmarks.microbatch).
HANDOFF_SECONDS = 60e-6
CoalesceMode = Literal["auto", "on", "off"]


class ModelValidationError(Exception):
    """A version that must not be served; ``reason`` is short and stable (a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def sample_rows(features: FeatureTable, count: int) -> FloatMatrix:
    """Valid inputs (fixed seed): the example row, rows around it, and rows over the whole accepted range."""
    generator = np.random.default_rng(0)
    low = np.array([spec.minimum for spec in features.specs])
    high = np.array([spec.maximum for spec in features.specs])
    near = count // 2
    typical = features.example_row * generator.uniform(0.5, 1.5, size=(near, len(features)))
    spread = generator.uniform(low, high, size=(count - near - 1, len(features)))
    return np.vstack([features.example_row, np.clip(typical, low, high), spread])


def describe_estimator(estimator: object) -> str:
    """The estimator's class; for a pipeline, also each step's, in order."""
    cls = type(estimator)
    name = f"{cls.__module__}.{cls.__qualname__}"
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list):
        return f"{name}({', '.join(describe_estimator(step) for _, step in steps)})"
    return name


class ModelPreparer:
    """Checks one service's candidate versions and equips them (fast path) for its ``ModelRunner``."""

    def __init__(self, runner: ModelRunner, coalesce: CoalesceMode = "off") -> None:
        self._runner = runner
        self._coalesce = coalesce
        self._spec = runner.spec
        self._sample = sample_rows(self._spec.features, VERIFICATION_ROWS)

    def prepare(self, artifact: LoadedArtifact, alias: str) -> LoadedModel:
        info = artifact.info
        model_uri = f"models:/{info.name}/{info.version}"
        self._check_inputs(artifact, model_uri)
        self._check_classes(artifact.estimator, model_uri)
        description = ModelDescription(
            ref=ModelVersionRef(name=info.name, version=info.version, alias=alias, run_id=info.run_id),
            model_uri=model_uri,
            estimator=describe_estimator(artifact.estimator),
            loaded_at=datetime.now(UTC),
            training_metrics=dict(info.metrics),
        )
        model = LoadedModel(
            description=description,
            estimator=artifact.estimator,
            reference_profile=self._reference_profile(artifact, model_uri),
        )
        model = self._with_fast_path(model)
        self._smoke_test(model)
        return self._with_coalescing(model)

    def _check_inputs(self, artifact: LoadedArtifact, model_uri: str) -> None:
        expected = self._spec.features.names
        if artifact.input_names is not None:
            if artifact.input_names != expected:
                raise ModelValidationError(
                    "signature",
                    f"{model_uri} takes inputs {list(artifact.input_names)}; the service sends {list(expected)}",
                )
            return
        width = getattr(artifact.estimator, "n_features_in_", None)
        if width is not None and int(width) != len(expected):
            raise ModelValidationError(
                "signature", f"{model_uri} takes {width} features; the service sends {len(expected)}"
            )

    def _reference_profile(self, artifact: LoadedArtifact, model_uri: str) -> ReferenceProfile | None:
        """The version's profile when it has one that describes this service's columns; else None (served)."""
        if artifact.reference_profile is None:
            return None
        try:
            profile = ReferenceProfile.from_json(artifact.reference_profile)
        except ProfileError as exc:
            logger.warning("%s: its reference profile cannot be read (%s); drift is not measured", model_uri, exc)
            return None
        expected = (self._spec.features.names, self._spec.output_names)
        if (tuple(profile.features), tuple(profile.outputs)) != expected:
            logger.warning(
                "%s: its reference profile describes %s -> %s, not the service's columns; drift is not measured",
                model_uri,
                list(profile.features),
                list(profile.outputs),
            )
            return None
        return profile

    def _check_classes(self, estimator: object, model_uri: str) -> None:
        labels = self._spec.class_labels
        if labels is None:
            return
        classes = getattr(estimator, "classes_", None)
        if classes is None or [int(label) for label in classes] != list(labels):
            raise ModelValidationError(
                "classes",
                f"{model_uri} has classes {classes!r}; expected {list(labels)} (setosa, versicolor, virginica)",
            )

    def _with_fast_path(self, model: LoadedModel) -> LoadedModel:
        if not self._runner.small_batch_rows:
            return model
        fast_path = compile_fast_path(model.estimator, self._spec.estimator_method)
        if fast_path is None:
            return model
        try:
            exact = reproduces(fast_path, model.estimator, self._spec.estimator_method, self._sample)
        except Exception:
            logger.warning("%s: the fast path failed on sample rows; not used", model.description.model_uri)
            return model
        if not exact:
            logger.warning("%s: fast path disagrees with scikit-learn; not used", model.description.model_uri)
            return model
        return dataclasses.replace(model, fast_path=fast_path, fast_path_any_size=fast_path_any_size(fast_path))

    def _row_independent(self, model: LoadedModel) -> bool:
        rows = self._sample[: self._runner.small_batch_rows + COALESCE_PROBE_ROWS]
        large = self._runner.predict(model, rows)
        small = self._runner.predict(model, rows[:COALESCE_PROBE_ROWS])
        for index in range(COALESCE_PROBE_ROWS):
            alone = self._runner.predict(model, rows[index : index + 1])
            if not (np.array_equal(alone[0], large[index]) and np.array_equal(alone[0], small[index])):
                return False
        return True

    def _with_coalescing(self, model: LoadedModel) -> LoadedModel:
        model = dataclasses.replace(model, row_independent=self._row_independent(model))
        if self._coalesce == "off":
            return model
        if self._coalesce == "on":
            return dataclasses.replace(model, coalesce=True)
        if not model.row_independent:
            uri = model.description.model_uri
            logger.info("%s: its answers depend on the batch's shape; small requests are not coalesced", uri)
            return model
        one_row, many = self._sample[:1], self._sample[:COALESCE_PROBE_ROWS]
        alone = _median_seconds(lambda: self._runner.predict(model, one_row), 7) * COALESCE_PROBE_ROWS
        together = _median_seconds(lambda: self._runner.predict(model, many), 5)
        saved = alone - together - HANDOFF_SECONDS * COALESCE_PROBE_ROWS
        logger.info(
            "%s: %d rows cost %.0f us one by one, %.0f us together: %s",
            model.description.model_uri,
            COALESCE_PROBE_ROWS,
            alone * 1e6,
            together * 1e6,
            "small requests are coalesced" if saved > 0 else "not coalesced",
        )
        return dataclasses.replace(model, coalesce=saved > 0)

    def _smoke_test(self, model: LoadedModel) -> None:
        uri = model.description.model_uri
        # One row takes the fast path when there is one (proven exact above); the whole sample, scikit-learn.
        for rows in (self._spec.features.example_row, self._sample):
            try:
                self._runner.predict(model, rows)
            except ModelOutputError as exc:
                raise ModelValidationError("output", f"{uri} answered its smoke predictions wrongly: {exc}") from exc
            except Exception as exc:
                raise ModelValidationError("warm_up", f"{uri} failed its smoke predictions: {exc}") from exc


def _median_seconds(call: Callable[[], object], rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)
