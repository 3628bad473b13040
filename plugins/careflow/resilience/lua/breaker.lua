-- careflow circuit breaker: one atomic step of the state machine in state_machine.py (keep in sync).
--
-- KEYS[1] state hash, KEYS[2] transitions log (list, newest first), KEYS[3] set of breaker names
-- ARGV[1] op: acquire | record | reset | peek
-- ARGV[2] now override ('' = Redis' TIME; only tests pass a value)
-- ARGV[3..10] config: window_seconds, min_calls, failure_rate_threshold, consecutive_failures,
--             open_seconds, max_open_seconds, half_open_probes, probe_timeout_seconds
-- ARGV[11] transitions kept, ARGV[12] key ttl in ms, ARGV[13] breaker name
-- record: ARGV[14] generation, ARGV[15] probe (0/1), ARGV[16] successes, ARGV[17] failures,
--         ARGV[18] pause seconds ('' = none)
-- reset:  ARGV[14] by
-- Returns a JSON object: state fields (strings), decision, transitions, ignored, now.

local BUCKETS = 10
local MAX_BACKOFF_EXPONENT = 30
local MAX_PAUSE_SECONDS = 3600.0

local state_key = KEYS[1]
local log_key = KEYS[2]
local names_key = KEYS[3]
local op = ARGV[1]

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local cfg = {
  window_seconds = tonumber(ARGV[3]),
  min_calls = tonumber(ARGV[4]),
  failure_rate_threshold = tonumber(ARGV[5]),
  consecutive_failures = tonumber(ARGV[6]),
  open_seconds = tonumber(ARGV[7]),
  max_open_seconds = tonumber(ARGV[8]),
  half_open_probes = tonumber(ARGV[9]),
  probe_timeout_seconds = tonumber(ARGV[10]),
}
local log_max = tonumber(ARGV[11])
local ttl_ms = tonumber(ARGV[12])
local name = ARGV[13]

local function fmt(x)
  return string.format('%.17g', x)
end

local function int(x)
  return string.format('%d', x)
end

-- load -------------------------------------------------------------------------------------------
local raw = redis.call('HGETALL', state_key)
local h = {}
for i = 1, #raw, 2 do
  h[raw[i]] = raw[i + 1]
end
local function num(key)
  return tonumber(h[key] or '0') or 0
end

local s = {
  state = h['state'] or 'closed',
  generation = num('generation'),
  streak = num('streak'),
  opens = num('opens'),
  open_until = num('open_until'),
  probes_granted = num('probes_granted'),
  probe_successes = num('probe_successes'),
  last_probe_at = num('last_probe_at'),
  consecutive = num('consecutive'),
  paused_until = num('paused_until'),
  last_transition_at = num('last_transition_at'),
  buckets = {},
}
for i = 0, BUCKETS - 1 do
  local v = h['b' .. i]
  local id, c, f = -1, 0, 0
  if v then
    local a, b, d = string.match(v, '^(-?%d+),(%d+),(%d+)$')
    id, c, f = tonumber(a), tonumber(b), tonumber(d)
  end
  s.buckets[i] = { id, c, f }
end

-- The first call stores the state (as the breaker file does), which lists the breaker.
local dirty = op ~= 'peek' and #raw == 0
local transitions = {}
local decision = nil
local ignored = false

-- the machine ------------------------------------------------------------------------------------
local function clear_buckets()
  for i = 0, BUCKETS - 1 do
    s.buckets[i] = { -1, 0, 0 }
  end
end

local function transition(from, to, reason, generation, by)
  table.insert(transitions, { at = now, from = from, to = to, reason = reason, generation = generation, by = by or '' })
end

local function bucket_width()
  return cfg.window_seconds / BUCKETS
end

local function window_totals()
  local current = math.floor(now / bucket_width())
  local calls, failures = 0, 0
  for i = 0, BUCKETS - 1 do
    local b = s.buckets[i]
    if b[1] <= current and current - b[1] < BUCKETS then
      calls = calls + b[2]
      failures = failures + b[3]
    end
  end
  return calls, failures
end

local function open_wait(streak)
  local exponent = math.min(streak - 1, MAX_BACKOFF_EXPONENT)
  return math.min(cfg.open_seconds * 2.0 ^ exponent, cfg.max_open_seconds)
end

local function do_open(reason)
  local streak = s.streak + 1
  transition(s.state, 'open', reason, s.generation + 1)
  s.state = 'open'
  s.generation = s.generation + 1
  s.streak = streak
  s.opens = s.opens + 1
  s.open_until = now + open_wait(streak)
  s.probes_granted = 0
  s.probe_successes = 0
  s.last_probe_at = 0.0
  s.consecutive = 0
  s.last_transition_at = now
  clear_buckets()
  dirty = true
end

local function do_close(reason, by)
  transition(s.state, 'closed', reason, s.generation, by)
  s.state = 'closed'
  s.streak = 0
  s.open_until = 0.0
  s.probes_granted = 0
  s.probe_successes = 0
  s.last_probe_at = 0.0
  s.consecutive = 0
  s.last_transition_at = now
  clear_buckets()
  dirty = true
end

local function deny(retry_at)
  decision = { granted = false, generation = s.generation, probe = false, retry_at = fmt(retry_at) }
end

local function grant(probe)
  decision = { granted = true, generation = s.generation, probe = probe, retry_at = '' }
end

local function acquire()
  if now < s.paused_until then
    return deny(s.paused_until)
  end
  if s.state == 'closed' then
    return grant(false)
  end
  if s.state == 'open' then
    if now < s.open_until then
      return deny(s.open_until)
    end
    transition('open', 'half_open', 'open_elapsed', s.generation)
    s.state = 'half_open'
    s.probes_granted = 0
    s.probe_successes = 0
    s.last_probe_at = 0.0
    s.last_transition_at = now
    dirty = true
  end
  if s.probes_granted < cfg.half_open_probes then
    s.probes_granted = s.probes_granted + 1
    s.last_probe_at = now
    dirty = true
    return grant(true)
  end
  if now >= s.last_probe_at + cfg.probe_timeout_seconds then
    do_open('probe_timeout')
    return deny(s.open_until)
  end
  return deny(now + math.min(1.0, cfg.open_seconds))
end

local function record(generation, probe, successes, failures, pause)
  if pause ~= nil then
    pause = math.min(math.max(pause, 0.0), MAX_PAUSE_SECONDS)
    s.paused_until = math.max(s.paused_until, now + pause)
    dirty = true
  end
  if generation ~= s.generation then
    ignored = true
    return
  end
  if s.state == 'closed' then
    if successes + failures == 0 then
      return
    end
    local current = math.floor(now / bucket_width())
    local slot = current % BUCKETS
    local b = s.buckets[slot]
    local id, calls, fails = b[1], b[2], b[3]
    if id ~= current then
      id, calls, fails = current, 0, 0
    end
    s.buckets[slot] = { id, calls + successes + failures, fails + failures }
    local consecutive = s.consecutive
    if successes > 0 then
      consecutive = 0
    end
    s.consecutive = consecutive + failures
    dirty = true
    if failures > 0 then
      local window_calls, window_failures = window_totals()
      if s.consecutive >= cfg.consecutive_failures then
        do_open('consecutive_failures')
      elseif window_calls >= cfg.min_calls and window_failures / window_calls >= cfg.failure_rate_threshold then
        do_open('failure_rate')
      end
    end
    return
  end
  if s.state == 'half_open' and probe then
    if failures > 0 then
      do_open('probe_failed')
    elseif successes > 0 then
      s.probe_successes = s.probe_successes + successes
      dirty = true
      if s.probe_successes >= cfg.half_open_probes then
        do_close('probes_succeeded')
      end
    else
      s.probes_granted = math.max(0, s.probes_granted - 1)
      dirty = true
    end
  end
end

local function reset(by)
  do_close('reset', by)
  s.generation = s.generation + 1
  s.paused_until = 0.0
  transitions[#transitions].generation = s.generation
end

if op == 'acquire' then
  acquire()
elseif op == 'record' then
  local pause = nil
  if ARGV[18] ~= '' then
    pause = tonumber(ARGV[18])
  end
  record(tonumber(ARGV[14]), ARGV[15] == '1', tonumber(ARGV[16]), tonumber(ARGV[17]), pause)
elseif op == 'reset' then
  reset(ARGV[14])
elseif op ~= 'peek' then
  return redis.error_reply('careflow breaker: unknown op ' .. tostring(op))
end

-- store ------------------------------------------------------------------------------------------
local fields = {
  state = s.state,
  generation = int(s.generation),
  streak = int(s.streak),
  opens = int(s.opens),
  open_until = fmt(s.open_until),
  probes_granted = int(s.probes_granted),
  probe_successes = int(s.probe_successes),
  last_probe_at = fmt(s.last_probe_at),
  consecutive = int(s.consecutive),
  paused_until = fmt(s.paused_until),
  last_transition_at = fmt(s.last_transition_at),
}
for i = 0, BUCKETS - 1 do
  local b = s.buckets[i]
  fields['b' .. i] = int(b[1]) .. ',' .. int(b[2]) .. ',' .. int(b[3])
end

if dirty then
  local args = {}
  for k, v in pairs(fields) do
    table.insert(args, k)
    table.insert(args, v)
  end
  redis.call('HSET', state_key, unpack(args))
  redis.call('PEXPIRE', state_key, ttl_ms)
  -- Whoever writes a state lists it: the names come back after Redis lost its data (FLUSHALL, a
  -- restart without persistence) as soon as a worker uses the breaker again.
  redis.call('SADD', names_key, name)
end

local out_transitions = {}
for _, t in ipairs(transitions) do
  local entry = { at = fmt(t.at), from = t.from, to = t.to, reason = t.reason, generation = t.generation, by = t.by }
  table.insert(out_transitions, entry)
  redis.call('LPUSH', log_key, cjson.encode(entry))
end
if #transitions > 0 then
  redis.call('LTRIM', log_key, 0, log_max - 1)
  redis.call('PEXPIRE', log_key, ttl_ms)
end

local result = { state = fields, now = fmt(now), ignored = ignored, transitions = out_transitions }
if decision then
  result.decision = decision
end
return cjson.encode(result)
