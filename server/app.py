"""Assembles the gRPC server process: services, health, reflection, interceptors, metrics endpoint."""

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from py_grpc_prometheus.prometheus_server_interceptor import PromServerInterceptor

from protos.prediction.v1 import housing_pb2, housing_pb2_grpc, iris_pb2, iris_pb2_grpc
from server.core import HousingEndpoint, IrisEndpoint
from server.domain import LoadedModel
from server.features import HOUSING_FEATURE_TABLE, IRIS_FEATURE_TABLE
from server.interceptors import ServerCallInterceptor
from server.lifecycle import ModelLoader, ServedModel
from server.metrics import ModelMetrics
from server.model_store import ModelSlot, ModelStore
from server.registry import ModelRegistry
from server.runtime import PredictRuntime
from server.servicers import HousingPredictorServicer, IrisClassifierServicer
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

HOUSING_SERVICE = housing_pb2.DESCRIPTOR.services_by_name["HousingPredictor"].full_name
IRIS_SERVICE = iris_pb2.DESCRIPTOR.services_by_name["IrisClassifier"].full_name
SERVICE_BY_SLOT = {ModelSlot.HOUSING: HOUSING_SERVICE, ModelSlot.IRIS: IRIS_SERVICE}
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
    loader: ModelLoader
    metrics_registry: CollectorRegistry
    metrics_port: int | None = None
    # The RPC workers and the health servicer's pool: grpc never shuts down the executors it is given.
    thread_pools: tuple[futures.ThreadPoolExecutor, ...] = field(default=(), repr=False)
    _metrics_http: WSGIServer | None = field(default=None, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)
    _retrier: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.settings.metrics_port is not None:
            self._metrics_http, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics_registry
            )
            self.metrics_port = self._metrics_http.server_port
        self.grpc_server.start()
        logger.info("gRPC on port %d, metrics on port %s", self.port, self.metrics_port)

    def load_models(self) -> dict[ModelSlot, bool]:
        """Load every service's model; those that fail are retried in the background (``load_retry_seconds``)."""
        loaded = self.loader.load_all()
        retry = self.settings.load_retry_seconds
        if retry > 0 and not all(loaded.values()):
            self._retrier = threading.Thread(
                target=self.loader.load_missing_until,
                args=(self._stopped, retry),
                name="model-load-retry",
                daemon=True,
            )
            self._retrier.start()
        return loaded

    def stop(self, grace: float | None = None) -> None:
        """Go NOT_SERVING, let in-flight RPCs finish for ``grace`` seconds, then close everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.settings.grace_seconds if grace is None else grace).wait()
        for pool in self.thread_pools:
            pool.shutdown(wait=True)
        if self._retrier is not None:
            self._retrier.join(timeout=5)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        logger.info("server stopped")


class _HealthReporter:
    """Keeps each service's health in step with its slot; overall ("") is SERVING when all services are."""

    def __init__(self, servicer: health.HealthServicer, store: ModelStore) -> None:
        self._servicer = servicer
        self._store = store
        for service in SERVICE_BY_SLOT.values():
            servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        servicer.set(OVERALL, health_pb2.HealthCheckResponse.NOT_SERVING)

    def model_changed(self, slot: ModelSlot, _old: LoadedModel | None, new: LoadedModel | None) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self._servicer.set(SERVICE_BY_SLOT[slot], serving if new is not None else not_serving)
        everything = all(self._store.peek(each) is not None for each in SERVICE_BY_SLOT)
        self._servicer.set(OVERALL, serving if everything else not_serving)


def build_server(
    settings: ServerSettings, registry: ModelRegistry, metrics_registry: CollectorRegistry | None = None
) -> PredictionServer:
    """Wire every part of the server and bind its port. Nothing is loaded until ``load_models()``."""
    metrics_registry = metrics_registry or CollectorRegistry()
    runtime = PredictRuntime(settings.parallel_batch_rows, settings.max_concurrent_predictions)
    executor = futures.ThreadPoolExecutor(
        max_workers=settings.max_workers, thread_name_prefix="rpc", initializer=runtime.limit_current_thread
    )
    grpc_server = grpc.server(
        executor,
        interceptors=[
            # Outermost first: the Prometheus interceptor must see the status the error mapping set.
            PromServerInterceptor(enable_handling_time_histogram=True, registry=metrics_registry),
            ServerCallInterceptor(access_log=settings.access_log),
        ],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Two servers must never share a port by accident (tests bind port 0 side by side).
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )

    store = ModelStore()
    metrics = ModelMetrics(metrics_registry)
    housing = HousingEndpoint(
        ModelSlot.HOUSING,
        features=HOUSING_FEATURE_TABLE,
        store=store,
        metrics=metrics,
        runtime=runtime,
        max_batch_size=settings.max_batch_size,
        small_batch_rows=settings.small_batch_rows,
    )
    iris = IrisEndpoint(
        ModelSlot.IRIS,
        features=IRIS_FEATURE_TABLE,
        store=store,
        metrics=metrics,
        runtime=runtime,
        max_batch_size=settings.max_batch_size,
        small_batch_rows=settings.small_batch_rows,
    )
    housing_pb2_grpc.add_HousingPredictorServicer_to_server(HousingPredictorServicer(housing), grpc_server)
    iris_pb2_grpc.add_IrisClassifierServicer_to_server(IrisClassifierServicer(iris), grpc_server)

    health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
    health_servicer = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=health_pool)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reporter = _HealthReporter(health_servicer, store)
    store.subscribe(reporter.model_changed)
    store.subscribe(lambda slot, old, new: metrics.model_changed(SERVICE_BY_SLOT[slot], old, new))

    reflection.enable_server_reflection(
        (HOUSING_SERVICE, IRIS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )
    port = grpc_server.add_insecure_port(_address(settings.host, settings.port))

    loader = ModelLoader(
        registry,
        store,
        metrics,
        [
            ServedModel(ModelSlot.HOUSING, settings.housing_model_name, settings.model_alias, housing),
            ServedModel(ModelSlot.IRIS, settings.iris_model_name, settings.model_alias, iris),
        ],
    )
    return PredictionServer(
        settings=settings,
        grpc_server=grpc_server,
        port=port,
        health=health_servicer,
        store=store,
        loader=loader,
        metrics_registry=metrics_registry,
        thread_pools=(executor, health_pool),
    )
