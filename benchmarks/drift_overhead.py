"""``python -m benchmarks.drift_overhead``: what drift tracking costs a single-row prediction.

Two server processes serve the same housing model (the production pipeline of ``training.housing``, fitted in
each on the full data set with the same seed, ``--trees`` trees), one with drift measurement on (the default
settings) and one with it off; both keep the
prediction log, which feedback and live quality need. Live quality adds nothing to the request path (labels
arrive through their own calls), so drift's window is the whole difference. Rounds of single-row ``Predict``
calls alternate between the two servers; the table shows the medians of the rounds' p50 and p99.

It also times ``DriftMonitor.offer`` alone, in this process: the request path's share of the work.
"""

import argparse
import statistics
import sys
import timeit
from functools import partial

import grpc
import numpy as np
from sklearn.datasets import fetch_california_housing

from benchmarks.harness import production_housing_model, serve_until_sigterm, server_process, timed_calls, wait_serving
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc

HOUSE = housing_pb2.HousingFeatures(
    median_income=8.3252,
    house_age=41.0,
    average_rooms=6.98,
    average_bedrooms=1.02,
    population=322.0,
    average_occupancy=2.55,
    latitude=37.88,
    longitude=-122.23,
)


def serve(drift: bool, trees: int) -> None:
    from data.profile import reference_profile  # noqa: PLC0415
    from data.schema import HOUSING_FEATURES, HOUSING_TARGET  # noqa: PLC0415
    from model_registry.memory import InMemoryRegistry  # noqa: PLC0415

    model = production_housing_model(trees)
    data = fetch_california_housing(download_if_missing=False).data
    profile = reference_profile(data, model.predict(data), HOUSING_FEATURES, (HOUSING_TARGET,))
    registry = InMemoryRegistry()
    registry.register(
        "CaliforniaHousingBestModel",
        model,
        alias="champion",
        input_names=HOUSING_FEATURES,
        reference_profile=profile.to_json(),
    )
    serve_until_sigterm(registry, drift=drift)


def offer_cost() -> float:
    """Microseconds per ``DriftMonitor.offer`` of one row (the queue drained between batches of offers)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from server.domain import LoadedModel, ModelDescription, ModelVersionRef  # noqa: PLC0415
    from server.model_store import ModelStore  # noqa: PLC0415
    from server.observe.drift import DriftMonitor  # noqa: PLC0415
    from server.services import SPEC_BY_SLOT  # noqa: PLC0415

    ref = ModelVersionRef("m", "1", "champion", "")
    model = LoadedModel(ModelDescription(ref, "models:/m/1", "x", loaded_at=None), estimator=None)  # type: ignore[arg-type]
    row, output = np.ones((1, 8)), np.ones(1)
    rounds = []
    for _ in range(7):
        # A fresh monitor per round: 5,000 offers stay below its queue bound, as when its worker keeps up.
        monitor = DriftMonitor(ModelStore(), SPEC_BY_SLOT, CollectorRegistry())
        rounds.append(timeit.timeit(lambda: monitor.offer(model, row, output), number=5000) / 5000)  # noqa: B023
    return statistics.median(rounds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift_overhead", description=__doc__)
    parser.add_argument("--serve", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--trees", type=int, default=600, help="trees of the served model")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each round")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve == "on", args.trees)
        return
    figures: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
    command = [sys.executable, "-m", "benchmarks.drift_overhead", "--trees", str(args.trees), "--serve"]
    with (
        server_process([*command, "on"]) as with_drift,
        server_process([*command, "off"]) as without,
        grpc.insecure_channel(f"127.0.0.1:{with_drift.grpc_port}") as on_channel,
        grpc.insecure_channel(f"127.0.0.1:{without.grpc_port}") as off_channel,
    ):
        stubs = {}
        for name, channel in (("on", on_channel), ("off", off_channel)):
            wait_serving(channel, "prediction.v1.HousingPredictor")
            stubs[name] = housing_pb2_grpc.HousingPredictorStub(channel)
            for _ in range(300):  # warm-up
                stubs[name].Predict(HOUSE)
        for number in range(args.rounds * 2):
            name = ("off", "on")[number % 2]
            stub = stubs[name]
            latencies, wall = timed_calls(partial(stub.Predict, HOUSE, timeout=10), args.seconds, args.concurrency)
            q50, q99 = np.quantile(latencies, [0.5, 0.99]) * 1000
            figures[name].append((float(q50), float(q99), len(latencies) / wall))
    print(
        f"housing Predict (one row, fast path), {args.trees} trees, {args.concurrency} in flight, "
        f"{args.rounds} rounds of {args.seconds:g} s per server, medians of the rounds\n"
    )
    print("| drift | p50 ms | p99 ms | req/s |")
    print("| --- | --- | --- | --- |")
    for name in ("off", "on"):
        p50, p99, rate = (statistics.median(column) for column in zip(*figures[name], strict=True))
        print(f"| {name} | {p50:.3f} | {p99:.3f} | {rate:,.0f} |")
    print(f"\nDriftMonitor.offer alone: {offer_cost():.2f} us per call (median of 7 x 5,000)")


if __name__ == "__main__":
    main()
