"""How scikit-learn estimator calls use the CPU (the fast paths of ``server.fast_paths`` need none of this).

scikit-learn's histogram gradient boosting predicts with OpenMP threads even for one row, and the idle
threads spin: a single-row call then burns two to three times the CPU it needs, which concurrent
requests pay for. So every RPC worker thread is limited to one OpenMP thread. A batch of at least
``parallel_batch_rows`` rows (when set) lifts the limit for the duration of its call, and only when it is the
only scikit-learn call running; OpenMP's thread count is per calling thread, so the lift does not leak into
other requests. Whether a lift pays depends on the cores, the model and what else runs: gradient boosting opens
one parallel region per tree. On 2 cores a 600-tree model's 1,000-row batch took 29 ms on both cores against
44 ms on one in a bare process, but 112 against 62 ms through the server, whose own threads (the prediction
log's writer, gRPC's) then share the cores with the team, and 104 ms in a bare process with
``OMP_WAIT_POLICY=PASSIVE``, where each region wakes its team; which is why the server leaves it off unless
configured. A batch that shares the cores with another call stays on one thread in any case: its team would
wait for that call at every tree's barrier.

Model calls also queue for a few slots, one per core by default. scikit-learn releases and retakes the
GIL for every tree it predicts, so with more concurrent calls than cores the threads spend their time
handing the GIL around: a 100-row batch cost 2.4x the CPU at 16 requests in flight than at one.
"""

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

from server.domain import FloatMatrix

T = TypeVar("T")


def available_cores() -> int:
    """The cores this process may run on (a container's CPU set), not every core of the host."""
    return len(os.sched_getaffinity(0)) or 1


class PredictRuntime:
    def __init__(
        self, parallel_batch_rows: int | None, max_concurrent_calls: int = 0, split_batch_rows: int | None = None
    ) -> None:
        """``parallel_batch_rows``: batches of at least this many rows use every core when no other call runs
        (None: never). ``split_batch_rows``: ``run_in_parts`` splits batches of at least this many rows over the
        idle cores (None: never)."""
        # A controller sees only the libraries loaded when it is made, and scikit-learn's OpenMP runtime
        # loads with scikit-learn: import it first, or the limits would silently miss OpenMP.
        import sklearn  # noqa: F401, PLC0415

        self._parallel_batch_rows = parallel_batch_rows
        self._controller = ThreadpoolController()
        self._all_cores = available_cores()
        self.call_slots = max_concurrent_calls or self._all_cores
        self._call_slots = threading.BoundedSemaphore(self.call_slots)
        self._running = 0
        self._running_lock = threading.Lock()
        self._split_batch_rows = split_batch_rows
        helpers = self._all_cores - 1 if split_batch_rows is not None else 0
        # Threads that take the other parts of a split batch; a batch splits only over helpers idle at its start.
        self.part_pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="part") if helpers else None
        self._idle_helpers = threading.Semaphore(helpers)

    @property
    def controlled_apis(self) -> frozenset[str]:
        """The thread-pool APIs this runtime limits, e.g. ``{"openmp", "blas"}``."""
        return frozenset(controller.user_api for controller in self._controller.lib_controllers)

    def limit_current_thread(self) -> None:
        """Make the calling thread's OpenMP calls single-threaded (the initializer of RPC workers)."""
        self._controller.limit(limits=1, user_api="openmp")

    def run(self, predict: Callable[[FloatMatrix], T], values: FloatMatrix) -> T:
        with self._call_slots:
            if self._parallel_batch_rows is None:  # no lift: nothing to count on the request path
                return predict(values)
            with self._running_lock:
                self._running += 1
                alone = self._running == 1
            try:
                large = values.shape[0] >= self._parallel_batch_rows
                if not (large and alone and self._all_cores > 1):
                    return predict(values)
                with self._controller.limit(limits=self._all_cores, user_api="openmp"):
                    return predict(values)
            finally:
                with self._running_lock:
                    self._running -= 1

    def run_in_parts(self, predict: Callable[[FloatMatrix], FloatMatrix], values: FloatMatrix) -> FloatMatrix:
        """``predict(values)``, with a large batch cut into consecutive parts predicted at once on idle cores.

        Only for a ``predict`` that holds no GIL while it computes (the native forest kernel) and whose rows are
        answered independently of each other, so that the parts together give exactly the whole's answers. A
        part waits for no other (no barrier, unlike an OpenMP team): a busy core only makes its part finish later.
        """
        rows = values.shape[0]
        if self.part_pool is None or self._split_batch_rows is None or rows < self._split_batch_rows:
            return predict(values)
        helpers = 0
        while helpers < self._all_cores - 1 and self._idle_helpers.acquire(blocking=False):
            helpers += 1
        try:
            if not helpers:
                return predict(values)
            bounds = np.linspace(0, rows, helpers + 2).astype(int)
            parts: list[Future[FloatMatrix]] = [
                self.part_pool.submit(predict, values[start:end]) for start, end in itertools.pairwise(bounds[1:])
            ]
            first = predict(values[: bounds[1]])
            return np.concatenate([first, *(part.result() for part in parts)])
        finally:
            for _ in range(helpers):
                self._idle_helpers.release()
