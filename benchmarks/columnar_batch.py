"""``python -m benchmarks.columnar_batch``: a housing batch through PredictBatch, PredictColumns and in process.

The server runs as its own process on the production housing pipeline (fitted on the full data set). This
process sends one batch at a time (``--rows`` rows) through ``PredictBatch`` (one message per row) and through
``PredictColumns`` (one packed array per feature), in alternating rounds, and times the same rows predicted in
process by the same estimator with the server's default thread settings (one OpenMP thread per call).
Medians of the rounds' p50 and the rows per second they give.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import grpc
import numpy as np

from benchmarks.harness import production_housing_model, serve_until_sigterm, server_process, wait_serving
from data.schema import HOUSING_FEATURES
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc


def serve(max_batch: int) -> None:
    from model_registry.memory import InMemoryRegistry  # noqa: PLC0415

    registry = InMemoryRegistry()
    registry.register(
        "CaliforniaHousingBestModel", production_housing_model(), alias="champion", input_names=HOUSING_FEATURES
    )
    serve_until_sigterm(registry, max_batch_size=max_batch, prediction_log_queue_size=100_000)


def _p50(call: Callable[[], object], seconds: float) -> tuple[float, int]:
    timings: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(timings) < 5:
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), len(timings)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.columnar_batch", description=__doc__)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    from server.runtime import PredictRuntime  # noqa: PLC0415

    model = production_housing_model()
    from server.settings import ServerSettings  # noqa: PLC0415

    runtime = PredictRuntime(ServerSettings.model_fields["parallel_batch_rows"].default)
    runtime.limit_current_thread()
    from sklearn.datasets import fetch_california_housing  # noqa: PLC0415

    housing = fetch_california_housing(download_if_missing=False).data
    generator = np.random.default_rng(0)
    results: dict[tuple[int, str], list[float]] = {}
    command = [sys.executable, "-m", "benchmarks.columnar_batch", "--serve", str(max(args.rows))]
    with (
        server_process(command) as server,
        grpc.insecure_channel(
            f"127.0.0.1:{server.grpc_port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        ) as channel,
    ):
        wait_serving(channel, "prediction.v1.HousingPredictor")
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        for rows in args.rows:
            values = housing[generator.choice(len(housing), rows)].astype(np.float64)
            batch = housing_pb2.HousingBatchRequest(
                instances=[
                    housing_pb2.HousingFeatures(**dict(zip(HOUSING_FEATURES, row, strict=True)))
                    for row in values.tolist()
                ]
            )
            columns = housing_pb2.HousingColumns(
                **{name: values[:, i].tolist() for i, name in enumerate(HOUSING_FEATURES)}
            )
            answers = stub.PredictColumns(columns, timeout=60)
            expected = model.predict(values)
            assert list(answers.median_house_value) == expected.tolist(), "columns disagree with scikit-learn"
            ways: dict[str, Callable[[], object]] = {
                "PredictBatch": partial(stub.PredictBatch, batch, timeout=60),
                "PredictColumns": partial(stub.PredictColumns, columns, timeout=60),
                "in process": partial(runtime.run, model.predict, values),
            }
            for _ in range(args.rounds):
                for name, call in ways.items():
                    p50, _count = _p50(call, args.seconds)
                    results.setdefault((rows, name), []).append(p50)
    print(
        f"housing batches, one at a time, {args.rounds} rounds of {args.seconds:g} s per way, medians of the rounds\n"
    )
    print("| rows | way | p50 ms | rows/s | of in-process rows/s |")
    print("| --- | --- | --- | --- | --- |")
    for rows in args.rows:
        floor = statistics.median(results[(rows, "in process")])
        for name in ("PredictBatch", "PredictColumns", "in process"):
            p50 = statistics.median(results[(rows, name)])
            print(f"| {rows:,} | {name} | {p50 * 1000:.2f} | {rows / p50:,.0f} | {floor / p50:.0%} |")


if __name__ == "__main__":
    main()
