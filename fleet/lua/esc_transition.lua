-- Move one escalation entry from one status to another, atomically (compare-and-set).
--
-- KEYS[1]  the entry hash
-- KEYS[2]  the "open" status sorted set
-- KEYS[3]  the "requeued" status sorted set
-- KEYS[4]  the "resolved" status sorted set
-- ARGV[1]  entry id (the member of the sorted sets)
-- ARGV[2]  statuses the entry may be in, comma separated (e.g. "open" or "open,requeued")
-- ARGV[3]  the new status ("open" | "requeued" | "resolved")
-- ARGV[4]  integer added to the "replay_count" field (1 on a claim, -1 on a give-back, 0)
-- ARGV[5]  "1": refuse when the entry's "auto_replayed" field is "1" (auto-replay runs once)
-- ARGV[6.] field, value pairs written to the hash with the change
--
-- Returns {code, status}:
--   { 1, new status}       moved
--   { 0, ""}               no such entry
--   {-1, current status}   the entry is not in an allowed status
--   {-2, current status}   the entry was already auto-replayed once
-- Sorted-set scores are the entry's "created_at", so every index lists oldest first.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {0, ''}
end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == status then allowed = true end
end
if not allowed then
  return {-1, status}
end
if ARGV[5] == '1' and redis.call('HGET', KEYS[1], 'auto_replayed') == '1' then
  return {-2, status}
end
local index = {open = KEYS[2], requeued = KEYS[3], resolved = KEYS[4]}
local created = redis.call('HGET', KEYS[1], 'created_at')
redis.call('ZREM', index[status], ARGV[1])
redis.call('ZADD', index[ARGV[3]], created, ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[3])
local delta = tonumber(ARGV[4])
if delta ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'replay_count', delta)
end
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {1, ARGV[3]}
