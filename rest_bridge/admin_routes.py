"""The admin endpoints, in front of ``prediction.v1.ModelAdmin``: retrain, operations, versions, aliases, rollback,
traffic split, logged predictions, drift, feedback, live quality, automated retraining.

Like every route they convert, call and convert back. The client's ``Authorization`` header goes to the server
as ``authorization`` metadata and nowhere else (no log line, no error body); the bridge does not check it, the
server does, so its UNAUTHENTICATED (401) and PERMISSION_DENIED (403) come through the one status table. The
``AdminToken`` security scheme only documents the header, so that Swagger UI offers an "Authorize" button.
"""

from enum import Enum
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.security import HTTPBearer

from protos.prediction.v1 import admin_pb2
from rest_bridge import converters, schemas
from rest_bridge.errors import request_id_of
from rest_bridge.routes import ERROR_RESPONSES
from rest_bridge.upstream import AdminContext, Upstream

ADMIN_TOKEN = HTTPBearer(
    scheme_name="AdminToken",
    description="The prediction server's admin token (`PREDICTOR_ADMIN_TOKEN`), sent as "
    "`Authorization: Bearer <token>`. The bridge passes the header on to the server, which alone checks it: "
    "401 without it or with a wrong one, 403 when the server has no admin token configured.",
    # Only for the OpenAPI document: refusing a request is the server's decision, never the bridge's.
    auto_error=False,
)
_ERROR = {"model": schemas.ErrorResponse}
ADMIN_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR, "description": "No admin token, or a wrong one (UNAUTHENTICATED)."},
    403: {
        **_ERROR,
        "description": "The server has no admin token configured: admin calls are off (PERMISSION_DENIED).",
    },
    422: {
        **_ERROR,
        "description": "Invalid input, from the bridge or the server (an unknown model, a hyper-parameter outside "
        "the allow-list): `details` names each bad field (INVALID_ARGUMENT).",
    },
    503: {**_ERROR, "description": "The prediction service or its model registry is unavailable."},
    **{key: value for key, value in ERROR_RESPONSES.items() if key in (504, "4XX", "5XX")},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {**_ERROR, "description": "No such model, operation, version or prediction (NOT_FOUND)."}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        **_ERROR,
        "description": "The alias is not where the change expected it (ABORTED): it moved, or expected_version "
        "names another version. Read it again and retry.",
    }
}


def feature_off(what: str) -> dict[int | str, dict[str, Any]]:
    """The 400 of a route whose server part can be switched off (FAILED_PRECONDITION, like a rollback's 400)."""
    return {400: {**_ERROR, "description": f"{what} (FAILED_PRECONDITION)."}}


TAGS: list[str | Enum] = ["admin"]
DEPENDENCIES = [Depends(ADMIN_TOKEN)]

ModelPath = Annotated[
    str,
    Path(
        pattern=schemas.NAME_PATTERN,
        description='The model: its service key ("housing", "iris") or its registered name ("IrisBestModel").',
        examples=["iris"],
    ),
]
AliasPath = Annotated[
    str, Path(pattern=schemas.ALIAS_PATTERN, description='A registry alias, e.g. "champion".', examples=["champion"])
]
PredictionIdPath = Annotated[
    str,
    Path(
        pattern=schemas.PREDICTION_ID_PATTERN,
        description="The prediction's id (a UUID), as the prediction answer's prediction_id gave it.",
        examples=["0192f0c4-7b1e-7c3a-9d2e-4f5a6b7c8d9e"],
    ),
]
OperationIdPath = Annotated[
    str,
    Path(
        alias="id",
        pattern=schemas.OPERATION_ID_PATTERN,
        description="The operation's id, as POST /retrain returned it.",
    ),
]


def _context(request: Request) -> AdminContext:
    return AdminContext(request_id_of(request), request.receive, request.headers.get("authorization"))


