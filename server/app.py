"""Assembles the gRPC server process: services, admin, health, reflection, interceptors, metrics, the watcher."""

import logging
import sys
import threading
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from py_grpc_prometheus.prometheus_server_interceptor import PromServerInterceptor

from model_registry import ModelRegistry
from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.admin.auth import AdminAuthenticator
from server.admin.operations import OperationStore, RetrainRunner
from server.admin.service import ModelAdmin, Monitoring
from server.admin.triggers import RetrainTriggers, TriggeredModel, TriggerSettings
from server.admin_servicer import ModelAdminServicer
from server.batching import BatchingMetrics
from server.core import Batching, HousingEndpoint, IrisEndpoint, Observers
from server.domain import Deployment, retired_models
from server.execution import ModelRunner
from server.interceptors import AdminAuthInterceptor, QueueTimingExecutor, ServerCallInterceptor, split_method
from server.lifecycle import ModelWatcher, WatchedModel
from server.metrics import ModelMetrics, RpcMetrics
from server.model_store import ModelSlot, ModelStore
from server.observe.drift import DriftMonitor
from server.observe.feedback import FeedbackStore
from server.observe.prediction_log import PredictionLog
from server.observe.quality import LiveQuality
from server.observe.shadow import ShadowRunner
from server.preparation import ModelPreparer
from server.runtime import PredictRuntime
from server.servicers import HousingPredictorServicer, IrisClassifierServicer
from server.services import HOUSING, IRIS, SERVICES, SPEC_BY_SLOT
from server.settings import ServerSettings
from server.tls import bind_port

