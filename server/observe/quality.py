"""Live model quality: the served versions' answers scored against the ground truth callers send back.

Every accepted label (``server.observe.feedback``) is added, with the prediction it belongs to, to the window of
that prediction's (model, version, variant): the newest ``window_labels`` labels, and only those of the last
``window_seconds`` when that is set. From a window:

- regression (housing): RMSE and MAE of the predictions;
- classification (iris): accuracy, recall per true class, and a histogram of the confidence (the probability
  of the predicted class), split by whether the prediction was right.

Each figure sits beside the version's held-out training metrics in ``QualityReport``, and is exported as a
gauge after every labelled batch: ``model_live_rmse``, ``model_live_mae``, ``model_live_accuracy``,
``model_live_recall{class}``, ``model_live_labels`` (labels in the window), plus the cumulative
``model_live_confidence`` histogram (labels ``correct``) and ``model_feedback_total{outcome}`` in feedback.

Labels arrive through their own calls, never on the request path; the windows are small (a few thousand
entries), so each figure is recomputed from its window in well under a millisecond.
"""

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram

from server.domain import LoadedModel

CONFIDENCE_BUCKETS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True, slots=True)
class LabelledPrediction:
    """One prediction and its true label: a value (regression) or a class index (classification)."""

    model: str
    version: str
    variant: str
    predicted: tuple[float, ...]
    """The output as logged: one value, or one probability per class."""
    label: float
    labelled_at: float


@dataclass(frozen=True, slots=True)
class VariantQuality:
    model: str
    version: str
    variant: str
    labels: int
    """Labels in the window the figures were computed on."""
    oldest_at: float | None
    newest_at: float | None
    live: Mapping[str, float]
    """rmse, mae (regression); accuracy, recall_<class> (classification). Empty without labels."""
    training: Mapping[str, float]
    """The version's held-out metrics from its training run."""
    confidence_buckets: tuple[tuple[float, int], ...] = ()
    """Classification: (upper bound, labels with confidence <= it) per bucket, cumulative, from the window."""


@dataclass(frozen=True, slots=True)
class QualityReport:
    service: str
    window_labels: int
    window_seconds: float | None
    variants: tuple[VariantQuality, ...]


@dataclass
class _Window:
    entries: deque[tuple[float, tuple[float, ...], float]] = field(default_factory=deque)
    """(labelled_at, predicted, label), oldest first."""


_Key = tuple[str, str, str]


