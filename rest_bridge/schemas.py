"""The REST contract: one pydantic model per protobuf message the bridge exposes, field for field.

Field names are the proto field names, so a JSON body reads like the proto3 JSON form with the original
names. Feature names, units, bounds and examples come from ``server.features``, the table the server
validates with, so the two cannot drift; ``tests/rest_bridge/test_schemas.py`` walks the protobuf
descriptors and proves every proto field has its REST counterpart and the reverse.

Differences from the protobuf messages, all deliberate:
- Request features are required, finite, in range, and strictly numbers (no "3.2" strings, no booleans);
  unknown fields are rejected (``extra="forbid"``), so a misspelt feature is an error and not silently
  ignored. The server would reject the same inputs; the bridge just says so before the network hop.
- ``IrisSpecies`` is a string enum of lower-case names (``IRIS_SPECIES_SETOSA`` -> ``"setosa"``);
  ``IRIS_SPECIES_UNSPECIFIED`` is never sent by the server and has no REST value.
- ``google.protobuf.Timestamp`` is an RFC 3339 date-time string.
- A columns request (``HousingColumns``, ``IrisColumns``) holds 1 to ``MAX_COLUMN_ROWS`` values per column, each
  finite and in its feature's range, and every column as long as the longest: JSON Schema cannot say that last
  part, so the bridge refuses unequal columns itself (422, each short or long column named, as the server does).
- A field the server may leave unset (a proto3 ``optional`` scalar, a message that is absent, the enum
  ``GateDecision`` before the gate decided) is ``null``; every other field is always written.
- ``FeedbackResult.code`` is two fields: ``status``, the name of its gRPC code (``FEEDBACK_CODE_NOT_FOUND`` ->
  ``"NOT_FOUND"``, as an error body's ``code``), and ``http_status``, the HTTP status of that code in the one
  status table (``rest_bridge.errors``), so a client reads each item as it would read an error.
- A ``FeedbackItem`` carries exactly one label, ``value`` or ``species`` (the proto ``oneof``): absent means unset,
  ``null`` is refused like any other wrong type.
- The admin requests take their names from the URL path (``/models/{model}/aliases/{alias}``) and the rest
  from the body; every name is a short safe string (``NAME_PATTERN`` and friends), so the server never has to
  make sense of control characters or megabyte-long keys. Whether a name exists is the server's answer.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_core import InitErrorDetails, PydanticCustomError

from server import features as server_features
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE, FeatureTable
from server.settings import ServerSettings
from training.hyperparameters import HYPERPARAMETERS
from training.settings import MIN_MAX_ROWS

# What each feature means; units, bounds and examples are taken from the server's feature tables.
HOUSING_FEATURE_MEANINGS = {
    "median_income": "Median income of households in the block group (3.87 = $38,700).",
    "house_age": "Median age of the houses in the block group.",
    "average_rooms": "Average number of rooms per household.",
    "average_bedrooms": "Average number of bedrooms per household.",
    "population": "Number of people living in the block group.",
    "average_occupancy": "Average number of people per household.",
    "latitude": "Latitude of the block group's centre (California).",
    "longitude": "Longitude of the block group's centre; negative is west (California).",
}
IRIS_FEATURE_MEANINGS = {
    "sepal_length_cm": "Sepal length.",
    "sepal_width_cm": "Sepal width.",
    "petal_length_cm": "Petal length.",
    "petal_width_cm": "Petal width.",
}


def _spec(table: FeatureTable, name: str) -> server_features.FeatureSpec:
    return table.specs[table.names.index(name)]


def _feature(table: FeatureTable, meanings: dict[str, str], name: str) -> Any:
    """A required, strictly numeric field with the bounds, unit and example of the server's table."""
    spec = _spec(table, name)
    low = "greater than" if spec.exclusive_minimum else "from"
    high = "and at most" if spec.exclusive_minimum else "to"
    return Field(
        description=f"{meanings[name]} Unit: {spec.unit}. Accepted: {low} {spec.minimum:,.10g} {high} "
        f"{spec.maximum:,.10g}.",
        examples=[spec.example],
        gt=spec.minimum if spec.exclusive_minimum else None,
        ge=None if spec.exclusive_minimum else spec.minimum,
        le=spec.maximum,
        strict=True,
        allow_inf_nan=False,
    )


def _example_instance(table: FeatureTable) -> JsonDict:
    return {spec.name: spec.example for spec in table.specs}


def _bounds(table: FeatureTable, name: str) -> Any:
    """The value constraints of one feature, for one value of a column: strictly a finite number in range."""
    spec = _spec(table, name)
    return Field(
        gt=spec.minimum if spec.exclusive_minimum else None,
        ge=None if spec.exclusive_minimum else spec.minimum,
        le=spec.maximum,
        strict=True,
        allow_inf_nan=False,
    )


