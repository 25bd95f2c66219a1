"""``python -m benchmarks.iris_server``: the real gRPC server with an in-memory iris model, for benchmarks.

The model is the production iris pipeline (StandardScaler + LogisticRegression) fitted on the iris data
at start-up, so a benchmark needs no MLflow registry. Prints ``gRPC on port N`` and serves until SIGTERM.
"""

import logging
import signal
import threading
from types import FrameType

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_registry.memory import InMemoryRegistry
from server.app import build_server
from server.model_store import ModelSlot
from server.settings import ServerSettings


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("server.app").setLevel(logging.INFO)
    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=None, grace_seconds=1.0)
    registry = InMemoryRegistry()
    features, species = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, species)
    registry.register(settings.iris_model_name, pipeline, alias=settings.model_alias)
    server = build_server(settings, registry)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    # Only the iris model: housing stays NOT_SERVING, which the benchmark does not touch.
    server.watcher.sync(ModelSlot.IRIS)
    stop.wait()
    server.stop(grace=1.0)


if __name__ == "__main__":
    main()
