//! `rate_limit`: requests and tokens per minute per client IP and per user, and concurrent
//! streams per user. Exact under concurrency: every decision is taken under one lock over a
//! 60-second window of one-second buckets, so 200 simultaneous calls against a limit of 50 let
//! exactly 50 through, and no 60-second window ever holds more than the limit.
//!
//! Tokens are estimated from the bytes of the request: first from its `Content-Length` at
//! admission, then from the bytes actually read once the body is in (a chunked body declares no
//! length; the second check refuses it when it would go over, under the same lock, so parallel
//! calls cannot all slip under one limit), and corrected from the upstream's `usageMetadata`
//! when the call ends. Calls in flight count with their estimate until then. An OpenAI-style
//! `stream: true`, known once the body is read, counts as a stream then. A user's token may carry its own `limits` claim
//! (`{"rpm": .., "tpm": .., "concurrent_streams": ..}`), which overrides the configured ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_proxy_sdk::{
    Admission, BuildEnv, CompletedRequest, Phases, Plugin, PluginError, PluginFactory, Rejection,
    RequestContext, SharedLimitsHandle,
};

mod shared;
use parking_lot::Mutex;
use serde::Deserialize;

const WINDOW: Duration = Duration::from_secs(60);

/// Limits for one kind of caller; absent = unlimited.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub concurrent_streams: Option<u64>,
}

impl Limits {
    /// This instance's share of each limit when `n` instances split it (at least 1).
    fn divided(self, n: u64) -> Limits {
        let part = |l: Option<u64>| l.map(|v| v.div_ceil(n.max(1)).max(1));
        Limits {
            rpm: part(self.rpm),
            tpm: part(self.tpm),
            concurrent_streams: part(self.concurrent_streams),
        }
    }

    fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    fn has_zero(&self) -> bool {
        [self.rpm, self.tpm, self.concurrent_streams].contains(&Some(0))
    }
}

/// Config of the `rate_limit` stage.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Per client IP (after the gateway's trusted-proxy handling).
    #[serde(default)]
    pub per_ip: Limits,
    /// Per authenticated user (`sub`); a token's `limits` claim overrides it.
    #[serde(default)]
    pub per_user: Limits,
    /// Callers (addresses and users) remembered at most (at least 100); see `prune_if_full`.
    #[serde(default = "d_max_callers")]
    pub max_callers: usize,
}

fn d_max_callers() -> usize {
    100_000
}

/// One caller's last minute in one-second buckets (requests, tokens), and streams open now.
/// Memory and time per call stay constant whatever the limit or the traffic; a call counts for
/// 60 to 61 seconds (whole buckets), so no 60-second window ever exceeds the limit.
#[derive(Default)]
struct Log {
    /// (second since `epoch`, requests, tokens), oldest first, at most 61 entries.
    buckets: VecDeque<(u64, u64, u64)>,
    requests: u64,
    tokens: u64,
    streams: u64,
}

impl Log {
    fn prune(&mut self, sec: u64) {
        while let Some(&(s, r, t)) = self.buckets.front() {
            if s + WINDOW.as_secs() > sec {
                break;
            }
            self.requests -= r;
            self.tokens -= t;
            self.buckets.pop_front();
        }
    }

    fn add(&mut self, sec: u64, tokens: u64) {
        match self.buckets.back_mut() {
            Some(b) if b.0 == sec => {
                b.1 += 1;
                b.2 += tokens;
            }
            _ => self.buckets.push_back((sec, 1, tokens)),
        }
        self.requests += 1;
        self.tokens += tokens;
    }

    /// Replaces a call's `from` tokens with `to`: in its own second `sec` while that is still
    /// counted; after that (a call longer than the window), what it used beyond `from` is
    /// charged now, so no call's tokens escape every window.
    fn correct(&mut self, sec: u64, now: u64, from: u64, to: u64) {
        self.prune(now);
        if let Some(b) = self.buckets.iter_mut().find(|b| b.0 == sec) {
            b.2 = b.2 - from.min(b.2) + to;
            self.tokens = self.tokens - from.min(self.tokens) + to;
            return;
        }
        let extra = to.saturating_sub(from);
        if extra == 0 {
            return;
        }
        match self.buckets.back_mut() {
            Some(b) if b.0 == now => b.2 += extra,
            _ => self.buckets.push_back((now, 0, extra)),
        }
        self.tokens += extra;
    }

