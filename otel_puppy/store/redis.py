"""Redis (or Valkey) store: state shared by every replica, changed only by short Lua scripts.

Every change is one script, so it is atomic on the server and no replica ever reads, changes in
Python and writes back:

- `apply` dedupes each span and adds its spend to integer nano-USD counters in one script per
  chunk of records (chunks of one batch go out in one pipeline, one round trip);
- `admit` reads every budget a request falls in and reserves on all of them, or on none, in one
  script, so replicas deciding at once can never overshoot a budget together.

Keys share one hash tag (`{otel_puppy}` by default, `?prefix=` in the URL), so a Redis Cluster
routes every script to one slot; separate deployments or tenants can use separate prefixes. A
cluster is named by `redis+cluster://host:port` (`rediss+cluster://` for TLS): any node of it, from
which redis-py's `RedisCluster` learns the rest; it follows MOVED and ASK redirects, and a batch's
scripts go out in one pipeline to the node that owns the prefix's slot.
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

Numbers in the scripts are Lua doubles, exact up to 2**53, so every count is kept in
`[0, CEILING]` (2**53 - 1: $9,007,199.254740991 in nano-USD, or as many tokens or requests) and
saturates there, as on every store: the caller clamps amounts and limits into that range, the
scripts add two counts at a time (at most 2**54 - 2, clamped exactly), ring totals are kept by
`HINCRBY` (Redis's int64, at most 61 counts), and reserved totals as two counts worth
`hi * 2**40 + lo`, exact for any number of reservations. A value a script cannot read back as a
count (garbage written by another client, a float, a negative number) reads as the ceiling, so its
budget denies, and is reported (`health()`); the scripts never fail on one.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from otel_puppy.exceptions import StoreError
from otel_puppy.forward.queue import ForwardQueue
from otel_puppy.forward.redis_queue import RedisQueue
from otel_puppy.ledger import COUNTS, HOUR, MAX_LEDGER_ROWS, OTHER_DIMS
from otel_puppy.settings import redact_url
from otel_puppy.store.base import (
    CEILING,
    MAX_CALL_SPANS,
    MAX_OUTCOMES,
    MAX_SAMPLE_KEYS,
    MAX_SAMPLES,
    Admission,
    Admitted,
    ApplyResult,
    BudgetCheck,
    CheckState,
    Counter,
    Outcome,
    Sample,
    SpendRecord,
    StateReport,
    StoreHealth,
    SubBucket,
    clamp,
    fullest_states,
    newest_samples,
)
from otel_puppy.windows import RollingWindow, Window

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisClusterException, RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry
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

# Shared by the scripts. Every count is an integer in [0, CEILING] (2**53 - 1, exact as a Lua
# double): `count` reads one back (absent: 0; anything else: nil, unreadable), `add` adds two of
# them saturated at the ceiling (a + b <= 2**54 - 2, and rounding above 2**53 cannot bring a sum
# over the ceiling back under it, so the clamp is exact). No other arithmetic is done on doubles:
#
# - A calendar counter is a hash (fields n, t, r) of counts, written with HSET.
# - A rolling window is a ring of 61 sub-buckets in one hash: per slot its index and counts, the
#   newest index written (`last`), and running totals (n, t, r) kept by HINCRBY, i.e. by Redis's
#   exact int64 arithmetic (61 counts of at most 2**53 - 1 never reach 2**63); read saturated. It
#   is MemoryStore's ring, moved forward by whoever writes or reads it. A ring with an unreadable
#   field is marked (`p`): it reads as the ceiling and is not written until it expires.
# - A scope's reserved total is exact whatever the number of reservations: two counts, hi and lo,
#   worth hi * 2**40 + lo (fields n|scope and N|scope, t|scope and T|scope); read saturated.
_LIB: Final = (
    f"local MAX_OUTCOMES = {MAX_OUTCOMES}\n"
    + r"""
local P = ARGV[1]
local C = 9007199254740991
local B = 1099511627776
local sat, bad = 0, 0
local function int(x) return string.format('%d', x) end
-- '-0' is not an integer to Redis
local function neg(s) if s == '0' then return '0' end return '-' .. s end

local function count(s)
  if not s then return 0 end
  if s == '0' then return 0 end
  if #s <= 16 and string.find(s, '^[1-9]%d*$') then
    local v = tonumber(s)
    if v <= C then return v end
  end
  return nil
end

local function total(s)
  if not s or s == '0' then return 0 end
  if #s <= 19 and string.find(s, '^[1-9]%d*$') then return math.min(tonumber(s), C) end
  return nil
end

local function add(a, b)
  local v = a + b
  if v > C then return C end
  return v
end

local function poison(key)
  redis.call('HSET', key, 'p', '1')
  bad = bad + 1
  return false
end

