//! Rate limits every instance shares: one atomic script per admitted call decides over all of the
//! call's scopes at once, on Redis's clock, with the same 60-second window of one-second buckets
//! as the local limiter (exact: N instances and a limit of 30 admit 30). Corrections (tokens from
//! usage, a call taken back, a stream closed) go through a bounded queue applied in the
//! background, so a call waits for Redis once, at admission.
//!
//! Redis keys per scope: `{prefix}rl:{scope}` (hash: `r:{second}` requests, `t:{second}`
//! tokens) and `{prefix}rs:{scope}` (sorted set of open stream leases by expiry; an instance
//! renews its own, so the streams of an instance that died free themselves within [`LEASE`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_proxy_sdk::{
    LimitAdjust, LimitCall, LimitKind, LimitVerdict, SharedLimits, SharedUnavailable,
};

use super::Link;

/// How long an open stream counts without its instance renewing it.
pub const LEASE: Duration = Duration::from_secs(60);
/// Adjustments waiting for Redis at most; past it the oldest are dropped (and counted).
const QUEUE: usize = 100_000;

/// The window of one scope, in O(1) per call: a hash of per-second buckets (`r:{s}`, `t:{s}`)
/// with their sums (`R`, `T`) and the oldest second the sums still hold (`h`). `window` drops
/// the buckets that left the last 60 seconds from the sums; `add` changes one bucket and its
/// sum (never below zero); `oldest` finds the second the first counted call leaves.
const WINDOW: &str = r"
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
/// that second), tokens to take back when a charge is refused, then rpm, tpm, streams per scope
/// (0: no limit). KEYS: counter and stream set per scope, then the call's once-only marker.
/// Admitting counts one request and `tokens`; charging adds `tokens` (the body's real size
/// minus the estimate) and takes the whole call back when a limit refuses it.
const DECIDE: &str = r"
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, tokens, stream = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local lease, lease_ms = ARGV[4], tonumber(ARGV[5])
local charged = tonumber(ARGV[6])
local admit = charged == 0
local sec = now_s
if not admit then sec = charged end
local counted = sec + 60 > now_s
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
  local rpm, tpm, maxs = tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i])
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
if admit then redis.call('SET', KEYS[2 * n + 1], '1', 'PX', 120000) end
local out = {1, sec}
for i = 1, n do
  local rl, rs = KEYS[2 * i - 1], KEYS[2 * i]
  if admit then
    add(rl, 'r', sec, 1)
    add(rl, 't', sec, tokens)
  elseif counted then
    add(rl, 't', sec, tokens)
  elseif tokens > 0 then
    add(rl, 't', now_s, tokens)
  end
  if stream and tonumber(ARGV[7 + 3 * i]) > 0 then
    redis.call('ZADD', rs, now + lease_ms, lease)
    redis.call('PEXPIRE', rs, lease_ms * 2)
  end
  local r = used[i][1]
  if admit then r = r + 1 end
  out[#out + 1] = r
  out[#out + 1] = math.max(0, used[i][2] + tokens)
end
return out
";

/// ARGV: second (0: `at`), at (unix seconds when the adjustment was made), requests, tokens,
/// lease, scopes. KEYS: the adjustment's once-only marker, the scopes' counters, then the stream
/// sets to close the lease in. A marker already there (a retry of an adjustment that went
/// through, a replay of an admission Redis counted after all) makes it a no-op.
const ADJUST: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', 120000) then return 0 end
local now = tonumber(redis.call('TIME')[1])
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

static DECIDE_SCRIPT: super::StaticScript =
    super::StaticScript::new(|| redis::Script::new(&format!("{WINDOW}{DECIDE}")));
static ADJUST_SCRIPT: super::StaticScript =
    super::StaticScript::new(|| redis::Script::new(&format!("{WINDOW}{ADJUST}")));
static RENEW_SCRIPT: super::StaticScript = super::StaticScript::new(|| redis::Script::new(RENEW));

/// The cluster's limits on Redis.
pub struct RedisLimits {
    link: Arc<Link>,
    queue: tokio::sync::mpsc::Sender<(Instant, LimitAdjust)>,
    /// Open stream leases of this instance: lease → stream sets.
    open: Arc<parking_lot::Mutex<HashMap<String, Vec<String>>>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl RedisLimits {
    pub fn start(link: Arc<Link>) -> Arc<RedisLimits> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let limits = Arc::new(RedisLimits {
            link: link.clone(),
            queue: tx,
            open: Arc::default(),
            dropped: Arc::default(),
        });
        link.spawn(apply_adjustments(link.clone(), rx, limits.dropped.clone()));
        link.spawn(renew_leases(Arc::downgrade(&link), limits.open.clone()));
        limits
    }

    /// Adjustments dropped because Redis stayed away while the queue filled.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn keys(&self, kind: &str, scope: &str) -> String {
        self.link.key(&format!("{kind}:{scope}"))
    }

    /// Admits (`charged` 0) or charges the body of a call admitted in second `charged`.
    async fn decide(
        &self,
        call: &LimitCall,
        charged: u64,
        take_back: u64,
    ) -> Result<LimitVerdict, SharedUnavailable> {
        let mut keys = Vec::with_capacity(call.scopes.len() * 2 + 1);
        for s in &call.scopes {
            keys.push(self.keys("rl", &s.key));
            keys.push(self.keys("rs", &s.key));
        }
        keys.push(self.keys("op", &call.call_id));
        let mut args = vec![
            call.scopes.len().to_string(),
            call.tokens.to_string(),
            u8::from(call.stream).to_string(),
            call.call_id.clone(),
            LEASE.as_millis().to_string(),
            charged.to_string(),
            take_back.to_string(),
        ];
        for s in &call.scopes {
            for l in [s.rpm, s.tpm, s.concurrent_streams] {
                args.push(l.unwrap_or(0).to_string());
            }
        }
        let raw: Vec<i64> = self
            .link
            .run(None, move |c| super::eval(c, &DECIDE_SCRIPT, keys, args))
            .await
            .map_err(|_| SharedUnavailable)?;
        let v = verdict(&raw, call.scopes.len()).ok_or_else(|| {
            tracing::warn!(target: "gemini_proxy::cluster", "Redis answered the limit script unexpectedly; going on with local limits");
            SharedUnavailable
        })?;
        if call.stream && matches!(v, LimitVerdict::Admitted { .. }) {
            let sets = call
                .scopes
                .iter()
                .filter(|s| s.concurrent_streams.is_some())
                .map(|s| self.keys("rs", &s.key))
                .collect();
            self.open.lock().insert(call.call_id.clone(), sets);
        }
        Ok(v)
    }
}

fn verdict(raw: &[i64], n: usize) -> Option<LimitVerdict> {
    match raw {
        [1, second, rest @ ..] if rest.len() == 2 * n => Some(LimitVerdict::Admitted {
            second: u64::try_from(*second).ok()?,
            used: rest
                .chunks(2)
                .map(|c| (c[0].max(0) as u64, c[1].max(0) as u64))
                .collect(),
        }),
        [0, scope, kind, retry] if (1..=n as i64).contains(scope) => Some(LimitVerdict::Refused {
            scope: (*scope - 1) as usize,
            kind: match kind {
                1 => LimitKind::Rpm,
                2 => LimitKind::Tpm,
                _ => LimitKind::Streams,
            },
            retry_after: Duration::from_secs((*retry).clamp(1, 61) as u64),
        }),
        _ => None,
    }
}

#[gemini_proxy_sdk::async_trait]
impl SharedLimits for RedisLimits {
    async fn admit(&self, call: &LimitCall) -> Result<LimitVerdict, SharedUnavailable> {
        self.decide(call, 0, 0).await
    }

    async fn charge(
        &self,
        call: &LimitCall,
        second: u64,
        estimate: u64,
    ) -> Result<LimitVerdict, SharedUnavailable> {
        self.decide(call, second.max(1), estimate).await
    }

    fn adjust(&self, mut adjust: LimitAdjust) {
        if let Some((lease, _)) = &adjust.close_stream
            && let Some(sets) = self.open.lock().remove(lease)
        {
            adjust.close_stream = Some((lease.clone(), sets));
        }
        adjust.scopes = adjust.scopes.iter().map(|s| self.keys("rl", s)).collect();
        adjust.id = self.keys("op", &adjust.id);
        if self.queue.try_send((Instant::now(), adjust)).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn instances(&self) -> u32 {
        self.link.instances()
    }
}

/// Applies queued adjustments, several at once; what Redis cannot take now waits (bounded, and
/// only while it still matters: a minute) and is retried.
async fn apply_adjustments(
    link: Arc<Link>,
    mut rx: tokio::sync::mpsc::Receiver<(Instant, LimitAdjust)>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(256));
    let waiting = Arc::new(parking_lot::Mutex::new(
        VecDeque::<(Instant, LimitAdjust)>::new(),
    ));
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    // Gather what else arrives in a moment: one script per scope and second.
                    tokio::time::sleep(GATHER).await;
                    let mut batch = vec![m];
                    while batch.len() < 10_000 && let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    merged(batch)
                }
                None => return,
            },
            _ = retry.tick() => {
                let mut w = waiting.lock();
                w.retain(|(at, _)| at.elapsed() < Duration::from_secs(61));
                w.drain(..).collect()
            }
        };
        for (at, adj) in next {
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                return;
            };
            let (link, waiting, dropped) = (link.clone(), waiting.clone(), dropped.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if apply_one(&link, at, &adj).await.is_err() {
                    let mut w = waiting.lock();
                    if w.len() >= QUEUE {
                        w.pop_front();
                        dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    w.push_back((at, adj));
                }
            });
        }
    }
}

