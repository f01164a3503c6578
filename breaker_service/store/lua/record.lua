--[[ record.lua: count one call's outcome against every scope it was granted, atomically.

KEYS[i]   the hash of scope i (same keys, same order as the grants).
ARGV[1]   jitter in [0, 1), drawn by the caller (Lua's PRNG is not random)
ARGV[2]   outcome class: success | failure | rate_limited | credential | ignored
ARGV[3]   latency_ms of the call (a call slower than slow_call_ms is slow)
ARGV[4]   retry_after_ms from the provider (0 = none); a rate_limited trip opens at least this long
ARGV[5]   count: how many calls this record stands for (> 1 only for aggregated non-probe
          successes, validated by the caller)
ARGV      then 6 values per scope i, at ARGV[5 + (i-1)*6 + 1 .. 5 + (i-1)*6 + 6]:
            1 generation of the grant  2 probe token ("" = not a probe)
            3 the scope's policy: 16 big-endian doubles (struct '>16d'), in the order of acquire.lua
            4 how many of the calls were slow for this scope (-1 = judge ARGV[3])
            5 suspect lease token ("" = none): freed whatever the outcome
            6 fail_seq: the scope's failure sequence number fs when the call was admitted
Time      redis TIME (milliseconds), made monotonic per scope by the stored field ln.
Returns   the transitions as one string: rows joined by ";", each "<scope_index>,<from>,<to>,
          <trigger>,<threshold>,<value>,<generation>,<open_until_ms or -1>,<at_ms>"; "" for none.

The window is a ring of `buckets` buckets in the same hash (fields b<i>c, b<i>f, b<i>s) with
running totals C, F, S and the newest bucket index hd; expired buckets are subtracted when
hd moves (O(1) amortised, constant memory). An outcome of an older generation only updates
the window and the consecutive counter, never the state. ignored outcomes only free a probe
lease. A suspect lease (field sl) named by the grant is freed by any outcome; a fresh success
(it resets cf) drops every suspect lease, and so does every transition. fs (field fs) counts
the failures that raised cf and never goes down; a success whose grant's fail_seq < fs was
admitted before a counted failure (stale): it counts in the window but keeps cf and sl. An aggregate of n successes equals n single records, fast ones first then slow ones:
only the slow-call rule can fire, at exactly the call where n singles would trip, and the
calls after that one count in the fresh window. Every write is followed by PEXPIRE ttl_ms (or longer, when an open period stretched by
Retry-After ends later than that), except in the sticky states (forced_open,
forced_closed, disabled, and open after a credential error, with no open_until), which must
not expire on their own: those keys are PERSISTed until an operator changes the state.
]]

local NPER, HEAD = 6, 5
local POLICY = '>dddddddddddddddd'  -- 16 big-endian doubles (redis.py _POLICY_STRUCT)
local jitter = tonumber(ARGV[1])
local cls = ARGV[2]
local latency = tonumber(ARGV[3])
local retry_after = tonumber(ARGV[4])
local count = tonumber(ARGV[5])
local failed = (cls == 'failure' or cls == 'rate_limited' or cls == 'credential')

local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function policy(text)
  local v = {struct.unpack(POLICY, text)}
  return {bucket_ms = v[1], n = v[2], fr = v[3], min_calls = v[4], slow_ms = v[5], sr = v[6],
          consecutive = v[7], successes = v[9], base = v[11], factor = v[12], cap = v[13],
          jr = v[14], ttl = v[15]}
end

-- the scalar fields of a scope's hash, read in one HMGET and written back when changed
local FIELDS = {'st', 'g', 'ou', 'oa', 'op', 'tr', 'ln', 'cf', 'ps', 'ls', 'wb', 'wn', 'hd',
                'C', 'F', 'S', 'sl', 'fs'}

local function fmt(x) return string.format('%.17g', x) end

-- HMGET gives false for a missing field
local function opt(x) if x then return tonumber(x) end return nil end

local function drop_slots(key, n)
  if n == nil or n < 1 then return end
  local f = {}
  for i = 0, n - 1 do
    f[#f + 1] = 'b' .. i .. 'c'; f[#f + 1] = 'b' .. i .. 'f'; f[#f + 1] = 'b' .. i .. 's'
  end
  redis.call('HDEL', key, unpack(f))
end

-- s: the scope's fields; moves the ring to `now`, clearing expired buckets
local function advance(key, s, bucket_ms, n, now)
  local idx = math.floor(now / bucket_ms)
  if s.wb ~= bucket_ms or s.wn ~= n or s.hd == nil then
    drop_slots(key, s.wn)
    s.wb, s.wn, s.hd, s.C, s.F, s.S = bucket_ms, n, idx, 0, 0, 0
    return
  end
  local gap = idx - s.hd
  if gap >= n then
    drop_slots(key, n)
    s.C, s.F, s.S = 0, 0, 0
  elseif gap > 0 then
    for k = s.hd + 1, idx do
      local slot = k % n
      local b = redis.call('HMGET', key, 'b' .. slot .. 'c', 'b' .. slot .. 'f', 'b' .. slot .. 's')
      if b[1] then
        s.C = s.C - tonumber(b[1]); s.F = s.F - tonumber(b[2] or 0); s.S = s.S - tonumber(b[3] or 0)
        redis.call('HDEL', key, 'b' .. slot .. 'c', 'b' .. slot .. 'f', 'b' .. slot .. 's')
      end
    end
  end
  if gap > 0 then s.hd = idx end
end

local function fresh_window(key, s)
  drop_slots(key, s.wn)
  s.C, s.F, s.S = 0, 0, 0
end

-- the lease list `text` ("tok:expiry,...") without `token`
local function without(text, token)
  if token == '' or not text then return text end
  local keep = {}
  for tok, exp in string.gmatch(text, '([^,:]+):([^,]+)') do
    if tok ~= token then keep[#keep + 1] = tok .. ':' .. exp end
  end
  return table.concat(keep, ',')
end

-- moves s to state `to`; returns the transition row
local function move(i, s, to, trigger, threshold, value, now)
  local from = s.st
  s.st, s.g, s.ls, s.ps, s.sl = to, s.g + 1, '', 0, ''
  if to ~= 'open' then s.ou = nil end
  return table.concat({i, from, to, trigger, fmt(threshold), fmt(value), string.format('%d', s.g),
                       string.format('%d', s.ou or -1), string.format('%d', now)}, ',')
end

local function trip(i, key, s, pol, trigger, threshold, value, now)
  if trigger == 'credential' then
    s.ou, s.op = nil, 0
  else
    local backoff = math.floor(math.min(pol.cap, pol.base * pol.factor ^ s.tr))
    local period = math.floor(backoff * (1 + pol.jr * jitter))
    if cls == 'rate_limited' and retry_after > 0 then period = math.max(period, retry_after) end
    s.op, s.ou = period, now + period
  end
  s.tr, s.oa, s.cf = s.tr + 1, now, 0
  fresh_window(key, s)
  return move(i, s, 'open', trigger, threshold, value, now)
end

local function closed_rule(s, pol)
  if cls == 'credential' then return 'credential', 1, 1 end
  if failed and s.cf >= pol.consecutive then return 'consecutive', pol.consecutive, s.cf end
  if s.C >= pol.min_calls then
    local rate = s.F / s.C
    if failed and rate >= pol.fr then return 'failure_rate', pol.fr, rate end
    local slow_rate = s.S / s.C
    if s.S > 0 and slow_rate >= pol.sr then return 'slow_calls', pol.sr, slow_rate end
  end
  return nil
end

local function state_step(i, key, s, pol, token, now)
  if s.st == 'closed' then
    local trigger, threshold, value = closed_rule(s, pol)
    if trigger then return trip(i, key, s, pol, trigger, threshold, value, now) end
  elseif s.st == 'half_open' then
    if failed then
      if cls == 'credential' then return trip(i, key, s, pol, 'credential', 1, 1, now) end
      return trip(i, key, s, pol, 'probe_failed', 1, 1, now)
    elseif token ~= '' then
      s.ps = s.ps + 1
      if s.ps >= pol.successes then
        local done = s.ps
        s.tr, s.cf = 0, 0
        fresh_window(key, s)
        return move(i, s, 'closed', 'probes_succeeded', pol.successes, done, now)
      end
    end
  end
  return nil
end

-- successes of an aggregate: add calls (slow of them slow) to the current bucket
local function add_ok(key, s, slot, calls, slow)
  if calls > 0 then redis.call('HINCRBY', key, 'b' .. slot .. 'c', calls); s.C = s.C + calls end
  if slow > 0 then redis.call('HINCRBY', key, 'b' .. slot .. 's', slow); s.S = s.S + slow end
end

-- after how many fast, then slow, successes n singles would trip on slow calls (nil: never)
local function trip_point(s, pol, fast, slow)
  local j = math.max(1, pol.min_calls - s.C)
  if j <= fast and s.S > 0 and s.S / (s.C + j) >= pol.sr then return j, 0 end
  local base = s.C + fast
  for k = 1, slow do
    if base + k >= pol.min_calls and (s.S + k) / (base + k) >= pol.sr then return fast, k end
  end
  return nil
end

local function successes(i, key, s, pol, gen, slot, nslow, now, fresh)
  if nslow < 0 then
    if latency > pol.slow_ms then nslow = count else nslow = 0 end
  end
  if fresh then s.cf = 0 end
  local f, k = nil, nil
  if gen == s.g and s.st == 'closed' then f, k = trip_point(s, pol, count - nslow, nslow) end
  if f == nil then
    add_ok(key, s, slot, count, nslow)
    return nil
  end
  add_ok(key, s, slot, f + k, k)
  local tr = trip(i, key, s, pol, 'slow_calls', pol.sr, s.S / s.C, now)
  add_ok(key, s, slot, count - f - k, nslow - k)
  return tr
end

local transitions = {}
for i = 1, #KEYS do
  local key, a = KEYS[i], HEAD + (i - 1) * NPER
  local gen, token, pol = tonumber(ARGV[a + 1]), ARGV[a + 2], policy(ARGV[a + 3])
  local v = redis.call('HMGET', key, unpack(FIELDS))
  local s = {st = v[1] or 'closed', g = tonumber(v[2] or 0), ou = opt(v[3]),
             oa = tonumber(v[4] or 0), op = tonumber(v[5] or 0), tr = tonumber(v[6] or 0),
             cf = tonumber(v[8] or 0), ps = tonumber(v[9] or 0), ls = v[10],
             wb = opt(v[11]), wn = opt(v[12]),
             hd = opt(v[13]), C = tonumber(v[14] or 0),
             F = tonumber(v[15] or 0), S = tonumber(v[16] or 0), sl = v[17],
             fs = tonumber(v[18] or 0)}
  local now = math.max(clock, tonumber(v[7] or 0))
  local before = {s.st, s.g, s.ou or false, s.oa, s.op, s.tr, tonumber(v[7] or -1), s.cf, s.ps,
                  s.ls or '', s.wb or false, s.wn or false, s.hd or false, s.C, s.F, s.S,
                  s.sl or '', s.fs}
  s.ls = without(s.ls, token)
  s.sl = without(s.sl, ARGV[a + 5])
  -- a success admitted before the latest counted failure is stale: it keeps cf and sl
  local fresh = cls == 'success' and tonumber(ARGV[a + 6]) >= s.fs
  if fresh then s.sl = '' end  -- cf resets: the scope is no longer suspect
  if cls ~= 'ignored' then
    advance(key, s, pol.bucket_ms, pol.n, now)
    local slot = s.hd % pol.n
    local nslow = tonumber(ARGV[a + 4])
    if count > 1 then
      local tr = successes(i, key, s, pol, gen, slot, nslow, now, fresh)
      if tr then transitions[#transitions + 1] = tr end
    else
      local slow = latency > pol.slow_ms
      if nslow >= 0 then slow = nslow > 0 end
      redis.call('HINCRBY', key, 'b' .. slot .. 'c', 1)
      s.C = s.C + 1
      if failed then redis.call('HINCRBY', key, 'b' .. slot .. 'f', 1); s.F = s.F + 1 end
      if slow then redis.call('HINCRBY', key, 'b' .. slot .. 's', 1); s.S = s.S + 1 end
      if failed then
        s.cf, s.fs = s.cf + 1, s.fs + 1
      elseif fresh then
        s.cf = 0
      end
      if gen == s.g then
        local tr = state_step(i, key, s, pol, token, now)
        if tr then transitions[#transitions + 1] = tr end
      end
    end
  end
  -- write back only the fields that changed (the HSET is most of a record's cost)
  local new = {s.st, s.g, s.ou or false, s.oa, s.op, s.tr, now, s.cf, s.ps, s.ls or '',
               s.wb or pol.bucket_ms, s.wn or pol.n, s.hd or math.floor(now / pol.bucket_ms),
               s.C, s.F, s.S, s.sl or '', s.fs}
  local changed = {}
  for j = 1, #FIELDS do
    local value = new[j]
    if value ~= false and value ~= before[j] then
      changed[#changed + 1] = FIELDS[j]
      if type(value) == 'number' then value = string.format('%.17g', value) end
      changed[#changed + 1] = value
    end
  end
  if #changed > 0 then redis.call('HSET', key, unpack(changed)) end
  if not s.ou and v[3] then redis.call('HDEL', key, 'ou') end
  if s.st == 'forced_open' or s.st == 'forced_closed' or s.st == 'disabled'
      or (s.st == 'open' and not s.ou) then
    redis.call('PERSIST', key)  -- sticky states last until an operator changes them
  else
    -- an open period stretched by Retry-After or jitter beyond the cap must outlive the key
    local ttl = pol.ttl
    if s.ou then ttl = math.max(ttl, s.ou - now + 60000) end
    redis.call('PEXPIRE', key, ttl)
  end
end
return table.concat(transitions, ';')