-- Move the ring forward to `newest`; false if it is unreadable (marked). When it did not move,
-- also its running totals (as read), which the caller may use instead of reading them again.
local function ring_advance(key, newest)
  local h = redis.call('HMGET', key, 'last', 'p', 'n', 't', 'r')
  if h[2] then
    bad = bad + 1
    return false
  end
  local last = -1
  if h[1] then
    last = tonumber(h[1])
    if not last or not string.find(h[1], '^%-?%d+$') then return poison(key) end
  end
  local n, t, r = total(h[3]), total(h[4]), total(h[5])
  if not (n and t and r) then return poison(key) end
  if newest <= last then return true, n, t, r end
  local first = math.max(last + 1, newest - 60)
  for i = first, newest do
    local s = tostring(i % 61)
    local old = redis.call('HMGET', key, 'i' .. s, 'n' .. s, 't' .. s, 'r' .. s)
    if old[1] then
      if not (count(old[2]) and count(old[3]) and count(old[4])) then return poison(key) end
      if old[2] then redis.call('HINCRBY', key, 'n', neg(old[2])) end
      if old[3] then redis.call('HINCRBY', key, 't', neg(old[3])) end
      if old[4] then redis.call('HINCRBY', key, 'r', neg(old[4])) end
    end
    redis.call('HSET', key, 'i' .. s, int(i), 'n' .. s, '0', 't' .. s, '0', 'r' .. s, '0')
  end
  redis.call('HSET', key, 'last', int(newest))
  return true
end

local function ring_read(key, idx)
  if redis.call('EXISTS', key) == 0 then return 0, 0, 0 end
  local ok, n0, t0, r0 = ring_advance(key, idx)
  if not ok then return C, C, C end
  if n0 then return n0, t0, r0 end
  local v = redis.call('HMGET', key, 'n', 't', 'r')
  local n, t, r = total(v[1]), total(v[2]), total(v[3])
  if n and t and r then return n, t, r end
  poison(key)
  return C, C, C
end

local function checked(v)
  if v then return v end
  bad = bad + 1
  return C
end

local function counter_read(kind, key, idx)
  if kind == 'r' then return ring_read(key, tonumber(idx)) end
  local v = redis.call('HMGET', key, 'n', 't', 'r')
  return checked(count(v[1])), checked(count(v[2])), checked(count(v[3]))
end

local reserved = P .. ':reserved'

-- The reserved total hi * B + lo, saturated at C (an unreadable half reads as C).
local function wide(lo, hi)
  local l, h = count(lo), count(hi)
  if not (l and h) then
    bad = bad + 1
    return C
  end
  if h >= 8192 then return C end
  return math.min(h * B + l, C)
end

local function held(scope)
  local r = redis.call('HMGET', reserved, 'n|' .. scope, 'N|' .. scope, 't|' .. scope, 'T|' .. scope)
  return wide(r[1], r[2]), wide(r[3], r[4])
end

-- Add `delta` (an integer, |delta| <= C) to a reserved total, exactly.
local function wide_add(lo_field, hi_field, delta)
  local r = redis.call('HMGET', reserved, lo_field, hi_field)
  local l, h = count(r[1]), count(r[2])
  if not (l and h) then
    bad = bad + 1  -- left as it is: it keeps reading as the ceiling
    return
  end
  local carry = math.floor(l / B)  -- a total written whole by an older version
  l, h = l - carry * B, h + carry
  local dh = math.floor(delta / B)
  l, h = l + (delta - dh * B), h + dh
  if l >= B then l, h = l - B, h + 1 end
  if h < 0 then
    bad = bad + 1  -- less than nothing reserved: not from this store's own writes
    l, h = 0, 0
  end
  if l == 0 and h == 0 then
    redis.call('HDEL', reserved, lo_field, hi_field)
  else
    redis.call('HSET', reserved, lo_field, int(l), hi_field, int(h))
  end
end

-- A reservation dropped is an outcome (`Store.take_outcomes`): 'outcome|source|estimate|cost',
-- newest first in one list, at most MAX_OUTCOMES long.
local function release(id, outcome, cost)
  local rkey = P .. ':r:' .. id
  local r = redis.call('HMGET', rkey, 'n', 't', 'k', 'c', 'o')
  if not r[4] then return 0 end
  local outcomes = P .. ':outcomes'
  redis.call('LPUSH', outcomes, outcome .. '|' .. (r[5] or 'none') .. '|' .. (r[1] or '0') .. '|' .. (cost or '0'))
  redis.call('LTRIM', outcomes, 0, MAX_OUTCOMES - 1)
  local n, t, c = count(r[1]), count(r[2]), count(r[4])
  if n and t and c and c <= redis.call('HLEN', rkey) then
    for i = 1, c do
      local scope = redis.call('HGET', rkey, 's' .. i)
      if scope then
        if redis.call('HEXISTS', rkey, 'u' .. i) == 1 then  -- a call budget: it held one call
          wide_add('t|' .. scope, 'T|' .. scope, -1)
        else
          wide_add('n|' .. scope, 'N|' .. scope, -n)
          wide_add('t|' .. scope, 'T|' .. scope, -t)
        end
      end
    end
  else
    bad = bad + 1  -- an unreadable reservation goes without taking anything back (stricter)
  end
  if r[3] and r[3] ~= '' then redis.call('ZREM', P .. ':settle:' .. r[3], id) end
  redis.call('ZREM', P .. ':rexp', id)
  redis.call('DEL', rkey)
  return 1