def _column(table: FeatureTable, meanings: dict[str, str], name: str) -> Any:
    """A required column of one feature: 1 to MAX_COLUMN_ROWS values, described as the feature itself."""
    spec = _spec(table, name)
    low = "greater than" if spec.exclusive_minimum else "from"
    high = "and at most" if spec.exclusive_minimum else "to"
    return Field(
        min_length=1,
        max_length=MAX_COLUMN_ROWS,
        description=f"{meanings[name]} One value per row. Unit: {spec.unit}. Accepted: {low} {spec.minimum:,.10g} "
        f"{high} {spec.maximum:,.10g}.",
        examples=[[spec.example]],
    )


def _example_columns(table: FeatureTable) -> JsonDict:
    return {spec.name: [spec.example] for spec in table.specs}


def _equal_lengths(model: BaseModel, names: tuple[str, ...]) -> None:
    """Refuse columns of unequal lengths, naming each column whose length differs from the longest (as the server
    names them), so the error body points at the columns themselves."""
    lengths = [len(getattr(model, name)) for name in names]
    rows = max(lengths)
    if min(lengths) == rows:
        return
    raise ValidationError.from_exception_data(
        type(model).__name__,
        [
            InitErrorDetails(
                type=PydanticCustomError(
                    "column_length",
                    "has {length} values; the longest column has {rows}",
                    {"length": length, "rows": rows},
                ),
                loc=(name,),
                input=getattr(model, name),
            )
            for name, length in zip(names, lengths, strict=True)
            if length != rows
        ],
    )


def _housing(name: str) -> Any:
    return _feature(HOUSING_FEATURE_TABLE, HOUSING_FEATURE_MEANINGS, name)


def _iris(name: str) -> Any:
    return _feature(IRIS_FEATURE_TABLE, IRIS_FEATURE_MEANINGS, name)


_REQUEST = ConfigDict(extra="forbid", allow_inf_nan=False)
# The most rows a columns request may hold: the server's default max_batch_size. A server configured lower refuses
# a longer one itself (422, field "columns"); GET /models reports its limit.
MAX_COLUMN_ROWS: int = ServerSettings.model_fields["max_batch_size"].default


class ModelVersion(BaseModel):
    """Which registered model version produced an answer."""

    name: str = Field(description="Registered model name in the MLflow model registry.")
    version: str = Field(description='Registry version number, as a string ("1", "2", ...).')
    alias: str = Field(description='Registry alias the server resolved to load this version, e.g. "champion".')
    run_id: str = Field(description="MLflow run id of the training run that produced this version.")
    variant: str = Field(
        description='Which variant of the deployment answered: "champion", or "challenger" for its share of an A/B '
        "split."
    )


class HousingFeatures(BaseModel):
    """The eight features of one California census block group (1990 census). Every field is required."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra={"examples": [_example_instance(HOUSING_FEATURE_TABLE)]})

    median_income: float = _housing("median_income")
    house_age: float = _housing("house_age")
    average_rooms: float = _housing("average_rooms")
    average_bedrooms: float = _housing("average_bedrooms")
    population: float = _housing("population")
    average_occupancy: float = _housing("average_occupancy")
    latitude: float = _housing("latitude")
    longitude: float = _housing("longitude")


class HousingValue(BaseModel):
    """The predicted median house value of one block group, in two units."""

    median_house_value: float = Field(
        description="Predicted median house value in units of $100,000 (2.07 = $207,000), the model's own unit."
    )
    median_house_value_usd: float = Field(description="The same prediction in US dollars.")
    prediction_id: str = Field(
        description="Unique id of this prediction (a UUIDv7): the key of its prediction-log row "
        "(GET /predictions/{prediction_id})."
    )


class HousingPrediction(HousingValue):
    """Answer to POST /predict/housing."""

    model: ModelVersion = Field(description="The model version that made this prediction.")


class HousingBatchRequest(BaseModel):
    """Block groups to predict in one call: at least one; at most the server's maximum batch size (see
    ``max_batch_size`` in GET /models)."""

    model_config = ConfigDict(
        **_REQUEST, json_schema_extra={"examples": [{"instances": [_example_instance(HOUSING_FEATURE_TABLE)]}]}
    )

    instances: list[HousingFeatures] = Field(min_length=1, description="The block groups, in any order.")


class HousingBatchPrediction(BaseModel):
    """Answer to POST /predict/housing/batch: one prediction per instance, in request order."""

    predictions: list[HousingValue] = Field(description="One prediction per instance, in request order.")
    model: ModelVersion = Field(description="The model version that made every prediction in this batch.")


def _hc(name: str) -> Any:
    return _column(HOUSING_FEATURE_TABLE, HOUSING_FEATURE_MEANINGS, name)


def _hv(name: str) -> Any:
    return _bounds(HOUSING_FEATURE_TABLE, name)


class HousingColumns(BaseModel):
    """Block groups to predict in one call, column by column: one list per feature, the i-th value of every list
    being row i. Every column is required and all must have the same length, 1 to the server's maximum batch size
    (see ``max_batch_size`` in GET /models)."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra={"examples": [_example_columns(HOUSING_FEATURE_TABLE)]})

    median_income: list[Annotated[float, _hv("median_income")]] = _hc("median_income")
    house_age: list[Annotated[float, _hv("house_age")]] = _hc("house_age")
    average_rooms: list[Annotated[float, _hv("average_rooms")]] = _hc("average_rooms")
    average_bedrooms: list[Annotated[float, _hv("average_bedrooms")]] = _hc("average_bedrooms")
    population: list[Annotated[float, _hv("population")]] = _hc("population")
    average_occupancy: list[Annotated[float, _hv("average_occupancy")]] = _hc("average_occupancy")
    latitude: list[Annotated[float, _hv("latitude")]] = _hc("latitude")
    longitude: list[Annotated[float, _hv("longitude")]] = _hc("longitude")

    @model_validator(mode="after")
    def _rows(self) -> "HousingColumns":
        _equal_lengths(self, HOUSING_FEATURE_TABLE.names)
        return self


