"""``python -m benchmarks.per_call_cost``: what each part of a unary call costs the server, by taking parts away.

The server runs as its own process on the production housing pipeline, once per configuration: everything on
(the defaults), then with the access log, the prediction log or drift off, then all three off. This process
sends single-row ``Predict`` calls back to back from ``--concurrency`` threads for ``--seconds`` per round;
configurations rotate from round to round. The server's CPU per call (utime + stime of its process over the
measured calls) does not depend on the client's share of the cores; medians over rounds. The model's own
fast-path time per row, in process, is printed for reference: what a call costs beyond it is the service.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.harness import production_housing_model, serve_until_sigterm, server_process, timed_calls, wait_serving
from data.schema import HOUSING_FEATURES
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "defaults (all on)": {},
    "access log off": {"access_log": False},
    "prediction log off": {"prediction_log": False},
    "drift off": {"drift": False},
    "all three off": {"access_log": False, "prediction_log": False, "drift": False},
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def serve(configuration: str, model_file: str) -> None:
    import joblib  # noqa: PLC0415

    from model_registry.memory import InMemoryRegistry  # noqa: PLC0415

    registry = InMemoryRegistry()
    registry.register(
        "CaliforniaHousingBestModel", joblib.load(model_file), alias="champion", input_names=HOUSING_FEATURES
    )
    # serve_until_sigterm turns the access log off by default; here it is what is measured.
    settings = {"access_log": True} | CONFIGURATIONS[configuration]
    serve_until_sigterm(registry, **settings)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def fast_path_us(model: Any) -> float:
    from sklearn.datasets import fetch_california_housing  # noqa: PLC0415

    from server.fast_paths import compile_fast_path  # noqa: PLC0415

    fast_path = compile_fast_path(model, "predict")
    assert fast_path is not None
    row = fetch_california_housing(download_if_missing=False).data[:1].astype(np.float64)
    timings = []
    for _ in range(500):
        start = time.perf_counter()
        fast_path(row)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.per_call_cost", description=__doc__)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    import joblib  # noqa: PLC0415

    # Fitted once here: each configuration's server loads the same estimator instead of fitting its own.
    model = production_housing_model()
    scratch = Path(tempfile.mkdtemp(prefix="per-call-cost-"))
    model_file = scratch / "housing.joblib"
    joblib.dump(model, model_file)
    row = housing_pb2.HousingFeatures(
        **dict(zip(HOUSING_FEATURES, (3.87, 28.6, 5.43, 1.1, 1425.0, 3.07, 35.63, -119.57), strict=True))
    )
    names = list(CONFIGURATIONS)
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            command = [sys.executable, "-m", "benchmarks.per_call_cost", "--serve", name, str(model_file)]
            with server_process(command) as server, grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                wait_serving(channel, "prediction.v1.HousingPredictor")
                predict = partial(housing_pb2_grpc.HousingPredictorStub(channel).Predict, row, timeout=10)
                timed_calls(predict, 1.0, args.concurrency)  # warm-up
                before = cpu_seconds(server.process.pid)
                latencies, wall = timed_calls(predict, args.seconds, args.concurrency)
                used = cpu_seconds(server.process.pid) - before
                ordered = sorted(latencies)
                figures[name].append((used / len(ordered) * 1e6, len(ordered) / wall, ordered[len(ordered) // 2]))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    model_us = fast_path_us(model)
    model_file.unlink()
    scratch.rmdir()
    print(
        f"single-row Predict, production housing model, {args.concurrency} threads back to back, "
        f"{args.rounds} rounds of {args.seconds:g} s, medians; the model's fast path alone: {model_us:.0f} us a row\n"
    )
    print("| configuration | server CPU us/call | beyond the model | calls/s | p50 ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        cpu = statistics.median(each[0] for each in figures[name])
        rate = statistics.median(each[1] for each in figures[name])
        p50 = statistics.median(each[2] for each in figures[name])
        print(f"| {name} | {cpu:.0f} | {cpu - model_us:.0f} | {rate:,.0f} | {p50 * 1000:.2f} |")


if __name__ == "__main__":
    main()
