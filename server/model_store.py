"""The models a server is serving right now, one slot per service.

A slot holds one immutable ``LoadedModel``; replacing it is a single reference assignment, so a request
that took a snapshot keeps predicting with that version while a new one is swapped in, and no request
ever sees a half-loaded model. Listeners hear about every change (health status, metrics).
"""

import threading
from collections.abc import Callable
from enum import StrEnum

from server.domain import LoadedModel
from server.errors import ModelUnavailableError


class ModelSlot(StrEnum):
    HOUSING = "housing"
    IRIS = "iris"


SlotListener = Callable[[ModelSlot, LoadedModel | None, LoadedModel | None], None]


class ModelStore:
    def __init__(self) -> None:
        self._models: dict[ModelSlot, LoadedModel] = {}
        self._listeners: list[SlotListener] = []
        # Serialises writers and their notifications; readers never take it.
        self._write_lock = threading.Lock()

    def subscribe(self, listener: SlotListener) -> None:
        """Call ``listener(slot, old, new)`` after every change of a slot."""
        with self._write_lock:
            self._listeners.append(listener)

    def get(self, slot: ModelSlot) -> LoadedModel:
        model = self._models.get(slot)
        if model is None:
            raise ModelUnavailableError(f"the {slot} model is not loaded")
        return model

    def peek(self, slot: ModelSlot) -> LoadedModel | None:
        return self._models.get(slot)

    def put(self, slot: ModelSlot, model: LoadedModel) -> None:
        with self._write_lock:
            old = self._models.get(slot)
            self._models[slot] = model
            for listener in self._listeners:
                listener(slot, old, model)

    def remove(self, slot: ModelSlot) -> None:
        with self._write_lock:
            old = self._models.pop(slot, None)
            if old is not None:
                for listener in self._listeners:
                    listener(slot, old, None)