class HousingColumnsPrediction(BaseModel):
    """Answer to POST /predict/housing/columns: one value per row in each list, in request order."""

    median_house_value: list[float] = Field(
        description="Predicted median house value of each row in units of $100,000 (2.07 = $207,000)."
    )
    median_house_value_usd: list[float] = Field(description="The same predictions in US dollars.")
    prediction_ids: list[str] = Field(
        description="Unique id of each row's prediction (a UUIDv7): the key of its prediction-log row "
        "(GET /predictions/{prediction_id})."
    )
    model: ModelVersion = Field(description="The model version that made every prediction.")


class IrisFeatures(BaseModel):
    """The four measurements of one iris flower. Every field is required."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra={"examples": [_example_instance(IRIS_FEATURE_TABLE)]})

    sepal_length_cm: float = _iris("sepal_length_cm")
    sepal_width_cm: float = _iris("sepal_width_cm")
    petal_length_cm: float = _iris("petal_length_cm")
    petal_width_cm: float = _iris("petal_width_cm")


class IrisSpecies(StrEnum):
    """The species the classifier knows (the proto enum ``IrisSpecies`` without its prefix, lower case)."""

    SETOSA = "setosa"
    VERSICOLOR = "versicolor"
    VIRGINICA = "virginica"


class SpeciesProbabilities(BaseModel):
    """Probability of each species; the three add up to 1."""

    setosa: float = Field(ge=0, le=1, description="Probability of Iris setosa.")
    versicolor: float = Field(ge=0, le=1, description="Probability of Iris versicolor.")
    virginica: float = Field(ge=0, le=1, description="Probability of Iris virginica.")


class IrisClassification(BaseModel):
    """The classification of one flower."""

    species: IrisSpecies = Field(description="The most probable species.")
    species_name: str = Field(description="The most probable species by its common name (same as species).")
    probabilities: SpeciesProbabilities
    confidence: float = Field(
        ge=0, le=1, description="Probability of the predicted species (the largest of the three), from 1/3 to 1."
    )
    prediction_id: str = Field(
        description="Unique id of this prediction (a UUIDv7): the key of its prediction-log row "
        "(GET /predictions/{prediction_id})."
    )


class IrisPrediction(IrisClassification):
    """Answer to POST /predict/iris."""

    model: ModelVersion = Field(description="The model version that made this classification.")


class IrisBatchRequest(BaseModel):
    """Flowers to classify in one call: at least one; at most the server's maximum batch size (see
    ``max_batch_size`` in GET /models)."""

    model_config = ConfigDict(
        **_REQUEST, json_schema_extra={"examples": [{"instances": [_example_instance(IRIS_FEATURE_TABLE)]}]}
    )

    instances: list[IrisFeatures] = Field(min_length=1, description="The flowers, in any order.")


class IrisBatchPrediction(BaseModel):
    """Answer to POST /predict/iris/batch: one classification per instance, in request order."""

    classifications: list[IrisClassification] = Field(description="One per instance, in request order.")
    model: ModelVersion = Field(description="The model version that made every classification in this batch.")


def _ic(name: str) -> Any:
    return _column(IRIS_FEATURE_TABLE, IRIS_FEATURE_MEANINGS, name)


def _iv(name: str) -> Any:
    return _bounds(IRIS_FEATURE_TABLE, name)


class IrisColumns(BaseModel):
    """Flowers to classify in one call, column by column: one list per measurement, the i-th value of every list
    being row i. Every column is required and all must have the same length, 1 to the server's maximum batch size
    (see ``max_batch_size`` in GET /models)."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra={"examples": [_example_columns(IRIS_FEATURE_TABLE)]})

    sepal_length_cm: list[Annotated[float, _iv("sepal_length_cm")]] = _ic("sepal_length_cm")
    sepal_width_cm: list[Annotated[float, _iv("sepal_width_cm")]] = _ic("sepal_width_cm")
    petal_length_cm: list[Annotated[float, _iv("petal_length_cm")]] = _ic("petal_length_cm")
    petal_width_cm: list[Annotated[float, _iv("petal_width_cm")]] = _ic("petal_width_cm")

    @model_validator(mode="after")
    def _rows(self) -> "IrisColumns":
        _equal_lengths(self, IRIS_FEATURE_TABLE.names)
        return self


