"""Typed values that flow between the protocol adapters and the prediction core."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from data.profile import ReferenceProfile

FloatMatrix = npt.NDArray[np.float64]
BoolMatrix = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Rows to predict, as a (rows, features) float64 matrix in the model's column order.

    ``missing`` marks fields the caller did not set (their value is NaN); it is ``None`` when every field
    was set, which is the common case and keeps validation cheap. ``is_batch`` says whether the caller
    sent a list of instances, so that errors can name ``instances[i].field`` rather than ``field``.
    """

    values: FloatMatrix
    missing: BoolMatrix | None = None
    is_batch: bool = False
    columnar: bool = False
    """The caller sent one array per feature: errors name ``field[i]`` rather than ``instances[i].field``."""

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True, slots=True)
class ModelVersionRef:
    """Which registered model version answered: the identity every response carries."""

    name: str
    version: str
    alias: str
    run_id: str


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """What a service knows about the model it serves."""

    ref: ModelVersionRef
    model_uri: str
    estimator: str
    loaded_at: datetime
    training_metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A fitted estimator with its description. Immutable, so a request holds one consistent snapshot.

    ``fast_path`` is an optional faster path that was proven to give the estimator's exact answers when the
    model was prepared (see ``server.fast_paths``); it serves requests of up to ``PREDICTOR_SMALL_BATCH_ROWS``
    rows, or of any size when ``fast_path_any_size`` (the native forest kernel).
    """

    description: ModelDescription
    estimator: Any
    fast_path: Callable[[FloatMatrix], FloatMatrix] | None = None
    fast_path_any_size: bool = False
    reference_profile: ReferenceProfile | None = None
    """What its live inputs and outputs are compared with for drift; None: the version has none."""
    row_independent: bool = False
    """Whether each row's answer is bit-for-bit the same whatever rows share its call (checked at preparation:
    true for trees, often not for linear models, whose BLAS products round by batch shape)."""
    coalesce: bool = False
    """Whether concurrent small requests to it are predicted together (``server.batching``)."""


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """How a service shares its traffic: the challenger's percent (0 to 100), and whether it shadows the rest."""

    challenger_percent: float = 0.0
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Deployment:
    """What one service answers with right now; replaced whole, so a request sees one consistent value:
    its champion, an optional challenger and the split between them.

    ``split`` is what the registry configures; it takes effect only while a challenger is loaded.
    """

    champion: LoadedModel
    challenger: LoadedModel | None = None
    split: TrafficSplit = field(default_factory=TrafficSplit)

    @property
    def challenger_percent(self) -> float:
        return self.split.challenger_percent if self.challenger is not None else 0.0

    @property
    def shadow(self) -> bool:
        return self.split.shadow and self.challenger is not None

    def variants(self) -> dict[str, LoadedModel]:
        """Every model answering for the service, by variant name ("champion", "challenger")."""
        served = {"champion": self.champion}
        if self.challenger is not None:
            served["challenger"] = self.challenger
        return served

    def versions(self) -> set[str]:
        return {model.description.ref.version for model in self.variants().values()}

    def served(self) -> set[tuple[str, str]]:
        """(registered name, version) of every model answering for the service."""
        return {(model.description.ref.name, model.description.ref.version) for model in self.variants().values()}


def retired_models(old: Deployment | None, new: Deployment | None) -> list[LoadedModel]:
    """The models ``old`` served whose version ``new`` no longer serves (a variant changing hands is not retired)."""
    served = set() if new is None else new.served()
    if old is None:
        return []
    return [
        model
        for model in old.variants().values()
        if (model.description.ref.name, model.description.ref.version) not in served
    ]


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A version the server refused to serve, and why (``reason`` is short and stable, for metric labels)."""

    version: str
    reason: str
    message: str
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the core may know about the call behind a request, whatever protocol carried it.

    ``deadline`` is a ``time.monotonic()`` instant (None: the caller set none); ``routing_key`` is the caller's
    key for sticky routing (None: not sent).
    """

    request_id: str = "-"
    deadline: float | None = None
    routing_key: str | None = None


NO_CONTEXT = RequestContext()


@dataclass(frozen=True, slots=True)
class HousingPredictions:
    """Median house values in units of $100,000, one per row, the version and variant that made them, and
    one prediction id per row."""

    values: FloatMatrix
    model: ModelVersionRef
    variant: str
    prediction_ids: list[str]


@dataclass(frozen=True, slots=True)
class IrisClassifications:
    """Species probabilities, (rows, 3) in ``data.schema.IRIS_SPECIES`` order, and the model version."""

    probabilities: FloatMatrix
    model: ModelVersionRef
    variant: str
    prediction_ids: list[str]