def add_admin_routes(app: FastAPI, upstream: Upstream) -> None:
    """Register the admin endpoints on ``app`` itself (see ``rest_bridge.routes.add_routes`` for why)."""

    @app.post(
        "/retrain",
        status_code=202,
        summary="Start retraining a model",
        description="Returns the new operation at once (202 Accepted: training runs on the server in the "
        "background, through the champion gate); follow it with GET /operations/{id}. 409 (ALREADY_EXISTS) while "
        "the model already has a retrain queued or running.",
        responses={
            **ADMIN_ERROR_RESPONSES,
            409: {**_ERROR, "description": "The model already has a retrain queued or running (ALREADY_EXISTS)."},
        },
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def retrain(body: schemas.RetrainRequest, request: Request) -> schemas.Operation:
        reply = await upstream.retrain(converters.retrain_to_proto(body), _context(request))
        return converters.operation_from_proto(reply)

    @app.get(
        "/operations/{id}",
        summary="One retrain operation",
        responses={**ADMIN_ERROR_RESPONSES, **NOT_FOUND},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def get_operation(operation_id: OperationIdPath, request: Request) -> schemas.Operation:
        reply = await upstream.get_operation(admin_pb2.GetOperationRequest(id=operation_id), _context(request))
        return converters.operation_from_proto(reply)

    @app.get(
        "/operations",
        summary="Retrain operations, newest first",
        responses=ADMIN_ERROR_RESPONSES,
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def list_operations(
        query: Annotated[schemas.ListOperationsQuery, Query()], request: Request
    ) -> schemas.ListOperationsResponse:
        reply = await upstream.list_operations(admin_pb2.ListOperationsRequest(model=query.model), _context(request))
        return converters.operations_from_proto(reply)

    @app.get(
        "/models/{model}/versions",
        summary="Every registered version of a model, newest first, with its aliases",
        responses={**ADMIN_ERROR_RESPONSES, **NOT_FOUND},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def list_model_versions(model: ModelPath, request: Request) -> schemas.ListModelVersionsResponse:
        reply = await upstream.list_model_versions(admin_pb2.ListModelVersionsRequest(model=model), _context(request))
        return converters.model_versions_from_proto(reply)

    @app.put(
        "/models/{model}/aliases/{alias}",
        summary="Point an alias at a version (promote)",
        description="The server that takes the call loads the version in the background and serves it once it has "
        "passed validation (GET /models shows it then); other replicas follow within their poll interval. With "
        "expected_version set, a compare-and-set: 409 (ABORTED) when the alias is elsewhere.",
        responses={**ADMIN_ERROR_RESPONSES, **NOT_FOUND, **CONFLICT},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def set_alias(
        model: ModelPath, alias: AliasPath, body: schemas.SetAliasBody, request: Request
    ) -> schemas.AliasChange:
        reply = await upstream.set_alias(converters.set_alias_to_proto(model, alias, body), _context(request))
        return converters.alias_change_from_proto(reply)

    @app.post(
        "/models/{model}/rollback",
        summary="Move champion back to the version that held it before",
        description="Repeated rollbacks walk further back. 400 (FAILED_PRECONDITION) when no earlier version held "
        "the alias.",
        responses={
            **ADMIN_ERROR_RESPONSES,
            **CONFLICT,
            400: {**_ERROR, "description": "No earlier version to roll back to (FAILED_PRECONDITION)."},
        },
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def rollback(model: ModelPath, request: Request) -> schemas.AliasChange:
        reply = await upstream.rollback(admin_pb2.RollbackRequest(model=model), _context(request))
        return converters.alias_change_from_proto(reply)

    @app.put(
        "/models/{model}/traffic",
        summary="Set the A/B traffic split and shadow mode of a model",
        description="challenger_percent of the traffic goes to the challenger (the version with alias "
        '"challenger"); with shadow true, the challenger also predicts on a copy of the champion\'s traffic, off the '
        "request path. Kept in the registry, so restarts and other replicas serve the same split. 422 for an unknown "
        "model.",
        responses=ADMIN_ERROR_RESPONSES,
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def set_traffic_split(
        model: ModelPath, body: schemas.SetTrafficSplitBody, request: Request
    ) -> schemas.TrafficSplit:
        reply = await upstream.set_traffic_split(converters.set_traffic_split_to_proto(model, body), _context(request))
        return converters.traffic_split_from_proto(reply)

    @app.get(
        "/predictions/{prediction_id}",
        summary="One logged prediction, with its inputs and output",
        description="A row of the server's prediction log, by the prediction_id of a prediction answer. An admin "
        "route because the log holds callers' inputs. 404 (NOT_FOUND) when the id is not, or no longer, in the log; "
        "a prediction is written to the log shortly after it is answered.",
        responses={**ADMIN_ERROR_RESPONSES, **NOT_FOUND},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def get_prediction(prediction_id: PredictionIdPath, request: Request) -> schemas.LoggedPrediction:
        reply = await upstream.get_prediction(
            admin_pb2.GetPredictionRequest(prediction_id=prediction_id), _context(request)
        )
        return converters.logged_prediction_from_proto(reply)

    @app.get(
        "/drift/{model}",
        summary="Data drift of every version a model serves",
        description="For each version served (champion, then challenger), the population stability index (PSI) of "
        "every feature and output over its window of live rows, against the profile of its training rows; a column "
        'drifted when its PSI is above threshold. A version\'s status says whether its figures mean anything: "ok", '
        '"insufficient_data" (fewer live rows than min_rows so far: no PSI yet) or "no_reference_profile" (registered '
        "without a training profile). 400 (FAILED_PRECONDITION) when drift measurement is off on the server.",
        responses={**ADMIN_ERROR_RESPONSES, **feature_off("Drift measurement is off on this server")},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def get_drift_report(model: ModelPath, request: Request) -> schemas.DriftReport:
        reply = await upstream.get_drift_report(admin_pb2.GetDriftReportRequest(model=model), _context(request))
        return converters.drift_report_from_proto(reply)

    @app.post(
        "/feedback",
        summary="Send the true labels of logged predictions",
        description="Ground truth for predictions by their prediction_id: a value for a housing prediction, a species "
        f"for an iris one; 1 to {schemas.MAX_FEEDBACK_ITEMS} items per call. The call as a whole succeeds (200) and "
        "every item gets its own result, in the request's order: status is the gRPC code of its outcome and "
        'http_status what the bridge answers that code with elsewhere ("OK" 200: recorded, or the same label again, '
        'which changes nothing; "INVALID_ARGUMENT" 422: the label does not fit the prediction; "NOT_FOUND" 404: no '
        'logged prediction has this id; "ALREADY_EXISTS" 409: it already has a different label, which is kept). '
        "Labels feed GET /quality/{model} and the quality trigger of automated retraining. 400 "
        "(FAILED_PRECONDITION) when the server keeps no prediction log.",
        responses={**ADMIN_ERROR_RESPONSES, **feature_off("The server keeps no prediction log, so takes no feedback")},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def submit_feedback(body: schemas.SubmitFeedbackRequest, request: Request) -> schemas.SubmitFeedbackResponse:
        reply = await upstream.submit_feedback(converters.feedback_to_proto(body), _context(request))
        return converters.feedback_from_proto(reply)

    @app.get(
        "/quality/{model}",
        summary="Live quality of every version a model serves, beside its training metrics",
        description="For each version served, its quality on the labels received through POST /feedback (housing: "
        "rmse, mae; iris: accuracy and the recall of each species, with the labels counted by the confidence of "
        "their prediction) over the window of the newest window_labels labels (of the last window_seconds, when "
        "that is set), beside the held-out metrics of its training run. 400 (FAILED_PRECONDITION) when the server "
        "keeps no prediction log.",
        responses={**ADMIN_ERROR_RESPONSES, **feature_off("The server keeps no prediction log, so has no labels")},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def get_model_quality(model: ModelPath, request: Request) -> schemas.ModelQuality:
        reply = await upstream.get_model_quality(admin_pb2.GetModelQualityRequest(model=model), _context(request))
        return converters.quality_from_proto(reply)

    @app.put(
        "/models/{model}/auto-retrain",
        summary="Switch a model's automated retraining off, or back on",
        description="enabled false pauses every automated trigger of the model (quality, drift, schedule: the "
        "answer lists those the server has configured); manual retrains through POST /retrain still work. Kept in "
        "the registry, so restarts and other replicas follow. 400 (FAILED_PRECONDITION) when the server has no "
        "automated trigger configured.",
        responses={**ADMIN_ERROR_RESPONSES, **feature_off("The server has no automated retrain trigger configured")},
        tags=TAGS,
        dependencies=DEPENDENCIES,
    )
    async def set_auto_retrain(
        model: ModelPath, body: schemas.SetAutoRetrainBody, request: Request
    ) -> schemas.AutoRetrain:
        reply = await upstream.set_auto_retrain(converters.set_auto_retrain_to_proto(model, body), _context(request))
        return converters.auto_retrain_from_proto(reply)
