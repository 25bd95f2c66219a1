"""What each service is serving right now: one ``Deployment`` per slot.

A slot holds one immutable ``Deployment``; replacing it is a single reference assignment, so a request that
took a snapshot keeps predicting with those versions while new ones are swapped in, and no request ever sees a
half-loaded model. Listeners hear about every change (health status, metrics); one that raises is logged and
the others still hear about it.
"""

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

from server.domain import Deployment
from server.errors import ModelUnavailableError

logger = logging.getLogger(__name__)


class ModelSlot(StrEnum):
    HOUSING = "housing"
    IRIS = "iris"


SlotListener = Callable[[ModelSlot, Deployment | None, Deployment | None], None]


class ModelStore:
    def __init__(self) -> None:
        self._deployments: dict[ModelSlot, Deployment] = {}
        self._listeners: list[SlotListener] = []
        # Serialises writers and their notifications; readers never take it.
        self._write_lock = threading.Lock()

    def subscribe(self, listener: SlotListener) -> None:
        """Call ``listener(slot, old, new)`` after every change of a slot."""
        with self._write_lock:
            self._listeners.append(listener)

    def get(self, slot: ModelSlot) -> Deployment:
        deployment = self._deployments.get(slot)
        if deployment is None:
            raise ModelUnavailableError(f"the {slot} model is not loaded")
        return deployment

    def peek(self, slot: ModelSlot) -> Deployment | None:
        return self._deployments.get(slot)

    def put(self, slot: ModelSlot, deployment: Deployment) -> None:
        with self._write_lock:
            old = self._deployments.get(slot)
            self._deployments[slot] = deployment
            self._notify(slot, old, deployment)

    def remove(self, slot: ModelSlot) -> None:
        with self._write_lock:
            old = self._deployments.pop(slot, None)
            if old is not None:
                self._notify(slot, old, None)

    def _notify(self, slot: ModelSlot, old: Deployment | None, new: Deployment | None) -> None:
        for listener in self._listeners:
            try:
                listener(slot, old, new)
            except Exception:
                logger.exception("a listener of the %s slot failed; the others are still told", slot)
