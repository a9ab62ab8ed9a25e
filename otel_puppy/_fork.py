"""`repair_in_child`: run an object's repair in a forked child for as long as the object lives.

A forked child gets a copy of every object but only the thread that forked: a lock another thread
held stays held there, and a worker thread is gone. Each object that owns threads or locks repairs
itself in the child (`after_fork`). The hooks run in the order they were registered, so an object
registered before another (the engine before its span processor) is repaired first.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TypeVar

__all__ = ("repair_in_child",)

_T = TypeVar("_T")


def repair_in_child(owner: _T, repair: Callable[[_T], None]) -> None:
    """Call `repair(owner)` in every forked child while `owner` lives. The hook holds a weak
    reference, so registering does not keep `owner` alive (hooks cannot be unregistered)."""
    ref = weakref.ref(owner)

    def hook() -> None:
        alive = ref()
        if alive is not None:
            repair(alive)

    os.register_at_fork(after_in_child=hook)