/// How long the applier gathers adjustments before it sends them.
const GATHER: Duration = Duration::from_millis(20);

/// Token and request corrections of the same scopes and second, summed into one (its once-only
/// id is that of the first: each id is in one batch only). Replays and stream closes stay
/// apart: their own ids matter.
fn merged(batch: Vec<(Instant, LimitAdjust)>) -> Vec<(Instant, LimitAdjust)> {
    let mut out: Vec<(Instant, LimitAdjust)> = Vec::with_capacity(batch.len());
    let mut index: HashMap<(Vec<String>, u64), usize> = HashMap::new();
    for (at, adj) in batch {
        if adj.second == 0 || adj.close_stream.is_some() {
            out.push((at, adj));
            continue;
        }
        match index.get(&(adj.scopes.clone(), adj.second)) {
            Some(&i) => {
                let into = &mut out[i].1;
                into.requests += adj.requests;
                into.tokens += adj.tokens;
            }
            None => {
                index.insert((adj.scopes.clone(), adj.second), out.len());
                out.push((at, adj));
            }
        }
    }
    out
}

async fn apply_one(link: &Link, at: Instant, adj: &LimitAdjust) -> Result<(), super::LinkError> {
    let mut keys = vec![adj.id.clone()];
    keys.extend(adj.scopes.iter().cloned());
    let lease = match &adj.close_stream {
        Some((lease, sets)) => {
            keys.extend(sets.iter().cloned());
            lease.clone()
        }
        None => String::new(),
    };
    let made = crate::util::clock::unix_secs(std::time::SystemTime::now())
        .saturating_sub(at.elapsed().as_secs());
    let args = vec![
        adj.second.to_string(),
        made.to_string(),
        adj.requests.to_string(),
        adj.tokens.to_string(),
        lease,
        adj.scopes.len().to_string(),
    ];
    link.run(Some(Duration::from_secs(1)), move |c| {
        super::eval::<i64>(c, &ADJUST_SCRIPT, keys, args)
    })
    .await
    .map(|_| ())
}

