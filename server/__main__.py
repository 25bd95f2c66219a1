"""``python -m server``: serve both models until SIGTERM or SIGINT."""

import ctypes
import gc
import logging
import os
import signal
import threading
from types import FrameType

from model_registry.mlflow import MlflowRegistry, import_mlflow_without_pyarrow
from server.app import build_server
from server.logs import configure_logging
from server.runtime import available_cores
from server.settings import ServerSettings
from server.tls import TlsConfigurationError

logger = logging.getLogger(__name__)


def main() -> int:
    limit_malloc_arenas()
    gc.disable()  # until start-up is done: see settle_start_up_objects()
    settings = ServerSettings()
    log_listener = configure_logging(settings.log_level)
    try:
        serve(settings)
    except TlsConfigurationError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    finally:
        # Whatever happened, the queued lines (the reason of a failed start-up above all) reach stderr.
        log_listener.stop()
    return 0


def serve(settings: ServerSettings) -> None:
    # Read by libraries themselves, before they are first imported (MLflow and scikit-learn load with the
    # models). Passive OpenMP waiting: threads left idle after a parallel batch sleep rather than spin on
    # cores that concurrent requests need.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # An unreachable tracking server must fail a poll in seconds, not after MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(settings.registry_timeout_seconds))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import_mlflow_without_pyarrow()  # before any thread starts: see its docstring

    registry = MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)
    # Retrain children start from this process's environment (PATH, SCIKIT_LEARN_DATA, TRAINING_* settings).
    server = build_server(settings, registry, child_env=dict(os.environ))
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    server.start()
    loaded = server.load_models()
    settle_start_up_objects()
    if not any(loaded.values()):
        logger.error("no model could be loaded; serving health and reflection only")
    stop_requested.wait()
    server.stop()


def settle_start_up_objects() -> None:
    """Take what start-up made out of the cyclic garbage collector's sight, then let it run again.

    Start-up leaves about 360,000 objects that live as long as the process: the modules of MLflow, pandas,
    scikit-learn and grpcio, the registry client, the loaded models. The collector's full (oldest generation)
    collections walk every tracked object with the GIL held: while serving, each took 230-310 ms, about every
    10 s under load, and every call waited for it. Frozen (``gc.freeze``), those objects are never walked
    again: a full collection takes 1-4 ms, and the exit after SIGTERM 0.1 s instead of about 1 s. While
    start-up imports and loads, the collector is off (``main``): its collections there cost 0.6 s, against
    0.4 s for the one collection here. Versions loaded later stay collectable, and a version swapped out is
    freed by reference counting alone.
    """
    gc.collect()  # once, so that the garbage start-up left (about 7,000 objects) is freed, not frozen for good
    gc.freeze()
    gc.enable()


# glibc's mallopt parameter for the most malloc arenas (malloc.h).
M_ARENA_MAX = -8


def limit_malloc_arenas() -> None:
    """At most one glibc malloc arena per core, unless ``MALLOC_ARENA_MAX`` was set for the process.

    By default glibc gives threads up to eight arenas per core, and each keeps the memory its threads
    freed. After large batches on many RPC threads that held about 25 MB more RSS for good (the same load:
    373-376 MB after it with one arena per core, 398-401 MB without), with no difference in throughput.
    It must run before the first thread starts: arenas are created as threads first allocate.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc has read it itself
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # not glibc (musl, macOS): nothing to limit
    if mallopt is not None:
        mallopt(M_ARENA_MAX, available_cores())


if __name__ == "__main__":
    raise SystemExit(main())