    /// Takes back one request and its `tokens` from second `sec`'s bucket.
    fn remove(&mut self, sec: u64, tokens: u64) {
        if let Some(b) = self.buckets.iter_mut().find(|b| b.0 == sec) {
            b.1 = b.1.saturating_sub(1);
            b.2 = b.2.saturating_sub(tokens);
            self.requests = self.requests.saturating_sub(1);
            self.tokens = self.tokens.saturating_sub(tokens);
        }
    }

    /// When the oldest counted bucket leaves the window.
    fn retry_after(&self, sec: u64) -> Duration {
        let secs = self
            .buckets
            .front()
            .map_or(1, |(s, _, _)| (s + WINDOW.as_secs()).saturating_sub(sec));
        Duration::from_secs(secs.max(1))
    }
}

/// The caller's tightest remaining share of a limit after this call was admitted (0.0-1.0),
/// left in the call's extensions for later stages (the `security_score` stage reads it).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub remaining_share: f64,
}

/// What admission left in the call's extensions, to correct tokens and close streams later.
struct Ticket {
    /// Keys counted, and the second the call was counted in.
    keys: Vec<String>,
    sec: u64,
    estimate: u64,
    streams: Vec<String>,
    /// Counted in the cluster's shared counters too.
    shared: Option<SharedTicket>,
}

/// Where the shared counters counted a call.
struct SharedTicket {
    /// Redis's second the call was counted in (0: not counted there, Redis was away).
    second: u64,
    /// The call's id (its admission's once-only marker, and its stream lease).
    id: String,
    /// Set while the call holds a stream lease.
    lease: Option<String>,
    /// Adjustments queued so far (each gets its own once-only id).
    adjustments: u32,
}

/// The `rate_limit` stage.
pub struct RateLimit {
    config: RateLimitConfig,
    logs: Mutex<HashMap<String, Log>>,
    epoch: Instant,
    /// The cluster's counters, when the gateway runs as a cluster.
    shared: Option<SharedLimitsHandle>,
    /// Names this stage's stream leases: unique per process, never from the client.
    lease_base: u64,
    leases: std::sync::atomic::AtomicU64,
}

fn limits_from_claims(cx: &RequestContext) -> Option<Limits> {
    let l = cx.identity.as_ref()?.claims.get("limits")?;
    serde_json::from_value(l.clone()).ok()
}

/// Tokens a request body of `bytes` is estimated to hold.
fn estimate_of(bytes: u64) -> u64 {
    bytes / 4 + 1
}

fn over_tpm(tpm: u64, what: &str, log: &Log, sec: u64) -> Rejection {
    Rejection::new(
        429,
        format!("rate limit: more than {tpm} tokens a minute for this {what}"),
    )
    .retry_after(log.retry_after(sec))
    .reason("tpm")
}

fn over_tpm_message(tpm: u64, what: &str) -> Rejection {
    Rejection::new(
        429,
        format!("rate limit: more than {tpm} tokens a minute for this {what}"),
    )
    .reason("tpm")
}

fn over_streams(max: u64, what: &str) -> Rejection {
    Rejection::new(
        429,
        format!("rate limit: {max} streams already open for this {what}"),
    )
    .retry_after(Duration::from_secs(1))
    .reason("streams")
}

impl RateLimit {
    /// The scopes a call counts in: (map key, limits, what to call it in a refusal).
    fn scopes(&self, cx: &RequestContext) -> Vec<(String, Limits, &'static str)> {
        let mut scopes = Vec::new();
        if let Some(ip) = cx.request.client_ip {
            scopes.push((
                format!("ip:{}", gemini_proxy_sdk::caller_scope(ip)),
                self.config.per_ip,
                "client IP",
            ));
        }
        if let Some(id) = &cx.identity {
            let limits = limits_from_claims(cx).unwrap_or(self.config.per_user);
            scopes.push((format!("user:{}", id.subject), limits, "user"));
        }
        scopes
    }

