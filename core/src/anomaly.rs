//! Anomaly detection per key and model: each signal (error rate, 429 rate, mean latency) is
//! summed over fixed buckets (default 10 s); a closed bucket with enough calls is compared
//! with an EWMA baseline (mean and variance) of the earlier normal buckets. `sustain`
//! deviating buckets in a row raise an anomaly; `clear_after` normal buckets in a row clear
//! it. Deviating buckets do not feed the baseline, so a long incident is not learned as normal.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::AnomalyConfig;

/// The signals watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    ErrorRate,
    RateLimitRate,
    Latency,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ErrorRate => "error_rate",
            Signal::RateLimitRate => "rate_limit_rate",
            Signal::Latency => "latency",
        }
    }
    const ALL: [Signal; 3] = [Signal::ErrorRate, Signal::RateLimitRate, Signal::Latency];
}

/// A raise or a clear.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub key_id: String,
    pub model: String,
    pub signal: Signal,
    /// `raised` or `cleared`.
    pub state: &'static str,
    /// The closed bucket's value (a rate, or milliseconds).
    pub value: f64,
    pub baseline: f64,
    pub at_unix_ms: u64,
}

#[derive(Default, Clone, Copy)]
struct Bucket {
    epoch: u64,
    count: u32,
    errors: u32,
    limited: u32,
    latency_sum_ms: f64,
}

#[derive(Default, Clone, Copy, Serialize)]
struct Baseline {
    mean: f64,
    var: f64,
    /// Buckets learned.
    n: u32,
}

impl Baseline {
    fn learn(&mut self, x: f64, alpha: f64) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += alpha * d;
            self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        }
        self.n = self.n.saturating_add(1);
    }
}

#[derive(Default, Clone, Copy)]
struct SignalState {
    baseline: Baseline,
    deviant: u32,
    normal: u32,
    raised_at: Option<u64>,
    last_value: f64,
}

#[derive(Default)]
struct SeriesState {
    bucket: Bucket,
    signals: [SignalState; 3],
}

/// The most series watched (key x model); more fold into nothing (not watched).
const MAX_SERIES: usize = 1_000;
const MAX_RECENT: usize = 50;

#[derive(Default)]
struct Inner {
    series: HashMap<(String, String), SeriesState>,
    recent: VecDeque<Transition>,
}

/// The detector (one per gateway).
pub struct Detector {
    cfg: AnomalyConfig,
    inner: Mutex<Inner>,
}

