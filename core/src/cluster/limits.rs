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
use super::grants::{GRANT_SHARE, GRANT_TTL, Grant, Grants, Took};
use super::limit_scripts::{ADJUST_SCRIPT, DECIDE_SCRIPT, RENEW_SCRIPT};

/// How long an open stream counts without its instance renewing it.
pub const LEASE: Duration = Duration::from_secs(60);
/// Adjustments waiting for Redis at most; past it the oldest are dropped (and counted).
const QUEUE: usize = 100_000;

/// The cluster's limits on Redis.
pub struct RedisLimits {
    link: Arc<Link>,
    queue: tokio::sync::mpsc::Sender<(Instant, LimitAdjust)>,
    /// Open stream leases of this instance: lease → stream sets.
    open: Arc<parking_lot::Mutex<HashMap<String, Vec<String>>>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    grants: Grants,
    /// Calls admitted by a script on Redis, and from a grant.
    by_redis: std::sync::atomic::AtomicU64,
    by_grant: std::sync::atomic::AtomicU64,
}

impl RedisLimits {
    pub fn start(link: Arc<Link>) -> Arc<RedisLimits> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let limits = Arc::new(RedisLimits {
            link: link.clone(),
            queue: tx,
            open: Arc::default(),
            dropped: Arc::default(),
            grants: Grants::default(),
            by_redis: Default::default(),
            by_grant: Default::default(),
        });
        link.spawn(apply_adjustments(link.clone(), rx, limits.dropped.clone()));
        link.spawn(renew_leases(Arc::downgrade(&link), limits.open.clone()));
        link.spawn(give_back_grants(Arc::downgrade(&limits)));
        limits
    }

    /// Grants held now (distinct scope sets).
    pub fn grants_held(&self) -> usize {
        self.grants.len()
    }

    /// Calls admitted so far: (by a script on Redis, from a grant).
    pub fn admissions(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.by_redis.load(Relaxed), self.by_grant.load(Relaxed))
    }

    /// Adjustments dropped because Redis stayed away while the queue filled.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn keys(&self, kind: &str, scope: &str) -> String {
        self.link.key(&format!("{kind}:{scope}"))
    }

    /// Admits (`charged` 0) or charges the body of a call admitted in second `charged`; `back`
    /// is a grant of the same scopes to give back in the same script.
    async fn decide(
        &self,
        call: &LimitCall,
        charged: u64,
        take_back: u64,
        back: Option<Grant>,
    ) -> Result<LimitVerdict, SharedUnavailable> {
        let mut keys = Vec::with_capacity(call.scopes.len() * 2 + 1);
        for s in &call.scopes {
            keys.push(self.keys("rl", &s.key));
            keys.push(self.keys("rs", &s.key));
        }
        keys.push(self.keys("op", &call.call_id));
        let back_adjust = back.as_ref().and_then(Grant::give_back);
        keys.push(
            self.keys(
                "op",
                back_adjust
                    .as_ref()
                    .map_or("grant-back:-", |b| b.id.as_str()),
            ),
        );
        let asking = (charged == 0).then(|| self.grants.ask(call)).flatten();
        let divisor = match asking {
            Some(_) => u64::from(self.link.instances().max(1)) * GRANT_SHARE,
            None => 0,
        };
        let mut args = vec![
            call.scopes.len().to_string(),
            call.tokens.to_string(),
            u8::from(call.stream).to_string(),
            call.call_id.clone(),
            LEASE.as_millis().to_string(),
            charged.to_string(),
            take_back.to_string(),
            divisor.to_string(),
        ];
        let (bs, br, bt) = back_adjust
            .as_ref()
            .map_or((0, 0, 0), |b| (b.second, -b.requests, -b.tokens));
        args.extend([bs.to_string(), br.to_string(), bt.to_string()]);
        for s in &call.scopes {
            for l in [s.rpm, s.tpm, s.concurrent_streams] {
                args.push(l.unwrap_or(0).to_string());
            }
        }
        let raw: Result<Vec<i64>, _> = self
            .link
            .run(None, move |c| super::eval(c, &DECIDE_SCRIPT, keys, args))
            .await;
        let Ok(raw) = raw else {
            // Given back in the background instead (at most once, by its marker).
            if let Some(b) = back_adjust {
                self.adjust(b);
            }
            return Err(SharedUnavailable);
        };
        let (v, granted) = verdict(&raw, call.scopes.len()).ok_or_else(|| {
            tracing::warn!(target: "gemini_proxy::cluster", "Redis answered the limit script unexpectedly; going on with local limits");
            SharedUnavailable
        })?;
        if let (Some((requests, tokens)), LimitVerdict::Admitted { second, used }) = (granted, &v) {
            let grant = Grant {
                id: call.call_id.clone(),
                scopes: call.scopes.iter().map(|s| s.key.clone()).collect(),
                second: *second,
                requests,
                tokens,
                used: used.clone(),
                until: Instant::now() + GRANT_TTL,
            };
            if let Some(back) = self.grants.put(call, grant).and_then(|g| g.give_back()) {
                self.adjust(back);
            }
        }
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

/// The script's answer, and the grant that came with an admission: (requests, tokens; `None`
/// for no token limit).
type Granted = Option<(u64, Option<u64>)>;

fn verdict(raw: &[i64], n: usize) -> Option<(LimitVerdict, Granted)> {
    match raw {
        [1, second, rest @ .., g, tg] if rest.len() == 2 * n => Some((
            LimitVerdict::Admitted {
                second: u64::try_from(*second).ok()?,
                used: rest
                    .chunks(2)
                    .map(|c| (c[0].max(0) as u64, c[1].max(0) as u64))
                    .collect(),
            },
            (*g > 0).then(|| (*g as u64, u64::try_from(*tg).ok())),
        )),
        [0, scope, kind, retry] if (1..=n as i64).contains(scope) => Some((
            LimitVerdict::Refused {
                scope: (*scope - 1) as usize,
                kind: match kind {
                    1 => LimitKind::Rpm,
                    2 => LimitKind::Tpm,
                    _ => LimitKind::Streams,
                },
                retry_after: Duration::from_secs((*retry).clamp(1, 61) as u64),
            },
            None,
        )),
        _ => None,
    }
}

#[gemini_proxy_sdk::async_trait]
impl SharedLimits for RedisLimits {
    async fn admit(&self, call: &LimitCall) -> Result<LimitVerdict, SharedUnavailable> {
        use std::sync::atomic::Ordering::Relaxed;
        match self.grants.take(call) {
            Took::Admitted(v) => {
                self.by_grant.fetch_add(1, Relaxed);
                Ok(v)
            }
            Took::Missed(back) => {
                if back.is_none()
                    && let Some(v) = self.grants.wait_for_grant(call, self.link.budget()).await
                {
                    self.by_grant.fetch_add(1, Relaxed);
                    return Ok(v);
                }
                let v = self.decide(call, 0, 0, back).await;
                if matches!(v, Ok(LimitVerdict::Admitted { .. })) {
                    self.by_redis.fetch_add(1, Relaxed);
                }
                v
            }
        }
    }

    async fn charge(
        &self,
        call: &LimitCall,
        second: u64,
        estimate: u64,
    ) -> Result<LimitVerdict, SharedUnavailable> {
        self.decide(call, second.max(1), estimate, None).await
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
/// id is that of the first: each id is in one batch only). Replays, stream closes and grants
/// given back stay apart: their own ids matter.
fn merged(batch: Vec<(Instant, LimitAdjust)>) -> Vec<(Instant, LimitAdjust)> {
    let mut out: Vec<(Instant, LimitAdjust)> = Vec::with_capacity(batch.len());
    let mut index: HashMap<(Vec<String>, u64), usize> = HashMap::new();
    for (at, adj) in batch {
        // A grant's give-back may also go back with a script: its own marker must decide.
        if adj.second == 0 || adj.close_stream.is_some() || adj.id.contains(":grant-back:") {
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

/// Gives back what expired grants still hold, a few times per [`GRANT_TTL`].
async fn give_back_grants(limits: std::sync::Weak<RedisLimits>) {
    let mut tick = tokio::time::interval(GRANT_TTL / 4);
    loop {
        tick.tick().await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        for g in limits.grants.expired(Instant::now()) {
            if let Some(back) = g.give_back() {
                limits.adjust(back);
            }
        }
    }
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
    use crate::cluster::limit_scripts::WINDOW;

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
            adj("gp:op:grant-back:f", 100, -40, false),
        ]);
        let seen: Vec<(&str, i64)> = out.iter().map(|(_, a)| (a.id.as_str(), a.tokens)).collect();
        assert_eq!(
            seen,
            [
                ("a", 3),
                ("c", 1),
                ("d", 9),
                ("e", 3),
                ("gp:op:grant-back:f", -40)
            ]
        );
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
        assert!(verdict(&[1, 100, 3, 40], 1).is_none(), "no grant fields");
        let admitted = LimitVerdict::Admitted {
            second: 100,
            used: vec![(3, 40)],
        };
        assert_eq!(
            verdict(&[1, 100, 3, 40, 0, -1], 1),
            Some((admitted.clone(), None))
        );
        assert_eq!(
            verdict(&[1, 100, 3, 40, 4, -1], 1),
            Some((admitted.clone(), Some((4, None))))
        );
        assert_eq!(
            verdict(&[1, 100, 3, 40, 4, 90], 1),
            Some((admitted, Some((4, Some(90)))))
        );
        assert_eq!(
            verdict(&[0, 2, 2, 999], 2),
            Some((
                LimitVerdict::Refused {
                    scope: 1,
                    kind: LimitKind::Tpm,
                    retry_after: Duration::from_secs(61)
                },
                None
            ))
        );
    }
}
