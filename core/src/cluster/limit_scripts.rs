//! The Lua scripts behind the shared limits (see [`super::limits`]): each runs atomically on
//! Redis, on Redis's clock.

/// The window of one scope, in O(1) per call: a hash of per-second buckets (`r:{s}`, `t:{s}`)
/// with their sums (`R`, `T`) and the oldest second the sums still hold (`h`). `window` drops
/// the buckets that left the last 60 seconds from the sums; `add` changes one bucket and its
/// sum (never below zero); `oldest` finds the second the first counted call leaves.
pub(super) const WINDOW: &str = r"
local function window(key, now_s)
  local v = redis.call('HMGET', key, 'R', 'T', 'h')
  local R, T, h = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3])
  local start = now_s - 59
  if h == nil or start - h > 60 then
    if h == nil and redis.call('EXISTS', key) == 1 then redis.call('DEL', key) end
    if h ~= nil then redis.call('DEL', key) end
    R, T = 0, 0
  elseif h < start then
    for s = h, start - 1 do
      local b = redis.call('HMGET', key, 'r:' .. s, 't:' .. s)
      R = R - (tonumber(b[1]) or 0)
      T = T - (tonumber(b[2]) or 0)
      redis.call('HDEL', key, 'r:' .. s, 't:' .. s)
    end
  else
    return math.max(R, 0), math.max(T, 0)
  end
  R, T = math.max(R, 0), math.max(T, 0)
  redis.call('HSET', key, 'R', R, 'T', T, 'h', start)
  -- A scope whose every call is refused leaves nothing behind for long.
  redis.call('PEXPIRE', key, 120000)
  return R, T
end
local function add(key, kind, s, d)
  if d == 0 then return end
  local left = redis.call('HINCRBY', key, kind .. ':' .. s, d)
  if left < 0 then
    redis.call('HSET', key, kind .. ':' .. s, 0)
    d = d - left
  end
  local sum = string.upper(kind)
  if redis.call('HINCRBY', key, sum, d) < 0 then redis.call('HSET', key, sum, 0) end
  redis.call('PEXPIRE', key, 120000)
end
local function oldest(key, now_s)
  -- Seconds before the last answer were empty then, and calls only land at later seconds:
  -- a caller refused again and again costs one scan, not one per refusal.
  local from = math.max(now_s - 59, tonumber(redis.call('HGET', key, 'o')) or 0)
  for s = from, now_s do
    local b = redis.call('HMGET', key, 'r:' .. s, 't:' .. s)
    if (tonumber(b[1]) or 0) > 0 or (tonumber(b[2]) or 0) > 0 then
      redis.call('HSET', key, 'o', s)
      return s
    end
  end
  return now_s
end
";

/// Decides a call over all its scopes at once. ARGV: scopes, tokens, opens a stream (0/1),
/// lease, lease ms, mode second (0: admit now; else: charge the body of the call admitted in
/// that second), tokens to take back when a charge is refused, the grant divisor (0: no grant;
/// see [`super::grants`]), the grant it replaces (second, 0: none; requests and tokens to give
/// back), then rpm, tpm, streams per scope (0: no limit). KEYS: counter and stream set per scope,
/// the call's once-only marker, the replaced grant's give-back marker. Admitting counts one request and
/// `tokens`, and, while every scope has headroom for it, a grant of `g` more requests and `tg`
/// more tokens (-1: no token limit) counted in the same second; charging adds `tokens` (the
/// body's real size minus the estimate) and takes the whole call back when a limit refuses it.
/// Answers {1, second, (requests, tokens) per scope, g, tg} or {0, scope, kind, retry after}.
const DECIDE: &str = r"
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, tokens, stream = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local lease, lease_ms = ARGV[4], tonumber(ARGV[5])
local charged = tonumber(ARGV[6])
local div = tonumber(ARGV[8])
-- The scopes' limits follow the 11 fixed arguments: scope i's rpm is ARGV[L + 3i].
local L = 9
local admit = charged == 0
local sec = now_s
if not admit then sec = charged end
local counted = sec + 60 > now_s
-- The grant this one replaces gives back what it did not use (once: its own marker).
local back_sec, back_r, back_t = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
if back_sec > 0 and back_sec + 60 > now_s and redis.call('SET', KEYS[2 * n + 2], '1', 'NX', 'PX', 120000) then
  for i = 1, n do
    window(KEYS[2 * i - 1], now_s)
    add(KEYS[2 * i - 1], 'r', back_sec, -back_r)
    add(KEYS[2 * i - 1], 't', back_sec, -back_t)
  end