/// Keeps this instance's open streams counted: renews their leases a few times per lease.
async fn renew_leases(
    link: std::sync::Weak<Link>,
    open: Arc<parking_lot::Mutex<HashMap<String, Vec<String>>>>,
) {
    let mut tick = tokio::time::interval(LEASE / 4);
    loop {
        tick.tick().await;
        let Some(link) = link.upgrade() else { return };
        let leases: Vec<(String, Vec<String>)> = open
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (lease, sets) in leases.into_iter().filter(|(_, s)| !s.is_empty()) {
            let args = vec![LEASE.as_millis().to_string(), lease];
            let _ = link
                .run(Some(Duration::from_secs(1)), move |c| {
                    super::eval::<i64>(c, &RENEW_SCRIPT, sets, args)
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_of_one_scope_and_second_are_summed_and_the_rest_kept_apart() {
        let adj = |id: &str, second: u64, tokens: i64, close: bool| {
            (
                Instant::now(),
                LimitAdjust {
                    id: id.into(),
                    scopes: vec!["rl:ip:a".into()],
                    second,
                    requests: 0,
                    tokens,
                    close_stream: close.then(|| ("lease".to_string(), vec!["rs:ip:a".to_string()])),
                },
            )
        };
        let out = merged(vec![
            adj("a", 100, 5, false),
            adj("b", 100, -2, false),
            adj("c", 101, 1, false),
            adj("d", 0, 9, false),
            adj("e", 100, 3, true),
        ]);
        let seen: Vec<(&str, i64)> = out.iter().map(|(_, a)| (a.id.as_str(), a.tokens)).collect();
        assert_eq!(seen, [("a", 3), ("c", 1), ("d", 9), ("e", 3)]);
    }

    /// The window's Lua on a real Redis, with the clock given instead of read.
    #[test]
    fn the_window_drops_seconds_that_left_it_and_keeps_its_sums() {
        let redis = gemini_proxy_tests::RedisServer::start();
        let eval = |body: &str, args: &[&str]| {
            let script = format!("{WINDOW}{body}");
            redis
                .cli(&[&["EVAL", &script, "1", "w"], args].concat())
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let count = "add(KEYS[1], 'r', tonumber(ARGV[1]), 1) add(KEYS[1], 't', tonumber(ARGV[1]), tonumber(ARGV[2])) return 1";
        let sums = "local r, t = window(KEYS[1], tonumber(ARGV[1])) return {r, t, oldest(KEYS[1], tonumber(ARGV[1]))}";
        assert_eq!(eval(sums, &["1000"]), "0 0 1000");
        // Even a scope that was only ever looked at (its calls refused) expires.
        let ttl = eval("return redis.call('PTTL', KEYS[1])", &[]);
        assert!(ttl.parse::<i64>().unwrap() > 0, "{ttl}");
        eval(count, &["1000", "10"]);
        eval(count, &["1030", "5"]);
        assert_eq!(eval(sums, &["1030"]), "2 15 1000");
        // Second 1000 counts until 1059 and is gone at 1060.
        assert_eq!(eval(sums, &["1059"]), "2 15 1000");
        assert_eq!(eval(sums, &["1060"]), "1 5 1030");
        // A token correction below zero stops at zero, and so does the sum.
        eval("add(KEYS[1], 't', 1030, -50) return 1", &[]);
        assert_eq!(eval(sums, &["1061"]), "1 0 1030");
        // Long idle: everything left the window.
        assert_eq!(eval(sums, &["5000"]), "0 0 5000");
    }

    #[test]
    fn unexpected_answers_are_not_verdicts() {
        assert!(verdict(&[], 1).is_none());
        assert!(verdict(&[1, 5], 1).is_none());
        assert!(verdict(&[0, 3, 1, 5], 2).is_none());
        assert!(verdict(&[7, 1, 1, 1], 1).is_none());
        assert_eq!(
            verdict(&[1, 100, 3, 40], 1),
            Some(LimitVerdict::Admitted {
                second: 100,
                used: vec![(3, 40)]
            })
        );
        assert_eq!(
            verdict(&[0, 2, 2, 999], 2),
            Some(LimitVerdict::Refused {
                scope: 1,
                kind: LimitKind::Tpm,
                retry_after: Duration::from_secs(61)
            })
        );
    }
}
