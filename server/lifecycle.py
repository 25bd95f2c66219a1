"""Following the registry: resolve each served alias, load and prepare new versions, swap them in.

``ModelWatcher`` is the only writer of the model store. At start-up ``sync_all()`` loads every service once;
then a background thread re-resolves every alias each poll interval (a cheap registry read, no download) and
whenever it is nudged (the admin service nudges it after moving an alias, so its own changes are served at
once). A version is loaded, prepared and validated off the request path, then swapped in with one assignment.

A version that fails is refused once: counted with its reason, logged once, kept as the service's last failure
(``GetModelInfo`` shows it), and not tried again until the alias moves, while the old version keeps serving.
A registry that cannot be reached changes nothing for callers: the gauge ``model_registry_up`` goes to 0 and one
line is logged per outage, not per poll.

While the watcher is degraded (the registry unreachable, or a service with nothing to serve, as at a start-up
before the registry is up) it does not wait a whole poll interval: it retries after ``RETRY_FIRST_SECONDS``,
doubling each failed round up to the poll interval, with a little jitter so that replicas restarted together do
not knock on the registry in step. A healthy watcher polls at the interval.
"""

import dataclasses
import json
import logging
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from model_registry import (
    AliasNotFoundError,
    ArtifactError,
    ModelNotFoundError,
    ModelRegistry,
    RegistryError,
    RegistryUnavailableError,
)
from server.domain import Deployment, LoadedModel, LoadFailure, TrafficSplit
from server.metrics import ModelMetrics
from server.model_store import ModelSlot, ModelStore
from server.preparation import ModelPreparer, ModelValidationError
from server.services import ServiceSpec

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# The registered-model tag holding a model's traffic split, as JSON: {"challenger_percent": 10, "shadow": true}.
SPLIT_TAG = "traffic_split"
RETRY_FIRST_SECONDS = 0.5
# With no poll interval (0: follow only when nudged) a degraded watcher still retries, at most this far apart.
RETRY_CAP_SECONDS = 30.0
RETRY_JITTER = 0.1


class _Unreachable:
    """What an alias names while the registry cannot be asked: unknown."""


def parse_split(raw: str | None) -> TrafficSplit:
    """The split a tag value describes; no tag, or one that cannot be read, is no split at all."""
    if not raw:
        return TrafficSplit()
    try:
        data = json.loads(raw)
        percent = float(data.get("challenger_percent", 0.0))
        shadow = bool(data.get("shadow", False))
    except (ValueError, TypeError, AttributeError):
        logger.warning("the %s tag %r cannot be read; no traffic goes to the challenger", SPLIT_TAG, raw)
        return TrafficSplit()
    if not 0.0 <= percent <= 100.0:
        return TrafficSplit()
    return TrafficSplit(challenger_percent=percent, shadow=shadow)


def split_tag(split: TrafficSplit) -> str:
    return json.dumps({"challenger_percent": split.challenger_percent, "shadow": split.shadow})


def _loaded_version(served: Deployment | None, version: str) -> LoadedModel | None:
    if served is None:
        return None
    return next((model for model in served.variants().values() if model.description.ref.version == version), None)


@dataclass(frozen=True, slots=True)
class WatchedModel:
    """Which registered model, by which alias, a service serves, and how its versions are prepared."""

    spec: ServiceSpec
    name: str
    alias: str
    preparer: ModelPreparer
    challenger_alias: str = "challenger"