class IrisColumnsPrediction(BaseModel):
    """Answer to POST /predict/iris/columns: one value per row in each list, in request order."""

    species: list[IrisSpecies] = Field(description="The most probable species of each row.")
    setosa: list[Annotated[float, Field(ge=0, le=1)]] = Field(description="Probability of Iris setosa, per row.")
    versicolor: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        description="Probability of Iris versicolor, per row."
    )
    virginica: list[Annotated[float, Field(ge=0, le=1)]] = Field(description="Probability of Iris virginica, per row.")
    confidence: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        description="Probability of each row's predicted species (the largest of its three), from 1/3 to 1."
    )
    prediction_ids: list[str] = Field(
        description="Unique id of each row's prediction (a UUIDv7): the key of its prediction-log row "
        "(GET /predictions/{prediction_id})."
    )
    model: ModelVersion = Field(description="The model version that made every classification.")


class FeatureSpec(BaseModel):
    """One input feature and the range the server accepts for it."""

    name: str = Field(description='Field name in the request, e.g. "median_income".')
    unit: str = Field(description='Unit and meaning, e.g. "tens of thousands of US dollars".')
    minimum: float = Field(description="Smallest accepted value (itself refused when exclusive_minimum).")
    maximum: float = Field(description="Largest accepted value.")
    exclusive_minimum: bool = Field(
        description="True when the minimum itself is not accepted (iris measurements must be greater than 0)."
    )


class LoadFailure(BaseModel):
    """A version the server refused to serve."""

    version: str = Field(description="The registry version that was refused.")
    reason: str = Field(
        description='Short machine-readable cause: "registry_unavailable", "artifact", "signature", "classes", '
        '"warm_up" or "output".'
    )
    message: str = Field(description="What went wrong, for people.")
    failed_at: datetime = Field(description="When the server gave up on the version (UTC).")


class ModelInfo(BaseModel):
    """The model a service is serving right now."""

    model: ModelVersion
    model_uri: str = Field(
        description='MLflow model URI the artifacts were loaded from, e.g. "models:/IrisBestModel/3".'
    )
    estimator: str = Field(
        description='Fully-qualified class of the fitted estimator, e.g. "sklearn.pipeline.Pipeline".'
    )
    loaded_at: datetime = Field(description="When the server process loaded this version (UTC).")
    training_metrics: dict[str, float] = Field(
        description='Metrics the training run logged for this version on its held-out split, e.g. "rmse".'
    )
    features: list[FeatureSpec] = Field(description="Input features, in the order the model consumes them.")
    max_batch_size: int = Field(ge=0, description="Largest number of instances one batch call accepts.")
    last_load_failure: LoadFailure | None = Field(
        description="The last version of this service's alias that the server refused to serve (it failed to load "
        "or to pass validation) while it kept serving the version above; null when the alias's version is served.",
    )
    registry_reachable: bool = Field(
        description="Whether the server's last look at the model registry succeeded; while false it keeps serving "
        "what it has loaded."
    )
    challenger: ModelVersion | None = Field(
        description='The challenger (the version with alias "challenger"), when one is loaded; null otherwise.'
    )
    challenger_percent: float = Field(
        ge=0,
        le=100,
        description="Percent of traffic (0 to 100) the challenger answers; 0 while no challenger is loaded.",
    )
    shadow: bool = Field(
        description="Whether the challenger also predicts on a copy of the champion's traffic (its answers are "
        "never returned)."
    )
    challenger_load_failure: LoadFailure | None = Field(
        description="The last challenger version the server refused to serve; null when none."
    )
    configured_challenger_percent: float = Field(
        ge=0,
        le=100,
        description="The traffic split as configured in the registry, which applies once a challenger is loaded.",
    )


class ModelsInfo(BaseModel):
    """Answer to GET /models: the model behind each service."""

    housing: ModelInfo = Field(description="The model behind /predict/housing.")
    iris: ModelInfo = Field(description="The model behind /predict/iris.")


class Health(BaseModel):
    """Answer to GET /health: the bridge process is up. Says nothing about the prediction server."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Answer to GET /ready: 200 when every gRPC service reports SERVING, 503 otherwise."""

    ready: bool = Field(description="True when every service is SERVING.")
    services: dict[str, str] = Field(
        description="gRPC health of each service by its full name: SERVING, NOT_SERVING, SERVICE_UNKNOWN, or the "
        "gRPC status code of a failed health check (e.g. UNAVAILABLE when no server answers)."
    )