class LiveQuality:
    def __init__(
        self,
        class_names: Mapping[str, Sequence[str]],
        registry: CollectorRegistry,
        *,
        window_labels: int = 1000,
        window_seconds: float | None = None,
    ) -> None:
        """``class_names`` by model name: a model with class names is a classifier."""
        self._class_names = class_names
        self.window_labels = window_labels
        self.window_seconds = window_seconds
        self._windows: dict[_Key, _Window] = {}
        self._lock = threading.Lock()
        labels = ["model", "version", "variant"]
        self.rmse = Gauge(
            "model_live_rmse", "RMSE of the labelled predictions in the window.", labels, registry=registry
        )
        self.mae = Gauge("model_live_mae", "MAE of the labelled predictions in the window.", labels, registry=registry)
        self.accuracy = Gauge(
            "model_live_accuracy",
            "Share of the labelled predictions in the window that were right.",
            labels,
            registry=registry,
        )
        self.recall = Gauge(
            "model_live_recall",
            "Per true class, the share of its labelled predictions in the window that were right.",
            [*labels, "class"],
            registry=registry,
        )
        self.labels = Gauge(
            "model_live_labels", "Labelled predictions in the quality window.", labels, registry=registry
        )
        self.confidence = Histogram(
            "model_live_confidence",
            "Per labelled classification, the probability of the predicted class, by whether it was right.",
            [*labels, "correct"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )

    def record(self, labelled: Sequence[LabelledPrediction]) -> None:
        touched: set[_Key] = set()
        with self._lock:
            for item in labelled:
                key = (item.model, item.version, item.variant)
                window = self._windows.setdefault(key, _Window())
                window.entries.append((item.labelled_at, item.predicted, item.label))
                while len(window.entries) > self.window_labels:
                    window.entries.popleft()
                touched.add(key)
                if item.model in self._class_names:
                    predicted = int(np.argmax(item.predicted))
                    correct = "true" if predicted == int(item.label) else "false"
                    self.confidence.labels(*key, correct).observe(max(item.predicted))
            for key in touched:
                self._export(key, self._figures(key))

    def report(self, service: str, served: Sequence[tuple[str, str, str, Mapping[str, float]]]) -> QualityReport:
        """The quality of each served (model, version, variant, training metrics)."""
        variants = []
        with self._lock:
            for model, version, variant, training in served:
                key = (model, version, variant)
                figures = self._figures(key)
                self._export(key, figures)
                variants.append(
                    VariantQuality(
                        model,
                        version,
                        variant,
                        figures.labels,
                        figures.oldest_at,
                        figures.newest_at,
                        figures.live,
                        dict(training),
                        figures.confidence,
                    )
                )
        return QualityReport(service, self.window_labels, self.window_seconds, tuple(variants))

    def live(self, model: str, version: str, variant: str) -> tuple[int, Mapping[str, float]]:
        """Labels in the window and the live figures of one variant (what retrain triggers read)."""
        with self._lock:
            figures = self._figures((model, version, variant))
        return figures.labels, figures.live

    def retire_all(self, models: Sequence[LoadedModel]) -> None:
        for model in models:
            self.retire(model.description.ref.name, model.description.ref.version)

    def retire(self, model: str, version: str) -> None:
        """Forget a version that is no longer served: its windows, and its series (dashboards show no stale lines).

        Its labels stay in the feedback table: a version served again (a rollback) gets them back at the next start.
        """
        with self._lock:
            for key in [key for key in self._windows if key[:2] == (model, version)]:
                del self._windows[key]
                for gauge in (self.labels, self.rmse, self.mae, self.accuracy):
                    with contextlib.suppress(KeyError):
                        gauge.remove(*key)
                for name in self._class_names.get(model, ()):
                    with contextlib.suppress(KeyError):
                        self.recall.remove(*key, name)
                for correct in ("true", "false"):
                    with contextlib.suppress(KeyError):
                        self.confidence.remove(*key, correct)

    def _figures(self, key: _Key) -> "_Figures":
        window = self._windows.get(key)
        if window is None:
            return _Figures(0, None, None, {}, ())
        if self.window_seconds is not None:
            oldest = time.time() - self.window_seconds
            while window.entries and window.entries[0][0] < oldest:
                window.entries.popleft()
        entries = window.entries
        if not entries:
            return _Figures(0, None, None, {}, ())
        times = [entry[0] for entry in entries]
        predicted = np.array([entry[1] for entry in entries], dtype=np.float64)
        labels = np.array([entry[2] for entry in entries], dtype=np.float64)
        class_names = self._class_names.get(key[0])
        confidence: tuple[tuple[float, int], ...] = ()
        if class_names is None:
            errors = predicted[:, 0] - labels
            live = {"rmse": float(math.sqrt(np.mean(errors**2))), "mae": float(np.mean(np.abs(errors)))}
        else:
            chosen = np.argmax(predicted, axis=1)
            truth = labels.astype(np.int64)
            right = chosen == truth
            live = {"accuracy": float(np.mean(right))}
            for index, name in enumerate(class_names):
                of_class = truth == index
                if of_class.any():
                    live[f"recall_{name}"] = float(np.mean(right[of_class]))
            top = predicted.max(axis=1)
            confidence = tuple((bound, int(np.sum(top <= bound))) for bound in CONFIDENCE_BUCKETS)
        return _Figures(len(entries), min(times), max(times), live, confidence)

    def _export(self, key: _Key, figures: "_Figures") -> None:
        self.labels.labels(*key).set(figures.labels)
        class_names = self._class_names.get(key[0])
        if class_names is None:
            if "rmse" in figures.live:
                self.rmse.labels(*key).set(figures.live["rmse"])
                self.mae.labels(*key).set(figures.live["mae"])
            return
        if "accuracy" in figures.live:
            self.accuracy.labels(*key).set(figures.live["accuracy"])
        for name in class_names:
            recall = figures.live.get(f"recall_{name}")
            if recall is not None:
                self.recall.labels(*key, name).set(recall)


@dataclass(frozen=True, slots=True)
class _Figures:
    labels: int
    oldest_at: float | None
    newest_at: float | None
    live: Mapping[str, float]
    confidence: tuple[tuple[float, int], ...]
