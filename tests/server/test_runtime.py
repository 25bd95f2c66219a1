"""How scikit-learn calls use the CPU: prediction slots and per-thread OpenMP limits (``server.runtime``)."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from data.schema import HOUSING_FEATURES
from protos.prediction.v1 import housing_pb2, housing_pb2_grpc
from server.domain import TrafficSplit
from server.lifecycle import SPLIT_TAG, split_tag
from server.model_store import ModelSlot
from server.runtime import PredictRuntime
from server.services import HOUSING

from ..prerequisites import REPO_ROOT
from .conftest import channel_to, in_memory_registry, running_server, wait_until
from .estimators import GatedRegressor, ThreadpoolProbe

ONE_ROW = np.ones((1, 8))
CORES = len(os.sched_getaffinity(0))


def test_the_runtime_controls_openmp_even_when_made_before_any_model_is_loaded():
    # A fresh interpreter, as in `python -m server`, where scikit-learn is not imported until models load.
    probe = "from server.runtime import PredictRuntime; print(sorted(PredictRuntime(256).controlled_apis))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert "openmp" in result.stdout


@pytest.mark.parametrize(("slots", "expected"), [(1, 1), (2, 2), (0, CORES)], ids=["1", "2", "per-core"])
def test_no_more_calls_than_slots_run_at_once_and_the_others_wait_their_turn(slots: int, expected: int):
    runtime = PredictRuntime(parallel_batch_rows=256, max_concurrent_calls=slots)
    model = GatedRegressor()
    model.gated = True
    callers = [threading.Thread(target=runtime.run, args=(model.predict, ONE_ROW)) for _ in range(expected + 2)]
    for caller in callers:
        caller.start()
    try:
        for _ in range(expected):
            assert model.entered.acquire(timeout=30), "a call never got a free slot"
        # The others wait for a slot: none gets in while the first ones hold theirs.
        assert not model.entered.acquire(timeout=0.3)
    finally:
        model.release.set()
        for caller in callers:
            caller.join(timeout=30)
    assert model.most_at_once == expected


def _houses(rows: int) -> housing_pb2.HousingBatchRequest:
    row = dict(zip(HOUSING.features.names, HOUSING.features.example_row.ravel().tolist(), strict=True))
    return housing_pb2.HousingBatchRequest(instances=[housing_pb2.HousingFeatures(**row)] * rows)


def test_the_server_runs_at_most_max_concurrent_predictions_scikit_learn_calls_at_once(monkeypatch):
    monkeypatch.setenv("PREDICTOR_MAX_CONCURRENT_PREDICTIONS", "1")
    model = GatedRegressor()
    registry = in_memory_registry(housing=False)
    registry.register("CaliforniaHousingBestModel", model, alias="champion")
    with running_server(registry, max_workers=6) as server, channel_to(server) as channel:
        assert server.settings.max_concurrent_predictions == 1
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        model.gated = True
        try:
            calls = [stub.PredictBatch.future(_houses(3), timeout=60) for _ in range(4)]
            assert model.entered.acquire(timeout=30)
            assert not model.entered.acquire(timeout=0.3), "a second call ran while the first held the only slot"
        finally:
            model.release.set()
        assert [len(call.result(timeout=30).predictions) for call in calls] == [3] * 4
    assert model.most_at_once == 1


def test_rpc_workers_run_openmp_single_threaded_and_large_batches_use_every_core():
    probe = ThreadpoolProbe()
    registry = in_memory_registry(housing=False)
    registry.register("CaliforniaHousingBestModel", probe, alias="champion")
    with running_server(registry, parallel_batch_rows=256) as server, channel_to(server) as channel:
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        large = 256
        probe.seen.clear()  # the warm-up at load ran on this thread, not on a worker
        stub.PredictBatch(_houses(1))
        stub.PredictBatch(_houses(large))
        stub.PredictBatch(_houses(large - 1))
        stub.PredictBatch(_houses(1))

    assert [(rows, threads) for rows, threads, _ in probe.seen] == [(1, 1), (large, CORES), (large - 1, 1), (1, 1)]
    assert all(thread.startswith("rpc") for _, _, thread in probe.seen), probe.seen


def test_a_large_batch_lifts_the_limit_only_for_its_own_call():
    # Two calls at once: the large one's lift of the OpenMP limit is its thread's alone.
    runtime = PredictRuntime(parallel_batch_rows=4, max_concurrent_calls=2)
    probe = ThreadpoolProbe()
    inside_large = threading.Event()
    small_done = threading.Event()

    def large_predict(values: np.ndarray) -> np.ndarray:
        answer = probe.predict(values)
        inside_large.set()
        assert small_done.wait(timeout=30)
        return answer

    def small_call() -> None:
        runtime.limit_current_thread()  # what every RPC worker does when it starts
        assert inside_large.wait(timeout=30)
        runtime.run(probe.predict, ONE_ROW)
        small_done.set()

    def large_call() -> None:
        runtime.limit_current_thread()
        runtime.run(large_predict, np.ones((4, 8)))

    threads = [threading.Thread(target=small_call), threading.Thread(target=large_call)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted((rows, threads) for rows, threads, _ in probe.seen) == [(1, 1), (4, CORES)]


def test_a_large_batch_stays_on_one_thread_while_another_call_runs():
    # Its team would share the cores with the other call and wait for it at every tree's barrier.
    runtime = PredictRuntime(parallel_batch_rows=4, max_concurrent_calls=2)
    probe = ThreadpoolProbe()
    inside_small = threading.Event()
    large_done = threading.Event()

    def small_predict(values: np.ndarray) -> np.ndarray:
        inside_small.set()
        assert large_done.wait(timeout=30)
        return probe.predict(values)

    def small_call() -> None:
        runtime.limit_current_thread()
        runtime.run(small_predict, ONE_ROW)

    def large_call() -> None:
        runtime.limit_current_thread()
        assert inside_small.wait(timeout=30)
        runtime.run(probe.predict, np.ones((4, 8)))
        large_done.set()

    threads = [threading.Thread(target=small_call), threading.Thread(target=large_call)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted((rows, threads) for rows, threads, _ in probe.seen) == [(1, 1), (4, 1)]
    # Alone again, the same batch takes every core.
    runtime.run(probe.predict, np.ones((4, 8)))
    assert probe.seen[-1][:2] == (4, CORES)


def test_the_shadow_worker_runs_a_challenger_with_one_openmp_thread_too():
    # Unlimited, a challenger's scikit-learn calls on the shadow thread would spin a team on the serving cores.
    probe = ThreadpoolProbe()
    registry = in_memory_registry()
    registry.register("CaliforniaHousingBestModel", probe, alias="challenger", input_names=HOUSING_FEATURES)
    registry.set_model_tag("CaliforniaHousingBestModel", SPLIT_TAG, split_tag(TrafficSplit(0.0, shadow=True)))
    with running_server(registry, small_batch_rows=0) as server, channel_to(server) as channel:
        assert server.store.get(ModelSlot.HOUSING).shadow
        stub = housing_pb2_grpc.HousingPredictorStub(channel)
        for _ in range(3):
            stub.PredictBatch(_houses(2))
        wait_until(lambda: any(thread == "shadow" for _, _, thread in probe.seen), "the challenger shadows a call")
    shadowed = [threads for _, threads, thread in probe.seen if thread == "shadow"]
    assert shadowed and set(shadowed) == {1}, probe.seen


# Splitting a batch over idle cores (run_in_parts), as the native forest kernel's batches are.


class PartRecorder:
    """A row-independent predict that records each call's thread and rows, and may hold its calls at a gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self._lock = threading.Lock()

    def __call__(self, values: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append((threading.current_thread().name, len(values)))
        self.entered.release()
        assert self.gate.wait(timeout=60), "never released"
        answers: np.ndarray = values[:, 0] * 2.0 + values[:, 1]
        return answers


def _runtime_that_splits(rows: int) -> PredictRuntime:
    runtime = PredictRuntime(parallel_batch_rows=None, split_batch_rows=rows)
    assert (runtime.part_pool is None) is (CORES == 1)
    return runtime


def test_a_large_batch_is_cut_into_one_part_per_core_whose_answers_join_in_order():
    runtime = _runtime_that_splits(100)
    try:
        recorder = PartRecorder()
        rows = np.random.default_rng(0).normal(size=(1001, 3))
        answers = runtime.run_in_parts(recorder, rows)
        assert np.array_equal(answers, rows[:, 0] * 2.0 + rows[:, 1])
        threads = [thread for thread, _ in recorder.calls]
        assert len(recorder.calls) == CORES
        assert threading.current_thread().name in threads
        assert sum(part for _, part in recorder.calls) == 1001
        assert max(part for _, part in recorder.calls) - min(part for _, part in recorder.calls) <= 1
    finally:
        if runtime.part_pool is not None:
            runtime.part_pool.shutdown(wait=True)


def test_a_batch_below_the_split_size_or_started_while_the_other_cores_are_taken_runs_whole_on_its_thread():
    runtime = _runtime_that_splits(100)
    if runtime.part_pool is None:  # one core: nothing is ever split (the test above checked it)
        return
    try:
        small = PartRecorder()
        runtime.run_in_parts(small, np.ones((99, 2)))
        assert small.calls == [(threading.current_thread().name, 99)]

        held = PartRecorder()
        held.gate.clear()
        first = threading.Thread(target=runtime.run_in_parts, args=(held, np.ones((1000, 2))), name="first")
        first.start()
        try:
            for _ in range(CORES):  # every part of the first batch started: its helpers are taken
                assert held.entered.acquire(timeout=30)
            second = PartRecorder()
            runtime.run_in_parts(second, np.ones((1000, 2)))
            assert second.calls == [(threading.current_thread().name, 1000)]
        finally:
            held.gate.set()
            first.join(timeout=30)
        again = PartRecorder()
        runtime.run_in_parts(again, np.ones((1000, 2)))
        assert len(again.calls) == CORES, "the helpers were not given back"
    finally:
        runtime.part_pool.shutdown(wait=True)
