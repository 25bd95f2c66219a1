"""Loading models into the store: resolve the alias, load, warm up and check, then publish.

A model is published only after its warm-up prediction succeeded, so a service turns SERVING with a
model that has already answered once. A failed load leaves the slot as it was (empty at start-up).
"""

import logging
import threading
from dataclasses import dataclass

from server.core import ModelEndpoint
from server.errors import ModelLoadError
from server.metrics import ModelMetrics
from server.model_store import ModelSlot, ModelStore
from server.registry import ModelRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """Which registered model, by which alias, a slot serves, and the endpoint that checks it."""

    slot: ModelSlot
    name: str
    alias: str
    endpoint: ModelEndpoint


class ModelLoader:
    def __init__(
        self, registry: ModelRegistry, store: ModelStore, metrics: ModelMetrics, served: list[ServedModel]
    ) -> None:
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._served = {entry.slot: entry for entry in served}

    def load(self, slot: ModelSlot) -> bool:
        """Load the slot's model; True when it is now serving. Failures are logged and counted."""
        entry = self._served[slot]
        try:
            model = entry.endpoint.prepare(self._registry.load(entry.name, entry.alias))
        except ModelLoadError as exc:
            logger.error("%s model not loaded: %s", slot, exc)
            self._metrics.load_failures.labels(slot).inc()
            return False
        except Exception:
            logger.exception("%s model not loaded: unexpected error", slot)
            self._metrics.load_failures.labels(slot).inc()
            return False
        self._store.put(slot, model)
        ref = model.description.ref
        logger.info("%s serving %s version %s (alias %s, run %s)", slot, ref.name, ref.version, ref.alias, ref.run_id)
        return True

    def load_all(self) -> dict[ModelSlot, bool]:
        return {slot: self.load(slot) for slot in self._served}

    def load_missing_until(self, stop: threading.Event, interval_seconds: float) -> None:
        """Every ``interval_seconds``, retry each slot that has no model, until all have one or ``stop`` is set.

        A registry that was briefly unreachable at start-up, or an alias set only after the server started,
        then brings the service up without a restart.
        """
        while not stop.wait(interval_seconds):
            missing = [slot for slot in self._served if self._store.peek(slot) is None]
            if not missing:
                return
            for slot in missing:
                self.load(slot)
