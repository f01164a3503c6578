-- Delete one RESOLVED escalation entry and every index pointing at it, atomically.
--
-- KEYS[1]  the entry hash
-- KEYS[2]  the sorted set of all entries
-- KEYS[3]  the "resolved" status sorted set
-- KEYS[4]  the job index (string: the newest entry id of the entry's job)
-- ARGV[1]  entry id
-- ARGV[2]  cutoff: purge only when the entry's "resolved_at" <= this (seconds, float)
--
-- Returns 1 when deleted, 0 when the entry is missing, not resolved, or resolved too recently.

if redis.call('HGET', KEYS[1], 'status') ~= 'resolved' then
  return 0
end
local resolved_at = tonumber(redis.call('HGET', KEYS[1], 'resolved_at') or '0') or 0
if resolved_at > tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then
  redis.call('DEL', KEYS[4])
end
return 1
