"""Prometheus metrics of the bridge, on a registry of its own (one per app, so tests can build many).

| metric | labels |
| --- | --- |
| ``bridge_http_requests_total`` | ``route`` (the path template), ``method``, ``status`` |
| ``bridge_http_request_duration_seconds`` | ``route``, ``method``, ``status`` |
| ``bridge_upstream_errors_total`` | ``grpc_method`` (``package.Service/Method``), ``grpc_code`` |

``route`` is the template of the route that answered: ``/predict/iris``, ``/models/{model}/versions``,
``/openapi.json``, ``/docs``, ``/redoc``, and ``/static/docs/{path}`` for every file of the docs assets, found
or not. Requests that match no route (and CORS preflights, answered before routing) are counted under
``route="unmatched"``, so that probing random paths cannot create unbounded label values.
"""

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

UNMATCHED_ROUTE = "unmatched"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests = Counter(
            "bridge_http_requests_total",
            "HTTP requests answered by the bridge.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "bridge_http_request_duration_seconds",
            "Time from the request reaching the bridge to the end of its response.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            "bridge_upstream_errors_total",
            "gRPC calls to the prediction server that ended with a status other than OK.",
            ["grpc_method", "grpc_code"],
            registry=self.registry,
        )
        # labels() hashes and locks on every call; the set of label values is small, so keep the children.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            labels = (route, method, str(status))
            children = self._children.setdefault(key, (self._requests.labels(*labels), self._latency.labels(*labels)))
        children[0].inc()
        children[1].observe(seconds)

    def upstream_error(self, grpc_method: str, code: grpc.StatusCode) -> None:
        self._upstream_errors.labels(grpc_method, code.name).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
