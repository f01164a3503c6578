--[[ control.lua: an operator action on one scope, atomically.

KEYS[1]   the hash of the scope
ARGV[1]   action: force_open | force_closed | disable | reset
ARGV[2]   the scope's policy: 16 big-endian doubles (struct '>16d'), in the order of acquire.lua
Time      redis TIME (milliseconds), made monotonic by the stored field ln.
Returns   the transition as one string "1,<from>,<to>,manual,0,0,<generation>,-1,<at_ms>"

force_open -> forced_open (rejects until changed; never expires), force_closed -> forced_closed
(allows, never trips, metrics kept), disable -> disabled (metrics only), reset -> closed with a
fresh window, trips 0 and consecutive 0. Every action bumps the generation and drops the probe
and suspect leases, so in-flight calls can no longer move the state. reset is followed by PEXPIRE
ttl_ms; the other actions PERSIST the key (a forced state must not expire).
]]

local POLICY = '>dddddddddddddddd'  -- 16 big-endian doubles (redis.py _POLICY_STRUCT)
local key, action = KEYS[1], ARGV[1]
local targets = {force_open = 'forced_open', force_closed = 'forced_closed',
                 disable = 'disabled', reset = 'closed'}
local to = targets[action]
if not to then
  return redis.error_reply('control action ' .. tostring(action) .. ' is unknown')
end
local pol = {struct.unpack(POLICY, ARGV[2])}
local bucket_ms, n, ttl = pol[1], pol[2], pol[15]

local t = redis.call('TIME')
local v = redis.call('HMGET', key, 'st', 'g', 'ln', 'wn')
local now = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
                     tonumber(v[3] or 0))
local from, g = v[1] or 'closed', tonumber(v[2] or 0) + 1

if action == 'reset' then
  local old_n = tonumber(v[4] or 0)
  if old_n > 0 then
    local f = {}
    for i = 0, old_n - 1 do
      f[#f + 1] = 'b' .. i .. 'c'; f[#f + 1] = 'b' .. i .. 'f'; f[#f + 1] = 'b' .. i .. 's'
    end
    redis.call('HDEL', key, unpack(f))
  end
  redis.call('HSET', key, 'tr', 0, 'cf', 0, 'C', 0, 'F', 0, 'S', 0, 'wb', bucket_ms, 'wn', n,
             'hd', math.floor(now / bucket_ms))
end
redis.call('HSET', key, 'st', to, 'g', g, 'ps', 0, 'ls', '', 'sl', '', 'ln', now)
redis.call('HDEL', key, 'ou')
if to == 'closed' then
  redis.call('PEXPIRE', key, ttl)
else
  redis.call('PERSIST', key)  -- a forced state or disabled does not expire on its own
end
return table.concat({1, from, to, 'manual', 0, 0, string.format('%d', g), -1,
                     string.format('%d', now)}, ',')
