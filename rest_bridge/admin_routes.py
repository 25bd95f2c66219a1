"""The admin endpoints, in front of ``prediction.v1.ModelAdmin``: retrain, operations, versions, aliases, rollback,
traffic split, logged predictions.

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