class ModelWatcher:
    def __init__(
        self, registry: ModelRegistry, store: ModelStore, metrics: ModelMetrics, watched: Iterable[WatchedModel]
    ) -> None:
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._watched = {entry.spec.slot: entry for entry in watched}
        self._failures: dict[tuple[ModelSlot, str], LoadFailure] = {}
        self._registry_up: bool | None = None
        # One sync at a time: the poll thread, start-up and tests never load the same slot twice at once.
        self._sync_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def slots(self) -> tuple[ModelSlot, ...]:
        return tuple(self._watched)

    def watched(self, slot: ModelSlot) -> WatchedModel:
        return self._watched[slot]

    @property
    def registry_reachable(self) -> bool:
        return bool(self._registry_up)

    def last_failure(self, slot: ModelSlot, *, challenger: bool = False) -> LoadFailure | None:
        return self._failures.get((slot, CHALLENGER if challenger else CHAMPION))

    def sync_all(self) -> dict[ModelSlot, bool]:
        return {slot: self.sync(slot) for slot in self._watched}

    def sync(self, slot: ModelSlot) -> bool:
        """Bring ``slot`` to the version its alias names now; True when that version is what it serves."""
        with self._sync_lock:
            return self._sync(self._watched[slot])

    def _sync(self, entry: WatchedModel) -> bool:
        slot = entry.spec.slot
        served = self._store.peek(slot)
        current_champion = None if served is None else served.champion
        current_challenger = None if served is None else served.challenger
        champion = self._follow_alias(entry, CHAMPION, current_champion, served)
        if champion is None:
            return False
        challenger = self._follow_alias(entry, CHALLENGER, current_challenger, served)
        split = self._split(entry)
        if split is None:  # the registry is unreachable: keep what is served
            split = TrafficSplit() if served is None else served.split
        if (
            served is None
            or champion is not served.champion
            or challenger is not served.challenger
            or split != served.split
        ):
            self._store.put(slot, Deployment(champion=champion, challenger=challenger, split=split))
            for role, model in ((CHAMPION, champion), (CHALLENGER, challenger)):
                before = None if served is None else (served.champion if role == CHAMPION else served.challenger)
                if model is not None and model is not before:
                    ref = model.description.ref
                    logger.info(
                        "%s serving %s version %s as %s (alias %s, run %s)",
                        slot,
                        ref.name,
                        ref.version,
                        role,
                        ref.alias,
                        ref.run_id,
                    )
        return True

    def _follow_alias(  # noqa: PLR0911 - each way out is one case of the alias's state
        self, entry: WatchedModel, role: str, current: LoadedModel | None, served: Deployment | None
    ) -> LoadedModel | None:
        """The model ``role``'s alias names now: ``current`` when nothing changed or the change was refused."""
        alias = entry.alias if role == CHAMPION else entry.challenger_alias
        target = self._resolve(entry, alias, role)
        if isinstance(target, _Unreachable):
            return current
        key = (entry.spec.slot, role)
        if target is None:  # no such alias: fine for a challenger (there is none), an error for the champion
            if role == CHALLENGER:
                self._failures.pop(key, None)
                return None
            return current
        if current is not None and current.description.ref.version == target:
            self._failures.pop(key, None)
            return current
        reusable = _loaded_version(served, target)
        if reusable is not None:  # e.g. the challenger promoted to champion: no download, no second proof
            self._failures.pop(key, None)
            ref = dataclasses.replace(reusable.description.ref, alias=alias)
            return dataclasses.replace(reusable, description=dataclasses.replace(reusable.description, ref=ref))
        failure = self._failures.get(key)
        if failure is not None and failure.version == target:
            return current  # refused already: not again until the alias moves
        model = self._prepare(entry, role, alias, target)
        if model is None:
            return current
        self._failures.pop(key, None)
        return model

    def _resolve(self, entry: WatchedModel, alias: str, role: str) -> "str | _Unreachable | None":
        """The version ``alias`` names now; None when it is not set (recorded for the champion), or
        ``_UNREACHABLE`` when the registry cannot be asked."""
        try:
            target = self._registry.resolve(entry.name, alias)
        except RegistryUnavailableError as exc:
            self._registry_reached(False, exc)
            return _Unreachable()
        except (AliasNotFoundError, ModelNotFoundError) as exc:
            self._registry_reached(True)
            if role == CHAMPION:
                self._refuse(entry, role, "", "not_found", str(exc))
            return None
        self._registry_reached(True)
        return target.version

    def _split(self, entry: WatchedModel) -> TrafficSplit | None:
        """The split the registry configures for the model (None: the registry is unreachable)."""
        try:
            raw = self._registry.model_tags(entry.name).get(SPLIT_TAG)
        except RegistryUnavailableError as exc:
            self._registry_reached(False, exc)
            return None
        except RegistryError:
            return TrafficSplit()
        return parse_split(raw)

    def _prepare(self, entry: WatchedModel, role: str, alias: str, version: str) -> LoadedModel | None:
        """Download, check and equip one version; None when it was refused (recorded) or the registry is down."""
        try:
            return entry.preparer.prepare(self._registry.load(entry.name, version), alias)
        except RegistryUnavailableError as exc:
            self._registry_reached(False, exc)
            return None
        except ArtifactError as exc:
            failure = ("artifact", str(exc))
        except ModelValidationError as exc:
            failure = (exc.reason, exc.message)
        except RegistryError as exc:  # e.g. the version was deleted between resolve and load
            failure = ("not_found", str(exc))
        except Exception as exc:
            logger.exception("%s v%s could not be prepared", entry.name, version)
            failure = ("warm_up", f"unexpected error while preparing: {type(exc).__name__}")
        self._refuse(entry, role, version, *failure)
        return None

    def _refuse(self, entry: WatchedModel, role: str, version: str, reason: str, message: str) -> None:
        slot = entry.spec.slot
        key = (slot, role)
        previous = self._failures.get(key)
        if previous is not None and (previous.version, previous.reason) == (version, reason):
            return
        self._failures[key] = LoadFailure(version=version, reason=reason, message=message, failed_at=datetime.now(UTC))
        self._metrics.load_failures.labels(entry.spec.service_name, reason).inc()
        served = self._store.peek(slot)
        keeping = (
            f"; still serving version {served.champion.description.ref.version}"
            if served is not None
            else "; nothing to serve"
        )
        logger.error("%s %s model not loaded (%s): %s%s", slot, role, reason, message, keeping)

    def _registry_reached(self, reachable: bool, error: Exception | None = None) -> None:
        if reachable == self._registry_up:
            return
        if not reachable:
            logger.warning("model registry unreachable (%s); serving what is loaded until it returns", error)
        elif self._registry_up is not None:
            logger.info("model registry reachable again")
        self._registry_up = reachable
        self._metrics.registry_up.set(1 if reachable else 0)

    def start(self, poll_seconds: float) -> None:
        """Follow the aliases in a background thread: every ``poll_seconds`` (0: only when nudged)."""
        self._thread = threading.Thread(target=self._follow, args=(poll_seconds,), name="model-watcher", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Look at the aliases now (after an alias was moved through this server)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def degraded(self) -> bool:
        """The registry was unreachable at the last ask, or a service has nothing to serve."""
        return self._registry_up is False or any(self._store.peek(slot) is None for slot in self._watched)

    def _follow(self, poll_seconds: float) -> None:
        cap = poll_seconds if poll_seconds > 0 else RETRY_CAP_SECONDS
        retry = RETRY_FIRST_SECONDS
        while True:
            if self.degraded:
                wait: float | None = min(retry, cap) * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)  # noqa: S311
                retry = min(retry * 2, cap)
            else:
                wait = poll_seconds if poll_seconds > 0 else None
                retry = RETRY_FIRST_SECONDS
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping.is_set():
                return
            for slot in self._watched:
                try:
                    self.sync(slot)
                except Exception:
                    logger.exception("following the %s alias failed; trying again at the next poll", slot)
