//! The state of every key as `GET /api/keys` and the metrics show it (fingerprints, never
//! secrets).

use std::time::Instant;

use gemini_proxy_sdk::KeyState;
use serde::Serialize;

use super::health::Breaker;
use super::{KeyPool, now_unix};

impl KeyPool {
    /// The state of every key, for `GET /api/keys` and metrics (no secrets: fingerprints).
    pub fn report(&self) -> Vec<KeyReport> {
        let now = now_unix();
        let now_i = Instant::now();
        let live = self.live.lock().clone();
        let st = self.health.lock();
        let mut out: Vec<KeyReport> = st
            .keys
            .iter()
            .map(|(id, h)| {
                let mut cooldowns: Vec<CooldownReport> = st
                    .project_model
                    .iter()
                    .filter(|((p, _), c)| *p == h.project && c.until > now)
                    .map(|((_, m), c)| CooldownReport {
                        scope: "project",
                        model: m.clone(),
                        until: c.until,
                        remaining_s: c.until - now,
                        reason: c.reason.clone(),
                        quota_id: c.quota_id.clone(),
                    })
                    .chain(
                        st.key_model
                            .iter()
                            .filter(|((k, _), c)| k == id && c.until > now)
                            .map(|((_, m), c)| CooldownReport {
                                scope: "key",
                                model: m.clone(),
                                until: c.until,
                                remaining_s: c.until - now,
                                reason: c.reason.clone(),
                                quota_id: c.quota_id.clone(),
                            }),
                    )
                    .collect();
                cooldowns.sort_by(|a, b| a.model.cmp(&b.model));
                let (breaker, open_remaining) = match h.breaker {
                    Breaker::Closed => ("closed", None),
                    Breaker::Open { until } if until > now_i => {
                        ("open", Some((until - now_i).as_secs_f64()))
                    }
                    Breaker::Open { .. } | Breaker::HalfOpen { .. } => ("half_open", None),
                };
                let state = if h.dead.is_some() {
                    KeyState::Disabled
                } else if breaker == "open" {
                    KeyState::CoolingDown
                } else if breaker == "half_open" {
                    KeyState::HalfOpen
                } else if !cooldowns.is_empty() {
                    KeyState::CoolingDown
                } else {
                    KeyState::Active
                };
                let mut errors: Vec<(String, u64)> =
                    h.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                errors.sort();
                KeyReport {
                    id: id.to_string(),
                    project: h.project.to_string(),
                    fingerprint: h.fingerprint.clone(),
                    state: state.as_str(),
                    dead_reason: h.dead.map(|(r, _)| r.as_str()),
                    breaker,
                    breaker_open_remaining_s: open_remaining,
                    in_flight: live.get(id).map_or(0, |l| l.in_flight()),
                    requests: h.requests,
                    successes: h.successes,
                    errors: errors.into_iter().collect(),
                    latency_ewma_ms: live
                        .get(id)
                        .map_or(0.0, |l| (l.latency_ewma_ms() * 10.0).round() / 10.0),
                    cooldowns,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// One key in `GET /api/keys`.
#[derive(Debug, Serialize)]
pub struct KeyReport {
    pub id: String,
    pub project: String,
    pub fingerprint: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<&'static str>,
    pub breaker: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_open_remaining_s: Option<f64>,
    pub in_flight: u32,
    pub requests: u64,
    pub successes: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub latency_ewma_ms: f64,
    pub cooldowns: Vec<CooldownReport>,
}

#[derive(Debug, Serialize)]
pub struct CooldownReport {
    pub scope: &'static str,
    pub model: String,
    pub until: u64,
    pub remaining_s: u64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
}