# The names the admin routes take, in the path or the body. Model: a service key ("housing") or a registered
# name ("IrisBestModel"); alias: a registry alias ("champion"); operation id: opaque (the server's are hex).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
VERSION_PATTERN = r"^[0-9]{1,10}$"
OPERATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
HYPERPARAMETER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# A prediction id in the UUID text form (the server's are UUIDv7), either case.
PREDICTION_ID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
MAX_HYPERPARAMETERS = 32
UINT32_MAX = 2**32 - 1


def _json_integer(value: object) -> object:
    # JSON Schema counts 5000.0 as an integer, so the bridge takes it (and refuses 5000.5); "5000" and true are
    # integers to nobody, though pydantic's lax mode would convert them.
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
HyperparameterName = Annotated[str, StringConstraints(pattern=HYPERPARAMETER_PATTERN)]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _allow_list() -> str:
    return "; ".join(
        f"{kind}: " + ", ".join(f"`{each.name}` ({each.allowed})" for each in parameters.values())
        for kind, parameters in HYPERPARAMETERS.items()
    )


def _names_by_property_names(schema: JsonDict) -> None:
    # pydantic writes a dict with constrained keys as patternProperties, which leaves every other key valid in
    # JSON Schema terms; propertyNames says what the bridge enforces: every key matches.
    schema.pop("patternProperties", None)
    schema["propertyNames"] = {"pattern": HYPERPARAMETER_PATTERN}
    schema["additionalProperties"] = {"type": "number"}


class RetrainRequest(BaseModel):
    """Body of POST /retrain: which model to retrain, and how."""

    model_config = ConfigDict(
        **_REQUEST,
        json_schema_extra={"examples": [{"model": "housing", "hyperparameters": {"max_iter": 200}, "max_rows": 5000}]},
    )

    model: ModelName = Field(
        description='The model: its service key ("housing", "iris") or its registered name ("IrisBestModel").'
    )
    hyperparameters: dict[HyperparameterName, FiniteNumber] = Field(
        default_factory=dict,
        max_length=MAX_HYPERPARAMETERS,
        json_schema_extra=_names_by_property_names,
        description="Overrides of the estimator's hyper-parameters, from the allow-list (the server checks names "
        f"and bounds; integers are whole numbers): {_allow_list()}. Empty trains with the defaults.",
    )
    max_rows: Annotated[int, Field(ge=MIN_MAX_ROWS, le=UINT32_MAX), BeforeValidator(_json_integer)] | None = Field(
        None,
        description="Train on a random subset of at most this many rows; null or absent uses every row.",
    )


class OperationState(StrEnum):
    """Where a retrain operation is (the proto enum ``OperationState`` without its prefix, lower case)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class GateDecision(StrEnum):
    """What the champion gate decided about a candidate (the proto enum ``GateDecision``, lower case)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"


class Operation(BaseModel):
    """A retrain operation. Finished operations are kept by the server and survive its restarts."""

    id: str = Field(description="The operation's id: GET /operations/{id}.")
    model: str = Field(description='The service key of the model, "housing" or "iris".')
    state: OperationState
    hyperparameters: dict[str, float] = Field(description="The validated overrides; empty for the defaults.")
    max_rows: int | None = Field(ge=0, description="The row limit asked for; null for every row.")
    trigger: str = Field(
        description='Why it started: "manual" for a retrain asked for through this API; "quality", "drift" or '
        '"schedule" for an automated trigger (PUT /models/{model}/auto-retrain switches those off).'
    )
    created_at: datetime = Field(description="When the server accepted the request (UTC).")
    started_at: datetime | None = Field(description="When training started; null while queued.")
    finished_at: datetime | None = Field(description="When it finished; null until then.")
    candidate_metrics: dict[str, float] = Field(
        description="The candidate's held-out metrics (rmse, mae, r2; accuracy, macro_f1, cv_accuracy)."
    )
    champion_metrics: dict[str, float] = Field(
        description="The champion's metrics on the same held-out rows; empty when there was no champion."
    )
    champion_version: str = Field(description='The champion the candidate was compared with ("" when none).')
    registered_version: str = Field(description='The version the candidate was registered as ("" until then).')
    decision: GateDecision | None = Field(
        description="The champion gate's decision; null until it decided, and for a failed operation."
    )
    decision_reason: str = Field(description="Why the gate decided so.")
    failure_reason: str = Field(description="Why it failed: the error and the last lines of the training output.")
    trigger_reason: str = Field(
        description='What an automated trigger saw when it fired (e.g. the live and the training rmse); "" for a '
        "manual retrain."
    )


