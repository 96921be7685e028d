"""The Lua scripts of the Redis store (see the theory of operation in :mod:`.redis`).

Each script touches the keys it is passed in ``KEYS`` only, all of one identity (one hash tag, one
Cluster slot), so it runs unchanged on Redis Cluster.
``redis.pcall`` is used where a foreign value of another type may sit at the key: the comparison then
fails instead of the script raising ``WRONGTYPE``.
"""

from __future__ import annotations

from typing import Final

REPLACE_HASH: Final = """
-- ARGV[1] = PX milliseconds, or 0 for no expiry; ARGV[2..] = field, value, ...
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""
"""Overwrite a hash atomically (no stale field survives), with an optional TTL."""

SET_NX_OR_GET: Final = """
-- ARGV[1] = value, ARGV[2] = PX milliseconds
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local current = redis.pcall('GET', KEYS[1])
if type(current) ~= 'string' then return -1 end
return current
"""
"""First writer wins: nil when ours was stored, else the value already there (-1: a foreign type)."""

DELETE_TASK_IF: Final = """
-- ARGV[1] = the task id the slot must still hold
if redis.pcall('HGET', KEYS[1], 'task_id') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Compare-and-delete of a task slot; 1 when deleted."""

DELETE_STRING_IF: Final = """
-- ARGV[1] = the value (a lock's fencing token) the key must still hold
if redis.pcall('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Compare-and-delete of a string (lock release); 1 when deleted."""

DISCARD: Final = """
-- ARGV[1] = 'string' (ARGV[2] = the value seen) | 'hash' (ARGV[2..] = the fields seen)
--         | 'wrongtype' (ARGV[2] = the type the schema expects)
local actual = redis.call('TYPE', KEYS[1])['ok']
if ARGV[1] == 'wrongtype' then
  if actual ~= ARGV[2] and actual ~= 'none' then return redis.call('DEL', KEYS[1]) end
  return 0
end
if actual ~= ARGV[1] then return 0 end
if ARGV[1] == 'string' then
  if redis.call('GET', KEYS[1]) == ARGV[2] then return redis.call('DEL', KEYS[1]) end
  return 0
end
local current = redis.call('HGETALL', KEYS[1])
if #current ~= #ARGV - 1 then return 0 end
local seen = {}
for i = 2, #ARGV, 2 do seen[ARGV[i]] = ARGV[i + 1] end
for i = 1, #current, 2 do
  if seen[current[i]] ~= current[i + 1] then return 0 end
end
return redis.call('DEL', KEYS[1])
"""
"""Delete a value judged corrupt only if it is still exactly what was judged; 1 when deleted."""

ADMIT_THREAD_TASK: Final = """
-- KEYS[1] = the identity's live thread tasks (ZSET member -> expiry, ms); KEYS[2..] = budgets.
-- ARGV[1] = member, ARGV[2] = its TTL (ms), ARGV[3] = live cap,
-- then per budget j (KEYS[j + 1]): ARGV[2 + 2j] = ms per token, ARGV[3 + 2j] = burst.
-- Returns {-1, 0} when admitted, else {i, retry ms}: i = 0 for the live cap, j for budget j.
-- Budgets are GCRA buckets: the key holds the theoretical arrival time (TAT, ms) of the next token.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, math.max(tonumber(first[2]) - now, 1)}
  end
end
local tats = {}
for j = 1, #KEYS - 1 do
  local step = tonumber(ARGV[2 + 2 * j])
  local burst = tonumber(ARGV[3 + 2 * j])
  local tat = math.max(tonumber(redis.call('GET', KEYS[j + 1]) or now), now)
  local allow_at = tat + step - step * burst
  if allow_at > now then return {j, math.max(allow_at - now, 1)} end
  tats[j] = tat + step
end
for j = 1, #KEYS - 1 do
  redis.call('SET', KEYS[j + 1], string.format('%d', tats[j]), 'PX', tats[j] - now + 1)
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(last[2]) - now, 1))
return {-1, 0}
"""
"""Admit a new thread task against the live cap and every budget, all or nothing."""
