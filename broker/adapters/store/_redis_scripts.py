"""The Lua scripts of the Redis store (see the theory of operation in :mod:`.redis`).

Each script touches exactly one key, passed in ``KEYS[1]``, so it runs unchanged on Redis Cluster.
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