end
if admit and redis.call('EXISTS', KEYS[2 * n + 1]) == 1 then
  -- Its instance stopped waiting and replayed it already: counted, and no grant.
  local out = {1, now_s}
  for i = 1, 2 * n do out[#out + 1] = 0 end
  out[#out + 1] = 0
  out[#out + 1] = -1
  return out
end
local function take_back()
  for i = 1, n do
    local rl, rs = KEYS[2 * i - 1], KEYS[2 * i]
    if counted then
      add(rl, 'r', sec, -1)
      add(rl, 't', sec, -tonumber(ARGV[7]))
    end
    redis.call('ZREM', rs, lease)
  end
end
local used = {}
for i = 1, n do
  local rl, rs = KEYS[2 * i - 1], KEYS[2 * i]
  local rpm, tpm, maxs = tonumber(ARGV[L + 3 * i]), tonumber(ARGV[L + 1 + 3 * i]), tonumber(ARGV[L + 2 + 3 * i])
  local req, tok = window(rl, now_s)
  local function retry_after() return math.max(1, oldest(rl, now_s) + 60 - now_s) end
  local refused = nil
  if admit and rpm > 0 and req >= rpm then refused = {0, i, 1, retry_after()} end
  if not refused and tpm > 0 and tokens > 0 and tok + tokens > tpm then refused = {0, i, 2, retry_after()} end
  if not refused and stream and maxs > 0 then
    redis.call('ZREMRANGEBYSCORE', rs, '-inf', now)
    if redis.call('ZCARD', rs) >= maxs then refused = {0, i, 3, 1} end
  end
  if refused then
    if not admit then take_back() end
    return refused
  end
  used[i] = {req, tok}
end
-- A grant: the smallest headroom share over the scopes, none near any limit.
local g, tg = 0, -1
if admit and not stream and div > 0 then
  g = MAX_GRANT
  local tshare = -1
  for i = 1, n do
    local rpm, tpm = tonumber(ARGV[L + 3 * i]), tonumber(ARGV[L + 1 + 3 * i])
    if rpm > 0 then g = math.min(g, math.floor((rpm - used[i][1] - 1) / div)) end
    if tpm > 0 then
      local share = math.floor((tpm - used[i][2] - tokens) / div)
      if tshare < 0 or share < tshare then tshare = share end
    end
  end
  if tshare >= 0 then
    -- Tokens for the granted calls, at up to twice this call's estimate each.
    local per = math.max(tokens, 1)
    g = math.min(g, math.floor(tshare / per))
    tg = math.min(tshare, g * per * 2)
  end
  if g < MIN_GRANT then g, tg = 0, -1 end
end
-- The once-only marker remembers the grant: should the instance have stopped waiting for this
-- answer, its replay of the admission gives the grant back (see ADJUST).
if admit then
  local m = '1'
  if g > 0 then m = sec .. ':' .. g .. ':' .. tg end
  redis.call('SET', KEYS[2 * n + 1], m, 'PX', 120000)
end
local out = {1, sec}
for i = 1, n do
  local rl, rs = KEYS[2 * i - 1], KEYS[2 * i]
  if admit then
    add(rl, 'r', sec, 1 + g)
    add(rl, 't', sec, tokens + math.max(tg, 0))
  elseif counted then
    add(rl, 't', sec, tokens)
  elseif tokens > 0 then
    add(rl, 't', now_s, tokens)
  end
  if stream and tonumber(ARGV[L + 2 + 3 * i]) > 0 then
    redis.call('ZADD', rs, now + lease_ms, lease)
    redis.call('PEXPIRE', rs, lease_ms * 2)
  end
  local r = used[i][1]
  if admit then r = r + 1 + g end
  out[#out + 1] = r
  out[#out + 1] = math.max(0, used[i][2] + tokens + math.max(tg, 0))
end
out[#out + 1] = g
out[#out + 1] = tg
return out
";

/// ARGV: second (0: `at`), at (unix seconds when the adjustment was made), requests, tokens,
/// lease, scopes. KEYS: the adjustment's once-only marker, the scopes' counters, then the stream
/// sets to close the lease in. A marker already there (a retry of an adjustment that went
/// through, a replay of an admission Redis counted after all) makes it a no-op, except that the
/// grant such a late admission made, which its instance never received, goes back (once).
const ADJUST: &str = r"
local now = tonumber(redis.call('TIME')[1])
local prev = redis.call('GET', KEYS[1])
if prev then
  local gs, g, tg = string.match(prev, '^(%d+):(%d+):(%-?%d+)$')
  if gs then
    gs, g, tg = tonumber(gs), tonumber(g), tonumber(tg)
    redis.call('SET', KEYS[1], '1', 'KEEPTTL')
    for i = 2, tonumber(ARGV[6]) + 1 do
      window(KEYS[i], now)
      if gs + 60 > now then
        add(KEYS[i], 'r', gs, -g)
        add(KEYS[i], 't', gs, -math.max(tg, 0))
      end
    end
  end
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', 120000)
local sec = tonumber(ARGV[1])
if sec == 0 then sec = math.min(now, tonumber(ARGV[2])) end
local dr, dt, lease, n = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
for i = 2, n + 1 do
  window(KEYS[i], now)
  if sec + 60 > now then
    add(KEYS[i], 'r', sec, dr)
    add(KEYS[i], 't', sec, dt)
  elseif dt > 0 then
    add(KEYS[i], 't', now, dt)
  end
end
for i = n + 2, #KEYS do redis.call('ZREM', KEYS[i], lease) end
return 1
";

const RENEW: &str = r"
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', until_ms, ARGV[2])
  -- The set outlives its longest lease (it expires 2 leases after its last change).
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]) * 2)
end
return 1
";

pub(super) static DECIDE_SCRIPT: super::StaticScript = super::StaticScript::new(|| {
    redis::Script::new(&format!(
        "local MAX_GRANT, MIN_GRANT = {}, {}\n{WINDOW}{DECIDE}",
        super::grants::MAX_GRANT,
        super::grants::MIN_GRANT
    ))
});
pub(super) static ADJUST_SCRIPT: super::StaticScript =
    super::StaticScript::new(|| redis::Script::new(&format!("{WINDOW}{ADJUST}")));
pub(super) static RENEW_SCRIPT: super::StaticScript =
    super::StaticScript::new(|| redis::Script::new(RENEW));
