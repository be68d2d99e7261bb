//! Trying keys until one answers: each attempt chooses a key and runs one upstream exchange;
//! a retryable answer (quota, a rotating error, a transient failure) is held back while the
//! retry budget (`pool.max_rotations`, `max_retries`, `retry_deadline`) allows another key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::GatewayProxy;
use super::body::RequestBody;
use super::call::CallState;
use super::failure::{During, ErrorClass, Failure};
use super::inbound::Inbound;
use super::key_choice::{Choice, creating_key};
use crate::pool::Verdict;
use crate::runtime::{Runtime, UpstreamKey};

/// An upstream error held back while the call tries another key.
pub struct Pending {
    pub verdict: Verdict,
    pub resp: ResponseHeader,
    pub body: bytes::Bytes,
}

pub enum Forwarded {
    /// The client has its answer (or is gone).
    Done,
    /// The answer was a retryable error; nothing reached the client.
    Retry(Box<Pending>),
}

/// One try of a call on one key.
pub struct Attempt<'a> {
    pub key: &'a UpstreamKey,
    pub body: &'a RequestBody,
    pub budget: RetryBudget,
}

/// Which retryable outcomes an attempt may hand back instead of answering.
#[derive(Clone, Copy)]
pub struct RetryBudget {
    rotate: bool,
    transient: bool,
}

impl RetryBudget {
    const NONE: RetryBudget = RetryBudget {
        rotate: false,
        transient: false,
    };

    pub fn allows(&self, v: &Verdict) -> bool {
        if v.rotates() {
            self.rotate
        } else {
            *v == Verdict::Transient && self.transient
        }
    }
}

/// Where the call's retries stand.
#[derive(Default)]
struct Tries {
    rotations: u32,
    retries: u32,
    /// Keys that failed transiently: blamed only if another key then succeeds.
    transient_keys: Vec<Arc<str>>,
    last_transient: bool,
    pending: Option<Pending>,
}

impl GatewayProxy {
    /// Tries keys until one answers, a budget runs out, or no key is left.
    pub(super) async fn attempts(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        inbound: &Inbound,
        body: RequestBody,
        refs: &[String],
    ) -> Result<(), Failure> {
        let rt = ctx.runtime.clone();
        let cfg = &rt.config.pool;
        let retryable_body = matches!(body, RequestBody::Buffered(_));
        let deadline = ctx.started + cfg.retry_deadline.0;
        let mut t = Tries::default();
        // Files, cached contents, batches and upload sessions live in the project that made them.
        let pinned = creating_key(&self.shared.pool, &rt, refs);
        loop {
            let index = match self.choose_key(ctx, &rt, pinned, t.last_transient)? {
                Choice::Key(i) => i,
                Choice::NoneLeft(gate) => {
                    return match t.pending {
                        Some(p) if p.verdict == Verdict::Transient => {
                            self.relay_pending(session, ctx, p).await
                        }
                        _ => Err(Failure::no_key(&gate, ctx.model())),
                    };
                }
            };
            let key = &rt.keys[index];
            let budget = if retryable_body && Instant::now() < deadline {
                RetryBudget {
                    rotate: t.rotations < cfg.max_rotations,
                    transient: t.retries < cfg.max_retries,
                }
            } else {
                RetryBudget::NONE
            };
            self.begin_attempt(ctx, &rt, index);
            let attempt = Attempt {
                key,
                body: &body,
                budget,
            };
            let result = self.forward(session, ctx, inbound, attempt).await;
            self.shared.pool.end(&key.id, &rt.live[index]);
            match result {
                Ok(Forwarded::Done) => {
                    let success = ctx.done.upstream_status > 0 && ctx.done.upstream_status < 400;
                    if success {
                        for k in t.transient_keys.iter().filter(|k| **k != key.id) {
                            self.shared.pool.blame(cfg, k);
                        }
                    }
                    return Ok(());
                }
                Ok(Forwarded::Retry(p)) => {
                    self.count_retry(ctx, key, p.verdict.class());
                    t.last_transient = p.verdict == Verdict::Transient;
                    if t.last_transient {
                        t.retries += 1;
                        ctx.extra.retries = t.retries;
                        t.transient_keys.push(key.id.clone());
                        sleep_before_retry(cfg.backoff.0, t.retries, deadline).await;
                    } else {
                        t.rotations += 1;
                        ctx.extra.rotations = t.rotations;
                    }
                    t.pending = Some(*p);
                }
                Err(f) => {
                    self.shared
                        .metrics
                        .key_errors
                        .with_label_values(&[&key.id, f.class.as_str()])
                        .inc();
                    // Nothing reached the upstream: connecting again is safe.
                    let connect_failed = f.class == ErrorClass::UpstreamUnreachable
                        && f.during == Some(During::Connecting);
                    // A read timeout comes after the body was sent: retried only on opt-in.
                    let action = inbound.route.action.as_str();
                    let timed_out = f.class == ErrorClass::UpstreamTimeout
                        && cfg
                            .retry_read_timeouts
                            .iter()
                            .any(|a| a == "*" || a == action);
                    if !((connect_failed || timed_out) && budget.transient) {
                        return Err(f);
                    }
                    t.retries += 1;
                    ctx.extra.retries = t.retries;
                    t.last_transient = true;
                    self.shared
                        .metrics
                        .retries
                        .with_label_values(&["connect"])
                        .inc();
                    sleep_before_retry(cfg.backoff.0, t.retries, deadline).await;
                }
            }
        }
    }

    /// Counts the attempt on key `index` everywhere it is counted.
    pub(super) fn begin_attempt(&self, ctx: &mut CallState, rt: &Runtime, index: usize) {
        let key = &rt.keys[index];
        let cx = ctx.cx();
        cx.attempt += 1;
        cx.tried_keys.push(key.id.to_string());
        ctx.done.attempts += 1;
        ctx.done.key_id = Some(key.id.to_string());
        ctx.done.project = Some(key.project.to_string());
        ctx.key_index = Some(index);
        self.shared
            .metrics
            .key_usage
            .with_label_values(&[&key.id])
            .inc();
        self.shared.pool.begin(&key.id, &rt.live[index]);
        self.shared
            .pool
            .usage
            .count_request(&key.project, ctx.model());
    }

    pub(super) fn count_retry(&self, ctx: &CallState, key: &UpstreamKey, class: &str) {
        let m = &self.shared.metrics;
        m.key_errors.with_label_values(&[&key.id, class]).inc();
        m.retries.with_label_values(&[class]).inc();
        tracing::debug!(request_id = %ctx.request_id, key_id = %key.id, class, "retrying on another key");
    }
}

/// Waits out the backoff before transient retry `n`, never past the call's deadline.
async fn sleep_before_retry(base: Duration, n: u32, deadline: Instant) {
    let wait = backoff(base, n).min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(wait).await;
}

/// Backoff before transient retry `n` (1-based): base·2^(n-1), ±50% jitter.
fn backoff(base: Duration, n: u32) -> Duration {
    let exp = base.saturating_mul(1 << (n.saturating_sub(1)).min(6));
    exp.mul_f64(0.5 + rand::random::<f64>())
}
