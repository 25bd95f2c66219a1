"""``python -m benchmarks.prediction_log_overhead``: what ids and the prediction log cost, and how fast it writes.

Four measurements, each the median of several rounds (the machine is shared: a round's median per call is
reported, then the median and the spread over rounds):

- ids: ``new_prediction_id()``, and ``new_prediction_ids(n)`` for 1, 16, 100 and 1,000;
- the request thread's share for one request: building the ``PredictionEvent`` and ``offer``-ing it, for 1 and
  1,000 rows (writer stopped, so only the request path is timed; and with the writer draining, accepted offers);
- the writer's sustained rows per second: the queue filled first, then drained by ``close`` to disk;
- interference: a request-like loop paced at a rate this server can answer, timed without and with the log,
  because the writer's JSON encoding holds the GIL that request threads need.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from server.ids import new_prediction_id, new_prediction_ids
from server.observe.prediction_log import PredictionEvent, PredictionLog

FEATURES = (
    "median_income",
    "house_age",
    "average_rooms",
    "average_bedrooms",
    "population",
    "average_occupancy",
    "latitude",
    "longitude",
)


def per_call_us(call: Callable[[], object], calls: int, rounds: int) -> tuple[float, float, float]:
    """Median over rounds of each round's median per call, with the lowest and highest round, in µs."""
    medians = []
    for _ in range(rounds):
        samples = []
        for _ in range(calls):
            started = time.perf_counter_ns()
            call()
            samples.append(time.perf_counter_ns() - started)
        medians.append(statistics.median(samples) / 1000)
    return statistics.median(medians), min(medians), max(medians)


def show(label: str, figures: tuple[float, float, float]) -> None:
    median, low, high = figures
    print(f"  {label:<52} {median:9.2f} µs   (rounds {low:.2f} .. {high:.2f})")


def housing_inputs(rows: int) -> np.ndarray:
    # Client-sent features have few digits (8.3252, 41.0, -122.23): their JSON is short; outputs are full floats.
    rng = np.random.default_rng(0)
    return rng.uniform(-122.0, 40.0, size=(rows, len(FEATURES))).round(4)


def make_event(ids: list[str], inputs: np.ndarray, outputs: np.ndarray) -> PredictionEvent:
    return PredictionEvent(
        "housing",
        "CaliforniaHousingBestModel",
        "3",
        "champion",
        ids,
        inputs,
        FEATURES,
        outputs,
        ("median_house_value",),
        0.0004,
        "request-id",
        None,
        time.time(),
    )


def open_log(folder: Path, name: str, queue_size: int, batch_rows: int) -> PredictionLog:
    return PredictionLog(
        folder / name,
        queue_size=queue_size,
        batch_rows=batch_rows,
        flush_seconds=0.05,
        max_age_seconds=None,
        max_rows=None,
        metrics_registry=CollectorRegistry(),
    )


def measure_ids(calls: int, rounds: int) -> None:
    print("ids")
    show("new_prediction_id()", per_call_us(new_prediction_id, calls, rounds))
    for count in (1, 16, 100, 1000):
        show(f"new_prediction_ids({count})", per_call_us(partial(new_prediction_ids, count), calls, rounds))


def measure_offer(folder: Path, calls: int, rounds: int) -> None:
    print("request thread: build the event and offer it")
    for rows in (1, 1000):
        inputs = housing_inputs(rows)
        outputs = inputs[:, 0] / 3.0
        ids = new_prediction_ids(rows)
        # Writer never started: every offer lands in the queue, none is written; the same ids are reused.
        log = open_log(folder, f"offer-{rows}.db", queue_size=calls * rounds + 1, batch_rows=500)
        figures = per_call_us(partial(offer_event, log, ids, inputs, outputs), calls, rounds)
        show(f"{rows} row(s), queue has room: event + offer", figures)
        log.close(timeout=0)
        full = open_log(folder, f"full-{rows}.db", queue_size=1, batch_rows=500)
        full.offer(make_event(ids, inputs, outputs))
        figures = per_call_us(partial(offer_event, full, ids, inputs, outputs), calls, rounds)
        show(f"{rows} row(s), queue full: event + refused offer", figures)
        full.close(timeout=0)


def offer_event(log: PredictionLog, ids: list[str], inputs: np.ndarray, outputs: np.ndarray) -> bool:
    return log.offer(make_event(ids, inputs, outputs))


def offer_new_event(log: PredictionLog, rows: int, inputs: np.ndarray, outputs: np.ndarray) -> bool:
    """What a request adds: its ids, its event, the offer."""
    return log.offer(make_event(new_prediction_ids(rows), inputs, outputs))


