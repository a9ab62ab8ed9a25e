"""Decision ids: unique across processes and replicas (a random prefix per process), cheap (a counter)."""

from __future__ import annotations

import itertools
import os
import uuid

__all__ = ("decision_id",)

_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def decision_id() -> str:
    """Unique across processes and replicas (a random prefix per process) and cheap (a counter)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _reset_decision_ids() -> None:
    global _ID_PREFIX, _ID_COUNTER  # noqa: PLW0603 - a forked child must not repeat its parent's ids
    _ID_PREFIX = uuid.uuid4().hex[:16]
    _ID_COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_reset_decision_ids)