logger = logging.getLogger(__name__)

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
STREAM_METHODS = frozenset(
    f"/{service.full_name}/{method.name}"
    for service in (
        housing_pb2.DESCRIPTOR.services_by_name["HousingPredictor"],
        iris_pb2.DESCRIPTOR.services_by_name["IrisClassifier"],
    )
    for method in service.methods
    if method.client_streaming and method.server_streaming
)
OVERALL = ""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class PredictionServer:
    """A built server. ``start()`` serves (health NOT_SERVING), ``load_models()`` turns services SERVING."""

    settings: ServerSettings
    grpc_server: grpc.Server
    port: int
    health: health.HealthServicer
    store: ModelStore
    watcher: ModelWatcher
    retrainer: RetrainRunner
    metrics_registry: CollectorRegistry
    observers: Observers = field(default_factory=Observers)
    monitoring: Monitoring = field(default_factory=Monitoring)
    triggers: RetrainTriggers | None = None
    executors: tuple[futures.ThreadPoolExecutor, ...] = ()
    metrics_port: int | None = None
    _metrics_http: WSGIServer | None = field(default=None, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> None:
        if self.observers.prediction_log is not None:
            self.observers.prediction_log.start()
        if self.observers.shadow is not None:
            self.observers.shadow.start()
        if self.observers.drift is not None:
            self.observers.drift.start()
        if self.triggers is not None:
            self.triggers.start()
        if self.settings.metrics_port is not None:
            self._metrics_http, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics_registry
            )
            self.metrics_port = self._metrics_http.server_port
        self.grpc_server.start()
        logger.info("gRPC on port %d, metrics on port %s", self.port, self.metrics_port)

    def load_models(self) -> dict[ModelSlot, bool]:
        """Load every service's model now, then follow the aliases in the background (hot reload)."""
        loaded = self.watcher.sync_all()
        if self.monitoring.feedback is not None:
            served = {
                key
                for spec in SERVICES
                if (deployment := self.store.peek(spec.slot)) is not None
                for key in deployment.served()
            }
            # Each window holds at most quality_window_labels; a version may have answered as both variants.
            restored = self.monitoring.feedback.restore(sorted(served), self.settings.quality_window_labels * 2)
            logger.info("live quality restored from %d earlier labels", restored)
        self.watcher.start(self.settings.model_poll_seconds)
        return loaded

    def stop(self, grace: float | None = None) -> None:
        """Go NOT_SERVING, let in-flight RPCs finish for ``grace`` seconds, then close everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.settings.grace_seconds if grace is None else grace).wait()
        self.watcher.stop()
        if self.triggers is not None:
            self.triggers.stop()
        self.retrainer.stop(timeout=5)
        if self.observers.drift is not None:
            self.observers.drift.stop()
        # After the last call: what the calls offered is written (or counted as dropped) before the exit.
        if self.observers.shadow is not None:
            self.observers.shadow.stop()
        if self.observers.prediction_log is not None:
            self.observers.prediction_log.close(timeout=5)
        for executor in self.executors:
            executor.shutdown(wait=True, cancel_futures=True)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        logger.info("server stopped")


class _HealthReporter:
    """Keeps each service's health in step with its slot; overall ("") is SERVING when all services are."""

    def __init__(self, servicer: health.HealthServicer, store: ModelStore, metrics: ModelMetrics) -> None:
        self._servicer = servicer
        self._store = store
        self._metrics = metrics
        for spec in SERVICES:
            servicer.set(spec.service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
            metrics.serving.labels(spec.service_name).set(0)
        servicer.set(OVERALL, health_pb2.HealthCheckResponse.NOT_SERVING)

    def deployment_changed(self, slot: ModelSlot, _old: Deployment | None, new: Deployment | None) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        service = SPEC_BY_SLOT[slot].service_name
        self._servicer.set(service, serving if new is not None else not_serving)
        self._metrics.serving.labels(service).set(0 if new is None else 1)
        everything = all(self._store.peek(spec.slot) is not None for spec in SERVICES)
        self._servicer.set(OVERALL, serving if everything else not_serving)


def _count_shed(method: str, rpc_metrics: RpcMetrics, grpc_metrics: PromServerInterceptor) -> None:
    """A call the executor shed before any interceptor saw it, counted where the interceptors would have: as
    started and handled RESOURCE_EXHAUSTED in py-grpc-prometheus' counters (the error-ratio alert reads them),
    and in ``grpc_server_shed_total``."""
    service, name = split_method(method)
    rpc_metrics.shed.labels(service, name).inc()
    grpc_metrics._metrics["grpc_server_started_counter"].labels("UNARY", service, name).inc()
    grpc_metrics.increase_grpc_server_handled_total_counter("UNARY", service, name, "RESOURCE_EXHAUSTED")


def build_server(
    settings: ServerSettings,
    registry: ModelRegistry,
    metrics_registry: CollectorRegistry | None = None,
    *,
    child_env: Mapping[str, str] | None = None,
) -> PredictionServer:
    """Wire every part of the server and bind its port. Nothing is loaded until ``load_models()``.

    ``child_env`` is the environment retrain children start from (the process's own, from ``__main__``); the
    registry URIs of ``settings`` are added to it.
    """
    metrics_registry = metrics_registry or CollectorRegistry()
    runtime = PredictRuntime(
        settings.parallel_batch_rows, settings.max_concurrent_predictions, settings.split_batch_rows
    )
    rpc_metrics = RpcMetrics(metrics_registry)
    grpc_metrics = PromServerInterceptor(enable_handling_time_histogram=True, registry=metrics_registry)
    max_queue_seconds = None if settings.max_queue_ms is None else settings.max_queue_ms / 1000
    executor = QueueTimingExecutor(
        max_workers=settings.max_workers,
        thread_name_prefix="rpc",
        initializer=runtime.limit_current_thread,
        shed_after=max_queue_seconds,
        on_shed=lambda method: _count_shed(method, rpc_metrics, grpc_metrics),
    )
    health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
    authenticator = AdminAuthenticator(
        settings.admin_token.get_secret_value() if settings.admin_token else None,
        dev_mode=settings.admin_dev_mode,
        allow_plaintext=settings.admin_allow_plaintext,
    )
    grpc_server = grpc.server(
        executor,
        interceptors=[
            # Outermost first: the Prometheus interceptor must see the status the error mapping set, and the
            # error mapping must see the admin authentication's refusals.
            grpc_metrics,
            ServerCallInterceptor(
                access_log=settings.access_log,
                metrics=rpc_metrics,
                stream_methods=STREAM_METHODS,
                max_concurrent_streams=settings.stream_cap,
                max_queue_seconds=max_queue_seconds,
            ),
            AdminAuthInterceptor(authenticator, ADMIN_SERVICE),
        ],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Two servers must never share a port by accident (tests bind port 0 side by side).
            ("grpc.so_reuseport", 0),
            *(
                []
                if settings.max_streams_per_connection is None
                # Refused in gRPC's C core, before the polling thread, which would otherwise take every excess
                # call from the queue only to shed it, starved of the GIL by the workers.
                else [("grpc.max_concurrent_streams", settings.max_streams_per_connection)]
            ),
            *(
                []
                if settings.max_connection_age_seconds is None
                # No max_connection_age_grace_ms: the GOAWAY alone sends new calls to a new connection, and an
                # open prediction stream may live on as long as its client keeps it.
                else [("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000))]
            ),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )

    store = ModelStore()
    names = {ModelSlot.HOUSING: settings.housing_model_name, ModelSlot.IRIS: settings.iris_model_name}
    metrics = ModelMetrics(metrics_registry)
    runners = {spec.slot: ModelRunner(spec, runtime, settings.small_batch_rows) for spec in SERVICES}
    prediction_log = (
        PredictionLog(
            settings.prediction_log_path,
            queue_size=settings.prediction_log_queue_size,
            queue_rows=settings.prediction_log_queue_rows,
            batch_rows=settings.prediction_log_batch_rows,
            flush_seconds=settings.prediction_log_flush_seconds,
            max_age_seconds=None
            if settings.prediction_log_max_age_days is None
            else settings.prediction_log_max_age_days * 86_400,
            max_rows=settings.prediction_log_max_rows,
            metrics_registry=metrics_registry,
        )
        if settings.prediction_log
        else None
    )
    drift = (
        DriftMonitor(
            store,
            SPEC_BY_SLOT,
            metrics_registry,
            window_rows=settings.drift_window_rows,
            threshold=settings.drift_threshold,
            min_rows=settings.drift_min_rows,
            interval_seconds=settings.drift_interval_seconds,
        )
        if settings.drift
        else None
    )
    observers = Observers(
        prediction_log=prediction_log,
        drift=drift,
        shadow=ShadowRunner(
            {spec.slot.value: runners[spec.slot] for spec in SERVICES},
            {spec.slot.value: spec.output_names for spec in SERVICES if spec.class_labels is not None},
            metrics_registry,
            queue_size=settings.shadow_queue_size,
            thread_setup=runtime.limit_current_thread,
        ),
    )
    batching = Batching(
        BatchingMetrics(metrics_registry),
        permits=runtime.call_slots,
        max_rows=settings.microbatch_max_rows,
        max_wait_seconds=settings.microbatch_max_wait_ms / 1000,
    )
    housing = HousingEndpoint(
        HOUSING,
        store=store,
        metrics=metrics,
        runner=runners[HOUSING.slot],
        max_batch_size=settings.max_batch_size,
        observers=observers,
        batching=batching,
    )
    iris = IrisEndpoint(
        IRIS,
        store=store,
        metrics=metrics,
        runner=runners[IRIS.slot],
        max_batch_size=settings.max_batch_size,
        observers=observers,
        batching=batching,
    )
    watcher = ModelWatcher(
        registry,
        store,
        metrics,
        [
            WatchedModel(
                spec,
                names[spec.slot],
                settings.model_alias,
                ModelPreparer(runners[spec.slot], settings.microbatch),
                challenger_alias=settings.challenger_alias,
            )
            for spec in SERVICES
        ],
    )
    environment = dict(child_env or {})
    environment["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    environment["MLFLOW_REGISTRY_URI"] = settings.mlflow_registry_uri or settings.mlflow_tracking_uri
    environment["TRAINING_ALIAS"] = settings.model_alias
    environment["TRAINING_HOUSING_MODEL_NAME"] = settings.housing_model_name
    environment["TRAINING_IRIS_MODEL_NAME"] = settings.iris_model_name
    retrainer = RetrainRunner(
        OperationStore(settings.state_dir),
        python_executable=sys.executable,
        child_env=environment,
        niceness=settings.retrain_niceness,
        openmp_threads=settings.retrain_openmp_threads,
        workdir=settings.retrain_workdir,
        # A promoted candidate is served at once, not at the next poll.
        on_finished=lambda _operation: watcher.nudge(),
    )
    quality = LiveQuality(
        {names[spec.slot]: spec.output_names for spec in SERVICES if spec.class_labels is not None},
        metrics_registry,
        window_labels=settings.quality_window_labels,
        window_seconds=settings.quality_window_seconds,
    )
    store.subscribe(lambda _slot, old, new: quality.retire_all(retired_models(old, new)))
    feedback = (
        FeedbackStore(
            prediction_log,
            quality,
            {spec.slot.value: spec.output_names for spec in SERVICES if spec.class_labels is not None},
            metrics_registry,
        )
        if prediction_log is not None
        else None
    )
    triggers = RetrainTriggers(
        TriggerSettings(
            quality_for_seconds=settings.retrain_on_quality_for_seconds,
            quality_tolerance=settings.retrain_quality_tolerance,
            quality_min_labels=settings.retrain_quality_min_labels,
            drift_for_seconds=settings.retrain_on_drift_for_seconds,
            schedule_seconds=settings.retrain_schedule_seconds,
            cooldown_seconds=settings.retrain_trigger_cooldown_seconds,
            check_seconds=settings.retrain_trigger_check_seconds,
        ),
        {spec.slot: TriggeredModel(spec, names[spec.slot]) for spec in SERVICES},
        operations=retrainer,
        store=store,
        registry=registry,
        quality=quality,
        drift=drift,
        metrics_registry=metrics_registry,
    )
    monitoring = Monitoring(drift=drift, quality=quality, feedback=feedback, triggers=triggers)
    admin = ModelAdmin(registry, watcher, store, retrainer, observers.prediction_log, monitoring=monitoring)

    streams = {"stream_group": settings.microbatch_max_rows, "read_ahead": 2 * settings.microbatch_max_rows}
    housing_pb2_grpc.add_HousingPredictorServicer_to_server(
        HousingPredictorServicer(housing, watcher, **streams), grpc_server
    )
    iris_pb2_grpc.add_IrisClassifierServicer_to_server(IrisClassifierServicer(iris, watcher, **streams), grpc_server)
    admin_pb2_grpc.add_ModelAdminServicer_to_server(ModelAdminServicer(admin), grpc_server)

    health_servicer = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=health_pool)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reporter = _HealthReporter(health_servicer, store, metrics)
    store.subscribe(reporter.deployment_changed)
    store.subscribe(lambda slot, old, new: metrics.deployment_changed(SPEC_BY_SLOT[slot].service_name, old, new))

    reflection.enable_server_reflection(
        (*(spec.service_name for spec in SERVICES), ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
        grpc_server,
    )
    # TLS when the settings name a certificate (re-read as it is rotated); plaintext otherwise.
    port = bind_port(grpc_server, _address(settings.host, settings.port), settings)
    return PredictionServer(
        settings=settings,
        grpc_server=grpc_server,
        port=port,
        health=health_servicer,
        store=store,
        watcher=watcher,
        retrainer=retrainer,
        metrics_registry=metrics_registry,
        observers=observers,
        monitoring=monitoring,
        triggers=triggers,
        executors=(executor, health_pool, *([runtime.part_pool] if runtime.part_pool is not None else [])),
    )