end

local function expire_reservations(now)
  local ids = redis.call('ZRANGEBYSCORE', P .. ':rexp', '-inf', now)
  for _, id in ipairs(ids) do release(id, 'expired') end
  return #ids
end
"""
)

# ARGV: prefix, token, record count, counter count, then per counter: kind (c|r), key, bucket
# index (rolling) or '', ttl ms; then per record: span key, parent key, token ('' = this call's),
# dedupe ttl ms, decision id, settle key, weak ('1' or ''), call keys ttl ms, call key count, then per call key: key,
# start and end (integer microseconds), source, identified ('1' or '0'); then increment count, then
# per increment: counter number
# (from 1), nanos, tokens (counts, clamped by the caller); then '1' and its ledger row (hour, dims,
# ttl ms, the `ledger.COUNTS`), or '0' for none. Spend of the applied records is summed
# per counter first (saturated), so a batch writes each counter once. Returns one result letter
# per record, then how many counts are at the ceiling after the batch, then how many values were
# unreadable.
_APPLY: Final = (
    _LIB
    + f"local MAX_CALL_SPANS = {MAX_CALL_SPANS}\n"
    + f"local MAX_LEDGER_ROWS, LEDGER_COUNTS = {MAX_LEDGER_ROWS}, {len(COUNTS)}\n"
    + f"local OTHER_DIMS = [=[{OTHER_DIMS}]=]\n"
    + r"""
