"""Settings of the prediction server process: built once in ``__main__`` and passed down."""

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_tracking_uri() -> str:
    """The embedded default registry: ``mlflow.db`` in the working directory (the project root)."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


class ServerSettings(BaseSettings):
    """Every knob of the gRPC server. Environment variables use the ``PREDICTOR_`` prefix."""

    # "none" in the environment unsets a setting that may be unset (e.g. PREDICTOR_MAX_QUEUE_MS=none: never shed).
    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", extra="ignore", frozen=True, env_parse_none_str="none")

    host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_host: str = Field("0.0.0.0", description="Address the Prometheus /metrics endpoint binds.")
    metrics_port: int | None = Field(
        8001, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 picks a free port."
    )
    mlflow_tracking_uri: str = Field(
        default_factory=default_tracking_uri,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "PREDICTOR_MLFLOW_TRACKING_URI"),
        description="MLflow tracking server or database; the registry lives there too unless overridden.",
    )
    mlflow_registry_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_REGISTRY_URI", "PREDICTOR_MLFLOW_REGISTRY_URI"),
        description="MLflow model registry, when it is not the tracking URI.",
    )
    model_alias: str = Field("champion", min_length=1, description="Registry alias each service loads.")
    housing_model_name: str = Field(
        "CaliforniaHousingBestModel", min_length=1, description="Registered model behind HousingPredictor."
    )
    iris_model_name: str = Field("IrisBestModel", min_length=1, description="Registered model behind IrisClassifier.")
    max_batch_size: int = Field(1000, ge=1, description="Most instances one batch call may carry.")
    max_workers: int = Field(8, ge=1, description="Threads handling RPCs concurrently.")
    max_concurrent_rpcs: int | None = Field(
        1000,
        ge=1,
        description="RPCs held at once, queued or running, health checks included; beyond it gRPC refuses new "
        "calls at once with RESOURCE_EXHAUSTED, before they take any memory. The last-resort bound on memory: "
        "max_queue_ms sheds load long before it is reached. Unset: unbounded.",
    )
    max_streams_per_connection: int | None = Field(
        256,
        ge=1,
        description="Calls (HTTP/2 streams) one client connection may have open at once. Beyond it the client holds "
        "a call until a stream frees up, or gRPC's core refuses it (RST_STREAM REFUSED_STREAM: UNAVAILABLE to the "
        "caller, never computed, safe to retry), without the server's Python side seeing it. Under overload this "
        "keeps the gRPC server's single polling thread from drowning: at 4x the sustainable rate on one connection, "
        "answered calls were 73% of that rate with it and 29% without (benchmarks.overload). 256 calls queue about "
        "as long as max_queue_ms allows at this server's single-row rate; a client that multiplexes more calls than "
        "this on one connection sees the excess refused even below overload. Unset: unlimited.",
    )
    max_queue_ms: float | None = Field(
        500.0,
        gt=0,
        description="A call that waited longer than this for a worker thread is refused with RESOURCE_EXHAUSTED "
        "and a grpc-retry-pushback-ms trailer, without being computed: under overload the queue sheds instead of "
        "growing, so answered calls keep a bounded latency. Health and reflection are never shed. Unset: never.",
    )
    max_concurrent_streams: int | None = Field(
        None,
        ge=1,
        description="Prediction streams (PredictStream, ClassifyStream) open at once; beyond it a new stream is "
        "refused with RESOURCE_EXHAUSTED. Each open stream holds one RPC thread, so unset means half of max_workers "
        "(at least 1): streams can never take every thread from unary calls.",
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request or response message, in bytes."
    )
    max_connection_age_seconds: float | None = Field(
        300.0,
        gt=0,
        description="Clients are asked to reconnect (GOAWAY) after a connection has lived this long, so that a "
        "client on dns:/// with round_robin re-resolves and spreads calls over replicas added since; calls and "
        "streams open on the old connection are not cut. Unset: connections live for ever.",
    )
    split_batch_rows: int | None = Field(
        512,
        ge=2,
        description="A batch of at least this many rows, on a model served by the native forest kernel "
        "(server.forest_kernel), is cut into parts predicted at once on the cores idle when it starts "
        "(unset: every batch on its own thread).",
    )
    grace_seconds: float = Field(10.0, ge=0, description="On SIGTERM/SIGINT, time in-flight RPCs get to finish.")
    parallel_batch_rows: int | None = Field(
        None,
        ge=1,
        description="A batch of at least this many rows predicts with every core when no other scikit-learn call "
        "is running (unset: every batch on one thread). Off by default: in the server, a 1,000-row batch of the "
        "600-tree housing model took 112 ms with it against 62 ms without (benchmarks.columnar_batch, 2 cores), "
        "although in a bare process it is 29 against 44 ms: gradient boosting opens one OpenMP region per tree, "
        "and its team then shares the cores with the server's own threads (with OMP_WAIT_POLICY=PASSIVE, which "
        "the server sets, each region also pays a wake-up: 104 ms in a bare process).",
    )
    model_poll_seconds: float = Field(
        10.0,
        ge=0,
        description="How often the server re-reads every alias it serves and hot-reloads a version that moved "
        "(a service whose model failed to load retries then too); 0 only at start-up and after its own admin calls. "
        "While the registry is unreachable or a service has nothing to serve it retries sooner: after 0.5 s, "
        "doubling up to this interval (30 s when it is 0).",
    )
    registry_timeout_seconds: float = Field(
        5.0, gt=0, description="Timeout of one request to an MLflow tracking server (http:// registries)."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token the admin service (prediction.v1.ModelAdmin, the bridge's admin routes) requires. "
        "Unset: every admin call is refused with PERMISSION_DENIED, unless admin_dev_mode is on.",
    )
    admin_dev_mode: bool = Field(
        False,
        description="Local development only: with no admin token set, accept every admin call (logged loudly at "
        "start-up). `make run` uses it.",
    )
    admin_allow_plaintext: bool = Field(
        False,
        description="Accept admin calls over a plaintext (non-TLS) connection, where the bearer token travels in "
        "cleartext. Off: they are refused with PERMISSION_DENIED unless the port serves TLS. admin_dev_mode implies "
        "it (`make run` is plaintext on localhost). Set it where the network itself is trusted (bridge and server "
        "in one private network without TLS).",
    )
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain the gRPC port serves (TLS); needs tls_key_file. Unset: plaintext. "
        "Re-read when it changes on disk: new connections get the new certificate without a restart.",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key (unencrypted) of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA certificate(s) client certificates must chain to (mTLS); re-read like the cert."
    )
    tls_require_client_cert: bool = Field(
        False, description="Require every client to present a certificate from tls_client_ca_file (mTLS)."
    )
    state_dir: Path = Field(
        Path("state"),
        description="Where the server keeps what must survive a restart: retrain operations and their output.",
    )
    retrain_niceness: int = Field(
        10, ge=0, le=19, description="CPU niceness of retrain child processes, so that serving keeps its latency."
    )
    retrain_openmp_threads: int = Field(
        1, ge=1, description="OpenMP threads a retrain child may use (the other cores stay with serving)."
    )
    max_concurrent_predictions: int = Field(
        0,
        ge=0,
        description="scikit-learn calls that run at once (others wait their turn); 0 means one per CPU core.",
    )
    small_batch_rows: int = Field(
        32,
        ge=0,
        description="Requests of at most this many rows use a model's exact fast path when it has one "
        "(server.fast_paths: identical answers, 10-40x faster for one row); 0 turns it off.",
    )
    microbatch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Coalesce concurrent small requests for one model into one predict call (server.batching). "
        "auto: for the versions whose preparation measured that one call on several rows costs clearly less than "
        "a call per row (e.g. a random forest, or a model without a fast path); on: every version; off: none.",
    )
    microbatch_max_rows: int = Field(
        64, ge=1, description="Most rows one coalesced call carries; requests of more rows are never coalesced."
    )
    microbatch_max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a coalesced call waits for more requests before it starts; 0: it takes what queued "
        "while the model was busy, so an idle server adds no wait.",
    )
    log_level: str = Field("INFO", description="Logging level of the server process.")
    access_log: bool = Field(
        True, description="Log one line per RPC (method, status, duration, x-request-id), off the request thread."
    )

    challenger_alias: str = Field(
        "challenger", min_length=1, description="Registry alias of the version that takes a share of traffic (A/B)."
    )
    shadow_queue_size: int = Field(
        1000, ge=1, description="Requests waiting for the challenger's shadow prediction; beyond it copies are dropped."
    )
    prediction_log: bool = Field(True, description="Keep every prediction in the prediction log (SQLite).")
    prediction_log_path: Path = Field(Path("logs/predictions.db"), description="The prediction log's database file.")
    prediction_log_queue_size: int = Field(
        1000,
        ge=1,
        description="Requests waiting for the log's writer; beyond it rows are dropped and counted. Bounds the "
        "backlog's memory: a full 1,000-row batch holds about 165 KB until it is written.",
    )
    prediction_log_queue_rows: int | None = Field(
        100_000,
        ge=1,
        description="Rows waiting for the log's writer (about 16 MB); beyond it rows are dropped and counted. A "
        "request larger than this is still taken when nothing else waits. Unset: bounded by the request count alone.",
    )
    prediction_log_batch_rows: int = Field(1000, ge=1, description="Rows the writer inserts per transaction at most.")
    prediction_log_flush_seconds: float = Field(0.5, gt=0, description="Longest a logged row waits to be written.")
    prediction_log_max_age_days: float | None = Field(
        30.0, gt=0, description="Rows older than this are deleted by the writer; unset keeps them."
    )
    prediction_log_max_rows: int | None = Field(
        5_000_000, ge=1, description="The writer keeps at most this many newest rows; unset keeps them all."
    )
    drift: bool = Field(True, description="Measure data drift of every served version against its training profile.")
    drift_window_rows: int = Field(1000, ge=10, description="Newest live rows per version that drift is measured on.")
    drift_min_rows: int = Field(
        100, ge=1, description="Fewer rows than this in a window: drift is reported as insufficient_data."
    )
    drift_threshold: float = Field(
        0.2, gt=0, description="A column whose population stability index exceeds this is flagged as drifted."
    )
    drift_interval_seconds: float = Field(10.0, gt=0, description="How often the drift gauges are recomputed.")
    quality_window_labels: int = Field(
        1000, ge=1, description="Live quality is computed on at most this many newest labelled predictions."
    )
    quality_window_seconds: float | None = Field(
        None, gt=0, description="When set, live quality also forgets labels older than this many seconds."
    )
    retrain_on_quality_for_seconds: float | None = Field(
        None,
        gt=0,
        description="Automated retrain when the champion's live quality (housing rmse, iris accuracy) has been worse "
        "than its training metric by more than retrain_quality_tolerance for this many seconds; unset: off.",
    )
    retrain_quality_tolerance: float = Field(
        0.1, ge=0, description="Relative: 0.1 lets live rmse be 10% above (accuracy 10% below) the training metric."
    )
    retrain_quality_min_labels: int = Field(
        100, ge=1, description="Labels the quality window needs before the quality trigger may judge."
    )
    retrain_on_drift_for_seconds: float | None = Field(
        None,
        gt=0,
        description="Automated retrain when the champion's drift flag has held this many seconds; unset: off.",
    )
    retrain_schedule_seconds: float | None = Field(
        None, gt=0, description="Automated retrain of every model at this interval; unset: off."
    )
    retrain_trigger_cooldown_seconds: float = Field(
        3600.0,
        ge=0,
        description="After a triggered retrain of a model, its triggers wait this long before firing again.",
    )
    retrain_trigger_check_seconds: float = Field(30.0, gt=0, description="How often the retrain triggers are checked.")
    retrain_workdir: Path = Field(
        Path(),
        description="Working directory of retrain children: where `python -m training` finds data/ and keeps "
        "mlartifacts/ (the directory the server was started in, by default).",
    )

    @property
    def stream_cap(self) -> int:
        return self.max_concurrent_streams or max(1, self.max_workers // 2)

    @field_validator("state_dir", "retrain_workdir", "prediction_log_path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # Retrain children run in their own working directory; every path they are given must be absolute.
        return path.absolute()

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _complete_tls(self) -> Self:
        # Only the combinations; server.tls reads and checks the files themselves when the port is bound.
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("PREDICTOR_TLS_CERT_FILE and PREDICTOR_TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("PREDICTOR_TLS_CLIENT_CA_FILE needs PREDICTOR_TLS_CERT_FILE and PREDICTOR_TLS_KEY_FILE")
        if self.tls_require_client_cert and self.tls_client_ca_file is None:
            raise ValueError("PREDICTOR_TLS_REQUIRE_CLIENT_CERT needs PREDICTOR_TLS_CLIENT_CA_FILE")
        if self.tls_client_ca_file is not None and not self.tls_require_client_cert:
            # grpc does not even ask for a client certificate then: the CA would be silently ignored.
            raise ValueError("PREDICTOR_TLS_CLIENT_CA_FILE is used only with PREDICTOR_TLS_REQUIRE_CLIENT_CERT=true")
        return self