impl Detector {
    pub fn new(cfg: AnomalyConfig) -> Detector {
        Detector {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn bucket_ms(&self) -> u64 {
        (self.cfg.bucket.0.as_millis() as u64).max(1)
    }

    /// One finished call. Returns the transitions the closing of an earlier bucket caused.
    pub fn observe(
        &self,
        now_ms: u64,
        key_id: &str,
        model: &str,
        latency_ms: f64,
        error: bool,
        rate_limited: bool,
    ) -> Vec<Transition> {
        if !self.cfg.enabled {
            return Vec::new();
        }
        let epoch = now_ms / self.bucket_ms();
        let mut out = Vec::new();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let k = (key_id.to_string(), model.to_string());
        if !inner.series.contains_key(&k) && inner.series.len() >= MAX_SERIES {
            return out;
        }
        let s = inner.series.entry(k).or_default();
        if s.bucket.epoch != epoch {
            if s.bucket.count > 0 {
                self.close(key_id, model, s, now_ms, &mut out);
            }
            s.bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        s.bucket.count += 1;
        s.bucket.errors += u32::from(error);
        s.bucket.limited += u32::from(rate_limited);
        s.bucket.latency_sum_ms += latency_ms;
        remember(&mut inner.recent, &out);
        out
    }

    /// Closes buckets whose time is over (call periodically: traffic may have stopped).
    pub fn tick(&self, now_ms: u64) -> Vec<Transition> {
        if !self.cfg.enabled {
            return Vec::new();
        }
        let epoch = now_ms / self.bucket_ms();
        let mut out = Vec::new();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        for ((key, model), s) in inner.series.iter_mut() {
            if s.bucket.epoch < epoch && s.bucket.count > 0 {
                self.close(key, model, s, now_ms, &mut out);
                s.bucket = Bucket {
                    epoch,
                    ..Bucket::default()
                };
            }
        }
        remember(&mut inner.recent, &out);
        out
    }

    fn close(
        &self,
        key: &str,
        model: &str,
        s: &mut SeriesState,
        now_ms: u64,
        out: &mut Vec<Transition>,
    ) {
        let b = s.bucket;
        if b.count < self.cfg.min_samples {
            return; // Too few calls to say anything.
        }
        let n = f64::from(b.count);
        let values = [
            f64::from(b.errors) / n,
            f64::from(b.limited) / n,
            b.latency_sum_ms / n,
        ];
        for (i, signal) in Signal::ALL.into_iter().enumerate() {
            let st = &mut s.signals[i];
            let x = values[i];
            st.last_value = x;
            let base = st.baseline;
            let warmed = base.n >= self.cfg.warmup_buckets;
            let sd = base.var.sqrt();
            let deviant = warmed
                && match signal {
                    Signal::Latency => {
                        x > base.mean * self.cfg.latency_factor
                            && x > base.mean + 3.0 * sd
                            && x - base.mean >= self.cfg.latency_floor_ms
                    }
                    _ => x > base.mean + self.cfg.rate_delta.max(3.0 * sd),
                };
            let mut emit = |state: &'static str| {
                out.push(Transition {
                    key_id: key.to_string(),
                    model: model.to_string(),
                    signal,
                    state,
                    value: (x * 1000.0).round() / 1000.0,
                    baseline: (base.mean * 1000.0).round() / 1000.0,
                    at_unix_ms: now_ms,
                })
            };
            if deviant {
                st.deviant += 1;
                st.normal = 0;
                if st.raised_at.is_none() && st.deviant >= self.cfg.sustain {
                    st.raised_at = Some(now_ms);
                    emit("raised");
                }
            } else {
                st.normal += 1;
                st.deviant = 0;
                st.baseline.learn(x, self.cfg.alpha);
                if st.raised_at.is_some() && st.normal >= self.cfg.clear_after {
                    st.raised_at = None;
                    emit("cleared");
                }
            }
        }
    }

    /// Active anomalies, recent transitions and the baselines, for `/performance`.
    pub fn report(&self) -> Value {
        let g = self.inner.lock();
        let mut active = Vec::new();
        for ((key, model), s) in &g.series {
            for (i, signal) in Signal::ALL.into_iter().enumerate() {
                let st = &s.signals[i];
                if let Some(since) = st.raised_at {
                    active.push(json!({
                        "key_id": key, "model": model, "signal": signal,
                        "since_unix_ms": since, "value": st.last_value,
                        "baseline": (st.baseline.mean * 1000.0).round() / 1000.0,
                    }));
                }
            }
        }
        active.sort_by_key(|a| a.to_string());
        json!({
            "enabled": self.cfg.enabled,
            "active": active,
            "recent": g.recent.iter().rev().collect::<Vec<_>>(),
        })
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn remember(recent: &mut VecDeque<Transition>, new: &[Transition]) {
    for t in new {
        if recent.len() == MAX_RECENT {
            recent.pop_front();
        }
        recent.push_back(t.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> Detector {
        Detector::new(AnomalyConfig {
            bucket: crate::config::ConfigDuration(std::time::Duration::from_secs(10)),
            ..AnomalyConfig::default()
        })
    }

    /// Feeds `n` calls into bucket `b` (10 s buckets).
    fn feed(
        d: &Detector,
        b: u64,
        n: u32,
        errors: u32,
        limited: u32,
        latency: f64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend(d.observe(
                b * 10_000 + u64::from(i),
                "k1",
                "m",
                latency,
                i < errors,
                i < limited,
            ));
        }
        out
    }

    #[test]
    fn raises_on_sustained_error_rate_and_clears_on_return() {
        let d = detector();
        let mut seen = Vec::new();
        // Baseline: 2% errors, 100 ms.
        for b in 0..20 {
            seen.extend(feed(&d, b, 50, 1, 0, 100.0 + (b % 3) as f64));
        }
        assert!(seen.is_empty(), "quiet baseline raised {seen:?}");
        // One bad bucket is not sustained.
        seen.extend(feed(&d, 20, 50, 30, 0, 100.0));
        seen.extend(feed(&d, 21, 50, 1, 0, 100.0));
        assert!(seen.is_empty(), "a single spike raised {seen:?}");
        // Three bad buckets in a row raise (noticed when the third closes).
        for b in 22..26 {
            seen.extend(feed(&d, b, 50, 25, 0, 100.0));
        }
        let raised: Vec<_> = seen.iter().filter(|t| t.state == "raised").collect();
        assert_eq!(raised.len(), 1, "{seen:?}");
        assert_eq!(raised[0].signal, Signal::ErrorRate);
        assert!(
            raised[0].value >= 0.49 && raised[0].baseline < 0.05,
            "{raised:?}"
        );
        assert_eq!(d.report()["active"].as_array().unwrap().len(), 1);
        // Back to baseline: cleared after three normal buckets.
        for b in 26..31 {
            seen.extend(feed(&d, b, 50, 1, 0, 100.0));
        }
        let cleared: Vec<_> = seen.iter().filter(|t| t.state == "cleared").collect();
        assert_eq!(cleared.len(), 1, "{seen:?}");
        assert_eq!(d.report()["active"].as_array().unwrap().len(), 0);
        assert_eq!(d.report()["recent"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn latency_and_rate_limits_are_separate_signals() {
        let d = detector();
        let mut seen = Vec::new();
        for b in 0..15 {
            seen.extend(feed(&d, b, 20, 0, 0, 200.0));
        }
        for b in 15..19 {
            seen.extend(feed(&d, b, 20, 0, 12, 900.0));
        }
        seen.extend(d.tick(19 * 10_000 + 1));
        let mut signals: Vec<_> = seen
            .iter()
            .filter(|t| t.state == "raised")
            .map(|t| t.signal)
            .collect();
        signals.sort_by_key(|s| s.as_str());
        assert_eq!(signals, vec![Signal::Latency, Signal::RateLimitRate]);
    }

    #[test]
    fn thin_buckets_and_cold_baselines_say_nothing() {
        let d = detector();
        // Errors from the very start: no baseline yet, nothing raised.
        let mut seen = Vec::new();
        for b in 0..4 {
            seen.extend(feed(&d, b, 50, 50, 0, 100.0));
        }
        // Thin buckets (under min_samples) after warm-up are ignored.
        for b in 4..12 {
            seen.extend(feed(&d, b, 50, 0, 0, 100.0));
        }
        for b in 12..20 {
            seen.extend(feed(&d, b, 2, 2, 0, 100.0));
        }
        seen.extend(d.tick(21 * 10_000));
        assert!(seen.iter().all(|t| t.state != "raised"), "{seen:?}");
    }
}
