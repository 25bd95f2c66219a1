"""The native tree walk (``forest_kernel.c``) that lets ``CompiledForest`` answer batches of any size.

The numpy walk of ``server.fast_paths`` moves every tree one level per numpy step: a few rows cost
~0.2-0.6 ms (300 to 600 trees), but it does rows x trees work per step, so past a few dozen rows scikit-learn is faster.
The C walk does the same comparisons and the same additions in the same order, one row and one tree at a
time, with no per-tree Python call: on a 600-tree housing model one row costs ~0.17 ms, and 1,000 rows 15-23 ms
against scikit-learn's ~40 ms on one thread. ctypes releases the GIL for the whole call, so a large batch
never holds up the request threads.

``make install`` (and the image build) compile it to ``_forest_kernel.so`` beside this file. Without it (no C
compiler when installing) the server still serves: the numpy walk answers small requests and scikit-learn the
rest, and start-up logs a warning. Loaded on the load path (the first model compiled), never at import.
"""

import ctypes
import functools
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from server.domain import FloatMatrix

logger = logging.getLogger(__name__)

LIBRARY = Path(__file__).with_name("_forest_kernel.so")

_POINTER = ctypes.c_void_p
_INT64 = ctypes.c_int64


class KernelTrees(NamedTuple):
    """Flattened trees in the layout ``forest_kernel.c`` reads (see its header), in the model's tree order."""

    roots: npt.NDArray[np.int64]
    depths: npt.NDArray[np.int32]
    features: npt.NDArray[np.int32]
    thresholds: FloatMatrix
    children: npt.NDArray[np.int32]
    leaf_values: FloatMatrix
    baseline: float


class ForestKernel:
    """``forest_predict`` of the compiled library. The caller (``CompiledForest``) checks that rows have every
    column the trees split on: the C code reads them without bounds checks."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._predict = library.forest_predict
        self._predict.argtypes = [
            _POINTER, _INT64, _INT64, _POINTER, _POINTER, _INT64, _POINTER, _POINTER, _POINTER, _POINTER,
            ctypes.c_double, _POINTER,
        ]  # fmt: skip
        self._predict.restype = None

    def predict(self, values: FloatMatrix, trees: KernelTrees) -> FloatMatrix:
        """One answer per row of ``values``, whose rows must have every column the trees split on."""
        rows = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty(rows.shape[0], dtype=np.float64)
        self._predict(
            rows.ctypes.data,
            rows.shape[0],
            rows.shape[1],
            trees.roots.ctypes.data,
            trees.depths.ctypes.data,
            trees.roots.size,
            trees.features.ctypes.data,
            trees.thresholds.ctypes.data,
            trees.children.ctypes.data,
            trees.leaf_values.ctypes.data,
            trees.baseline,
            out.ctypes.data,
        )
        return out


@functools.cache
def load_forest_kernel() -> ForestKernel | None:
    """The kernel, or None (logged once) when the library was not built or does not load."""
    try:
        return ForestKernel(ctypes.CDLL(str(LIBRARY)))
    except (OSError, AttributeError) as exc:
        logger.warning(
            "the native forest kernel %s is not available (%s): gradient boosting batches of more than "
            "PREDICTOR_SMALL_BATCH_ROWS rows go through scikit-learn; `make install` builds it with a C compiler",
            LIBRARY.name,
            exc,
        )
        return None