def measure_request_share(folder: Path, calls: int, rounds: int) -> None:
    print("request thread: new ids + event + offer (what a request adds in total)")
    for rows in (1, 1000):
        inputs = housing_inputs(rows)
        outputs = inputs[:, 0] / 3.0
        # Fresh ids stay referenced from the queue: fewer calls for big batches keep the memory small.
        per_round = calls if rows == 1 else max(1, calls // 10)
        medians = []
        for round_ in range(rounds):
            log = open_log(folder, f"share-{rows}-{round_}.db", queue_size=per_round, batch_rows=500)
            medians.append(per_call_us(partial(offer_new_event, log, rows, inputs, outputs), per_round, 1)[0])
            log.close(timeout=0)
        show(f"{rows} row(s), queue has room", (statistics.median(medians), min(medians), max(medians)))


def measure_writer(folder: Path, total_rows: int) -> None:
    print("writer: sustained rows per second (queue filled first, then drained to disk by close)")
    for rows_per_event, batch_rows in ((1, 500), (100, 500), (1000, 1000)):
        events = total_rows // rows_per_event
        inputs = housing_inputs(rows_per_event)
        outputs = inputs[:, 0] / 3.0 + 1e-9  # a model's output: full-precision floats
        log = open_log(folder, f"writer-{rows_per_event}.db", queue_size=events, batch_rows=batch_rows)
        for _ in range(events):
            log.offer(make_event(new_prediction_ids(rows_per_event), inputs, outputs))
        started = time.perf_counter()
        log.start()
        log.close(timeout=600)
        seconds = time.perf_counter() - started
        print(
            f"  events of {rows_per_event:>4} rows, transactions of {batch_rows}: "
            f"{events * rows_per_event / seconds:>9,.0f} rows/s ({events * rows_per_event:,} rows in {seconds:.2f} s, "
            f"{log.path.stat().st_size / (events * rows_per_event):.0f} bytes a row on disk)"
        )


def measure_interference(folder: Path, seconds: float, rows: int, rate: float) -> None:
    """A request-like loop at ``rate`` requests a second: a small numpy task, then ids + event + offer.

    Each iteration is timed without the pause that paces it: the pause stands for the time a server thread
    spends outside Python (network, gRPC's C core), when the writer can run without taking the GIL from anyone.
    """
    weights = np.random.default_rng(1).normal(size=(64, 64))
    inputs = housing_inputs(rows)
    outputs = inputs[:, 0] / 3.0 + 1e-9
    calls = int(seconds * rate)

    def loop(log: PredictionLog | None) -> list[float]:
        samples = []
        next_start = time.perf_counter()
        for _ in range(calls):
            next_start += 1.0 / rate
            started = time.perf_counter_ns()
            result = np.ones(64)
            for _ in range(20):
                result = np.tanh(weights @ result)
            if log is not None:
                log.offer(make_event(new_prediction_ids(rows), inputs, outputs))
            samples.append((time.perf_counter_ns() - started) / 1000)
            time.sleep(max(0.0, next_start - time.perf_counter()))
        return sorted(samples)

    def summary(samples: list[float]) -> str:
        def at(share: float) -> float:
            return samples[min(len(samples) - 1, int(len(samples) * share))]

        return f"p50 {at(0.5):7.1f} µs, p99 {at(0.99):7.1f} µs, p99.9 {at(0.999):7.1f} µs, max {samples[-1]:8.1f} µs"

    alone = loop(None)
    registry = CollectorRegistry()
    log = PredictionLog(
        folder / f"interference-{rows}.db",
        queue_size=10_000,
        batch_rows=1000,
        flush_seconds=0.5,
        max_age_seconds=None,
        max_rows=None,
        metrics_registry=registry,
    )
    log.start()
    logged = loop(log)
    log.close(timeout=600)
    written = registry.get_sample_value("prediction_log_rows_written_total")
    case = f"{rows:>4} row(s) x {rate:>5,.0f} req/s"
    print(f"  {case}, without the log: {summary(alone)}")
    print(f"  {case}, with the log:    {summary(logged)}  ({written:,.0f} rows written)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writer-rows", type=int, default=200_000, help="rows per writer measurement")
    parser.add_argument("--interference-seconds", type=float, default=10.0, help="length of each request-like loop")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prediction-log-bench-") as folder:
        measure_ids(arguments.calls, arguments.rounds)
        measure_offer(Path(folder), arguments.calls, arguments.rounds)
        measure_request_share(Path(folder), arguments.calls, arguments.rounds)
        measure_writer(Path(folder), arguments.writer_rows)
        print(
            "interference: a request-like loop (a ~100 µs numpy task, then ids + event + offer), timed without and "
            "with the log (the server's settings: queue 10,000, transactions of 1,000, a pass every 0.5 s)"
        )
        for rows, rate in ((1, 2000.0), (100, 130.0), (1000, 20.0)):
            measure_interference(Path(folder), arguments.interference_seconds, rows, rate)


if __name__ == "__main__":
    main()
