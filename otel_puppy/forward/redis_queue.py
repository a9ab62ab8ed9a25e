"""The forward queue in Redis: one stream that every replica appends to and drains.

Batches are entries of the stream `<prefix>:forward`, read through one consumer group; each
process is a consumer. A claimed batch stays in the group's pending list until `done`
acknowledges and deletes it; a batch pending longer than `LEASE_S` (its consumer died, or
hangs) is taken over by another replica (`XAUTOCLAIM`). The total size lives beside the stream
(`<prefix>:forward:bytes`) and a script checks the bound and appends in one step. Both keys carry
the prefix's hash tag, so the queue works on a Redis Cluster as on one server.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from otel_puppy.exceptions import StoreError
from otel_puppy.forward.queue import LEASE_S, Claimed, QueueFull

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

__all__ = ("RedisQueue",)

_GROUP: Final = "otel_puppy_forwarders"

_PUT: Final = """
local size = tonumber(redis.call('GET', KEYS[2]) or '0')
local body = ARGV[1]
if size + #body > tonumber(ARGV[3]) then return -1 end
redis.call('XADD', KEYS[1], '*', 'b', body, 's', ARGV[2])
return redis.call('INCRBY', KEYS[2], #body)
"""
_DONE: Final = """
local gone = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if gone == 1 then
  local size = redis.call('DECRBY', KEYS[2], ARGV[3])
  if size < 0 then redis.call('SET', KEYS[2], 0) end
end
return gone
"""


class RedisQueue:
    """`ForwardQueue` on a Redis stream (`RedisStore.forward_queue`)."""

    durable = True

    def __init__(
        self, client: redis.Redis | RedisCluster, prefix: str, max_bytes: int, *, lease_s: float = LEASE_S
    ) -> None:
        from redis.exceptions import RedisError, ResponseError

        self._errors: tuple[type[Exception], ...] = (RedisError,)
        self.max_bytes = max_bytes
        self.lease_s = lease_s
        self._client = client
        self._stream = f"{prefix}:forward"
        self._size = f"{prefix}:forward:bytes"
        self._consumer = f"{os.uname().nodename[:64]}-{os.getpid()}-{secrets.token_hex(4)}"
        self._put = client.register_script(_PUT)
        self._done = client.register_script(_DONE)
        self._bytes = 0
        self._lock = threading.Lock()
        with self._failing("open"):
            try:
                client.xgroup_create(self._stream, _GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._bytes = int(client.get(self._size) or 0)

    @contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StoreError(f"redis forward queue: {doing}: {type(exc).__name__}: {exc}") from exc

    def room(self, size: int) -> bool:
        if self._bytes + size <= self.max_bytes:
            return True
        with self._failing("read"):  # the cached size may be another replica's drain behind
            self._bytes = int(self._client.get(self._size) or 0)
        return self._bytes + size <= self.max_bytes

    def put(self, body: bytes, spans: int) -> None:
        with self._failing("put"):
            size = int(self._put(keys=[self._stream, self._size], args=[body, spans, self.max_bytes]))
        if size < 0:
            raise QueueFull(f"forward queue full: over {self.max_bytes} bytes")
        self._bytes = size

    def claim(self, now: float) -> Claimed | None:
        client = self._client
        with self._lock, self._failing("claim"):
            # A batch whose lease ran out first (its claimer died, or lost a reply), then a new one.
            for entries in (
                _claimed(client.xautoclaim(self._stream, _GROUP, self._consumer, int(self.lease_s * 1000), count=1)),
                _entries(client.xreadgroup(_GROUP, self._consumer, {self._stream: ">"}, count=1)),
            ):
                for entry_id, fields in entries:
                    if fields:  # an entry deleted while pending reads as empty: nothing to send
                        return Claimed(_text(entry_id), bytes(fields[b"b"]), int(fields[b"s"]))
                    client.xack(self._stream, _GROUP, entry_id)
        return None

    def hold(self, claimed: Claimed, now: float) -> None:
        with self._failing("hold"):
            self._client.xclaim(self._stream, _GROUP, self._consumer, 0, [claimed.id], justid=True)

    def done(self, claimed: Claimed) -> None:
        with self._failing("done"):
            self._done(keys=[self._stream, self._size], args=[_GROUP, claimed.id, len(claimed.body)])
            self._bytes = int(self._client.get(self._size) or 0)

    def depth(self) -> tuple[int, int]:
        with self._failing("read"):
            count = int(self._client.xlen(self._stream))
            self._bytes = int(self._client.get(self._size) or 0)
        return count, self._bytes

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._consumer = f"{os.uname().nodename[:64]}-{os.getpid()}-{secrets.token_hex(4)}"

    def close(self) -> None:
        pass  # the store owns the client


def _entries(reply: Any) -> list[tuple[Any, dict[bytes, Any]]]:
    """`XREADGROUP`'s reply (a list of [stream, entries], or a RESP3 dict) as its entries."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for entries in reply.values() for entry in (entries[0] if entries else [])]
    return [entry for _stream, entries in reply for entry in entries]


def _claimed(reply: Any) -> list[tuple[Any, dict[bytes, Any]]]:
    """`XAUTOCLAIM`'s reply: [next id, entries, (deleted ids)]."""
    return list(reply[1]) if reply and len(reply) > 1 else []


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
