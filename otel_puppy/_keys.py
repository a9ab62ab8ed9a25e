"""Injective joins of untrusted values into one key (budget scopes, anomaly subjects, settle keys).

A key built by joining values with a separator collides when a value may contain that separator:
`agent="x,user=y"` would share the budget of agent `x` and user `y`. `escape` makes every join
reversible by prefixing each separator (and the escape character itself) with a backslash, and
leaves a value that holds none of them unchanged, so the keys of ordinary values, already stored
by earlier versions, stay the same.

>>> escape("support", ",")
'support'
>>> escape("x,user=y", ",")
'x\\\\,user=y'
"""

from __future__ import annotations

from typing import Final

__all__ = ("ESCAPE", "escape")

ESCAPE: Final = "\\"


def escape(value: str, separators: str) -> str:
    """`value` with each of `separators` and the escape character preceded by a backslash.

    Joining escaped values with any one of `separators` is injective: a separator not preceded by an
    unpaired backslash is always a join.
    """
    if ESCAPE not in value and not any(separator in value for separator in separators):
        return value
    special = ESCAPE + separators
    return "".join(ESCAPE + char if char in special else char for char in value)
