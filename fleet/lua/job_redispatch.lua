-- job_redispatch.lua: the sweeper's compare-and-set: put a stuck job back to queued with a new
-- dispatch number, only if nothing touched the record since the sweeper read it.
--
-- KEYS[1]  job hash                      <ns>:job:<id>
-- KEYS[2]  queued index (zset)           <ns>:jobs:state:queued
-- KEYS[3]  running index (zset)          <ns>:jobs:state:running
-- KEYS[4]  dispatch sequence of a queue  <ns>:jobs:dispatch_seq:<queue>
-- ARGV[1]  job id
-- ARGV[2]  state the sweeper read (queued or running)
-- ARGV[3]  updated_at_ms the sweeper read
-- ARGV[4]  now, epoch milliseconds
-- ARGV[5]  why (written to the record as sweep_reason)
--
-- Returns the new dispatch number, or 0 when the record is gone or changed since it was read.
local cur = redis.call('HMGET', KEYS[1], 'state', 'updated_at_ms')
if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] then
  return 0
end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at_ms', ARGV[4], 'dispatch', seq,
  'sweep_reason', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'redispatches', 1)
if ARGV[2] == 'running' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return seq
