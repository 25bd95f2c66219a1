"""The HTTP endpoints. Each one converts the request, calls the server, and converts the answer back.

The paths are those of the original HTTP API, so its clients keep working.
"""

import asyncio
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request, Response

from rest_bridge import converters, schemas
from rest_bridge.errors import request_id_of
from rest_bridge.metrics import CONTENT_TYPE, BridgeMetrics
from rest_bridge.upstream import HOUSING_SERVICE, IRIS_SERVICE, MAX_ROUTING_KEY_LENGTH, Upstream

_ERROR = {"model": schemas.ErrorResponse}
# Every route may answer with any of these; the status table is in the README and rest_bridge.errors.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {**_ERROR, "description": "Invalid input: `details` names each bad field (INVALID_ARGUMENT)."},
    503: {**_ERROR, "description": "The prediction service is unavailable or its model is not loaded."},
    504: {**_ERROR, "description": "The prediction service did not answer within the deadline."},
    "4XX": {**_ERROR, "description": "Another client error, mapped from the gRPC status."},
    "5XX": {**_ERROR, "description": "Another server error, mapped from the gRPC status."},
}
# The columns routes: JSON Schema cannot say "every list as long as the others", so their 422 says it.
COLUMNS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    422: {
        **_ERROR,
        "description": "Invalid input: `details` names each bad field (INVALID_ARGUMENT): a bad value as "
        '`column[row]` (e.g. "median_income[3]"), a column whose length differs from the longest by its name '
        "(every column must hold one value per row), more rows than the server's maximum batch size as `columns`.",
    },
}
# Taken as any string and never refused: a key the server cannot use is not sent, and routing is random.
RoutingKey = Annotated[
    str | None,
    Header(
        alias="X-Routing-Key",
        description="Sticky A/B routing: requests with the same key always reach the same variant (champion or "
        "challenger) for a given traffic split, e.g. a user or session id. Forwarded to the server as "
        f"`x-routing-key` when it is printable ASCII of 1 to {MAX_ROUTING_KEY_LENGTH} characters, otherwise not "
        "sent; without one the variant is chosen at random in the split's proportion.",
        examples=["user-42"],
    ),
]
METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "Prometheus text format."}
}


def add_routes(app: FastAPI, upstream: Upstream, metrics: BridgeMetrics) -> None:
    """Register every endpoint on ``app`` itself: an included APIRouter would be matched a second time
    on every request."""

    @app.post(
        "/predict/housing",
        tags=["housing"],
        summary="Predict the median house value of one block group",
        responses=ERROR_RESPONSES,
    )
    async def predict_housing(
        features: schemas.HousingFeatures, request: Request, routing_key: RoutingKey = None
    ) -> schemas.HousingPrediction:
        reply = await upstream.predict_housing(
            converters.housing_features_to_proto(features),
            request_id=request_id_of(request),
            receive=request.receive,
            routing_key=routing_key,
        )
        return converters.housing_prediction_from_proto(reply)

    @app.post(
        "/predict/housing/batch",
        tags=["housing"],
        summary="Predict many block groups with one model version",
        responses=ERROR_RESPONSES,
    )
    async def predict_housing_batch(
        batch: schemas.HousingBatchRequest, request: Request, routing_key: RoutingKey = None
    ) -> schemas.HousingBatchPrediction:
        reply = await upstream.predict_housing_batch(
            converters.housing_batch_to_proto(batch),
            request_id=request_id_of(request),
            receive=request.receive,
            routing_key=routing_key,
        )
        return converters.housing_batch_from_proto(reply)

    @app.post(
        "/predict/housing/columns",
        tags=["housing"],
        summary="Predict many block groups sent column by column, with one model version",
        responses=COLUMNS_RESPONSES,
    )
    async def predict_housing_columns(
        columns: schemas.HousingColumns, request: Request, routing_key: RoutingKey = None
    ) -> schemas.HousingColumnsPrediction:
        reply = await upstream.predict_housing_columns(
            converters.housing_columns_to_proto(columns),
            request_id=request_id_of(request),
            receive=request.receive,
            routing_key=routing_key,
        )
        return converters.housing_columns_from_proto(reply)

    @app.post("/predict/iris", tags=["iris"], summary="Classify one iris flower", responses=ERROR_RESPONSES)
    async def predict_iris(
        features: schemas.IrisFeatures, request: Request, routing_key: RoutingKey = None
    ) -> schemas.IrisPrediction:
        reply = await upstream.classify_iris(
            converters.iris_features_to_proto(features),
            request_id=request_id_of(request),
            receive=request.receive,
            routing_key=routing_key,
        )
        return converters.iris_prediction_from_proto(reply)

    @app.post(
        "/predict/iris/batch",
        tags=["iris"],
        summary="Classify many iris flowers with one model version",
        responses=ERROR_RESPONSES,
    )
    async def predict_iris_batch(
        batch: schemas.IrisBatchRequest, request: Request, routing_key: RoutingKey = None
    ) -> schemas.IrisBatchPrediction:
        reply = await upstream.classify_iris_batch(
            converters.iris_batch_to_proto(batch),
            request_id=request_id_of(request),
            receive=request.receive,
            routing_key=routing_key,
        )
        return converters.iris_batch_from_proto(reply)

    @app.post(
        "/predict/iris/columns",
        tags=["iris"],
        summary="Classify many iris flowers sent column by column, with one model version",
        responses=COLUMNS_RESPONSES,
    )
    async def predict_iris_columns(
        columns: schemas.IrisColumns, request: Request, routing_key: RoutingKey = None
    ) -> schemas.IrisColumnsPrediction:
        reply = await upstream.classify_iris_columns(
            converters.iris_columns_to_proto(columns),
            request_id=request_id_of(request),
            receive=request.receive,
            routing_key=routing_key,
        )
        return converters.iris_columns_from_proto(reply)

    @app.get(
        "/models", tags=["models"], summary="Describe the model version behind each service", responses=ERROR_RESPONSES
    )
    async def models(request: Request) -> schemas.ModelsInfo:
        housing, iris = await upstream.model_info(request_id=request_id_of(request), receive=request.receive)
        return schemas.ModelsInfo(
            housing=converters.model_info_from_proto(housing), iris=converters.model_info_from_proto(iris)
        )

    @app.get("/health", tags=["operations"], summary="Liveness: the bridge process is up")
    async def health() -> schemas.Health:
        return schemas.Health()

    @app.get(
        "/ready",
        tags=["operations"],
        summary="Readiness: every gRPC service reports SERVING",
        responses={503: {"model": schemas.Readiness, "description": "At least one service is not SERVING."}},
    )
    async def ready(request: Request, response: Response) -> schemas.Readiness:
        request_id = request_id_of(request)
        names = (HOUSING_SERVICE, IRIS_SERVICE)
        statuses = await asyncio.gather(*(upstream.serving_status(name, request_id=request_id) for name in names))
        readiness = schemas.Readiness(
            ready=all(status == "SERVING" for status in statuses), services=dict(zip(names, statuses, strict=True))
        )
        if not readiness.ready:
            response.status_code = 503
        return readiness

    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    for path, summary in (
        ("/metrics", "Prometheus metrics of the bridge"),
        ("/metrics/prometheus", "Prometheus metrics of the bridge (alias of /metrics, kept from the original API)"),
    ):
        app.add_api_route(
            path, prometheus, methods=["GET"], tags=["operations"], summary=summary, responses=METRICS_RESPONSE
        )
