-- job_create.lua: create a job record once (idempotent), index it and count it as submitted.
--
-- KEYS[1]  job hash              <ns>:job:<id>
-- KEYS[2]  counters hash         <ns>:jobs:counts   (field "submitted" and one per terminal state)
-- KEYS[3]  queued index (zset)   <ns>:jobs:state:queued
-- KEYS[4]  all-jobs index (zset) <ns>:jobs:all
-- KEYS[5]  optional: dispatch sequence of the job's queue <ns>:jobs:dispatch_seq:<queue>;
--          when given, the new record also takes the next dispatch number (see
--          job_stamp.lua), so that submit needs one script call before its publish
-- ARGV[1]  job id
-- ARGV[2]  now, epoch milliseconds (score of both indexes)
-- ARGV[3..] field, value pairs stored in the hash (state is set to "queued" here)
--
-- Returns 0 when the record already existed (nothing changed); otherwise the dispatch number
-- taken (with KEYS[5]) or 1.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at_ms', ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'submitted', 1)
if KEYS[5] then
  local seq = redis.call('INCR', KEYS[5])
  redis.call('HSET', KEYS[1], 'dispatch', seq)
  return seq
end
return 1
