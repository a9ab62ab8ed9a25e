"""Redis (or Valkey) store: state shared by every replica, changed only by short Lua scripts.

Every change is one script, so it is atomic on the server and no replica ever reads, changes in
Python and writes back:

- `apply` dedupes each span and adds its spend to integer nano-USD counters in one script per
  chunk of records (chunks of one batch go out in one pipeline, one round trip);
- `admit` reads every budget a request falls in and reserves on all of them, or on none, in one
  script, so replicas deciding at once can never overshoot a budget together.

Keys share one hash tag (`{otel_puppy}` by default, `?prefix=` in the URL), so a Redis Cluster
routes every script to one slot; separate deployments or tenants can use separate prefixes.
Calendar counters, rolling windows, dedupe keys and alert marks expire on their own (`PEXPIRE`),
relative to the `now` they were written at. Reservations expire through a sorted set by time
when `admit` or `expire` runs, because their reserved totals must be taken back with them.

Exactly once when a reply is lost: each span's dedupe key records which `apply` wrote it (a
random token). When the connection fails mid-call the store keeps the tokens of that call's
spans, and a retry of the same spans presents them: a span the lost call did apply is then
reported with its original result rather than as a duplicate, and nothing is added twice.

When Redis does not answer, every method raises `StoreError` within the socket timeout (0.5 s by
default, `?socket_timeout=` in the URL), and for a short back-off after a failure at once,
without waiting again; the engine then decides by its fail mode and the span processor keeps
spans until the store is back.

Arithmetic in the scripts is Lua's double: exact for every amount up to 2**53 nano-USD, about
9 million dollars per counter.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from otel_puppy.exceptions import StoreError
from otel_puppy.settings import redact_url
from otel_puppy.store.base import Admission, Admitted, ApplyResult, CheckState, Counter, SpendRecord
from otel_puppy.windows import RollingWindow, Window

try:
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise StoreError("the redis store needs the redis extra: pip install 'otel-puppy[redis]'") from exc

__all__ = ("DEFAULT_PREFIX", "RedisStore")

DEFAULT_PREFIX: Final = "{otel_puppy}"
_SLOTS: Final = 61
_CHUNK: Final = 256
"""Records per `apply` script: a chunk keeps Redis busy for well under a millisecond."""
_DOWN_FOR_S: Final = 0.5
"""After a connection failure, fail at once for this long instead of waiting on the network again."""
_MAX_PENDING_TOKENS: Final = 200_000

_RESULTS: Final = {b"a": ApplyResult.APPLIED, b"d": ApplyResult.DUPLICATE, b"n": ApplyResult.NESTED}

# Shared by the scripts: a rolling window is a ring of 61 sub-buckets in one hash, with running
# totals (fields n, t, r), the newest index written (`last`), and per slot its index and counters.
# It is MemoryStore's ring, moved forward by whoever writes or reads it.
_LIB: Final = r"""
local P = ARGV[1]
local function int(x) return string.format('%d', x) end
-- '-0' is not an integer to Redis
local function neg(s) if s == '0' then return '0' end return '-' .. s end

local function ring_advance(key, newest)
  local last = tonumber(redis.call('HGET', key, 'last') or '-1')
  if newest <= last then return end
  local first = math.max(last + 1, newest - 60)
  for i = first, newest do
    local s = tostring(i % 61)
    local old = redis.call('HMGET', key, 'i' .. s, 'n' .. s, 't' .. s, 'r' .. s)
    if old[1] then
      redis.call('HINCRBY', key, 'n', neg(old[2]))
      redis.call('HINCRBY', key, 't', neg(old[3]))
      redis.call('HINCRBY', key, 'r', neg(old[4]))
    end
    redis.call('HSET', key, 'i' .. s, int(i), 'n' .. s, '0', 't' .. s, '0', 'r' .. s, '0')
  end
  redis.call('HSET', key, 'last', int(newest))
end

local function ring_read(key, idx)
  if redis.call('EXISTS', key) == 0 then return 0, 0, 0 end
  ring_advance(key, idx)
  local v = redis.call('HMGET', key, 'n', 't', 'r')
  return tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')
end