class ListOperationsQuery(BaseModel):
    """The query of GET /operations. An unknown parameter is refused: a misspelt filter would list everything."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "",
        pattern=f"^({NAME_PATTERN[1:-1]})?$",
        description='Only the operations of this model ("housing", "iris", or a registered name); "" or absent: all.',
    )


class ListOperationsResponse(BaseModel):
    """Answer to GET /operations: newest first."""

    operations: list[Operation]


class RegisteredVersion(BaseModel):
    """One registered version of a model."""

    version: str = Field(description='The registry version, e.g. "2".')
    aliases: list[str] = Field(description='Aliases that point at it, e.g. ["champion"].')
    metrics: dict[str, float] = Field(description="Held-out metrics its training run logged.")
    created_at: datetime = Field(description="When it was registered (UTC).")
    run_id: str = Field(description="MLflow run id of its training run.")
    gate_decision: str = Field(
        description='The champion gate\'s decision when it was trained: "promoted", "rejected", or "" (registered '
        "by hand)."
    )
    gate_reason: str = Field(description="Why the gate decided so.")
    serving: bool = Field(description="Whether the server is answering with this version right now.")


class ListModelVersionsResponse(BaseModel):
    """Answer to GET /models/{model}/versions: every registered version, newest first."""

    name: str = Field(description="The registered model name.")
    versions: list[RegisteredVersion]


class SetAliasBody(BaseModel):
    """Body of PUT /models/{model}/aliases/{alias}: where the alias should point."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra={"examples": [{"version": "2", "expected_version": "1"}]})

    version: str = Field(pattern=VERSION_PATTERN, description='The registry version to point the alias at, e.g. "2".')
    expected_version: str | None = Field(
        None,
        pattern=f"^({VERSION_PATTERN[1:-1]})?$",
        description='Compare-and-set: move the alias only if it points at this version now ("" = only if the alias '
        "is not set), otherwise 409 (ABORTED). Null or absent moves it wherever it is.",
    )


class AliasChange(BaseModel):
    """An alias that moved (answer to PUT .../aliases/{alias} and POST .../rollback)."""

    name: str = Field(description="The registered model name.")
    alias: str = Field(description='The alias, e.g. "champion".')
    version: str = Field(description="The version it points at now.")
    previous_version: str = Field(description='The version it pointed at before ("" when it was not set).')


class FieldViolation(BaseModel):
    """One bad field of the request."""

    field: str = Field(
        description='Path of the field in the JSON body, e.g. "instances[3].latitude"; "" for the body as a whole.'
    )
    description: str = Field(description="What is wrong with it.")


class ErrorDetail(BaseModel):
    status: int = Field(description="The HTTP status code of this response.")
    code: str = Field(
        description='The gRPC status code name the error corresponds to, e.g. "INVALID_ARGUMENT" or "UNAVAILABLE".'
    )
    message: str = Field(description="What went wrong, for a person.")
    request_id: str = Field(description="The X-Request-ID of the request: quote it when asking about this error.")
    details: list[FieldViolation] = Field(
        default_factory=list, description="Each bad field, when the request was invalid."
    )


class ErrorResponse(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "status": 422,
                        "code": "INVALID_ARGUMENT",
                        "message": "latitude: Input should be less than or equal to 42.5",
                        "request_id": "3f0c5c1f6a2f4c7e9d0b1a2c3d4e5f60",
                        "details": [{"field": "latitude", "description": "Input should be less than or equal to 42.5"}],
                    }
                }
            ]
        }
    )

    error: ErrorDetail


