"""Assembles the REST bridge: routes, error handlers, offline docs, request middleware, the gRPC channel."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from rest_bridge.admin_routes import add_admin_routes
from rest_bridge.docs import install_offline_docs
from rest_bridge.errors import install_error_handlers
from rest_bridge.json_body import OrjsonRoute
from rest_bridge.metrics import BridgeMetrics
from rest_bridge.middleware import BodySizeLimitMiddleware, RequestContextMiddleware, cors_options
from rest_bridge.routes import add_routes
from rest_bridge.settings import BridgeSettings
from rest_bridge.upstream import Upstream, upstream_tls

DESCRIPTION = """\
REST/JSON front of the gRPC prediction service (`prediction.v1.HousingPredictor`,
`prediction.v1.IrisClassifier`, and `prediction.v1.ModelAdmin` under the `admin` routes, which need the server's
admin token: "Authorize" above). Every field is the protobuf field of the same name; every error has one
body shape, `{"error": {"status", "code", "message", "request_id", "details"}}`, where `code` is the gRPC
status the HTTP status comes from. Send `X-Request-ID` to trace a request through the bridge and the server.
"""


def create_app(settings: BridgeSettings, metrics_registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the bridge. The gRPC channel is opened when the app starts (lifespan) and closed when it stops."""
    metrics = BridgeMetrics(metrics_registry)
    upstream = Upstream(
        settings.channel_target,
        settings.upstream_timeout_seconds,
        metrics,
        upstream_tls(settings),
        max_calls=settings.max_upstream_calls,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await upstream.open()
        try:
            yield
        finally:
            await upstream.close()

    app = FastAPI(
        title="Prediction service REST bridge",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's built-in OpenTelemetry hooks check the providers on every request; the bridge reports
        # through its own Prometheus metrics and logs, so they are off.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.router.route_class = OrjsonRoute  # before any route is added: each takes the class it is added with
    add_routes(app, upstream, metrics)
    add_admin_routes(app, upstream)
    install_error_handlers(app)
    install_offline_docs(app)
    # The last added is the outermost: the request context wraps the body limit, which reads its id. CORS sits
    # between them, so that a browser can read the body limit's 413 too; without allowed origins there is none.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_allow_origins:
        app.add_middleware(CORSMiddleware, **cors_options(settings.cors_allow_origins))
    app.add_middleware(RequestContextMiddleware, metrics=metrics, access_log=settings.access_log)
    return app
