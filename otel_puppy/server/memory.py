"""One memory limit shared by every OTLP request, like the Collector's `memory_limiter`.

Decoding is where a small body becomes a large object graph: protobuf and JSON parsers allocate
an object per element, and an element can be two bytes on the wire. Measured on a 16 MiB body
(`bytes` growth of peak RSS while decoding): realistic SDK spans grow 2x (protobuf) and 8x
(JSON), while hostile shapes of empty elements grow up to 88x (8 M empty spans, protobuf) and
85x (JSON `{}`s), 1.4 GiB for one request.

So before decoding, a request reserves `decode_cost(body)`: an upper bound computed in one
C-speed pass over the bytes (no parsing), `body` times `_BYTE_FACTOR` plus every byte that could
start an element times the largest per-element cost measured. It over-reserves realistic bodies
(about 34x for protobuf, whose text bytes look like field tags; about 13x for JSON) so that no
shape can under-reserve. Bodies being read, and inflated, count against the same limit. A
request that cannot fit even alone is refused for good (`413`), one that does not fit now is
told to retry (`503` with `Retry-After`): no request waits for memory.
"""

from __future__ import annotations

import threading
from typing import Final

__all__ = ("MemoryFull", "MemoryLimiter", "Reservation", "decode_cost")

_BYTE_FACTOR: Final = 4
"""The body, its decoded text (JSON) or strings (protobuf), and the parser's buffers."""
_PROTOBUF_ELEMENT: Final = 192
"""Peak bytes per element decoded from protobuf; 176 measured for an empty `Span` (2 wire bytes)."""
_JSON_ELEMENT: Final = 160
"""Peak bytes per element decoded from JSON; 128 measured for `{}` in `spans` (3 wire bytes)."""
# Every sub-message, string and bytes field of an OTLP trace request has a field number up to 15,
# so each such element starts with one of these tag bytes (wire type 2); counting every such byte
# (text included) is an upper bound on the elements.
_PROTOBUF_TAGS: Final = bytes(1 if byte & 0x87 == 0x02 and byte >> 3 else 0 for byte in range(256))


def decode_cost(body: bytes | bytearray, json: bool) -> int:
    """An upper bound on the peak bytes that decoding `body` (inflated) allocates, in ~1 ms per MiB."""
    if json:
        elements = body.count(b"{") + body.count(b"[") + body.count(b",")
        return len(body) * _BYTE_FACTOR + elements * _JSON_ELEMENT
    elements = body.translate(_PROTOBUF_TAGS).count(1)
    return len(body) * _BYTE_FACTOR + elements * _PROTOBUF_ELEMENT


class MemoryFull(Exception):
    """A reservation does not fit. `ever` is False when it could never fit, even alone."""

    def __init__(self, wanted: int, limit: int) -> None:
        self.wanted = wanted
        self.limit = limit
        self.ever = wanted <= limit
        super().__init__(f"{wanted} bytes wanted, the limit is {limit}")


class MemoryLimiter:
    """A count of reserved bytes under `limit_bytes`; thread-safe, never blocks."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._used

    def reservation(self) -> Reservation:
        """An empty reservation; grow it as the request needs, release it when done (a context manager)."""
        return Reservation(self)

    def _take(self, amount: int, holding: int) -> None:
        with self._lock:
            if holding + amount > self.limit_bytes or self._used + amount > self.limit_bytes:
                raise MemoryFull(holding + amount, self.limit_bytes)
            self._used += amount

    def _give(self, amount: int) -> None:
        with self._lock:
            self._used -= amount


class Reservation:
    """The bytes one request holds against a `MemoryLimiter`."""

    def __init__(self, limiter: MemoryLimiter) -> None:
        self._limiter = limiter
        self.bytes = 0

    def grow_to(self, total: int) -> None:
        """Hold `total` bytes in all (no-op when already holding as much).

        Raises:
            MemoryFull: it does not fit now (`ever`: retry later) or could never fit.
        """
        if total > self.bytes:
            self._limiter._take(total - self.bytes, self.bytes)
            self.bytes = total

    def release(self) -> None:
        if self.bytes:
            self._limiter._give(self.bytes)
            self.bytes = 0

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
