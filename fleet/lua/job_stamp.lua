-- job_stamp.lua: give a job the next dispatch number of its queue, just before it is published.
--
-- KEYS[1]  job hash                      <ns>:job:<id>
-- KEYS[2]  dispatch sequence of a queue  <ns>:jobs:dispatch_seq:<queue>
--
-- The message carries the number in its task id (<job id>.<dispatch>); a worker runs a message
-- only while its number is still the record's (see job_transition.lua's guard), so publishing
-- a job again (the sweeper) supersedes every older message of it.
-- Returns the new number, or 0 when the record does not exist (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'dispatch', seq)
return seq
