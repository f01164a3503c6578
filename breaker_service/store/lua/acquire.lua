--[[ acquire.lua: ask every scope of one call for permission, in one atomic step.

KEYS[i]   the hash of scope i ("<ns>:cb:{<provider>}:p" or "<ns>:cb:{<provider>}:m:<model>");
          all keys of one call share the provider hash tag (one Cluster slot).
ARGV[i]   the policy of scope i: 16 big-endian doubles (struct '>16d'), in this order:
            1 bucket_ms  2 buckets  3 failure_rate_threshold  4 minimum_calls  5 slow_call_ms
            6 slow_call_rate_threshold  7 consecutive_failures  8 half_open_max_probes
            9 half_open_successes  10 probe_lease_ms  11 open_base_ms  12 backoff_factor
            13 open_cap_ms  14 jitter_ratio  15 ttl_ms  16 suspect_cap (1 or 0)
          (one argument per scope, unpacked only when the scope is not closed or is suspect,
          i.e. closed with consecutive failures cf >= 1: 16 separate
          arguments, a gmatch parse or cjson cost more than the rest of the script)
Time      redis TIME (milliseconds), made monotonic per scope by the stored field ln; read
          only when some scope is not closed (closed scopes cost one HMGET and no write).
Returns   one string (redis-py parses a flat string about 15 us faster than nested arrays):
            rejected:  "R|<scope_index>|<reason>|<retry_after_ms>"   reason: open |
                       half_open_full | forced_open | credential | suspect_full;
                       scope_index is 1-based
            allowed:   "A|<grants>|<transitions>"
                       grants: "<generation>,<probe_token or empty>,<suspect lease token
                       or empty>,<fs>" per scope, joined by ";" (fs: the scope's failure
                       sequence number, see record.lua; the grant carries it as fail_seq)
                       transitions: rows joined by ";", each "<scope_index>,<from>,<to>,
                       <trigger>,<threshold>,<value>,<generation>,<open_until_ms or -1>,<at_ms>"
                       (only "open_elapsed", open -> half_open, happens here)
If any scope rejects, nothing is written anywhere. An open scope whose open period elapsed
moves to half_open and hands this caller a probe lease; only this caller sees the transition.
A suspect scope (closed, cf >= 1, suspect_cap on) admits a call only while its live suspect
leases (field sl, "tok:expiry,...") are fewer than max(1, consecutive_failures - cf); the call
takes one (expiry now + probe_lease_ms), else "suspect_full" with retry_after_ms =
clamp(earliest expiry - now, 1, 250). Expired leases are dropped when sl is written.
Hash fields read/written: st g ou oa op ln tk ls ps cf sl fs (see redis.py for the full list).
]]

-- the fast path, first and alone: every scope closed with no consecutive failure (or
-- forced_closed / disabled) answers from one 4-field HMGET each, with no time, no policy, no
-- write and no closure built (about half the server time of the general path below)
local fast = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'st', 'g', 'cf', 'fs')
  local st = v[1]
  if (st and st ~= 'closed' and st ~= 'forced_closed' and st ~= 'disabled')
      or (v[3] and v[3] ~= '0' and (not st or st == 'closed')) then
    fast = nil
    break
  end
  fast[i] = string.format('%d,,,%d', tonumber(v[2] or 0), tonumber(v[4] or 0))
end
if fast then return 'A|' .. table.concat(fast, ';') .. '|' end

local FORCED_RETRY_MS = 60000
local POLICY = '>dddddddddddddddd'  -- 16 big-endian doubles (redis.py _POLICY_STRUCT)
local SUSPECT_RETRY_CAP_MS = 250

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
  local v = redis.call('HMGET', KEYS[i], 'st', 'g', 'ou', 'oa', 'op', 'ln', 'ls', 'cf', 'sl',
                       'fs')
  local fs = tonumber(v[10] or 0)
  local st = v[1] or 'closed'
  local cf = tonumber(v[8] or 0)
  if st == 'closed' and cf > 0 then
    local pol = {struct.unpack(POLICY, ARGV[i])}
    if pol[16] ~= 0 then
      local now = math.max(clock_ms(), tonumber(v[6] or 0))
      local live, soonest = leases_of(v[9], now)
      if #live >= math.max(1, pol[7] - cf) then
        return reject(i, 'suspect_full', math.max(1, math.min(soonest - now, SUSPECT_RETRY_CAP_MS)))
      end
      return {g = tonumber(v[2] or 0), suspect = true, now = now, live = live,
              lease_ms = pol[10], ttl = pol[15], fs = fs}
    end
  end
  if st == 'closed' or st == 'forced_closed' or st == 'disabled' then
    return {g = tonumber(v[2] or 0), fs = fs}  -- the fast path: no time, no policy, no write
  end
  local pol = {struct.unpack(POLICY, ARGV[i])}
  local now = math.max(clock_ms(), tonumber(v[6] or 0))
  local p = {st = st, g = tonumber(v[2] or 0), now = now, ls = v[7],
             max_probes = pol[8], lease_ms = pol[10], ttl = pol[15], oa = tonumber(v[4] or 0),
             op = tonumber(v[5] or 0), fs = fs}
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
  if p.suspect then
    local token = tostring(redis.call('HINCRBY', key, 'tk', 1))
    local live = p.live
    live[#live + 1] = {token, p.now + p.lease_ms}
    redis.call('HSET', key, 'sl', leases_text(live), 'ln', p.now)
    redis.call('PEXPIRE', key, p.ttl)
    grants[i] = string.format('%d,,', p.g) .. token .. string.format(',%d', p.fs)
  elseif not p.probe then
    grants[i] = string.format('%d,,,%d', p.g, p.fs)
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
    grants[i] = string.format('%d,', p.g) .. token .. string.format(',,%d', p.fs)
  end
end
return 'A|' .. table.concat(grants, ';') .. '|' .. table.concat(transitions, ';')
