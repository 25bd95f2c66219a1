"""``python -m benchmarks.shadow_latency``: the champion's latency with and without a slow shadowing challenger.

The server runs as its own process (``--serve``: the production iris pipeline as champion, the same pipeline
made ``--challenger-ms`` slower per call as challenger, both in memory). This process sends single ``Classify``
calls from ``--concurrency`` threads, in rounds that alternate the split between "no shadow" and "shadow on"
(set through ``ModelAdmin/SetTrafficSplit``), and reports the medians of the rounds' p50 and p99, the rounds'
throughput, and how many shadow copies the server dropped rather than waited for.
"""

import argparse
import re
import statistics
import sys
import time
import urllib.request

import grpc
import numpy as np

from benchmarks.harness import serve_until_sigterm, server_process, timed_calls, wait_serving
from protos.prediction.v1 import admin_pb2, admin_pb2_grpc, iris_pb2, iris_pb2_grpc, model_pb2

FLOWER = iris_pb2.IrisFeatures(sepal_length_cm=5.1, sepal_width_cm=3.5, petal_length_cm=1.4, petal_width_cm=0.2)


class SlowPipeline:
    """The champion's answers, ``seconds`` later: a challenger that is slow and also does a model's real work."""

    def __init__(self, model: object, seconds: float) -> None:
        self._model = model
        self.classes_ = model.classes_  # type: ignore[attr-defined]
        self.seconds = seconds

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return np.asarray(self._model.predict_proba(values))  # type: ignore[attr-defined]


class SleepingDouble:
    """A challenger that only sleeps, then answers setosa: slow, but with no work of its own to share the CPU."""

    classes_ = np.array([0, 1, 2])

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return np.tile([0.98, 0.01, 0.01], (len(values), 1))


def serve(challenger_ms: float, kind: str) -> None:
    from sklearn.datasets import load_iris  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    from model_registry.memory import InMemoryRegistry  # noqa: PLC0415

    features, species = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, species)
    registry = InMemoryRegistry()
    registry.register("IrisBestModel", pipeline, alias="champion")
    seconds = challenger_ms / 1000
    challenger = SlowPipeline(pipeline, seconds) if kind == "pipeline" else SleepingDouble(seconds)
    registry.register("IrisBestModel", challenger, alias="challenger")
    serve_until_sigterm(registry, admin_dev_mode=True, prediction_log=False)


def _dropped(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r'^model_shadow_dropped_total\{model="IrisBestModel"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shadow_latency", description=__doc__)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--challenger-ms", type=float, default=20.0, help="extra time of each challenger call")
    parser.add_argument(
        "--challenger",
        choices=("pipeline", "sleep"),
        default="pipeline",
        help="pipeline: the champion's pipeline made slower (real work too); sleep: a double that only sleeps",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--rate",
        type=float,
        default=400.0,
        help="requests per second in all (0: back to back, which saturates this machine and then measures CPU "
        "contention rather than waiting)",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.challenger_ms, args.challenger)
        return
    command = [sys.executable, "-m", "benchmarks.shadow_latency", "--serve", "--challenger-ms", str(args.challenger_ms)]
    command += ["--challenger", args.challenger]
    with server_process(command) as server, grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = iris_pb2_grpc.IrisClassifierStub(channel)
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        wait_serving(channel, "prediction.v1.IrisClassifier")
        for _ in range(200):  # warm-up
            stub.Classify(FLOWER)
        figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
        dropped = {False: 0.0, True: 0.0}
        for number in range(args.rounds * 2):
            shadow = number % 2 == 1
            admin.SetTrafficSplit(admin_pb2.SetTrafficSplitRequest(model="iris", shadow=shadow))
            while stub.GetModelInfo(model_pb2.GetModelInfoRequest()).shadow != shadow:
                time.sleep(0.01)
            before = _dropped(server.metrics_port)
            latencies, wall = timed_calls(
                lambda: stub.Classify(FLOWER, timeout=10), args.seconds, args.concurrency, args.rate or None
            )
            dropped[shadow] += _dropped(server.metrics_port) - before
            q50, q99 = np.quantile(latencies, [0.5, 0.99]) * 1000
            figures[shadow].append((float(q50), float(q99), len(latencies) / wall))
    print(
        f"iris Classify, {args.concurrency} threads, {f'{args.rate:g} req/s' if args.rate else 'back to back'}, "
        f"challenger: {args.challenger} +{args.challenger_ms:g} ms, "
        f"{args.rounds} rounds of {args.seconds:g} s each, medians of the rounds\n"
    )
    # The rounds' range beside each median: when the ranges of "off" and "on" overlap, the difference is within
    # what this machine varies by from one round to the next.
    print("| shadow | p50 ms (rounds' range) | p99 ms (rounds' range) | req/s | shadow copies dropped |")
    print("| --- | --- | --- | --- | --- |")
    for shadow in (False, True):
        q50s, q99s, rates = zip(*figures[shadow], strict=True)
        print(
            f"| {'on' if shadow else 'off'} | {statistics.median(q50s):.3f} ({min(q50s):.3f}-{max(q50s):.3f}) | "
            f"{statistics.median(q99s):.3f} ({min(q99s):.3f}-{max(q99s):.3f}) | {statistics.median(rates):,.0f} | "
            f"{dropped[shadow]:,.0f} |"
        )


if __name__ == "__main__":
    main()
