"""Pure conversions between the REST models and the protobuf messages, without a server."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ValidationError

from protos.prediction.v1 import admin_pb2, housing_pb2, iris_pb2, model_pb2
from rest_bridge import converters, schemas

from .conftest import HOUSE, IRIS, columns, rest_json
from .scripted_server import drift_report, finished_operation, logged_prediction, model_quality, registered_versions

VERSION = model_pb2.ModelVersion(name="IrisBestModel", version="3", alias="champion", run_id="abc", variant="champion")
PREDICTION_ID = "0192f0c4-7b1e-7c3a-9d2e-4f5a6b7c8d9e"


def test_requests_carry_every_feature():
    message = converters.housing_features_to_proto(schemas.HousingFeatures(**HOUSE))
    assert {field.name: value for field, value in message.ListFields()} == HOUSE
    batch = converters.iris_batch_to_proto(schemas.IrisBatchRequest.model_validate({"instances": [IRIS, IRIS]}))
    assert [len(each.ListFields()) for each in batch.instances] == [4, 4]
    assert batch.instances[1].petal_width_cm == IRIS["petal_width_cm"]
    assert converters.iris_features_to_proto(schemas.IrisFeatures(**IRIS)) == iris_pb2.IrisFeatures(**IRIS)
    houses = converters.housing_batch_to_proto(schemas.HousingBatchRequest.model_validate({"instances": [HOUSE]}))
    assert houses == housing_pb2.HousingBatchRequest(instances=[housing_pb2.HousingFeatures(**HOUSE)])


def test_columns_requests_carry_every_column_in_row_order():
    houses = [HOUSE, {**HOUSE, "median_income": 1.5, "house_age": 7}]
    body = schemas.HousingColumns.model_validate(columns(houses))
    message = converters.housing_columns_to_proto(body)
    assert message == housing_pb2.HousingColumns(**columns(houses))
    assert [len(values) for _, values in message.ListFields()] == [2] * 8
    assert list(message.house_age) == [41.0, 7.0]
    flowers = converters.iris_columns_to_proto(schemas.IrisColumns.model_validate(columns([IRIS, IRIS])))
    assert flowers == iris_pb2.IrisColumns(**columns([IRIS, IRIS]))


def test_columns_answers():
    housing = converters.housing_columns_from_proto(
        housing_pb2.HousingColumnsPrediction(
            median_house_value=[1.0, 2.5],
            median_house_value_usd=[100_000.0, 250_000.0],
            prediction_ids=["id-1", "id-2"],
            model=VERSION,
        )
    )
    assert housing.model_dump(mode="json") == {
        "median_house_value": [1.0, 2.5],
        "median_house_value_usd": [100_000.0, 250_000.0],
        "prediction_ids": ["id-1", "id-2"],
        "model": {"name": "IrisBestModel", "version": "3", "alias": "champion", "run_id": "abc", "variant": "champion"},
    }
    message = iris_pb2.IrisColumnsPrediction(
        species=[iris_pb2.IRIS_SPECIES_VIRGINICA, iris_pb2.IRIS_SPECIES_SETOSA, iris_pb2.IRIS_SPECIES_VERSICOLOR],
        setosa=[0.1, 0.8, 0.1],
        versicolor=[0.2, 0.1, 0.6],
        virginica=[0.7, 0.1, 0.3],
        confidence=[0.7, 0.8, 0.6],
        prediction_ids=["id-1", "id-2", "id-3"],
        model=VERSION,
    )
    iris = converters.iris_columns_from_proto(message)
    assert iris.model_dump(mode="json") == {
        "species": ["virginica", "setosa", "versicolor"],
        "setosa": [0.1, 0.8, 0.1],
        "versicolor": [0.2, 0.1, 0.6],
        "virginica": [0.7, 0.1, 0.3],
        "confidence": [0.7, 0.8, 0.6],
        "prediction_ids": ["id-1", "id-2", "id-3"],
        "model": {"name": "IrisBestModel", "version": "3", "alias": "champion", "run_id": "abc", "variant": "champion"},
    }
    message.species[1] = iris_pb2.IRIS_SPECIES_UNSPECIFIED
    with pytest.raises(converters.UnexpectedResponseError, match="IrisSpecies 0"):
        converters.iris_columns_from_proto(message)


def test_species_enum_maps_by_name():
    for proto_value, name in ((1, "setosa"), (2, "versicolor"), (3, "virginica")):
        assert converters.species_from_proto(proto_value) == schemas.IrisSpecies(name)
    with pytest.raises(converters.UnexpectedResponseError):
        converters.species_from_proto(iris_pb2.IRIS_SPECIES_UNSPECIFIED)


def test_iris_answers():
    probabilities = iris_pb2.SpeciesProbabilities(setosa=0.1, versicolor=0.6, virginica=0.3)
    single = converters.iris_prediction_from_proto(
        iris_pb2.IrisPrediction(
            species=iris_pb2.IRIS_SPECIES_VERSICOLOR,
            species_name="versicolor",
            probabilities=probabilities,
            confidence=0.6,
            model=VERSION,
            prediction_id=PREDICTION_ID,
        )
    )
    assert single.model_dump(mode="json") == {
        "species": "versicolor",
        "species_name": "versicolor",
        "probabilities": {"setosa": 0.1, "versicolor": 0.6, "virginica": 0.3},
        "confidence": 0.6,
        "model": {"name": "IrisBestModel", "version": "3", "alias": "champion", "run_id": "abc", "variant": "champion"},
        "prediction_id": PREDICTION_ID,
    }
    classification = iris_pb2.IrisClassification(
        species=iris_pb2.IRIS_SPECIES_SETOSA, species_name="setosa", probabilities=probabilities, confidence=0.9
    )
    second = iris_pb2.IrisClassification()
    second.CopyFrom(classification)
    classification.prediction_id, second.prediction_id = "id-1", "id-2"
    batch = converters.iris_batch_from_proto(
        iris_pb2.IrisBatchPrediction(classifications=[classification, second], model=VERSION)
    )
    assert [each.species for each in batch.classifications] == [schemas.IrisSpecies.SETOSA] * 2
    assert [each.prediction_id for each in batch.classifications] == ["id-1", "id-2"]
    assert batch.model.variant == "champion"
    assert batch.model.version == "3"


def test_housing_answers():
    single = converters.housing_prediction_from_proto(
        housing_pb2.HousingPrediction(
            median_house_value=2.5, median_house_value_usd=250_000, model=VERSION, prediction_id=PREDICTION_ID
        )
    )
    assert (single.median_house_value, single.median_house_value_usd, single.model.run_id) == (2.5, 250_000, "abc")
    assert (single.prediction_id, single.model.variant) == (PREDICTION_ID, "champion")
    batch = converters.housing_batch_from_proto(
        housing_pb2.HousingBatchPrediction(
            predictions=[
                housing_pb2.HousingValue(median_house_value=value, prediction_id=f"id-{value:g}")
                for value in (1.0, 2.0)
            ],
            model=VERSION,
        )
    )
    assert [each.median_house_value for each in batch.predictions] == [1.0, 2.0]
    assert [each.prediction_id for each in batch.predictions] == ["id-1", "id-2"]


def test_model_info():
    loaded_at = Timestamp()
    loaded_at.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    info = converters.model_info_from_proto(
        model_pb2.ModelInfo(
            model=VERSION,
            model_uri="models:/IrisBestModel/3",
            estimator="sklearn.pipeline.Pipeline",
            loaded_at=loaded_at,
            training_metrics={"accuracy": 0.97},
            features=[
                model_pb2.FeatureSpec(name="sepal_length_cm", unit="cm", minimum=0, maximum=100, exclusive_minimum=True)
            ],
            max_batch_size=1000,
        )
    )
    assert info.loaded_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert info.model_dump(mode="json")["loaded_at"] == "2026-01-02T03:04:05Z"
    assert info.training_metrics == {"accuracy": 0.97}
    assert (info.features[0].name, info.features[0].exclusive_minimum) == ("sepal_length_cm", True)
    assert info.max_batch_size == 1000


def test_model_info_carries_the_last_load_failure_and_registry_reachability():
    failure = model_pb2.LoadFailure(version="4", reason="artifact", message="missing", failed_at=Timestamp(seconds=60))
    info = converters.model_info_from_proto(model_pb2.ModelInfo(last_load_failure=failure, registry_reachable=True))
    assert info.model_dump(mode="json")["last_load_failure"] == {
        "version": "4",
        "reason": "artifact",
        "message": "missing",
        "failed_at": "1970-01-01T00:01:00Z",
    }
    assert info.registry_reachable is True
    healthy = converters.model_info_from_proto(model_pb2.ModelInfo())
    assert (healthy.last_load_failure, healthy.registry_reachable) == (None, False)


def test_model_info_carries_the_challenger_and_the_split():
    challenger = model_pb2.ModelVersion(name="IrisBestModel", version="4", alias="challenger", variant="challenger")
    failure = model_pb2.LoadFailure(version="5", reason="warm_up", message="NaN", failed_at=Timestamp(seconds=1))
    message = model_pb2.ModelInfo(
        model=VERSION,
        loaded_at=Timestamp(),
        challenger=challenger,
        challenger_percent=25.0,
        shadow=True,
        challenger_load_failure=failure,
        configured_challenger_percent=30.0,
    )
    info = converters.model_info_from_proto(message)
    assert info.model_dump(mode="json") == rest_json(message)
    assert info.challenger is not None
    assert (info.challenger.version, info.challenger.variant) == ("4", "challenger")
    assert (info.challenger_percent, info.shadow, info.configured_challenger_percent) == (25.0, True, 30.0)
    assert info.challenger_load_failure is not None
    assert info.challenger_load_failure.reason == "warm_up"
    alone = converters.model_info_from_proto(model_pb2.ModelInfo(configured_challenger_percent=10.0))
    assert (alone.challenger, alone.challenger_load_failure, alone.challenger_percent) == (None, None, 0.0)
    assert alone.configured_challenger_percent == 10.0


@pytest.mark.parametrize(
    "message",
    [
        finished_operation(),
        admin_pb2.Operation(id="x", model="iris", state=admin_pb2.OPERATION_STATE_QUEUED, created_at=Timestamp()),
        admin_pb2.ListOperationsResponse(
            operations=[
                finished_operation(),
                admin_pb2.Operation(state=admin_pb2.OPERATION_STATE_RUNNING, created_at=Timestamp(seconds=1)),
            ]
        ),
        registered_versions("IrisBestModel"),
        admin_pb2.AliasChange(name="IrisBestModel", alias="champion", version="2", previous_version=""),
        admin_pb2.AliasChange(name="IrisBestModel", alias="champion", version="2", previous_version="1"),
        admin_pb2.TrafficSplit(name="IrisBestModel", challenger_percent=12.5, shadow=True),
        admin_pb2.TrafficSplit(name="IrisBestModel"),
        logged_prediction(PREDICTION_ID),
        admin_pb2.LoggedPrediction(prediction_id=PREDICTION_ID, logged_at=Timestamp()),
        admin_pb2.Operation(
            state=admin_pb2.OPERATION_STATE_RUNNING,
            trigger="quality",
            created_at=Timestamp(seconds=1_700_000_000),
            trigger_reason="live rmse 0.61 > training rmse 0.44 + 10% for 600 s",
        ),
        drift_report("CaliforniaHousingBestModel"),
        admin_pb2.DriftReport(name="IrisBestModel"),
        model_quality("IrisBestModel"),
        admin_pb2.ModelQuality(name="IrisBestModel"),
        admin_pb2.AutoRetrain(name="IrisBestModel", enabled=True, triggers=["quality", "drift", "schedule"]),
        admin_pb2.AutoRetrain(name="IrisBestModel"),
    ],
    ids=lambda message: type(message).__name__,
)
def test_admin_answers_convert_field_for_field(message):
    by_type: dict[type, Callable[[Any], BaseModel]] = {
        admin_pb2.Operation: converters.operation_from_proto,
        admin_pb2.ListOperationsResponse: converters.operations_from_proto,
        admin_pb2.ListModelVersionsResponse: converters.model_versions_from_proto,
        admin_pb2.AliasChange: converters.alias_change_from_proto,
        admin_pb2.TrafficSplit: converters.traffic_split_from_proto,
        admin_pb2.LoggedPrediction: converters.logged_prediction_from_proto,
        admin_pb2.DriftReport: converters.drift_report_from_proto,
        admin_pb2.ModelQuality: converters.quality_from_proto,
        admin_pb2.AutoRetrain: converters.auto_retrain_from_proto,
    }
    assert by_type[type(message)](message).model_dump(mode="json") == rest_json(message)


def test_operation_enums_and_unset_fields():
    queued = converters.operation_from_proto(admin_pb2.Operation(state=admin_pb2.OPERATION_STATE_QUEUED))
    assert (queued.state, queued.decision) == (schemas.OperationState.QUEUED, None)
    assert (queued.max_rows, queued.started_at, queued.finished_at) == (None, None, None)
    done = converters.operation_from_proto(finished_operation())
    assert (done.state, done.decision, done.max_rows) == ("succeeded", "promoted", 5000)
    assert done.model_dump(mode="json")["finished_at"] == "2023-11-14T22:14:21.123456Z"
    rejected = admin_pb2.Operation(state=admin_pb2.OPERATION_STATE_FAILED, decision=admin_pb2.GATE_DECISION_REJECTED)
    assert converters.operation_from_proto(rejected).decision == schemas.GateDecision.REJECTED
    with pytest.raises(converters.UnexpectedResponseError):
        converters.operation_from_proto(admin_pb2.Operation())  # OPERATION_STATE_UNSPECIFIED
    with pytest.raises(converters.UnexpectedResponseError):
        converters.decision_from_proto(99)


def test_admin_requests():
    full = converters.retrain_to_proto(
        schemas.RetrainRequest.model_validate(
            {"model": "housing", "hyperparameters": {"max_iter": 200}, "max_rows": 50}
        )
    )
    assert full == admin_pb2.RetrainRequest(model="housing", hyperparameters={"max_iter": 200.0}, max_rows=50)
    bare = converters.retrain_to_proto(schemas.RetrainRequest(model="iris"))
    assert not bare.HasField("max_rows")
    assert (bare.model, dict(bare.hyperparameters)) == ("iris", {})

    moved = converters.set_alias_to_proto("iris", "champion", schemas.SetAliasBody(version="2"))
    assert (moved.model, moved.alias, moved.version) == ("iris", "champion", "2")
    assert not moved.HasField("expected_version")  # no compare-and-set
    unset_only = converters.set_alias_to_proto(
        "iris", "champion", schemas.SetAliasBody(version="2", expected_version="")
    )
    assert unset_only.HasField("expected_version")  # "" is sent: only if the alias is not set
    assert unset_only.expected_version == ""
    compared = converters.set_alias_to_proto(
        "iris", "champion", schemas.SetAliasBody(version="2", expected_version="1")
    )
    assert compared.expected_version == "1"


def test_traffic_split_request():
    split = converters.set_traffic_split_to_proto(
        "iris", schemas.SetTrafficSplitBody.model_validate({"challenger_percent": 10, "shadow": True})
    )
    assert split == admin_pb2.SetTrafficSplitRequest(model="iris", challenger_percent=10.0, shadow=True)
    off = converters.set_traffic_split_to_proto(
        "housing", schemas.SetTrafficSplitBody(challenger_percent=0, shadow=False)
    )
    assert (off.model, off.challenger_percent, off.shadow) == ("housing", 0.0, False)
    for bad in (
        {"challenger_percent": 101, "shadow": False},
        {"challenger_percent": "10", "shadow": False},
        {"challenger_percent": 10, "shadow": "yes"},
        {"challenger_percent": 10},
        {"shadow": True},
        {"challenger_percent": 10, "shadow": True, "extra": 1},
    ):
        with pytest.raises(ValidationError):
            schemas.SetTrafficSplitBody.model_validate(bad)


def test_logged_prediction_timestamps_and_maps():
    logged = converters.logged_prediction_from_proto(logged_prediction(PREDICTION_ID))
    assert logged.model_dump(mode="json")["logged_at"] == "2023-11-14T22:18:20.250000Z"
    assert logged.inputs["sepal_length_cm"] == 5.1
    assert logged.output == {"setosa": 0.9, "versicolor": 0.07, "virginica": 0.03}
    assert (logged.variant, logged.routing_key) == ("challenger", "user-42")


def test_drift_statuses_and_empty_windows():
    for number, name in ((1, "ok"), (2, "insufficient_data"), (3, "no_reference_profile")):
        assert converters.drift_status_from_proto(number) == schemas.DriftStatus(name)
    with pytest.raises(converters.UnexpectedResponseError):
        converters.drift_status_from_proto(admin_pb2.DRIFT_STATUS_UNSPECIFIED)
    empty = converters.version_drift_from_proto(
        admin_pb2.VersionDrift(version="1", status=admin_pb2.DRIFT_STATUS_INSUFFICIENT_DATA, window_capacity=1000)
    )
    assert (empty.oldest_at, empty.newest_at, empty.window_rows) == (None, None, 0)
    full = converters.drift_report_from_proto(drift_report("CaliforniaHousingBestModel")).model_dump(mode="json")
    assert full["versions"][0]["oldest_at"] == "2023-11-14T22:13:20.250000Z"
    assert full["versions"][0]["features"][0] == {"name": "median_income", "psi": 0.31, "drifted": True}


def test_feedback_requests_set_the_one_label_given():
    body = schemas.SubmitFeedbackRequest.model_validate(
        {
            "items": [
                {"prediction_id": PREDICTION_ID, "value": 0},
                {"prediction_id": PREDICTION_ID, "species": "versicolor"},
                {"prediction_id": PREDICTION_ID, "value": -1.5},
            ]
        }
    )
    message = converters.feedback_to_proto(body)
    assert [each.WhichOneof("label") for each in message.items] == ["value", "species", "value"]
    assert message.items[0].value == 0.0
    assert message.items[1].species == iris_pb2.IRIS_SPECIES_VERSICOLOR
    assert message.items[2].value == -1.5
    assert {each.prediction_id for each in message.items} == {PREDICTION_ID}


def test_feedback_results_carry_their_code_and_its_http_status():
    answer = admin_pb2.SubmitFeedbackResponse(
        results=[
            admin_pb2.FeedbackResult(prediction_id="a", code=admin_pb2.FEEDBACK_CODE_OK, recorded=True, message="ok"),
            admin_pb2.FeedbackResult(prediction_id="b", code=admin_pb2.FEEDBACK_CODE_INVALID_ARGUMENT, message="m"),
            admin_pb2.FeedbackResult(prediction_id="c", code=admin_pb2.FEEDBACK_CODE_NOT_FOUND),
            admin_pb2.FeedbackResult(prediction_id="d", code=admin_pb2.FEEDBACK_CODE_ALREADY_EXISTS),
        ]
    )
    results = converters.feedback_from_proto(answer).model_dump(mode="json")["results"]
    assert results == [
        {"prediction_id": "a", "status": "OK", "http_status": 200, "recorded": True, "message": "ok"},
        {"prediction_id": "b", "status": "INVALID_ARGUMENT", "http_status": 422, "recorded": False, "message": "m"},
        {"prediction_id": "c", "status": "NOT_FOUND", "http_status": 404, "recorded": False, "message": ""},
        {"prediction_id": "d", "status": "ALREADY_EXISTS", "http_status": 409, "recorded": False, "message": ""},
    ]
    with pytest.raises(converters.UnexpectedResponseError):
        converters.feedback_result_from_proto(admin_pb2.FeedbackResult(prediction_id="e", code=9))  # type: ignore[arg-type]


def test_auto_retrain_request():
    off = converters.set_auto_retrain_to_proto("iris", schemas.SetAutoRetrainBody(enabled=False))
    assert off == admin_pb2.SetAutoRetrainRequest(model="iris", enabled=False)
    on = converters.set_auto_retrain_to_proto("housing", schemas.SetAutoRetrainBody.model_validate({"enabled": True}))
    assert (on.model, on.enabled) == ("housing", True)
    for bad in ({"enabled": "true"}, {"enabled": 1}, {}, {"enabled": True, "extra": 1}):
        with pytest.raises(ValidationError):
            schemas.SetAutoRetrainBody.model_validate(bad)