local function counter_read(kind, key, idx)
  if kind == 'r' then return ring_read(key, tonumber(idx)) end
  local v = redis.call('HMGET', key, 'n', 't', 'r')
  return tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')
end

local function release(id)
  local rkey = P .. ':r:' .. id
  local r = redis.call('HMGET', rkey, 'n', 't', 'k', 'c')
  if not r[4] then return 0 end
  local n, t = r[1], r[2]
  local reserved = P .. ':reserved'
  for i = 1, tonumber(r[4]) do
    local scope = redis.call('HGET', rkey, 's' .. i)
    local left_n = redis.call('HINCRBY', reserved, 'n|' .. scope, neg(n))
    local left_t = redis.call('HINCRBY', reserved, 't|' .. scope, neg(t))
    if left_n == 0 and left_t == 0 then redis.call('HDEL', reserved, 'n|' .. scope, 't|' .. scope) end
  end
  if r[3] ~= '' then redis.call('ZREM', P .. ':settle:' .. r[3], id) end
  redis.call('ZREM', P .. ':rexp', id)
  redis.call('DEL', rkey)
  return 1
end

local function expire_reservations(now)
  local ids = redis.call('ZRANGEBYSCORE', P .. ':rexp', '-inf', now)
  for _, id in ipairs(ids) do release(id) end
  return #ids
end
"""

# ARGV: prefix, token, record count, counter count, then per counter: kind (c|r), key, bucket
# index (rolling) or '', ttl ms; then per record: span key, parent key, token ('' = this call's),
# dedupe ttl ms, decision id, settle key, increment count, then per increment: counter number
# (from 1), nanos, tokens. Spend of the applied records is summed per counter first, so a batch
# writes each counter once. Returns one result letter per record.
_APPLY: Final = (
    _LIB
    + r"""
