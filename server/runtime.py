"""How scikit-learn estimator calls use the CPU (the fast paths of ``server.fast_paths`` need none of this).

scikit-learn's histogram gradient boosting predicts with OpenMP threads even for one row, and the idle
threads spin: a single-row call then burns two to three times the CPU it needs, which concurrent
requests pay for. So every RPC worker thread is limited to one OpenMP thread, and only batches of at least
``parallel_batch_rows`` rows (when set) lift the limit for the duration of their call. OpenMP's thread count
is per calling thread, so the lift does not leak into other requests. Whether a lift pays depends on the cores
and the model: it opens one parallel region per tree, and on 2 cores a 600-tree model's 1,000-row batch took
twice as long with it, which is why the server leaves it off unless configured.

Model calls also queue for a few slots, one per core by default. scikit-learn releases and retakes the
GIL for every tree it predicts, so with more concurrent calls than cores the threads spend their time
handing the GIL around: a 100-row batch cost 2.4x the CPU at 16 requests in flight than at one.
"""

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from threadpoolctl import ThreadpoolController

from server.domain import FloatMatrix

T = TypeVar("T")


class PredictRuntime:
    def __init__(self, parallel_batch_rows: int | None, max_concurrent_calls: int = 0) -> None:
        """``parallel_batch_rows``: batches of at least this many rows use every core (None: never)."""
        # A controller sees only the libraries loaded when it is made, and scikit-learn's OpenMP runtime
        # loads with scikit-learn: import it first, or the limits would silently miss OpenMP.
        import sklearn  # noqa: F401, PLC0415

        self._parallel_batch_rows = parallel_batch_rows
        self._controller = ThreadpoolController()
        self._all_cores = os.cpu_count() or 1
        self.call_slots = max_concurrent_calls or self._all_cores
        self._call_slots = threading.BoundedSemaphore(self.call_slots)

    @property
    def controlled_apis(self) -> frozenset[str]:
        """The thread-pool APIs this runtime limits, e.g. ``{"openmp", "blas"}``."""
        return frozenset(controller.user_api for controller in self._controller.lib_controllers)

    def limit_current_thread(self) -> None:
        """Make the calling thread's OpenMP calls single-threaded (the initializer of RPC workers)."""
        self._controller.limit(limits=1, user_api="openmp")

    def run(self, predict: Callable[[FloatMatrix], T], values: FloatMatrix) -> T:
        with self._call_slots:
            if self._parallel_batch_rows is None or values.shape[0] < self._parallel_batch_rows:
                return predict(values)
            with self._controller.limit(limits=self._all_cores, user_api="openmp"):
                return predict(values)
