"""State sync: the runtimes' state through the store, for restarts and for replicas.

A runtime that is not `shared` (anomaly baselines) is saved whole every minute and on close, and
loaded at start; a `shared` one (breakers) is merged with the store every second when the store is
shared by other processes (`Store.shares_state`): each item's `version` decides, the store keeps
the highest, so a breaker another replica (or a previous process) opened is open here too after
the next sync, and an older state never overwrites a newer one. Nothing here raises: a failed
sync is counted and tried again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

from otel_puppy.exceptions import StoreError
from otel_puppy.metrics import Metrics
from otel_puppy.policies.runtime import PolicyRuntime
from otel_puppy.store.base import Store

__all__ = ("SAVE_EVERY_S", "SHARE_EVERY_S", "StateSync")

logger = logging.getLogger("otel_puppy")

SAVE_EVERY_S: Final = 60.0
"""Unshared state (anomaly baselines) and every shared one are saved this often, and on close."""
SHARE_EVERY_S: Final = 1.0
"""How often shared state is merged with other replicas, while spans are applied or requests decided."""


class StateSync:
    """Saves, restores and shares the runtimes' exported state in the store."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        internal_error: Callable[..., None],
        now: float,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._internal_error = internal_error
        """`PolicyEngine.internal_error`: count and log the exception being handled."""
        self._lock = threading.Lock()
        self._saved: dict[str, set[str]] = {}
        """Keys of each namespace in the store as far as we know: a full save deletes the rest."""
        self._saving = True
        self._next_save = now + SAVE_EVERY_S
        self._next_share = now + SHARE_EVERY_S
        self.shares = store.shares_state
        """Other processes may use the store (SQLite, Redis): share `shared` runtimes every second."""

    def restore(self, runtimes: Sequence[PolicyRuntime]) -> None:
        """Each runtime's state as a previous engine on the store left it. An unreadable store or
        entry costs that state only: the engine starts regardless."""
        for runtime in runtimes:
            if not runtime.persists:
                continue
            if runtime.shared:
                self.share(runtime, restoring=True)
                continue
            try:
                items = self._store.load_state(runtime.kind)
                self._saved[runtime.kind] = set(items)
                runtime.import_state(items)
            except StoreError as exc:
                self._metrics.record_store_error("load_state")
                logger.warning("otel_puppy could not restore %s state from the store: %s", runtime.kind, exc)
            except Exception:
                self._internal_error("engine.restore_state", reraise=False)

    def tick(self, runtimes: Sequence[PolicyRuntime], now: float, *, saving: bool) -> None:
        """Save every runtime when due (`saving`: from the span path); else share when due."""
        if saving and now >= self._next_save:
            self._next_save = now + SAVE_EVERY_S
            self.save_all(runtimes)
        elif self.shares and now >= self._next_share:
            self._next_share = now + SHARE_EVERY_S
            for runtime in runtimes:
                if runtime.shared:
                    self.share(runtime)

    def save_all(self, runtimes: Sequence[PolicyRuntime]) -> None:
        for runtime in runtimes:
            if not runtime.persists:
                continue
            if runtime.shared:
                self.share(runtime)
            else:
                self.save(runtime)

    def share(self, runtime: PolicyRuntime, *, restoring: bool = False) -> None:
        """Publish this runtime's state and adopt every newer one; at start, adopt all there is."""
        try:
            with self._lock:
                if not self._saving:
                    return
                local: dict[str, tuple[int, bytes]] = {}
                if not restoring:
                    for key, blob in runtime.export_state().items():
                        local[key] = (runtime.version(key, blob) or 0, blob)
                merged = self._store.merge_state(runtime.kind, local)
                if restoring:
                    runtime.import_state({key: blob for key, (_, blob) in merged.items()})
                    return
                newer = {
                    key: blob
                    for key, (version, blob) in merged.items()
                    if version > local.get(key, (-1, b""))[0] and runtime.version(key, blob) is not None
                }
                if newer:
                    runtime.import_state(newer)
        except StoreError as exc:
            self._metrics.record_store_error(f"sync_{runtime.kind}")
            logger.warning("otel_puppy could not share %s state through the store: %s", runtime.kind, exc)
        except Exception:
            self._internal_error(f"engine.sync_{runtime.kind}", reraise=False)

    def save(self, runtime: PolicyRuntime) -> None:
        """Write the exported state of a whole namespace, and delete what it no longer has."""
        namespace = runtime.kind
        try:
            # export and write under one lock, so an older export never overwrites a newer one
            with self._lock:
                if not self._saving:
                    return
                items = runtime.export_state()
                self._store.save_state(namespace, items)
                stale = self._saved.get(namespace, set()) - items.keys()
                if stale:
                    self._store.delete_state(namespace, stale)
                self._saved[namespace] = set(items)
        except StoreError as exc:
            self._metrics.record_store_error("save_state")
            logger.warning("otel_puppy could not save %s state, will retry: %s", namespace, exc)
        except Exception:
            self._internal_error("engine.save_state", reraise=False)

    def stop(self) -> None:
        """After the last save (on close): nothing is written any more."""
        with self._lock:
            self._saving = False

    def after_fork(self) -> None:
        self._lock = threading.Lock()
