//! Each key's health: dead keys, quota cooldowns per (project, model) and per (key, model),
//! circuit breakers, and what every attempt's verdict does to them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::shared::PoolEvent;
use super::{DeadReason, KeyLive, KeyPool, QuotaWindow, Verdict, has_room, model_key, now_unix};

use crate::config::PoolConfig;
use crate::util::clock;

/// Why a (project, model) or (key, model) pair is resting, and until when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cooldown {
    /// Unix seconds (wall clock, so it survives a restart).
    pub until: u64,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Breaker {
    Closed,
    Open {
        until: Instant,
    },
    /// One real call may probe the key; `probing` while it runs.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
pub(super) struct KeyHealth {
    pub(super) fingerprint: String,
    pub(super) project: Arc<str>,
    pub(super) dead: Option<(DeadReason, u64)>,
    pub(super) breaker: Breaker,
    pub(super) consecutive_failures: u32,
    /// How many times the breaker opened in a row (the open period doubles).
    pub(super) opened: u32,
    pub(super) requests: u64,
    pub(super) successes: u64,
    pub(super) errors: HashMap<&'static str, u64>,
}

impl KeyHealth {
    pub(super) fn new(fingerprint: String, project: Arc<str>) -> Self {
        KeyHealth {
            fingerprint,
            project,
            dead: None,
            breaker: Breaker::Closed,
            consecutive_failures: 0,
            opened: 0,
            requests: 0,
            successes: 0,
            errors: HashMap::new(),
        }
    }
}

#[derive(Default)]
pub(super) struct HealthState {
    pub(super) keys: HashMap<Arc<str>, KeyHealth>,
    /// (project, model) → quota cooldown.
    pub(super) project_model: HashMap<(Arc<str>, String), Cooldown>,
    /// (key id, model) → backoff or no access.
    pub(super) key_model: HashMap<(Arc<str>, String), Cooldown>,
    /// Keys that are dead or whose breaker is not closed (the only ones `gate` looks at).
    pub(super) troubled: HashSet<Arc<str>>,
    /// When `project_model` and `key_model` were last swept while full.
    swept: [u64; 2],
}

impl KeyPool {
    /// A call starts on `key_id`: counts it in flight and claims a half-open probe.
    pub fn begin(&self, key_id: &str, live: &KeyLive) {
        live.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut st = self.health.lock();
        if let Some(h) = st.keys.get_mut(key_id) {
            h.requests += 1;
            if h.breaker == (Breaker::HalfOpen { probing: false }) {
                h.breaker = Breaker::HalfOpen { probing: true };
            }
        }
    }

    /// A call on `key_id` ended (whatever the outcome).
    pub fn end(&self, key_id: &str, live: &KeyLive) {
        live.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut st = self.health.lock();
        // The probe's verdict (if any) already moved the breaker; otherwise let the next call
        // probe.
        if let Some(h) = st.keys.get_mut(key_id)
            && h.breaker == (Breaker::HalfOpen { probing: true })
        {
            h.breaker = Breaker::HalfOpen { probing: false };
        }
    }

    /// Records what one attempt on `key_id` (in `project`) for `model` got. Returns a note for
    /// the security log when the key just died.
    pub fn record(
        &self,
        cfg: &PoolConfig,
        key_id: &str,
        model: Option<&str>,
        verdict: &Verdict,
        latency: Option<Duration>,
    ) -> Option<DeadReason> {
        let model = model_key(model).to_string();
        let now = SystemTime::now();
        let mut guard = self.health.lock();
        let st = &mut *guard;
        let id = st.keys.get_key_value(key_id).map(|(k, _)| k.clone())?;
        let h = st.keys.get_mut(key_id)?;
        if let Some(l) = latency
            && let Some(live) = self.live.lock().get(key_id)
        {
            live.observe_latency(l.as_secs_f64() * 1000.0);
        }
        if *verdict != Verdict::Success {
            *h.errors.entry(verdict.class()).or_default() += 1;
        }
        let (dirty, died, found) = st.apply_verdict(cfg, &id, model, verdict, now);
        drop(guard);
        if dirty {
            self.mark_dirty();
        }
        if let Some(f) = found {
            self.publish(f);
        }
        died
    }

    /// Counts an error that surfaced after the response started (no retry possible).
    pub fn note_error(&self, key_id: &str, class: &'static str) {
        let mut st = self.health.lock();
        if let Some(h) = st.keys.get_mut(key_id) {
            *h.errors.entry(class).or_default() += 1;
            // The head said success; the stream did not deliver it.
            h.successes = h.successes.saturating_sub(1);
        }
    }

    /// Blames `key_id` for a failure another key did not repeat (circuit breaker).
    pub fn blame(&self, cfg: &PoolConfig, key_id: &str) {
        let mut guard = self.health.lock();
        let st = &mut *guard;
        let Some((id, h)) = st.keys.iter_mut().find(|(id, _)| &***id == key_id) else {
            return;
        };
        h.consecutive_failures += 1;
        let half_open = matches!(h.breaker, Breaker::HalfOpen { .. });
        if half_open || h.consecutive_failures >= cfg.breaker_failures.max(1) {
            let factor = 1u32 << h.opened.min(4);
            let open_for = (cfg.breaker_open_for.0 * factor).min(Duration::from_secs(600));
            h.breaker = Breaker::Open {
                until: Instant::now() + open_for,
            };
            h.opened += 1;
            h.consecutive_failures = 0;
            let fingerprint = h.fingerprint.clone();
            st.troubled.insert(id.clone());
            tracing::warn!(target: "gemini_proxy::pool", key_id, open_for_s = open_for.as_secs(), "circuit breaker opened");
            drop(guard);
            self.publish(PoolEvent::BreakerOpen {
                key_id: key_id.to_string(),
                fingerprint,
                until_ms: clock::unix_millis() + open_for.as_millis() as u64,
            });
        }
    }

    /// Why `key_id` is dead, if it is.
    pub fn dead_reason(&self, key_id: &str) -> Option<DeadReason> {
        self.health
            .lock()
            .keys
            .get(key_id)
            .and_then(|h| h.dead.map(|(r, _)| r))
    }

    /// Operator actions.
    pub fn set_dead(&self, key_id: &str, dead: Option<DeadReason>) -> bool {
        let mut guard = self.health.lock();
        let st = &mut *guard;
        let Some((id, h)) = st.keys.iter_mut().find(|(id, _)| &***id == key_id) else {
            return false;
        };
        h.dead = dead.map(|r| (r, now_unix()));
        if dead.is_some() || h.breaker != Breaker::Closed {
            st.troubled.insert(id.clone());
        } else {
            st.troubled.remove(key_id);
        }
        drop(guard);
        self.mark_dirty();
        true
    }

    /// Clears a key's cooldowns, breaker and death.
    pub fn reset(&self, key_id: &str) -> bool {
        let mut st = self.health.lock();
        let Some(h) = st.keys.get_mut(key_id) else {
            return false;
        };
        h.dead = None;
        h.breaker = Breaker::Closed;
        h.consecutive_failures = 0;
        h.opened = 0;
        let project = h.project.clone();
        st.key_model.retain(|(id, _), _| &**id != key_id);
        st.project_model.retain(|(p, _), _| *p != project);
        st.troubled.remove(key_id);
        drop(st);
        self.mark_dirty();
        true
    }
}

/// When a project's quota for a model comes back: Pacific midnight for a daily quota, the
/// delay Google named (or `minute_cooldown`) for a per-minute one; one second later, as a margin.
fn quota_ends(
    cfg: &PoolConfig,
    window: QuotaWindow,
    retry_delay: Option<Duration>,
    now: SystemTime,
) -> u64 {
    let until = match window {
        QuotaWindow::Day => clock::next_pacific_midnight(now),
        QuotaWindow::Minute => {
            now + retry_delay
                .unwrap_or(cfg.minute_cooldown.0)
                .max(Duration::from_secs(1))
        }
    };
    clock::unix_secs(until) + 1
}

impl HealthState {
    /// What one verdict does to the state: (state file to write, the key just died, a finding
    /// for the other instances).
    fn apply_verdict(
        &mut self,
        cfg: &PoolConfig,
        id: &Arc<str>,
        model: String,
        verdict: &Verdict,
        now: SystemTime,
    ) -> (bool, Option<DeadReason>, Option<PoolEvent>) {
        let mut died = None;
        let mut found = None;
        let Some(h) = self.keys.get(id) else {
            return (false, None, None);
        };
        let (project, fingerprint) = (h.project.clone(), h.fingerprint.clone());
        let dirty = match verdict {
            Verdict::Success => {
                self.succeeded(id);
                false
            }
            Verdict::KeyDead(reason) => {
                died = self.died(id, *reason, now);
                if died.is_some() {
                    found = Some(PoolEvent::Dead {
                        key_id: id.to_string(),
                        fingerprint: fingerprint.clone(),
                        reason: *reason,
                    });
                }
                died.is_some()
            }
            Verdict::ProjectQuota {
                window,
                retry_delay,
                quota_id,
            } => {
                let until = quota_ends(cfg, *window, *retry_delay, now);
                let cooldown = Cooldown {
                    until,
                    reason: verdict.class().to_string(),
                    quota_id: Some(quota_id.clone()),
                };
                let changed = self.rest_project(
                    (project.clone(), model.clone()),
                    cooldown.clone(),
                    clock::unix_secs(now),
                );
                if changed {
                    found = Some(PoolEvent::ProjectRest {
                        project: project.to_string(),
                        model,
                        cooldown,
                    });
                }
                changed
            }
            Verdict::ModelUnavailable => {
                let until = clock::unix_secs(now + cfg.model_unavailable_for.0);
                let changed = self.rest_key(
                    (id.clone(), model.clone()),
                    until,
                    verdict.class(),
                    clock::unix_secs(now),
                );
                if changed {
                    found = Some(PoolEvent::KeyRest {
                        key_id: id.to_string(),
                        fingerprint: fingerprint.clone(),
                        model,
                        cooldown: Cooldown {
                            until,
                            reason: verdict.class().to_string(),
                            quota_id: None,
                        },
                    });
                }
                changed
            }
            Verdict::BareRateLimit => {
                // Jitter so that keys resting together do not all come back together; a short
                // rest is not worth a write of the state file.
                let base = cfg.rate_limit_backoff.0.as_secs_f64();
                let secs = base * (0.75 + 0.5 * rand::random::<f64>());
                let until = clock::unix_secs(now + Duration::from_secs_f64(secs)) + 1;
                self.rest_key(
                    (id.clone(), model),
                    until,
                    verdict.class(),
                    clock::unix_secs(now),
                );
                false
            }
            Verdict::Transient
            | Verdict::GatewayBug
            | Verdict::AffinityMiss
            | Verdict::ClientError => false,
        };
        (dirty, died, found)
    }

    /// A success closes a half-open breaker.
    fn succeeded(&mut self, id: &Arc<str>) {
        let Some(h) = self.keys.get_mut(id) else {
            return;
        };
        h.successes += 1;
        h.consecutive_failures = 0;
        if matches!(h.breaker, Breaker::HalfOpen { .. }) {
            h.breaker = Breaker::Closed;
            h.opened = 0;
            if h.dead.is_none() {
                self.troubled.remove(id);
            }
        }
    }

    /// Marks the key dead; `Some` only the first time.
    pub(super) fn died(
        &mut self,
        id: &Arc<str>,
        reason: DeadReason,
        now: SystemTime,
    ) -> Option<DeadReason> {
        let h = self.keys.get_mut(id)?;
        if h.dead.is_some() {
            return None;
        }
        h.dead = Some((reason, clock::unix_secs(now)));
        self.troubled.insert(id.clone());
        Some(reason)
    }

    /// Rests (project, model) until `cooldown.until`, unless it already rests longer or the map
    /// is full. True when something changed.
    pub(super) fn rest_project(
        &mut self,
        key: (Arc<str>, String),
        cooldown: Cooldown,
        now: u64,
    ) -> bool {
        if !self.project_model.contains_key(&key)
            && !has_room(&mut self.project_model, &mut self.swept[0], |c| {
                c.until > now
            })
        {
            return false;
        }
        let entry = self.project_model.entry(key).or_insert(Cooldown {
            until: 0,
            reason: String::new(),
            quota_id: None,
        });
        if cooldown.until <= entry.until {
            return false;
        }
        *entry = cooldown;
        true
    }

    /// Rests (key, model) until `until`, unless the map is full. True when it did.
    pub(super) fn rest_key(
        &mut self,
        key: (Arc<str>, String),
        until: u64,
        reason: &str,
        now: u64,
    ) -> bool {
        if !self.key_model.contains_key(&key)
            && !has_room(&mut self.key_model, &mut self.swept[1], |c| c.until > now)
        {
            return false;
        }
        let reason = reason.to_string();
        self.key_model.insert(
            key,
            Cooldown {
                until,
                reason,
                quota_id: None,
            },
        );
        true
    }
}