-- The cost ledger (`ledger.py`): per hour a hash, per dims one field of comma-separated counts, each
-- saturated at the ceiling; past MAX_LEDGER_ROWS fields a new row is added to OTHER_DIMS instead.
local function ledger_add(at)
  local key = P .. ':lg:' .. ARGV[at]
  local dims = ARGV[at + 1]
  local row = redis.call('HGET', key, dims)
  if not row and redis.call('HLEN', key) >= MAX_LEDGER_ROWS then
    dims = OTHER_DIMS
    row = redis.call('HGET', key, dims)
  end
  local kept = {}
  if row then for value in string.gmatch(row, '[^,]+') do kept[#kept + 1] = value end end
  local out_ = {}
  for j = 1, LEDGER_COUNTS do
    local old = 0
    if row then old = count(kept[j] or 'x') end
    if not old then
      old = C
      bad = bad + 1
    end
    out_[j] = int(add(old, tonumber(ARGV[at + 2 + j])))
  end
  redis.call('HSET', key, dims, table.concat(out_, ','))
  if redis.call('PTTL', key) < tonumber(ARGV[at + 2]) then redis.call('PEXPIRE', key, ARGV[at + 2]) end
end
"""
    + r"""
local batch_token = ARGV[2]
local count_, counters = tonumber(ARGV[3]), tonumber(ARGV[4])
local settling = redis.call('EXISTS', P .. ':rexp') == 1
local out, here = {}, {}
local sum_n, sum_t, sum_r = {}, {}, {}
local a = 5 + 4 * counters
for _ = 1, count_ do
  local span, parent, token, ttl = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local decision, settle, weak = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6] == '1'
  local calls_ttl, nkeys = ARGV[a + 7], tonumber(ARGV[a + 8])
  local keys_at = a + 9
  local incs = tonumber(ARGV[keys_at + 5 * nkeys])
  local first = keys_at + 5 * nkeys + 1
  local last = first + 3 * incs - 1
  local ledger_at = last + 2  -- after the ledger flag: hour, dims, ttl ms, then the counts
  local ledgered = ARGV[last + 1] == '1'
  a = last + 2
  if ledgered then a = a + 3 + LEDGER_COUNTS end
  local cost = '0'  -- the call's cost: every increment of a record adds it
  if incs > 0 then cost = ARGV[first + 1] end
  if token == '' then token = batch_token end
  -- A weak record (success without usage) is remembered apart: it is nobody's parent.
  local seen_span = span
  if weak then seen_span = span .. '~' end
  local seen_key = P .. ':s:' .. seen_span
  local seen = redis.call('GET', seen_key)
  if seen then
    -- Written by a call whose reply was lost: report what it did; anyone else's is a duplicate.
    if not here[seen_span] and string.sub(seen, 1, -3) == token then
      out[#out + 1] = string.sub(seen, -1)
    else
      out[#out + 1] = 'd'
    end
    here[seen_span] = true
  else
    here[seen_span] = true
    local result = 'a'
    if redis.call('EXISTS', P .. ':c:' .. span) == 1
      or (parent ~= '' and redis.call('EXISTS', P .. ':s:' .. parent) == 1) then
      result = 'n'
    end
    -- Spans of one call that are not parent and child (`CallKey`): per key a sorted set, member
    -- 'start:end:source:identified', score end, at most MAX_CALL_SPANS (those ending last).
    for j = 0, nkeys - 1 do
      if result ~= 'a' then break end
      local b = keys_at + 5 * j
      local start, finish, source, identified = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. ':k:' .. ARGV[b], start, '+inf')) do
        local s, src, id = string.match(m, '^(%d+):%d+:([^:]*):([01])$')
        if s and tonumber(s) <= finish and (src == '' or source == '' or src ~= source)
          and not (id == '1' and identified == '1') then
          result = 'n'
          break
        end
      end
    end
    redis.call('SET', seen_key, token .. ':' .. result, 'PX', ttl)
    if result == 'n' then
      if settling and decision ~= '' then release(decision, 'settled', cost) end
    else
      if not weak then
        if parent ~= '' then redis.call('SET', P .. ':c:' .. parent, '1', 'PX', ttl) end
        for j = 0, nkeys - 1 do
          local b = keys_at + 5 * j
          local key = P .. ':k:' .. ARGV[b]
          local member = ARGV[b + 1] .. ':' .. ARGV[b + 2] .. ':' .. ARGV[b + 3] .. ':' .. ARGV[b + 4]
          redis.call('ZADD', key, ARGV[b + 2], member)
          redis.call('ZREMRANGEBYRANK', key, 0, -(MAX_CALL_SPANS + 1))
          if redis.call('PTTL', key) < tonumber(calls_ttl) then redis.call('PEXPIRE', key, calls_ttl) end
        end
      end
      if ledgered then ledger_add(ledger_at) end
      for i = first, last, 3 do
        local c = tonumber(ARGV[i])
        sum_n[c] = add(sum_n[c] or 0, tonumber(ARGV[i + 1]))
        sum_t[c] = add(sum_t[c] or 0, tonumber(ARGV[i + 2]))
        sum_r[c] = (sum_r[c] or 0) + 1
      end
      if settling and not (decision ~= '' and release(decision, 'settled', cost) == 1) and settle ~= '' then
        local oldest = redis.call('ZRANGE', P .. ':settle:' .. settle, 0, 0)
        if oldest[1] then release(oldest[1], 'settled', cost) end
      end
    end
    out[#out + 1] = result
  end
end
local function at_ceiling(n, t, r)
  local k = 0
  if n == C then k = k + 1 end
  if t == C then k = k + 1 end
  if r == C then k = k + 1 end
  return k
end
for c = 1, counters do
  if sum_r[c] then
    local base = 1 + 4 * c
    local kind, key, idx, kttl = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
    if kind == 'r' then
      local index = tonumber(idx)
      if ring_advance(key, index) then
        local s = tostring(index % 61)
        local v = redis.call('HMGET', key, 'i' .. s, 'n' .. s, 't' .. s, 'r' .. s)
        if v[1] == idx then
          local on, ot, orq = count(v[2]), count(v[3]), count(v[4])
          if on and ot and orq then
            local n, t, r = add(on, sum_n[c]), add(ot, sum_t[c]), add(orq, sum_r[c])
            redis.call('HSET', key, 'n' .. s, int(n), 't' .. s, int(t), 'r' .. s, int(r))
            redis.call('HINCRBY', key, 'n', int(n - on))
            redis.call('HINCRBY', key, 't', int(t - ot))
            redis.call('HINCRBY', key, 'r', int(r - orq))
            sat = sat + at_ceiling(n, t, r)
          else
            poison(key)
          end
        end
        if redis.call('PTTL', key) < tonumber(kttl) then redis.call('PEXPIRE', key, kttl) end
      end
    else
      local v = redis.call('HMGET', key, 'n', 't', 'r')
      -- an unreadable count becomes the ceiling: readable again, and over every limit
      local n = add(checked(count(v[1])), sum_n[c])
      local t = add(checked(count(v[2])), sum_t[c])
      local r = add(checked(count(v[3])), sum_r[c])
      redis.call('HSET', key, 'n', int(n), 't', int(t), 'r', int(r))
      if not v[3] then redis.call('PEXPIRE', key, kttl) end
      sat = sat + at_ceiling(n, t, r)
    end
  end
end
out[#out + 1] = sat
out[#out + 1] = bad
return out
"""
)

# ARGV: prefix, now, then per read: kind, key, index. Returns three counts per read, then how many
# values were unreadable.
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
out[#out + 1] = bad
return out
"""
)

# ARGV: prefix, then per read: ring key, now's sub-bucket index. The ring is moved to now first (as
# any read does). Returns per read: how many sub-buckets, then index, nanos, tokens, requests of
# each that counts and holds spend, oldest first; then how many values were unreadable. An
# unreadable ring is one sub-bucket, now's, at the ceiling.
_SUB_BUCKETS: Final = (
    _LIB
    + r"""
local out = {}
for i = 2, #ARGV, 2 do
  local key, idx = ARGV[i], tonumber(ARGV[i + 1])
  local found = {}
  if redis.call('EXISTS', key) == 1 then
    if not ring_advance(key, idx) then
      found = {idx, C, C, C}
    else
      local last = tonumber(redis.call('HGET', key, 'last'))
      for j = last - 60, last do
        local s = tostring(j % 61)
        local v = redis.call('HMGET', key, 'i' .. s, 'n' .. s, 't' .. s, 'r' .. s)
        if v[1] == int(j) then
          local n, t, r = count(v[2]), count(v[3]), count(v[4])
          if not n then n = checked(n) end
          if not t then t = checked(t) end
          if not r then r = checked(r) end
          if n > 0 or t > 0 or r > 0 then
            found[#found + 1] = j
            found[#found + 1] = n
            found[#found + 1] = t
            found[#found + 1] = r
          end
        end
      end
    end
  end
  out[#out + 1] = #found / 4
  for _, value in ipairs(found) do out[#out + 1] = value end
end
out[#out + 1] = bad
return out
"""
)

# ARGV: prefix, now, decision id, nanos, tokens, expires at, settle key, reserve (1|0), source, then per
# check: kind, key, index, scope, limit nanos ('' = none), limit tokens, blocking (1|0), limit calls
# ('' = not a call budget). Amounts and limits are counts (the caller clamps them). Returns the
# reserved flag, then per check: spent nanos, spent tokens (calls made for a call budget), reserved
# nanos, reserved tokens (calls held), fits; then how many values were unreadable. The rule is
# `store.base.check_state`, computed without a sum past the ceiling: room = limit - reserved -
# spent, one exact subtraction at a time. A call budget holds one call (in its token total) per
# reservation, marked `u<i>` on the reservation so a release takes back one call.
_ADMIT: Final = (
    _LIB
    + r"""
local now, id, nanos, tokens = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
expire_reservations(now)
local function fits(limit, spent, held_, amount)
  if limit == '' then return true end
  local room = tonumber(limit) - held_
  if room < 0 then return false end
  room = room - spent
  if amount > 0 then return amount <= room end
  return room > 0
end
local out = {0}
local admitted = true
local scopes, calls = {}, {}
for i = 10, #ARGV, 8 do
  local scope = ARGV[i + 3]
  local sn, st, sr = counter_read(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  local rn, rt = held(scope)
  local ok
  if ARGV[i + 7] ~= '' then  -- a call budget: one call more
    ok = fits(ARGV[i + 7], sr, rt, 1)
    st = sr
    calls[#scopes + 1] = true
    calls.any = true
  else
    ok = fits(ARGV[i + 4], sn, rn, nanos) and fits(ARGV[i + 5], st, rt, tokens)
  end
  if ARGV[i + 6] == '1' and not ok then admitted = false end
  scopes[#scopes + 1] = scope
  out[#out + 1] = sn
  out[#out + 1] = st
  out[#out + 1] = rn
  out[#out + 1] = rt
  out[#out + 1] = ok and 1 or 0
end
if admitted and ARGV[8] == '1' and (nanos > 0 or tokens > 0 or calls.any) and #scopes > 0 then
  release(id, 'released')  -- the same decision admitted again replaces its reservation
  local rkey = P .. ':r:' .. id
  local settle = ARGV[7]
  redis.call('HSET', rkey, 'n', ARGV[4], 't', ARGV[5], 'k', settle, 'c', int(#scopes), 'o', ARGV[9])
  for i, scope in ipairs(scopes) do
    redis.call('HSET', rkey, 's' .. i, scope)
    if calls[i] then
      redis.call('HSET', rkey, 'u' .. i, '1')
      wide_add('t|' .. scope, 'T|' .. scope, 1)
    else
      wide_add('n|' .. scope, 'N|' .. scope, nanos)
      wide_add('t|' .. scope, 'T|' .. scope, tokens)
    end
  end
  redis.call('ZADD', P .. ':rexp', ARGV[6], id)
  if settle ~= '' then
    redis.call('ZADD', P .. ':settle:' .. settle, redis.call('INCR', P .. ':rseq'), id)
  end
  out[1] = 1
end
out[#out + 1] = bad
return out
"""
)

_RELEASE: Final = _LIB + "\nreturn release(ARGV[2], 'released')\n"
# ARGV: prefix, then hours. Returns per hour its hash's fields and values, flat.
_READ_LEDGER: Final = r"""
local out = {}
for i = 2, #ARGV do out[#out + 1] = redis.call('HGETALL', ARGV[1] .. ':lg:' .. ARGV[i]) end
return out
"""
# ARGV: prefix. Returns the outcomes kept (newest first) and forgets them.
_TAKE_OUTCOMES: Final = r"""
local outcomes = ARGV[1] .. ':outcomes'
local taken = redis.call('LRANGE', outcomes, 0, -1)
redis.call('DEL', outcomes)
return taken
"""

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

# Samples for learned estimates: per key a list of 'at:nanos:tokens', newest first, trimmed to `keep`
# and expiring `ttl` after its last write; an index of keys by write order (`:lkeys`, scored by a
# counter) bounds how many there are. ARGV: prefix, keep, ttl ms, most keys, then per sample: key, entry.
_ADD_SAMPLES: Final = r"""
local P = ARGV[1]
local keep, ttl, most = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local index = P .. ':lkeys'
local order, written = {}, {}
for i = 5, #ARGV, 2 do
  redis.call('LPUSH', P .. ':l:' .. ARGV[i], ARGV[i + 1])
  if not written[ARGV[i]] then
    written[ARGV[i]] = true
    order[#order + 1] = ARGV[i]
  end
end
for _, name in ipairs(order) do
  local key = P .. ':l:' .. name
  redis.call('LTRIM', key, 0, keep - 1)
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', index, redis.call('INCR', P .. ':lseq'), name)
end
local excess = redis.call('ZCARD', index) - most
if excess > 0 then
  for _, name in ipairs(redis.call('ZRANGE', index, 0, excess - 1)) do redis.call('DEL', P .. ':l:' .. name) end
  redis.call('ZREMRANGEBYRANK', index, 0, excess - 1)
end
redis.call('PEXPIRE', index, ttl)
return 0
"""
# ARGV: prefix, then keys. Returns each key's entries, newest first.
_READ_SAMPLES: Final = r"""
local out = {}
for i = 2, #ARGV do out[#out + 1] = redis.call('LRANGE', ARGV[1] .. ':l:' .. ARGV[i], 0, -1) end
return out
"""


def _sample_count(text: bytes) -> int | None:
    """A sample's count as this store wrote it (decimal digits, at most `CEILING`), else None."""
    if not text.isdigit() or len(text) > 16:
        return None
    value = int(text)
    return value if value <= CEILING else None


class RedisStore:
    """State in Redis (or Valkey), shared by every replica and process that uses the same prefix.

    >>> store = RedisStore.from_url("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> store = RedisStore.from_url("redis://redis:6379/0?prefix={team-a}&socket_timeout=0.25")  # doctest: +SKIP

    Raises:
        StoreError: the URL is not a Redis URL this store understands.
    """

    shares_state = True
    """Every replica and process using the same server and prefix sees the same state."""
    does_io = True
    """Every call is a round trip to the server (bounded by the socket timeout)."""

    def __init__(
        self, client: redis.Redis | RedisCluster, *, prefix: str = DEFAULT_PREFIX, url: str = "redis://"
    ) -> None:
        if "{" not in prefix or "}" not in prefix:
            raise StoreError(f"redis store prefix {prefix!r} needs a hash tag such as {{otel_puppy}} (Redis Cluster)")
        self.prefix = prefix
        self._url = url
        self._client = client
        self._route = f"{prefix}:reserved"
        """Every script names this key, so Redis Cluster routes it to the slot of the prefix's hash tag."""
        self._apply = client.register_script(_APPLY)
        self._totals = client.register_script(_TOTALS)
        self._sub_buckets = client.register_script(_SUB_BUCKETS)
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)
        self._mark = client.register_script(_MARK)
        self._unmark = client.register_script(_UNMARK)
        self._expire = client.register_script(_EXPIRE)
        self._merge = client.register_script(_MERGE)
        self._add_samples = client.register_script(_ADD_SAMPLES)
        self._take_outcomes = client.register_script(_TAKE_OUTCOMES)
        self._read_ledger = client.register_script(_READ_LEDGER)
        self._read_samples = client.register_script(_READ_SAMPLES)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self._pending_tokens: OrderedDict[str, str] = OrderedDict()
        """Span key -> token of an `apply` whose reply was lost; a retry presents it."""
        self._report = StateReport(f"redis store {url}")

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """`redis://[user:password@]host:port/db` (or `rediss://` for TLS, `unix://` for a socket), or
        `redis+cluster://[user:password@]host:port` (`rediss+cluster://`) for a Redis Cluster: any
        one node; the cluster has no numbered databases. `valkey://` is read as `redis://`.

        Query parameters: `prefix` (default `{otel_puppy}`), `socket_timeout` and
        `socket_connect_timeout` in seconds (default 0.5 each), and any other redis-py URL option.

        Raises:
            StoreError: not a URL redis-py accepts, or (a cluster, whose layout is read when the
                store opens) no node of the cluster answers.
        """
        url = url.replace("valkey://", "redis://", 1)
        parts = urlsplit(url)
        cluster = parts.scheme.endswith("+cluster")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = query.pop("prefix", DEFAULT_PREFIX)
        query.setdefault("socket_timeout", "0.5")
        query.setdefault("socket_connect_timeout", "0.5")
        if cluster:
            parts = parts._replace(scheme=parts.scheme.removesuffix("+cluster"), path="")
        clean = urlunsplit(parts._replace(query=urlencode(query)))
        try:
            # No retries inside redis-py: the caller decides (fail mode, buffered spans), and a
            # retried script must present its token, which only this store knows. (A cluster
            # client still follows MOVED and ASK: a redirect is not a retry.)
            client: redis.Redis | RedisCluster
            if cluster:
                client = RedisCluster.from_url(clean, retry=Retry(NoBackoff(), 0), health_check_interval=0)
            else:
                client = redis.Redis.from_url(clean, retry=None, health_check_interval=0)
        except (ValueError, RedisError, RedisClusterException) as exc:
            raise StoreError(f"redis store {redact_url(url)}: {type(exc).__name__}: {exc}") from exc
        return cls(client, prefix=prefix, url=redact_url(url))

    def after_fork(self) -> None:
        """In a forked child: a lock the parent's threads held would never be released here.
        redis-py's connection pools notice the new process id themselves and open new connections."""
        self._lock = threading.Lock()
        self._report.after_fork()

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
        except (RedisError, RedisClusterException) as exc:
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
                    replies = self._apply_pipelined(chunks)
        except StoreError as exc:
            if isinstance(exc.__cause__, (RedisConnectionError, RedisTimeoutError)):
                self._remember(records, token)
            raise
        if pending:
            for record in records:
                pending.pop(record.span_key, None)
        # Each reply: a letter per record, then the counts at the ceiling, then the unreadable values.
        self._report.saturated(sum(int(reply[-2]) for reply in replies), "apply")
        self._report.unreadable(sum(int(reply[-1]) for reply in replies), "apply")
        return [_RESULTS[letter] for reply in replies for letter in reply[:-2]]

    def _apply_pipelined(self, chunks: list[list[str]]) -> list[list[object]]:
        """Every chunk's script in one pipeline (one round trip; on a cluster, to the prefix's node)."""
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for argv in chunks:
                self._apply(keys=[self._route], args=argv, client=pipe)
            try:
                replies: list[list[object]] = pipe.execute()
            except NoScriptError:
                # A cluster pipeline does not load scripts (a plain one does): the node that owns
                # the slot has not seen this one yet (new, restarted, or failed over). No script
                # ran, so the same chunks (with the same tokens) go again once it is loaded.
                if attempt:
                    raise
                self._client.script_load(_APPLY)
            else:
                return replies
        raise AssertionError("unreachable")  # pragma: no cover

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
                "1" if record.weak else "",
                str(max(1, int((record.keys_until - now) * 1000))),
                str(len(record.call_keys)),
            )
            for call_key in record.call_keys:
                rows += (
                    call_key.key,
                    str(call_key.start),
                    str(call_key.end),
                    call_key.source,
                    "1" if call_key.identified else "0",
                )
            rows.append(str(len(record.increments)))
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
                rows += (number, str(clamp(inc.nanos)), str(clamp(inc.tokens)))
            entry = record.ledger
            if entry is None:
                rows.append("0")
            else:
                ttl_ms = str(max(1, int((entry.until - now) * 1000)))
                rows += ("1", str(entry.hour), entry.dims, ttl_ms, *(str(clamp(count)) for count in entry.counts))
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
        self._report.unreadable(int(reply[-1]), "totals")
        return [Counter(reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply) - 1, 3)]

    # --- admission -------------------------------------------------------------------------------

    def admit(self, admission: Admission, now: float) -> Admitted:
        """Check every budget and reserve on all of them iff every blocking one fits, in one script."""
        argv: list[str] = [
            self.prefix,
            repr(now),
            admission.decision_id,
            str(clamp(admission.nanos)),
            str(clamp(admission.tokens)),
            repr(admission.expires_at),
            admission.settle_key or "",
            "1" if admission.reserve else "0",
            admission.source,
        ]
        for check in admission.checks:
            argv += self._key(check.scope, check.window, now)[:3]
            argv += (
                check.scope,
                "" if check.limit_nanos is None else str(min(check.limit_nanos, CEILING)),
                "" if check.limit_tokens is None else str(min(check.limit_tokens, CEILING)),
                "1" if check.blocking else "0",
                "" if check.limit_calls is None else str(min(check.limit_calls, CEILING)),
            )
        with self._call("admit"):
            reply = self._admit(keys=[self._route], args=argv)
        self._report.unreadable(int(reply[-1]), "admit")
        states = tuple(
            CheckState(reply[i], reply[i + 1], reply[i + 2], reply[i + 3], reply[i + 4] == 1)
            for i in range(1, len(reply) - 1, 5)
        )
        return Admitted(reply[0] == 1, states)

    def read_budgets(self, checks: Sequence[BudgetCheck], now: float) -> list[CheckState]:
        """The state of each check's budget, reserving nothing: the admission script with nothing
        to reserve (one round trip; it drops expired reservations as `admit` does)."""
        if not checks:
            return []
        return list(self.admit(Admission("", tuple(checks), 0, 0, now, None, reserve=False), now).states)

    def read_fullest(self, groups: Sequence[Sequence[BudgetCheck]], now: float) -> list[CheckState]:
        """Each group's fullest check's state (see `Store.read_fullest`):
        one read of every check (one round trip), the fullest picked here."""
        return fullest_states(groups, self.read_budgets([check for group in groups for check in group], now))

    def read_sub_buckets(self, reads: Sequence[tuple[str, RollingWindow]], now: float) -> list[tuple[SubBucket, ...]]:
        """Each rolling window's sub-buckets that count at `now` and hold spend, in one script."""
        if not reads:
            return []
        argv: list[str] = [self.prefix]
        for scope, window in reads:
            argv += self._key(scope, window, now)[1:3]
        with self._call("read sub-buckets"):
            reply = self._sub_buckets(keys=[self._route], args=argv)
        self._report.unreadable(int(reply[-1]), "read sub-buckets")
        found: list[tuple[SubBucket, ...]] = []
        at = 0
        for _ in reads:
            count = int(reply[at])
            first = at + 1
            found.append(
                tuple(
                    SubBucket(reply[i], reply[i + 1], reply[i + 2], reply[i + 3])
                    for i in range(first, first + 4 * count, 4)
                )
            )
            at = first + 4 * count
        return found

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

    def read_ledger(self, start: int, end: int) -> list[tuple[int, str, tuple[int, ...]]]:
        """The ledger rows of the hours in `[start, end)`: a script per 744 hours (a month)."""
        hours = list(range(start - start % HOUR + (HOUR if start % HOUR else 0), end, HOUR))
        found: list[tuple[int, str, tuple[int, ...]]] = []
        unreadable = 0
        for chunk in range(0, len(hours), 744):
            part = hours[chunk : chunk + 744]
            with self._call("read ledger"):
                reply = self._read_ledger(keys=[self._route], args=[self.prefix, *map(str, part)])
            for hour, fields in zip(part, reply, strict=True):
                for i in range(0, len(fields), 2):
                    counts = [_sample_count(value) for value in fields[i + 1].split(b",")]
                    if len(counts) != len(COUNTS):
                        unreadable += 1
                        continue
                    unreadable += counts.count(None)
                    values = tuple(CEILING if value is None else value for value in counts)
                    found.append((hour, fields[i].decode(errors="replace"), values))
        if unreadable:
            self._report.unreadable(unreadable, "ledger")
        return found

    def take_outcomes(self) -> list[Outcome]:
        """The outcomes of reservations since any process last took them, oldest first: one script."""
        with self._call("take outcomes"):
            reply = self._take_outcomes(keys=[self._route], args=[self.prefix])
        taken = []
        for entry in reversed(reply):
            parts = entry.decode(errors="replace").split("|")
            if len(parts) == 4:
                outcome, source, estimate, cost = parts
                taken.append(
                    Outcome(source, outcome, _sample_count(estimate.encode()) or 0, _sample_count(cost.encode()) or 0)
                )
        return taken

    # --- samples -------------------------------------------------------------------------------

    def add_samples(self, samples: Sequence[Sample], *, keep: int, ttl_s: float, now: float) -> None:
        """Append the samples, trim and expire their series, bound the keys: one script."""
        if not samples:
            return
        keep = max(1, min(keep, MAX_SAMPLES))
        if len(samples) > keep:
            samples = newest_samples(samples, keep)  # what the script's trim would leave of them
        argv: list[str] = [self.prefix, str(keep), str(max(1, int(ttl_s * 1000))), str(MAX_SAMPLE_KEYS)]
        for key, at, nanos, tokens in samples:
            argv += (key, f"{at!r}:{clamp(nanos)}:{clamp(tokens)}")
        with self._call("add samples"):
            self._add_samples(keys=[self._route], args=argv)

    def read_samples(self, keys: Sequence[str], since: float) -> list[list[tuple[int, int]]]:
        """Each key's samples at `since` or later, newest first: one script."""
        if not keys:
            return []
        with self._call("read samples"):
            reply = self._read_samples(keys=[self._route], args=[self.prefix, *keys])
        found: list[list[tuple[int, int]]] = []
        unreadable = 0
        for entries in reply:
            series = []
            for entry in entries:
                parts = entry.split(b":")
                try:
                    at = float(parts[0])
                except ValueError:
                    at = math.inf  # unreadable: kept, as the ceiling
                if at < since:
                    continue
                counts = [_sample_count(part) for part in parts[1:3]] if len(parts) == 3 else [None, None]
                unreadable += counts.count(None)
                series.append(
                    (CEILING if counts[0] is None else counts[0], CEILING if counts[1] is None else counts[1])
                )
            found.append(series)
        if unreadable:
            self._report.unreadable(unreadable, "samples")
        return found

    # --- housekeeping ----------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Drop expired reservations and alert marks; returns how many.

        Counters, rolling windows and dedupe keys carry their own `PEXPIRE` and are forgotten by
        Redis itself, so they are not counted here.
        """
        with self._call("expire"):
            return int(self._expire(keys=[self._route], args=[self.prefix, repr(now)]))

    def health(self) -> StoreHealth:
        return self._report.health()

    def ping(self) -> None:
        """Raise `StoreError` unless Redis answers now (readiness)."""
        with self._call("ping"):
            self._client.ping()

    def forward_queue(self, max_bytes: int) -> ForwardQueue:
        """A stream under this store's prefix, shared by every replica (`forward/redis_queue.py`)."""

        return RedisQueue(self._client, self.prefix, max_bytes)

    def close(self) -> None:
        """Close the connections (idempotent); Redis keeps the state."""
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self._url!r}, prefix={self.prefix!r})"
