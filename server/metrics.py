"""Prometheus metrics about the models (the gRPC ones come from py-grpc-prometheus).

Every metric lives on the registry passed in, so several servers can run in one process (tests) and
one /metrics endpoint shows both the gRPC and the model series.
"""

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.domain import Deployment, ModelVersionRef

# Sub-millisecond resolution: a linear model answers in ~0.2 ms, a forest in several ms.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Outcome:
    SUCCESS = "success"
    INVALID_INPUT = "invalid_input"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class BoundModelMetrics:
    """The label children of one model version, resolved once so the request path only increments."""

    success: Counter
    invalid_input: Counter
    error: Counter
    latency: Histogram
    batch_size: Histogram


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.predictions = Counter(
            "model_predictions_total",
            "Instances predicted, by registered model, version, variant (champion, challenger) and outcome "
            "(success, invalid_input, error).",
            ["model", "version", "variant", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "model_prediction_duration_seconds",
            "Time to validate and predict one request (single instance or whole batch), in seconds.",
            ["model", "version", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "model_batch_size",
            "Instances per prediction request (1 for single-instance calls).",
            ["model", "variant"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.loaded = Gauge(
            "model_loaded_info",
            "1 for each model version a service is serving, with its name, version, alias, run id and variant.",
            ["service", "model", "version", "alias", "run_id", "variant"],
            registry=registry,
        )
        self.training_metric = Gauge(
            "model_training_metric",
            "Each served version's metrics on its held-out test data at training time (rmse, mae, r2, accuracy, ...), "
            "logged with it in the registry: what live quality (model_live_*) is compared with.",
            ["model", "version", "variant", "metric"],
            registry=registry,
        )
        self.loaded_at = Gauge(
            "model_loaded_timestamp_seconds",
            "Unix time at which the served version of each service's variant was loaded.",
            ["service", "variant"],
            registry=registry,
        )
        self.load_failures = Counter(
            "model_load_failures_total",
            "Versions a service refused to serve, by reason (registry_unavailable, not_found, artifact, signature, "
            "classes, warm_up, output); each refused version is counted once.",
            ["service", "reason"],
            registry=registry,
        )
        self.swaps = Counter(
            "model_swaps_total",
            "Times a service started answering with another version without a restart (hot reloads).",
            ["service"],
            registry=registry,
        )
        self.challenger_percent = Gauge(
            "model_traffic_challenger_percent",
            "Percent of a service's traffic its challenger answers now (0 while no challenger is loaded).",
            ["service"],
            registry=registry,
        )
        self.shadow_enabled = Gauge(
            "model_traffic_shadow",
            "1 while a service's challenger predicts on a copy of the champion's traffic.",
            ["service"],
            registry=registry,
        )
        self.serving = Gauge(
            "model_service_serving",
            "1 while a prediction service reports SERVING on the health protocol (a model is loaded), else 0.",
            ["service"],
            registry=registry,
        )
        self.registry_up = Gauge(
            "model_registry_up",
            "1 when the server's last request to the model registry succeeded, 0 while it cannot be reached.",
            registry=registry,
        )

    def bind(self, ref: ModelVersionRef, variant: str) -> BoundModelMetrics:
        def outcome(name: str) -> Counter:
            return self.predictions.labels(model=ref.name, version=ref.version, variant=variant, outcome=name)

        return BoundModelMetrics(
            success=outcome(Outcome.SUCCESS),
            invalid_input=outcome(Outcome.INVALID_INPUT),
            error=outcome(Outcome.ERROR),
            latency=self.latency.labels(model=ref.name, version=ref.version, variant=variant),
            batch_size=self.batch_size.labels(model=ref.name, variant=variant),
        )

    def deployment_changed(self, service: str, old: Deployment | None, new: Deployment | None) -> None:
        before = {} if old is None else old.variants()
        after = {} if new is None else new.variants()
        for variant, model in before.items():
            ref = model.description.ref
            self.loaded.remove(service, ref.name, ref.version, ref.alias, ref.run_id, variant)
            for metric in model.description.training_metrics:
                self.training_metric.remove(ref.name, ref.version, variant, metric)
            if variant not in after:
                self.loaded_at.remove(service, variant)
        for variant, model in after.items():
            ref = model.description.ref
            self.loaded.labels(service, ref.name, ref.version, ref.alias, ref.run_id, variant).set(1)
            for metric, value in model.description.training_metrics.items():
                self.training_metric.labels(ref.name, ref.version, variant, metric).set(value)
            self.loaded_at.labels(service, variant).set(model.description.loaded_at.timestamp())
            if variant in before and before[variant] is not model:
                self.swaps.labels(service).inc()
        self.challenger_percent.labels(service).set(0.0 if new is None else new.challenger_percent)
        self.shadow_enabled.labels(service).set(1.0 if new is not None and new.shadow else 0.0)


class RpcMetrics:
    """What py-grpc-prometheus does not see: the prediction streams, and request messages that do not parse."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method"]
        self.streams_active = Gauge(
            "grpc_server_streams_active", "Prediction streams open now.", labels, registry=registry
        )
        self.streams_rejected = Counter(
            "grpc_server_streams_rejected_total",
            "Prediction streams refused with RESOURCE_EXHAUSTED: the server held its cap of concurrent streams.",
            labels,
            registry=registry,
        )
        self.stream_messages = Counter(
            "grpc_server_stream_messages_total",
            "Replies sent on prediction streams, by the status of each message (OK, or its error's code).",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.shed = Counter(
            "grpc_server_shed_total",
            "Calls refused with RESOURCE_EXHAUSTED because they waited longer than max_queue_ms for a worker thread.",
            labels,
            registry=registry,
        )
        self.malformed = Counter(
            "grpc_server_malformed_requests_total",
            "Request messages that could not be parsed (answered INVALID_ARGUMENT), on any method.",
            labels,
            registry=registry,
        )
