"""The table of served models: one entry per service, the one place a new model is added.

Each entry says which features a model takes, which estimator method answers, what shape a correct answer has,
and (for classifiers) which class labels it must have. The gRPC service name is kept as plain text: metrics,
health and logs label every series of a service with it, the same value everywhere.
"""

from dataclasses import dataclass

from data.schema import HOUSING_TARGET, IRIS_SPECIES
from protos.prediction.v1 import housing_pb2, iris_pb2
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE, FeatureTable
from server.model_store import ModelSlot

IRIS_CLASS_LABELS = (0, 1, 2)  # setosa, versicolor, virginica


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    slot: ModelSlot
    service_name: str
    """The full gRPC service name, e.g. ``prediction.v1.IrisClassifier``: the ``service`` label of every metric."""
    features: FeatureTable
    estimator_method: str
    """``predict`` or ``predict_proba``."""
    output_columns: int | None
    """Columns of a correct answer: None for one value per row."""
    output_names: tuple[str, ...]
    """What each column of the answer is (the prediction log's output object)."""
    quality_metric: str
    """The live-quality figure that retrain triggers compare with the same held-out training metric."""
    quality_higher_is_better: bool
    class_labels: tuple[int, ...] | None = None
    """A classifier's ``classes_``, in the order the answer's columns mean them."""

    def output_shape(self, rows: int) -> tuple[int, ...]:
        return (rows,) if self.output_columns is None else (rows, self.output_columns)


HOUSING = ServiceSpec(
    slot=ModelSlot.HOUSING,
    service_name=housing_pb2.DESCRIPTOR.services_by_name["HousingPredictor"].full_name,
    features=HOUSING_FEATURE_TABLE,
    estimator_method="predict",
    output_columns=None,
    output_names=(HOUSING_TARGET,),
    quality_metric="rmse",
    quality_higher_is_better=False,
)
IRIS = ServiceSpec(
    slot=ModelSlot.IRIS,
    service_name=iris_pb2.DESCRIPTOR.services_by_name["IrisClassifier"].full_name,
    features=IRIS_FEATURE_TABLE,
    estimator_method="predict_proba",
    output_columns=len(IRIS_CLASS_LABELS),
    output_names=IRIS_SPECIES,
    quality_metric="accuracy",
    quality_higher_is_better=True,
    class_labels=IRIS_CLASS_LABELS,
)
SERVICES: tuple[ServiceSpec, ...] = (HOUSING, IRIS)
SPEC_BY_SLOT = {spec.slot: spec for spec in SERVICES}
