-- job_transition.lua: compare-and-set a job's state, move its index entry, keep the counters.
--
-- KEYS[1]  job hash               <ns>:job:<id>
-- KEYS[2]  counters hash          <ns>:jobs:counts
-- KEYS[3..8] state indexes (zsets), in this fixed order:
--          queued, running, succeeded, escalated, failed, cancelled
-- ARGV[1]  job id
-- ARGV[2]  new state
-- ARGV[3]  states the job may be in for the transition, space separated (" queued running ")
-- ARGV[4]  now, epoch milliseconds
-- ARGV[5]  guard: the record's dispatch number must equal this ("" = no guard)
-- ARGV[6..] field, value pairs written with the transition
--
-- Returns {1, old_state} when the transition happened, {0, current_state} when the job was in
-- a state not listed in ARGV[3] (nothing changed), {-2, current_state} when the guard failed
-- (a newer dispatch superseded the caller's message), {-1, ""} when the record does not exist.
-- Counters: leaving a terminal state decrements it, entering one increments it, so that
-- "submitted = sum of terminal states" holds once every job has settled.
local states = {'queued', 'running', 'succeeded', 'escalated', 'failed', 'cancelled'}
local index = {}
for i, s in ipairs(states) do index[s] = KEYS[i + 2] end
local terminal = {succeeded = true, escalated = true, failed = true, cancelled = true}

local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then
  return {-1, ''}
end
if not string.find(ARGV[3], ' ' .. cur .. ' ', 1, true) then
  return {0, cur}
end
if ARGV[5] ~= '' and (redis.call('HGET', KEYS[1], 'dispatch') or '0') ~= ARGV[5] then
  return {-2, cur}
end
local new = ARGV[2]
redis.call('HSET', KEYS[1], 'state', new, 'updated_at_ms', ARGV[4])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if cur ~= new then
  redis.call('ZREM', index[cur], ARGV[1])
  if terminal[cur] then redis.call('HINCRBY', KEYS[2], cur, -1) end
  if terminal[new] then redis.call('HINCRBY', KEYS[2], new, 1) end
end
redis.call('ZADD', index[new], ARGV[4], ARGV[1])
return {1, cur}