class SetTrafficSplitBody(BaseModel):
    """Body of PUT /models/{model}/traffic: the A/B split and shadow mode of a model."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra={"examples": [{"challenger_percent": 10, "shadow": True}]})

    challenger_percent: float = Field(
        ge=0,
        le=100,
        strict=True,
        description="Percent of traffic the challenger answers, 0 to 100. Requests with the same X-Routing-Key "
        "always reach the same variant for a given split; without a key the choice is random in this proportion.",
    )
    shadow: bool = Field(
        strict=True,
        description="Whether the challenger also predicts on a copy of the champion's traffic, off the request "
        "path (its answers are never returned).",
    )


class TrafficSplit(BaseModel):
    """Answer to PUT /models/{model}/traffic: the split now in force (kept in the registry)."""

    name: str = Field(description="The registered model name.")
    challenger_percent: float = Field(description="Percent of traffic the challenger answers, 0 to 100.")
    shadow: bool = Field(description="Whether the challenger predicts on a copy of the champion's traffic.")


class LoggedPrediction(BaseModel):
    """Answer to GET /predictions/{prediction_id}: one row of the prediction log."""

    prediction_id: str = Field(description="The prediction's id (a UUIDv7).")
    logged_at: datetime = Field(description="When the prediction was made (UTC).")
    service: str = Field(description='The service key, "housing" or "iris".')
    model: str = Field(description="Registered model name of the version that answered.")
    version: str = Field(description="Registry version that answered.")
    variant: str = Field(description='The variant that answered, "champion" or "challenger".')
    inputs: dict[str, float] = Field(description="The request's features by name.")
    output: dict[str, float] = Field(
        description="The answer by name: median_house_value; or the three species probabilities."
    )
    latency_ms: float = Field(description="Validation and prediction time of the request the row belonged to.")
    request_id: str = Field(description="The X-Request-ID of the request that made the prediction.")
    routing_key: str = Field(description='The caller\'s X-Routing-Key, "" when none was sent.')


class DriftStatus(StrEnum):
    """Whether a version's drift figures mean anything (the proto enum ``DriftStatus`` without its prefix, lower
    case)."""

    OK = "ok"
    INSUFFICIENT_DATA = "insufficient_data"
    NO_REFERENCE_PROFILE = "no_reference_profile"


class ColumnDrift(BaseModel):
    """The drift of one feature or output of a version."""

    name: str = Field(
        description='Feature name (e.g. "median_income") or output name ("median_house_value", or a species\' '
        "probability)."
    )
    psi: float = Field(
        description="Population stability index of the live rows against the training rows; 0 while the status is "
        "not ok."
    )
    drifted: bool = Field(description="Whether psi is above the report's threshold.")


class VersionDrift(BaseModel):
    """The drift of one version the model serves, over its window of live rows."""

    version: str = Field(description='The registry version, e.g. "2".')
    variant: str = Field(description='"champion" or "challenger".')
    status: DriftStatus = Field(
        description='"ok": enough live rows and a reference profile, the figures are meaningful; '
        '"insufficient_data": fewer live rows in the window than min_rows, no PSI yet; "no_reference_profile": the '
        "version was registered without a profile of its training rows, drift cannot be measured."
    )
    window_rows: int = Field(ge=0, description="Live rows in the window.")
    window_capacity: int = Field(ge=0, description="The most rows the window holds (the newest rows are kept).")
    oldest_at: datetime | None = Field(description="When the oldest row of the window arrived (UTC); null while empty.")
    newest_at: datetime | None = Field(description="When the newest row of the window arrived (UTC); null while empty.")
    features: list[ColumnDrift] = Field(description="The drift of each input feature.")
    outputs: list[ColumnDrift] = Field(description="The drift of each output of the model.")
    drifted: bool = Field(description="Whether any feature or output drifted.")


class DriftReport(BaseModel):
    """Answer to GET /drift/{model}: the data drift of every version the model serves."""

    name: str = Field(description="The registered model name.")
    threshold: float = Field(description="A column drifted when its PSI is above this (0.2 by default).")
    min_rows: int = Field(ge=0, description="Live rows a window needs before its PSI is computed.")
    versions: list[VersionDrift] = Field(description="One per version served (champion, then challenger).")


MAX_FEEDBACK_ITEMS = 1000
# The proto oneof `label`: a FeedbackItem carries exactly one of these.
FEEDBACK_LABELS = ("value", "species")


def _exactly_one_label(schema: JsonDict) -> None:
    # pydantic writes each label as "number or null, default null"; the bridge takes a label only as its own type,
    # and exactly one of them, which is what a client must send.
    properties = schema["properties"]
    assert isinstance(properties, dict)
    for name in FEEDBACK_LABELS:
        label = properties[name]
        assert isinstance(label, dict)
        label.pop("default", None)
        options = label.pop("anyOf")
        assert isinstance(options, list)
        (kind,) = [each for each in options if each != {"type": "null"}]
        assert isinstance(kind, dict)
        label.update(kind)
    schema["oneOf"] = [{"required": [name]} for name in FEEDBACK_LABELS]


class FeedbackItem(BaseModel):
    """The true label of one logged prediction: exactly one of value (housing) and species (iris)."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra=_exactly_one_label)

    prediction_id: str = Field(
        pattern=PREDICTION_ID_PATTERN,
        description="The prediction's id (a UUID), as the prediction answer's prediction_id gave it.",
        examples=["0192f0c4-7b1e-7c3a-9d2e-4f5a6b7c8d9e"],
    )
    value: FiniteNumber | None = Field(
        None,
        description="The true median house value of a housing prediction, in units of $100,000 (2.07 = $207,000).",
        examples=[2.07],
    )
    species: IrisSpecies | None = Field(None, description="The true species of an iris prediction.")

    @field_validator(*FEEDBACK_LABELS, mode="before")
    @classmethod
    def _not_null(cls, label: object) -> object:
        # An absent label is unset; a null one would read as unset too and hide a client's bug.
        if label is None:
            raise PydanticCustomError("label_null", "Input should not be null: leave the other label out instead")
        return label

    @model_validator(mode="after")
    def _one_label(self) -> "FeedbackItem":
        if (self.value is None) == (self.species is None):
            raise PydanticCustomError(
                "feedback_label", "Exactly one of value (housing) or species (iris) should be set"
            )
        return self


