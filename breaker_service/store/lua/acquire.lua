--[[ acquire.lua: ask every scope of one call for permission, in one atomic step.

KEYS[i]   the hash of scope i ("<ns>:cb:{<provider>}:p" or "<ns>:cb:{<provider>}:m:<model>");
          all keys of one call share the provider hash tag (one Cluster slot).
ARGV[i]   the policy of scope i: 15 big-endian doubles (struct '>15d'), in this order:
            1 bucket_ms  2 buckets  3 failure_rate_threshold  4 minimum_calls  5 slow_call_ms
            6 slow_call_rate_threshold  7 consecutive_failures  8 half_open_max_probes
            9 half_open_successes  10 probe_lease_ms  11 open_base_ms  12 backoff_factor
            13 open_cap_ms  14 jitter_ratio  15 ttl_ms
          (one argument per scope, unpacked only when the scope is not closed: 15 separate
          arguments, a gmatch parse or cjson cost more than the rest of the script)
Time      redis TIME (milliseconds), made monotonic per scope by the stored field ln; read
          only when some scope is not closed (closed scopes cost one HMGET and no write).
Returns   one string (redis-py parses a flat string about 15 us faster than nested arrays):
            rejected:  "R|<scope_index>|<reason>|<retry_after_ms>"   reason: open |
                       half_open_full | forced_open | credential; scope_index is 1-based
            allowed:   "A|<grants>|<transitions>"
                       grants: "<generation>,<probe_token or empty>" per scope, joined by ";"
                       transitions: rows joined by ";", each "<scope_index>,<from>,<to>,
                       <trigger>,<threshold>,<value>,<generation>,<open_until_ms or -1>,<at_ms>"
                       (only "open_elapsed", open -> half_open, happens here)
If any scope rejects, nothing is written anywhere. An open scope whose open period elapsed
moves to half_open and hands this caller a probe lease; only this caller sees the transition.
Hash fields read/written: st g ou oa op ln tk ls ps (see redis.py for the full field list).
]]

-- the fast path, first and alone: every scope closed (or forced_closed / disabled) answers
-- from one 2-field HMGET each, with no time, no policy, no write and no closure built
-- (about half the server time of the general path below)
local fast = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'st', 'g')
  local st = v[1]
  if st and st ~= 'closed' and st ~= 'forced_closed' and st ~= 'disabled' then
    fast = nil
    break
  end
  fast[i] = string.format('%d', tonumber(v[2] or 0)) .. ','
end
if fast then return 'A|' .. table.concat(fast, ';') .. '|' end

local FORCED_RETRY_MS = 60000
local POLICY = '>ddddddddddddddd'  -- 15 big-endian doubles (redis.py _POLICY_STRUCT)

local clock = nil  -- Redis TIME in ms, read only when a scope is not closed
local function clock_ms()
  if clock == nil then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end

local function leases_of(text, now)
  local live, soonest = {}, nil
  if text then
    for tok, exp in string.gmatch(text, '([^,:]+):([^,]+)') do
      exp = tonumber(exp)
      if exp > now then
        live[#live + 1] = {tok, exp}
        if soonest == nil or exp < soonest then soonest = exp end
      end
    end
  end
  return live, soonest
end

local function leases_text(live)
  local parts = {}
  for i = 1, #live do parts[i] = live[i][1] .. ':' .. string.format('%d', live[i][2]) end
  return table.concat(parts, ',')
end

local function reject(i, reason, retry_after_ms)
  return {rejected = 'R|' .. i .. '|' .. reason .. '|' .. string.format('%d', retry_after_ms)}
end

-- pass 1: decide every scope without writing
local plans = {}
local function plan(i)
  local v = redis.call('HMGET', KEYS[i], 'st', 'g', 'ou', 'oa', 'op', 'ln', 'ls')
  local st = v[1] or 'closed'
  if st == 'closed' or st == 'forced_closed' or st == 'disabled' then
    return {g = tonumber(v[2] or 0)}  -- the fast path: no time, no policy, no write
  end
  local pol = {struct.unpack(POLICY, ARGV[i])}
  local now = math.max(clock_ms(), tonumber(v[6] or 0))
  local p = {st = st, g = tonumber(v[2] or 0), now = now, ls = v[7],
             max_probes = pol[8], lease_ms = pol[10], ttl = pol[15], oa = tonumber(v[4] or 0),
             op = tonumber(v[5] or 0)}
  local ou = v[3] and tonumber(v[3]) or nil
  if p.st == 'forced_open' then
    return reject(i, 'forced_open', FORCED_RETRY_MS)
  elseif p.st == 'open' then
    if ou == nil then
      return reject(i, 'credential', FORCED_RETRY_MS)
    elseif now < ou then
      return reject(i, 'open', ou - now)
    end
    p.elapsed = true
    p.probe = true
    p.live = {}
  elseif p.st == 'half_open' then
    local live, soonest = leases_of(p.ls, now)
    if #live >= p.max_probes then
      return reject(i, 'half_open_full', math.max(1, soonest - now))
    end
    p.probe = true
    p.live = live
  end
  return p
end

for i = 1, #KEYS do
  local p = plan(i)
  if p.rejected then return p.rejected end
  plans[i] = p
end

-- pass 2: every scope said yes; take the leases and make the transitions
local grants, transitions = {}, {}
for i = 1, #KEYS do
  local p, key = plans[i], KEYS[i]
  if not p.probe then
    grants[i] = string.format('%d', p.g) .. ','
  else
    local now = p.now
    if p.elapsed then
      p.g = p.g + 1
      redis.call('HSET', key, 'st', 'half_open', 'g', p.g, 'ps', 0)
      redis.call('HDEL', key, 'ou')
      transitions[#transitions + 1] = table.concat({i, 'open', 'half_open', 'open_elapsed',
        string.format('%.17g', p.op), string.format('%.17g', now - p.oa),
        string.format('%d', p.g), '-1', string.format('%d', now)}, ',')
    end
    local token = tostring(redis.call('HINCRBY', key, 'tk', 1))
    local live = p.live
    live[#live + 1] = {token, now + p.lease_ms}
    redis.call('HSET', key, 'ls', leases_text(live), 'ln', now)
    redis.call('PEXPIRE', key, p.ttl)
    grants[i] = string.format('%d', p.g) .. ',' .. token
  end
end
return 'A|' .. table.concat(grants, ';') .. '|' .. table.concat(transitions, ';')