    /// Decides locally (`share`: this instance's share of each limit, 1 = all of it) and counts
    /// the call; with `enforce` false it only counts (the shared counters decided).
    fn check(&self, cx: &mut RequestContext, share: u64, enforce: bool) -> Result<(), Rejection> {
        let sec = self.epoch.elapsed().as_secs();
        let estimate = estimate_of(cx.request.body_size.unwrap_or(0));
        let mut scopes = self.scopes(cx);
        for (_, l, _) in &mut scopes {
            *l = l.divided(share);
        }
        let stream = cx.request.stream;
        let mut logs = self.logs.lock();
        prune_if_full(&mut logs, sec, self.config.max_callers.max(100));
        // Decide for every scope before recording anything, so a refusal costs no quota.
        for (key, limits, what) in scopes.iter().filter(|_| enforce) {
            let log = logs.entry(key.clone()).or_default();
            log.prune(sec);
            if let Some(rpm) = limits.rpm
                && log.requests >= rpm
            {
                return Err(Rejection::new(
                    429,
                    format!("rate limit: more than {rpm} requests a minute for this {what}"),
                )
                .retry_after(log.retry_after(sec))
                .reason("rpm"));
            }
            if let Some(tpm) = limits.tpm
                && log.tokens + estimate > tpm
            {
                return Err(over_tpm(tpm, what, log, sec));
            }
            if stream
                && let Some(max) = limits.concurrent_streams
                && log.streams >= max
            {
                return Err(over_streams(max, what));
            }
        }
        let mut ticket = Ticket {
            keys: Vec::new(),
            sec,
            estimate,
            streams: Vec::new(),
            shared: None,
        };
        let mut remaining: f64 = 1.0;
        for (key, limits, _) in &scopes {
            let log = logs.entry(key.clone()).or_default();
            log.add(sec, estimate);
            if let Some(rpm) = limits.rpm {
                remaining = remaining.min(1.0 - log.requests as f64 / rpm as f64);
            }
            if let Some(tpm) = limits.tpm {
                remaining = remaining.min(1.0 - log.tokens as f64 / tpm as f64);
            }
            ticket.keys.push(key.clone());
            if stream && limits.concurrent_streams.is_some() {
                log.streams += 1;
                ticket.streams.push(key.clone());
            }
        }
        drop(logs);
        cx.extensions.insert(ticket);
        cx.extensions.insert(Budget {
            remaining_share: remaining.max(0.0),
        });
        Ok(())
    }

    /// The body is in: charge its real size instead of the declared one, and count an
    /// OpenAI-style stream. A refusal takes back what admission counted.
    fn check_body(&self, cx: &mut RequestContext, bytes: u64) -> Result<(), Rejection> {
        let Some(mut ticket) = cx.extensions.remove::<Ticket>() else {
            return Ok(());
        };
        let actual = estimate_of(bytes);
        let scopes = self.scopes(cx);
        let new_stream = cx.request.stream && ticket.streams.is_empty();
        let mut logs = self.logs.lock();
        let refusal = scopes.iter().find_map(|(key, limits, what)| {
            let log = logs.get(key)?;
            if let Some(tpm) = limits.tpm
                && actual > ticket.estimate
                && log.tokens - ticket.estimate.min(log.tokens) + actual > tpm
            {
                return Some(over_tpm(tpm, what, log, ticket.sec));
            }
            match limits.concurrent_streams {
                Some(max) if new_stream && log.streams >= max => Some(over_streams(max, what)),
                _ => None,
            }
        });
        if let Some(r) = refusal {
            for key in &ticket.keys {
                if let Some(log) = logs.get_mut(key) {
                    log.remove(ticket.sec, ticket.estimate);
                }
            }
            for key in &ticket.streams {
                if let Some(log) = logs.get_mut(key) {
                    log.streams = log.streams.saturating_sub(1);
                }
            }
            return Err(r);
        }
        for (key, limits, _) in &scopes {
            if let Some(log) = logs.get_mut(key) {
                log.correct(ticket.sec, ticket.sec, ticket.estimate, actual);
                if new_stream && limits.concurrent_streams.is_some() {
                    log.streams += 1;
                    ticket.streams.push(key.clone());
                }
            }
        }
        drop(logs);
        ticket.estimate = actual;
        cx.extensions.insert(ticket);
        Ok(())
    }
}

impl RateLimit {
    /// The local log follows the body's real size (the shared counters decided).
    fn count_body(&self, cx: &mut RequestContext, bytes: u64) {
        let actual = estimate_of(bytes);
        let Some(t) = cx.extensions.get_mut::<Ticket>() else {
            return;
        };
        let mut logs = self.logs.lock();
        for key in &t.keys {
            if let Some(log) = logs.get_mut(key) {
                log.correct(t.sec, t.sec, t.estimate, actual);
            }
        }
        t.estimate = actual;
    }

    /// A refused call leaves no trace in the local log.
    fn take_back(&self, cx: &mut RequestContext) {
        let Some(t) = cx.extensions.remove::<Ticket>() else {
            return;
        };
        let mut logs = self.logs.lock();
        for key in &t.keys {
            if let Some(log) = logs.get_mut(key) {
                log.remove(t.sec, t.estimate);
            }
        }
        for key in &t.streams {
            if let Some(log) = logs.get_mut(key) {
                log.streams = log.streams.saturating_sub(1);
            }
        }
    }
}