local batch_token = ARGV[2]
local count, counters = tonumber(ARGV[3]), tonumber(ARGV[4])
local settling = redis.call('EXISTS', P .. ':rexp') == 1
local out, here = {}, {}
local sum_n, sum_t, sum_r = {}, {}, {}
local a = 5 + 4 * counters
for _ = 1, count do
  local span, parent, token, ttl = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local decision, settle, incs = ARGV[a + 4], ARGV[a + 5], tonumber(ARGV[a + 6])
  local first = a + 7
  a = first + 3 * incs
  if token == '' then token = batch_token end
  local seen_key = P .. ':s:' .. span
  local seen = redis.call('GET', seen_key)
  if seen then
    -- Written by a call whose reply was lost: report what it did; anyone else's is a duplicate.
    if not here[span] and string.sub(seen, 1, -3) == token then
      out[#out + 1] = string.sub(seen, -1)
    else
      out[#out + 1] = 'd'
    end
    here[span] = true
  else
    here[span] = true
    local result = 'a'
    if redis.call('EXISTS', P .. ':c:' .. span) == 1
      or (parent ~= '' and redis.call('EXISTS', P .. ':s:' .. parent) == 1) then
      result = 'n'
    end
    redis.call('SET', seen_key, token .. ':' .. result, 'PX', ttl)
    if result == 'n' then
      if settling and decision ~= '' then release(decision) end
    else
      if parent ~= '' then redis.call('SET', P .. ':c:' .. parent, '1', 'PX', ttl) end
      for i = first, a - 1, 3 do
        local c = tonumber(ARGV[i])
        sum_n[c] = (sum_n[c] or 0) + tonumber(ARGV[i + 1])
        sum_t[c] = (sum_t[c] or 0) + tonumber(ARGV[i + 2])
        sum_r[c] = (sum_r[c] or 0) + 1
      end
      if settling and not (decision ~= '' and release(decision) == 1) and settle ~= '' then
        local oldest = redis.call('ZRANGE', P .. ':settle:' .. settle, 0, 0)
        if oldest[1] then release(oldest[1]) end
      end
    end
    out[#out + 1] = result
  end
end
for c = 1, counters do
  if sum_r[c] then
    local base = 1 + 4 * c
    local kind, key, idx, kttl = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
    local n, t, r = int(sum_n[c]), int(sum_t[c]), int(sum_r[c])
    if kind == 'r' then
      local index = tonumber(idx)
      ring_advance(key, index)
      local s = tostring(index % 61)
      if redis.call('HGET', key, 'i' .. s) == idx then
        redis.call('HINCRBY', key, 'n' .. s, n)
        redis.call('HINCRBY', key, 't' .. s, t)
        redis.call('HINCRBY', key, 'r' .. s, r)
        redis.call('HINCRBY', key, 'n', n)
        redis.call('HINCRBY', key, 't', t)
        redis.call('HINCRBY', key, 'r', r)
      end
      if redis.call('PTTL', key) < tonumber(kttl) then redis.call('PEXPIRE', key, kttl) end
    else
      redis.call('HINCRBY', key, 'n', n)
      redis.call('HINCRBY', key, 't', t)
      if redis.call('HINCRBY', key, 'r', r) == sum_r[c] then redis.call('PEXPIRE', key, kttl) end
    end
  end
end
return out
"""
)

# ARGV: prefix, now, then per read: kind, key, index. Returns three integers per read.
_TOTALS: Final = (
    _LIB
    + r"""
local out = {}
for i = 3, #ARGV, 3 do
  local n, t, r = counter_read(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  out[#out + 1] = n
  out[#out + 1] = t
  out[#out + 1] = r
end
return out
"""
)

# ARGV: prefix, now, decision id, nanos, tokens, expires at, settle key, reserve (1|0), then per
# check: kind, key, index, scope, limit nanos ('' = none), limit tokens, blocking (1|0).
# Returns the reserved flag, then per check: spent nanos, spent tokens, reserved nanos, reserved
# tokens, fits. The rule is `store.base.check_state`.
_ADMIT: Final = (
    _LIB
    + r"""
local now, id, nanos, tokens = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
expire_reservations(now)
local function fits(limit, used, amount)
  if limit == '' then return true end
  limit = tonumber(limit)
  if amount > 0 then return used + amount <= limit end
  return used < limit
end
local out = {0}
local admitted = true
local scopes = {}
local reserved = P .. ':reserved'
for i = 9, #ARGV, 7 do
  local scope = ARGV[i + 3]
  local sn, st = counter_read(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  local r = redis.call('HMGET', reserved, 'n|' .. scope, 't|' .. scope)
  local rn, rt = tonumber(r[1] or '0'), tonumber(r[2] or '0')
  local ok = fits(ARGV[i + 4], sn + rn, nanos) and fits(ARGV[i + 5], st + rt, tokens)
  if ARGV[i + 6] == '1' and not ok then admitted = false end
  scopes[#scopes + 1] = scope
  out[#out + 1] = sn
  out[#out + 1] = st
  out[#out + 1] = rn
  out[#out + 1] = rt
  out[#out + 1] = ok and 1 or 0
end
if admitted and ARGV[8] == '1' and (nanos > 0 or tokens > 0) and #scopes > 0 then
  release(id)  -- the same decision admitted again replaces its reservation
  local rkey = P .. ':r:' .. id
  local settle = ARGV[7]
  redis.call('HSET', rkey, 'n', ARGV[4], 't', ARGV[5], 'k', settle, 'c', int(#scopes))
  for i, scope in ipairs(scopes) do
    redis.call('HSET', rkey, 's' .. i, scope)
    redis.call('HINCRBY', reserved, 'n|' .. scope, ARGV[4])
    redis.call('HINCRBY', reserved, 't|' .. scope, ARGV[5])
  end
  redis.call('ZADD', P .. ':rexp', ARGV[6], id)
  if settle ~= '' then
    redis.call('ZADD', P .. ':settle:' .. settle, redis.call('INCR', P .. ':rseq'), id)
  end
  out[1] = 1
end
return out
"""
)

_RELEASE: Final = _LIB + "\nreturn release(ARGV[2])\n"

# Marks are few (one per alert crossing), so they keep an expiry index and `expire` counts them.
_MARK: Final = r"""
local P = ARGV[1]
if redis.call('SET', P .. ':m:' .. ARGV[2], '1', 'NX') then
  redis.call('ZADD', P .. ':mexp', ARGV[3], ARGV[2])
  return 1
end
return 0
"""
_UNMARK: Final = r"""
local P = ARGV[1]
redis.call('DEL', P .. ':m:' .. ARGV[2])
redis.call('ZREM', P .. ':mexp', ARGV[2])
return 0
"""
# ARGV: prefix, namespace, then per item: key, version, blob. Returns key, version, blob of every key.
_MERGE: Final = r"""
local blobs = ARGV[1] .. ':vstate:' .. ARGV[2]
local versions = blobs .. ':v'
for i = 3, #ARGV, 3 do
  local kept = tonumber(redis.call('HGET', versions, ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > kept then
    redis.call('HSET', versions, ARGV[i], ARGV[i + 1])
    redis.call('HSET', blobs, ARGV[i], ARGV[i + 2])
  end
end
local out = {}
local all = redis.call('HGETALL', versions)
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = redis.call('HGET', blobs, all[i])
end
return out
"""
_EXPIRE: Final = (
    _LIB
    + r"""
local marks = redis.call('ZRANGEBYSCORE', P .. ':mexp', '-inf', ARGV[2])
for _, key in ipairs(marks) do redis.call('DEL', P .. ':m:' .. key) end
redis.call('ZREMRANGEBYSCORE', P .. ':mexp', '-inf', ARGV[2])
return #marks + expire_reservations(ARGV[2])
"""
)


class RedisStore:
    """State in Redis (or Valkey), shared by every replica and process that uses the same prefix.

    >>> store = RedisStore.from_url("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> store = RedisStore.from_url("redis://redis:6379/0?prefix={team-a}&socket_timeout=0.25")  # doctest: +SKIP

    Raises:
        StoreError: the URL is not a Redis URL this store understands.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX, url: str = "redis://") -> None:
        if "{" not in prefix or "}" not in prefix:
            raise StoreError(f"redis store prefix {prefix!r} needs a hash tag such as {{otel_puppy}} (Redis Cluster)")
        self.prefix = prefix
        self._url = url
        self._client = client
        self._route = f"{prefix}:reserved"
        """Every script names this key, so Redis Cluster routes it to the slot of the prefix's hash tag."""
        self._apply = client.register_script(_APPLY)
        self._totals = client.register_script(_TOTALS)
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)
        self._mark = client.register_script(_MARK)
        self._unmark = client.register_script(_UNMARK)
        self._expire = client.register_script(_EXPIRE)
        self._merge = client.register_script(_MERGE)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self._pending_tokens: OrderedDict[str, str] = OrderedDict()
        """Span key -> token of an `apply` whose reply was lost; a retry presents it."""

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """`redis://[user:password@]host:port/db` (or `rediss://` for TLS, `unix://` for a socket).

        Query parameters: `prefix` (default `{otel_puppy}`), `socket_timeout` and
        `socket_connect_timeout` in seconds (default 0.5 each), and any other redis-py URL option.

        Raises:
            StoreError: not a URL redis-py accepts.
        """
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = query.pop("prefix", DEFAULT_PREFIX)
        query.setdefault("socket_timeout", "0.5")
        query.setdefault("socket_connect_timeout", "0.5")
        clean = urlunsplit(parts._replace(query=urlencode(query)))
        try:
            # No retries inside redis-py: the caller decides (fail mode, buffered spans), and a
            # retried script must present its token, which only this store knows.
            client = redis.Redis.from_url(clean, retry=None, health_check_interval=0)
        except (ValueError, RedisError) as exc:
            raise StoreError(f"redis store {redact_url(url)}: {exc}") from exc
        return cls(client, prefix=prefix, url=redact_url(url))

    # --- calls -----------------------------------------------------------------------------------

    @contextmanager
    def _call(self, doing: str) -> Iterator[None]:
        """Turn Redis failures into `StoreError`, and fail at once for a moment after a lost connection."""
        if time.monotonic() < self._down_until:
            raise StoreError(
                f"redis store {self._url}: {doing} failed: unreachable ({self._down_reason}); retrying soon"
            )
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._down_reason = f"{type(exc).__name__}: {exc}"
            self._down_until = time.monotonic() + _DOWN_FOR_S
            raise StoreError(f"redis store {self._url}: {doing} failed: {self._down_reason}") from exc
        except RedisError as exc:
            raise StoreError(f"redis store {self._url}: {doing} failed: {type(exc).__name__}: {exc}") from exc

    def _key(self, scope: str, window: Window, ts: float) -> tuple[str, str, str, float]:
        """(kind, key, index, expiry) of the counter of `scope` in the window current at `ts`; the
        counter is kept until its window's retention after it stops counting."""
        if isinstance(window, RollingWindow):
            index = int(ts // window.step)
            expires = (index + 1) * window.step + window.retention()
            return "r", f"{self.prefix}:roll:{window.label}:{scope}", str(index), expires
        start, end = window.bounds(ts)
        return "c", f"{self.prefix}:cal:{window.unit}:{start!r}:{scope}", "", end + window.retention()

    # --- spans -----------------------------------------------------------------------------------

    def apply(self, records: Sequence[SpendRecord], now: float) -> list[ApplyResult]:
        """Dedupe and apply each record atomically (one script per chunk, one pipeline per batch).

        Raises:
            StoreError: Redis did not answer. Records may or may not have been applied; retrying
                the same records is safe (none is counted twice, and each reports its result).
        """
        if not records:
            return []
        token = os.urandom(8).hex()
        pending = self._pending_tokens
        # One token per chunk: a span twice in one call is a duplicate the second time.
        chunks = [
            self._apply_argv(records[first : first + _CHUNK], f"{token}{first}", pending, now)
            for first in range(0, len(records), _CHUNK)
        ]
        try:
            with self._call("apply"):
                if len(chunks) == 1:
                    replies = [self._apply(keys=[self._route], args=chunks[0])]
                else:
                    pipe = self._client.pipeline(transaction=False)
                    for argv in chunks:
                        self._apply(keys=[self._route], args=argv, client=pipe)
                    replies = pipe.execute()
        except StoreError as exc:
            if isinstance(exc.__cause__, (RedisConnectionError, RedisTimeoutError)):
                self._remember(records, token)
            raise
        if pending:
            for record in records:
                pending.pop(record.span_key, None)
        return [_RESULTS[letter] for reply in replies for letter in reply]

    def _apply_argv(
        self, records: Sequence[SpendRecord], token: str, pending: Mapping[str, str], now: float
    ) -> list[str]:
        """The `_APPLY` arguments of one chunk: each counter it touches listed once, records by number."""
        numbers: dict[tuple[str, Window, float], str] = {}
        counters: list[str] = []
        rows: list[str] = []
        for record in records:
            rows += (
                record.span_key,
                record.parent_key or "",
                pending.get(record.span_key, "") if pending else "",
                str(max(1, int((record.dedupe_until - now) * 1000))),
                record.decision_id or "",
                record.settle_key or "",
                str(len(record.increments)),
            )
            for inc in record.increments:
                window = inc.window
                if isinstance(window, RollingWindow):
                    bucket: float = int(inc.ts // window.step)
                else:
                    bucket = window.bounds(inc.ts)[0]
                number = numbers.get((inc.scope, window, bucket))
                if number is None:
                    number = numbers[(inc.scope, window, bucket)] = str(len(numbers) + 1)
                    kind, key, index, expires = self._key(inc.scope, window, inc.ts)
                    counters += (kind, key, index, str(max(1, int((expires - now) * 1000))))
                rows += (number, str(inc.nanos), str(inc.tokens))
        return [self.prefix, token, str(len(records)), str(len(numbers)), *counters, *rows]

    def _remember(self, records: Sequence[SpendRecord], token: str) -> None:
        """The reply was lost: keep the token each span went out with (its first) for the retry."""
        with self._lock:
            pending = self._pending_tokens
            for i, record in enumerate(records):
                pending.setdefault(record.span_key, f"{token}{i - i % _CHUNK}")
            while len(pending) > _MAX_PENDING_TOKENS:
                pending.popitem(last=False)

    # --- reading ---------------------------------------------------------------------------------

    def totals(self, reads: Sequence[tuple[str, Window]], now: float) -> list[Counter]:
        """Spend of each (scope, window) in the window current at `now`, read in one script."""
        if not reads:
            return []
        argv: list[str] = [self.prefix, repr(now)]
        for scope, window in reads:
            argv += self._key(scope, window, now)[:3]
        with self._call("totals"):
            reply = self._totals(keys=[self._route], args=argv)
        return [Counter(reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]

    # --- admission -------------------------------------------------------------------------------

    def admit(self, admission: Admission, now: float) -> Admitted:
        """Check every budget and reserve on all of them iff every blocking one fits, in one script."""
        argv: list[str] = [
            self.prefix,
            repr(now),
            admission.decision_id,
            str(admission.nanos),
            str(admission.tokens),
            repr(admission.expires_at),
            admission.settle_key or "",
            "1" if admission.reserve else "0",
        ]
        for check in admission.checks:
            argv += self._key(check.scope, check.window, now)[:3]
            argv += (
                check.scope,
                "" if check.limit_nanos is None else str(check.limit_nanos),
                "" if check.limit_tokens is None else str(check.limit_tokens),
                "1" if check.blocking else "0",
            )
        with self._call("admit"):
            reply = self._admit(keys=[self._route], args=argv)
        states = tuple(
            CheckState(reply[i], reply[i + 1], reply[i + 2], reply[i + 3], reply[i + 4] == 1)
            for i in range(1, len(reply), 5)
        )
        return Admitted(reply[0] == 1, states)

    def release(self, decision_id: str) -> bool:
        """Drop a reservation (the call will not happen); False if it was not open."""
        with self._call("release"):
            return bool(self._release(keys=[self._route], args=[self.prefix, decision_id]))

    # --- marks -----------------------------------------------------------------------------------

    def mark(self, key: str, expires_at: float) -> bool:
        """Set `key` if absent (True) or report it was set already (False), for every replica."""
        with self._call("mark"):
            return bool(self._mark(keys=[self._route], args=[self.prefix, key, repr(expires_at)]))

    def unmark(self, key: str) -> None:
        with self._call("unmark"):
            self._unmark(keys=[self._route], args=[self.prefix, key])

    # --- state blobs -----------------------------------------------------------------------------

    def save_state(self, namespace: str, items: Mapping[str, bytes]) -> None:
        """Insert or replace each key's blob (one `HSET`: atomic)."""
        if not items:
            return
        with self._call("save state"):
            self._client.hset(f"{self.prefix}:state:{namespace}", mapping=dict(items))  # type: ignore[arg-type]

    def load_state(self, namespace: str) -> dict[str, bytes]:
        with self._call("load state"):
            raw: dict[bytes, bytes] = self._client.hgetall(f"{self.prefix}:state:{namespace}")  # type: ignore[assignment]
        return {key.decode(): value for key, value in raw.items()}

    def delete_state(self, namespace: str, keys: Iterable[str]) -> None:
        """Forget these keys (one `HDEL`: atomic)."""
        names = list(keys)
        if not names:
            return
        with self._call("delete state"):
            self._client.hdel(f"{self.prefix}:state:{namespace}", *names)

    def merge_state(self, namespace: str, items: Mapping[str, tuple[int, bytes]]) -> dict[str, tuple[int, bytes]]:
        """Keep each key's blob where its version is higher, then read the namespace: one script."""
        argv: list[str | bytes] = [self.prefix, namespace]
        for key, (version, data) in items.items():
            argv += (key, str(version), data)
        with self._call("merge state"):
            reply = self._merge(keys=[self._route], args=argv)
        return {reply[i].decode(): (int(reply[i + 1]), reply[i + 2]) for i in range(0, len(reply), 3)}

    # --- housekeeping ----------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Drop expired reservations and alert marks; returns how many.

        Counters, rolling windows and dedupe keys carry their own `PEXPIRE` and are forgotten by
        Redis itself, so they are not counted here.
        """
        with self._call("expire"):
            return int(self._expire(keys=[self._route], args=[self.prefix, repr(now)]))

    def ping(self) -> None:
        """Raise `StoreError` unless Redis answers now (readiness)."""
        with self._call("ping"):
            self._client.ping()

    def close(self) -> None:
        """Close the connections (idempotent); Redis keeps the state."""
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self._url!r}, prefix={self.prefix!r})"
