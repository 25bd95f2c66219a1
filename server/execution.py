"""Running a prepared model on validated rows: its fast path for small requests (for any request when the path
is fast at any size), else scikit-learn.

Used by the request path and by preparation (the warm-up and smoke predictions), so that a version is checked
through exactly the code that will answer with it.
"""

import numpy as np

from server.domain import FloatMatrix, LoadedModel
from server.runtime import PredictRuntime
from server.services import ServiceSpec


class ModelOutputError(Exception):
    """The estimator answered with something we must not pass on (wrong shape, NaN, ...)."""


class ModelRunner:
    def __init__(self, spec: ServiceSpec, runtime: PredictRuntime, small_batch_rows: int) -> None:
        self.spec = spec
        self.small_batch_rows = small_batch_rows
        self._runtime = runtime

    def predict(self, model: LoadedModel, values: FloatMatrix) -> FloatMatrix:
        fast_path = model.fast_path
        if fast_path is not None and model.fast_path_any_size:
            # The native kernel holds no GIL: a large batch may take idle cores, when rows do not interact.
            output = self._runtime.run_in_parts(fast_path, values) if model.row_independent else fast_path(values)
        elif fast_path is not None and values.shape[0] <= self.small_batch_rows:
            output = fast_path(values)
        else:
            method = getattr(model.estimator, self.spec.estimator_method)
            output = np.asarray(self._runtime.run(method, values), dtype=np.float64)
        expected = self.spec.output_shape(values.shape[0])
        if output.shape != expected:
            raise ModelOutputError(f"model returned shape {output.shape}, expected {expected}")
        if not np.isfinite(output).all():
            raise ModelOutputError("model returned a non-finite value")
        return output
