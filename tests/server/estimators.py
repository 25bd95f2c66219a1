"""Estimators that watch how the server calls them: with no fast path, every call goes through scikit-learn's
side of the server (``server.runtime.PredictRuntime``). Each predicts 1.0 for every row."""

import threading

import numpy as np
from threadpoolctl import threadpool_info


class GatedRegressor:
    """While ``gated``, every call says it has entered, then waits for ``release`` (the warm-up at load passes)."""

    def __init__(self) -> None:
        self.gated = False
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def predict(self, values: np.ndarray) -> np.ndarray:
        if self.gated:
            with self._lock:
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            self.entered.release()
            try:
                assert self.release.wait(timeout=60), "never released"
            finally:
                with self._lock:
                    self.running -= 1
        return np.ones(len(values))


class ThreadpoolProbe:
    """Records, from inside each call, the OpenMP thread count its calling thread has, and that thread's name."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, str]] = []

    def predict(self, values: np.ndarray) -> np.ndarray:
        openmp = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"]
        assert openmp, "no OpenMP runtime is loaded: scikit-learn's should be"
        self.seen.append((len(values), max(openmp), threading.current_thread().name))
        return np.ones(len(values))
