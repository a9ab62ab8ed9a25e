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

from otel_puppy.exceptions import PolicyErrors

__all__ = ("PolicyWatcher", "fingerprint")

logger = logging.getLogger("otel_puppy")

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    """What changes when a policy file is added, removed or edited."""
    try:
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
        return tuple((f.name, s.st_size, s.st_mtime_ns) for f in files if (s := f.stat()))
    except OSError:
        return ()


class PolicyWatcher:
    """Calls `reload` whenever the files under `path` change; `check()` does one poll."""

    def __init__(self, path: Path, reload: Callable[[], object], interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._reload = reload
        self._seen = fingerprint(self.path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.failures = 0
        self.last_error: PolicyErrors | None = None

    def check(self) -> bool:
        """Reload if the files changed since the last look; True when a new set took effect."""
        current = fingerprint(self.path)
        if current == self._seen:
            return False
        self._seen = current
        try:
            self._reload()
        except PolicyErrors as exc:
            self.failures += 1
            self.last_error = exc  # `reload` logged every error with its file, line and column
            return False
        self.reloads += 1
        self.last_error = None
        logger.info("policy files changed; reloaded %s", self.path)
        return True

    def start(self) -> PolicyWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otel-puppy-policy-watch", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a watcher that dies silently is worse than one that logs and goes on
                logger.exception("policy watcher failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)
            self._thread = None