/// Past `max` callers, idle ones are forgotten first; when every one is busy, the oldest go
/// (their limits start over, which only ever lets fewer calls through than the attacker
/// filling the map paid for).
fn prune_if_full(logs: &mut HashMap<String, Log>, sec: u64, max: usize) {
    if logs.len() < max {
        return;
    }
    logs.retain(|_, l| {
        l.prune(sec);
        !l.buckets.is_empty() || l.streams > 0
    });
    if logs.len() >= max {
        let mut newest: Vec<u64> = logs
            .values()
            .map(|l| l.buckets.back().map_or(0, |b| b.0))
            .collect();
        newest.sort_unstable();
        let cut = newest[newest.len() / 2];
        logs.retain(|_, l| l.streams > 0 || l.buckets.back().is_some_and(|b| b.0 > cut));
    }
}

#[gemini_proxy_sdk::async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &str {
        "rate_limit"
    }

    fn phases(&self) -> Phases {
        Phases::ADMIT | Phases::BODY | Phases::COMPLETE
    }

    async fn on_admit(&self, cx: &mut RequestContext) -> Result<Admission, PluginError> {
        // A token whose limits claim holds a 0 allows no call, the same with Redis or without.
        if limits_from_claims(cx).is_some_and(|l| l.has_zero()) {
            return Ok(Admission::Reject(
                Rejection::new(403, "this token's limits allow no calls (a limit of 0)")
                    .reason("zero_limit"),
            ));
        }
        let decided = match &self.shared {
            Some(shared) => self.check_shared(shared, cx).await,
            None => None,
        };
        Ok(match decided.unwrap_or_else(|| self.check(cx, 1, true)) {
            Ok(()) => Admission::Continue,
            Err(r) => Admission::Reject(r),
        })
    }

    async fn on_body(
        &self,
        cx: &mut RequestContext,
        body: &[u8],
    ) -> Result<Admission, PluginError> {
        let bytes = body.len() as u64;
        if let Some(shared) = &self.shared
            && let Some(decided) = self.check_body_shared(shared, cx, bytes).await
        {
            // The local log follows without deciding; the shared counters did.
            return Ok(match decided {
                Ok(()) => {
                    self.count_body(cx, bytes);
                    Admission::Continue
                }
                Err(r) => {
                    self.take_back(cx);
                    Admission::Reject(r)
                }
            });
        }
        Ok(match self.check_body(cx, bytes) {
            Ok(()) => Admission::Continue,
            Err(r) => Admission::Reject(r),
        })
    }

    fn on_complete(&self, cx: &RequestContext, done: &CompletedRequest) {
        let Some(t) = cx.extensions.get::<Ticket>() else {
            return;
        };
        let actual = done
            .usage
            .map(|u| u.prompt_tokens + u.candidates_tokens + u.thoughts_tokens);
        if let Some(shared) = &self.shared {
            self.complete_shared(shared, t, actual);
        }
        let now = self.epoch.elapsed().as_secs();
        let mut logs = self.logs.lock();
        // Replace the estimate with what the upstream counted (a failed call: the estimate stays).
        if let Some(a) = actual {
            for key in &t.keys {
                if let Some(log) = logs.get_mut(key) {
                    log.correct(t.sec, now, t.estimate, a);
                }
            }
        }
        for key in &t.streams {
            if let Some(log) = logs.get_mut(key) {
                log.streams = log.streams.saturating_sub(1);
            }
        }
    }
}

impl PluginFactory for RateLimit {
    const KIND: &'static str = "rate_limit";
    type Config = RateLimitConfig;

    fn build(config: RateLimitConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        for (what, l) in [("per_ip", config.per_ip), ("per_user", config.per_user)] {
            if [l.rpm, l.tpm, l.concurrent_streams].contains(&Some(0)) {
                return Err(PluginError::new(format!(
                    "{what}: a limit of 0 would refuse every call; leave it out for no limit"
                )));
            }
        }
        Ok(Arc::new(RateLimit {
            config,
            logs: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            shared: env.shared_limits.clone(),
            lease_base: rand_base(),
            leases: std::sync::atomic::AtomicU64::new(0),
        }))
    }
}

/// A per-process random number (leases of two instances never share a name).
fn rand_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests;