class SubmitFeedbackRequest(BaseModel):
    """Body of POST /feedback: the true labels of logged predictions, one or many."""

    model_config = ConfigDict(
        **_REQUEST,
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"prediction_id": "0192f0c4-7b1e-7c3a-9d2e-4f5a6b7c8d9e", "value": 2.07},
                        {"prediction_id": "0192f0c4-7b1f-7c3a-9d2e-4f5a6b7c8d9f", "species": "setosa"},
                    ]
                }
            ]
        },
    )

    items: list[FeedbackItem] = Field(
        min_length=1,
        max_length=MAX_FEEDBACK_ITEMS,
        description=f"1 to {MAX_FEEDBACK_ITEMS} labels, each of its own prediction; each gets its own result.",
    )


class FeedbackCode(StrEnum):
    """The outcome of one feedback item: the name of its gRPC status code (the proto enum ``FeedbackCode`` without
    its prefix)."""

    OK = "OK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"


class FeedbackResult(BaseModel):
    """The outcome of one feedback item."""

    prediction_id: str = Field(description="The item's prediction id.")
    status: FeedbackCode = Field(
        description='"OK": recorded, or the same label was already recorded (a retry changes nothing); '
        '"INVALID_ARGUMENT": the label does not fit the prediction (a species for a housing prediction); '
        '"NOT_FOUND": no logged prediction has this id; "ALREADY_EXISTS": the prediction already has a different '
        "label, which is kept."
    )
    http_status: int = Field(
        description="The HTTP status the bridge gives that code anywhere else (its one status table): 200 OK, 422 "
        "INVALID_ARGUMENT, 404 NOT_FOUND, 409 ALREADY_EXISTS.",
        examples=[200],
    )
    recorded: bool = Field(description="True only the first time a label is recorded (false for a retry).")
    message: str = Field(description="What happened, for people.")


class SubmitFeedbackResponse(BaseModel):
    """Answer to POST /feedback: one result per item, in the request's order."""

    results: list[FeedbackResult] = Field(description="One per item, in the request's order.")


class ConfidenceBucket(BaseModel):
    """A cumulative bucket of confidences: the labels whose predicted species' probability is at most upper_bound."""

    upper_bound: float = Field(description="The bucket's upper bound, a probability.")
    cumulative_count: int = Field(ge=0, description="Labels in the window whose confidence is at most upper_bound.")


class VariantQuality(BaseModel):
    """The live quality of one version the model serves, beside its training metrics."""

    version: str = Field(description='The registry version, e.g. "2".')
    variant: str = Field(description='"champion" or "challenger".')
    labels: int = Field(ge=0, description="Labels in the window the live figures were computed on.")
    oldest_at: datetime | None = Field(description="When the oldest label of the window arrived (UTC); null if none.")
    newest_at: datetime | None = Field(description="When the newest label of the window arrived (UTC); null if none.")
    live: dict[str, float] = Field(
        description="Housing: rmse, mae. Iris: accuracy, recall_setosa, recall_versicolor, recall_virginica (a class "
        "with no label in the window has no recall). Empty while there are no labels."
    )
    training: dict[str, float] = Field(
        description="The version's held-out metrics from its training run (housing: rmse, mae, r2; iris: accuracy, "
        "macro_f1, ...)."
    )
    confidence: list[ConfidenceBucket] = Field(
        description="Iris: labels in the window by the confidence of their prediction, cumulative; empty for housing."
    )


class ModelQuality(BaseModel):
    """Answer to GET /quality/{model}: the live quality of every version the model serves."""

    name: str = Field(description="The registered model name.")
    window_labels: int = Field(
        ge=0,
        description="The window the live figures are computed on: the newest window_labels labels, of the "
        "last window_seconds when that is set.",
    )
    window_seconds: float = Field(ge=0, description="The window's age limit, in seconds (0: unlimited).")
    variants: list[VariantQuality] = Field(description="One per version served (champion, then challenger).")


class SetAutoRetrainBody(BaseModel):
    """Body of PUT /models/{model}/auto-retrain: switch the model's automated retraining on or off."""

    model_config = ConfigDict(**_REQUEST, json_schema_extra={"examples": [{"enabled": False}]})

    enabled: bool = Field(
        strict=True,
        description="False pauses every automated trigger of the model (manual retrains still work); true resumes "
        "them.",
    )


class AutoRetrain(BaseModel):
    """Answer to PUT /models/{model}/auto-retrain: the model's automated retraining now (kept in the registry)."""

    name: str = Field(description="The registered model name.")
    enabled: bool = Field(description="Whether the automated triggers may start retrains of this model.")
    triggers: list[str] = Field(
        description='The triggers configured on this server: any of "quality", "drift", "schedule".'
    )
