"""Hot reload: watch the policy files and reload the engine when they change.

Polling file metadata (name, size, mtime) once a second is enough for files people edit, costs a
few `stat` calls, needs no platform-specific notification API, and works on the symlink swaps a
Kubernetes ConfigMap mount does. A broken edit is logged and counted, and the last good policy
set keeps running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

from otel_puppy.exceptions import PolicyErrors

__all__ = ("FileWatcher", "PolicyWatcher", "fingerprint")

logger = logging.getLogger("otel_puppy")

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    """What changes when a policy file is added, removed or edited."""
    try:
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
        return tuple((f.name, s.st_size, s.st_mtime_ns) for f in files if (s := f.stat()))
    except OSError:
        return ()


class FileWatcher:
    """Calls `reload` whenever the files under `path` change; `check()` does one poll, `start()` polls
    every `interval_s` on a thread. `reload` raising `refused` (an invalid file) is counted in
    `failures` and kept in `last_error` until the next good reload; what was in force stays.
    Without a `path` there is nothing to watch: `check()` is False and `start()` starts nothing."""

    def __init__(
        self,
        path: Path | None,
        reload: Callable[[], object],
        interval_s: float = 1.0,
        *,
        refused: type[PolicyErrors] = PolicyErrors,
        name: str = "otel-puppy-policy-watch",
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.interval_s = interval_s
        self._reload = reload
        self._refused = refused
        self._name = name
        self._seen = fingerprint(self.path) if self.path is not None else ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.failures = 0
        self.last_error: PolicyErrors | None = None

    def check(self) -> bool:
        """Reload if the files changed since the last look; True when the new contents took effect."""
        if self.path is None:
            return False
        current = fingerprint(self.path)
        if current == self._seen:
            return False
        self._seen = current
        try:
            self._reload()
        except self._refused as exc:
            self.failures += 1
            self.last_error = exc
            self.refused(exc)
            return False
        self.reloads += 1
        self.last_error = None
        self.reloaded()
        return True

    def refused(self, error: PolicyErrors) -> None:
        """After `reload` refused the files (the policy engine's `reload` logs every error itself)."""

    def reloaded(self) -> None:
        logger.info("policy files changed; reloaded %s", self.path)

    def start(self) -> Self:
        if self._thread is None and self.path is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a watcher that dies silently is worse than one that logs and goes on
                logger.exception("%s failed", self._name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)
            self._thread = None


PolicyWatcher = FileWatcher
"""The policy files' watcher (`PolicyEngine.watch_policies`)."""
