//! Sliding-window statistics behind `/performance` and `/errors`: per-second slots for the
//! last 5 minutes and per-minute slots for the last hour, with coarse latency histograms.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};

mod timeline;
pub use timeline::Gauges;

/// Upper bounds of the latency buckets, in milliseconds (the last is open-ended).
const BOUNDS_MS: [f64; 17] = [
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
    10000.0,
    20000.0,
    60000.0,
    120000.0,
    f64::INFINITY,
];

/// Bounds of the gateway-overhead buckets, in milliseconds (overhead is mostly sub-ms).
const OVERHEAD_BOUNDS_MS: [f64; 17] = [
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    5000.0,
    f64::INFINITY,
];

#[derive(Clone, Copy, Default)]
struct Slot {
    epoch: u64,
    count: u32,
    errors: u32,
    latency: [u32; 17],
    ttfb: [u32; 17],
    ttfb_count: u32,
    overhead: [u32; 17],
    overhead_count: u32,
}

fn bucket(ms: f64) -> usize {
    bucket_in(&BOUNDS_MS, ms)
}

fn bucket_in(bounds: &[f64; 17], ms: f64) -> usize {
    bounds
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(bounds.len() - 1)
}

impl Slot {
    fn count_call(&mut self, m: &Measures) {
        self.count += 1;
        if m.error {
            self.errors += 1;
        }
        self.latency[bucket(m.latency_ms)] += 1;
        if let Some(t) = m.ttfb_ms {
            self.ttfb[bucket(t)] += 1;
            self.ttfb_count += 1;
        }
        if let Some(o) = m.overhead_ms {
            self.overhead[bucket_in(&OVERHEAD_BOUNDS_MS, o)] += 1;
            self.overhead_count += 1;
        }
    }

    fn add(&mut self, other: &Slot) {
        self.count += other.count;
        self.errors += other.errors;
        self.ttfb_count += other.ttfb_count;
        self.overhead_count += other.overhead_count;
        for i in 0..17 {
            self.latency[i] += other.latency[i];
            self.ttfb[i] += other.ttfb[i];
            self.overhead[i] += other.overhead[i];
        }
    }
}

/// Percentile from a bucketed histogram, interpolated inside the bucket.
fn percentile(hist: &[u32; 17], total: u32, q: f64) -> Option<f64> {
    percentile_in(&BOUNDS_MS, hist, total, q)
}

fn percentile_in(bounds: &[f64; 17], hist: &[u32; 17], total: u32, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = (q * f64::from(total)).ceil().max(1.0);
    let mut seen = 0.0;
    for (i, &n) in hist.iter().enumerate() {
        let next = seen + f64::from(n);
        if next >= rank && n > 0 {
            let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
            let hi = if bounds[i].is_finite() {
                bounds[i]
            } else {
                lo * 2.0
            };
            let frac = (rank - seen) / f64::from(n);
            return Some(lo + (hi - lo) * frac);
        }
        seen = next;
    }
    None
}

struct Series {
    seconds: Vec<Slot>,
    minutes: Vec<Slot>,
}

impl Series {
    fn new() -> Series {
        Series {
            seconds: vec![Slot::default(); 300],
            minutes: vec![Slot::default(); 60],
        }
    }

    fn record(&mut self, now_s: u64, m: &Measures) {
        for (slots, epoch) in [(&mut self.seconds, now_s), (&mut self.minutes, now_s / 60)] {
            let len = slots.len() as u64;
            let slot = &mut slots[(epoch % len) as usize];
            if slot.epoch != epoch {
                *slot = Slot {
                    epoch,
                    ..Slot::default()
                };
            }
            slot.count_call(m);
        }
    }

    fn window(&self, now_s: u64, span: Duration) -> Slot {
        let mut sum = Slot::default();
        let secs = span.as_secs();
        if secs <= 300 {
            for s in &self.seconds {
                if s.epoch + secs > now_s && s.epoch <= now_s {
                    sum.add(s);
                }
            }
        } else {
            let mins = secs / 60;
            let now_m = now_s / 60;
            for s in &self.minutes {
                if s.epoch + mins > now_m && s.epoch <= now_m {
                    sum.add(s);
                }
            }
        }
        sum
    }
}

const WINDOWS: [(&str, Duration); 3] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("1h", Duration::from_secs(3600)),
];

fn round3(v: Option<f64>) -> Option<f64> {
    v.map(|x| (x * 1000.0).round() / 1000.0)
}

#[derive(Clone, Copy)]
struct Measures {
    latency_ms: f64,
    ttfb_ms: Option<f64>,
    overhead_ms: Option<f64>,
    error: bool,
}

fn summarize(slot: &Slot, span: Duration) -> Value {
    let round = |v: Option<f64>| v.map(|x| (x * 100.0).round() / 100.0);
    json!({
        "requests": slot.count,
        "errors": slot.errors,
        "requests_per_second": (f64::from(slot.count) / span.as_secs_f64() * 1000.0).round() / 1000.0,
        "error_rate": if slot.count == 0 { 0.0 } else { f64::from(slot.errors) / f64::from(slot.count) },
        "latency_ms": {"p50": round(percentile(&slot.latency, slot.count, 0.5)),
                       "p95": round(percentile(&slot.latency, slot.count, 0.95)),
                       "p99": round(percentile(&slot.latency, slot.count, 0.99))},
        "ttfb_ms": {"p50": round(percentile(&slot.ttfb, slot.ttfb_count, 0.5)),
                    "p95": round(percentile(&slot.ttfb, slot.ttfb_count, 0.95)),
                    "p99": round(percentile(&slot.ttfb, slot.ttfb_count, 0.99))},
        "overhead_ms": {"p50": round3(percentile_in(&OVERHEAD_BOUNDS_MS, &slot.overhead, slot.overhead_count, 0.5)),
                        "p95": round3(percentile_in(&OVERHEAD_BOUNDS_MS, &slot.overhead, slot.overhead_count, 0.95)),
                        "p99": round3(percentile_in(&OVERHEAD_BOUNDS_MS, &slot.overhead, slot.overhead_count, 0.99))},
    })
}

/// One redacted failed call, for `/errors`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorSample {
    pub at_unix_ms: u64,
    /// Only ids the gateway made (a client's own `x-request-id` is its text, not ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub status: u16,
    pub upstream_status: u16,
    /// The upstream's error reason or status name, as a code word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_reason: Option<String>,
    pub class: String,
    pub key_id: Option<String>,
    pub api: &'static str,
    pub action: &'static str,
    /// The model label (known models only, as in the metrics).
    pub model: String,
}

/// `s` when it is a code word (`CONSUMER_SUSPENDED`, `RESOURCE_EXHAUSTED`): upper-case letters,
/// digits and `_`, at most 64. Free text (which may echo a client) is never kept.
pub fn code_word(s: &str) -> Option<String> {
    (!s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
    .then(|| s.to_string())
}

/// What one finished call contributes.
pub struct CallRecord<'a> {
    pub model: &'a str,
    pub key_id: Option<&'a str>,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// Whole call minus the answering attempt's upstream time.
    pub overhead: Option<Duration>,
    /// Tokens the upstream reported (all kinds).
    pub tokens: u64,
    pub error: Option<ErrorSample>,
}

#[derive(Default)]
struct Inner {
    global: Option<Series>,
    by_model: HashMap<String, Series>,
    by_key: HashMap<String, Series>,
    by_error: HashMap<(String, u16, String), Series>,
    samples: VecDeque<ErrorSample>,
    timeline: Option<timeline::Timeline>,
}

/// Bounded: at most `MAX_SERIES` names per dimension (the rest fold into `other`).
const MAX_SERIES: usize = 200;
const MAX_SAMPLES: usize = 20;

#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn series_for<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Series>,
    key: K,
    other: K,
) -> &mut Series {
    let k = if map.contains_key(&key) || map.len() < MAX_SERIES {
        key
    } else {
        other
    };
    map.entry(k).or_insert_with(Series::new)
}

impl Stats {
    pub fn record(&self, rec: CallRecord<'_>) {
        let t = now_s();
        let m = Measures {
            latency_ms: rec.latency.as_secs_f64() * 1000.0,
            ttfb_ms: rec.ttfb.map(|d| d.as_secs_f64() * 1000.0),
            overhead_ms: rec.overhead.map(|d| d.as_secs_f64() * 1000.0),
            error: rec.error.is_some(),
        };
        let mut g = self.inner.lock();
        g.global.get_or_insert_with(Series::new).record(t, &m);
        g.timeline
            .get_or_insert_with(|| timeline::Timeline::new(t))
            .record(t, &m, rec.tokens);
        series_for(&mut g.by_model, rec.model.to_string(), "other".into()).record(t, &m);
        if let Some(k) = rec.key_id {
            series_for(&mut g.by_key, k.to_string(), "other".into()).record(t, &m);
        }
        if let Some(sample) = rec.error {
            let key = (
                sample.class.clone(),
                sample.status,
                sample.key_id.clone().unwrap_or_else(|| "-".into()),
            );
            series_for(&mut g.by_error, key, ("other".into(), 0, "-".into()))
                .record(t, &Measures { error: true, ..m });
            if g.samples.len() == MAX_SAMPLES {
                g.samples.pop_front();
            }
            g.samples.push_back(sample);
        }
    }

    /// Once a second: the open calls, streams and Live sessions, for the timeline.
    pub fn sample(&self, gauges: Gauges) {
        let t = now_s();
        self.inner
            .lock()
            .timeline
            .get_or_insert_with(|| timeline::Timeline::new(t))
            .sample(t, gauges);
    }

    /// The last hour in 10-second steps (`GET /api/timeline`).
    pub fn timeline(&self) -> Value {
        let t = now_s();
        self.inner
            .lock()
            .timeline
            .get_or_insert_with(|| timeline::Timeline::new(t))
            .points(t)
    }

    pub fn performance(&self) -> Value {
        let t = now_s();
        let g = self.inner.lock();
        let per = |s: &Series| -> Value {
            WINDOWS
                .iter()
                .map(|(n, d)| (n.to_string(), summarize(&s.window(t, *d), *d)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let empty = Series::new();
        json!({
            "overall": per(g.global.as_ref().unwrap_or(&empty)),
            "by_model": g.by_model.iter().map(|(k, s)| (k.clone(), per(s))).collect::<serde_json::Map<_, _>>(),
            "by_key": g.by_key.iter().map(|(k, s)| (k.clone(), per(s))).collect::<serde_json::Map<_, _>>(),
        })
    }

    pub fn errors(&self) -> Value {
        let t = now_s();
        let g = self.inner.lock();
        let mut rows = Vec::new();
        for ((class, status, key), s) in &g.by_error {
            let counts: serde_json::Map<_, _> = WINDOWS
                .iter()
                .map(|(n, d)| (n.to_string(), json!(s.window(t, *d).count)))
                .collect();
            if counts.values().any(|v| v.as_u64() != Some(0)) {
                rows.push(
                    json!({"class": class, "status": status, "key_id": key, "counts": counts}),
                );
            }
        }
        rows.sort_by(|a, b| a["class"].as_str().cmp(&b["class"].as_str()));
        json!({"errors": rows, "recent": g.samples.iter().rev().collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_buckets() {
        let mut h = [0u32; 17];
        h[bucket(3.0)] = 50;
        h[bucket(150.0)] = 50;
        let p50 = percentile(&h, 100, 0.5).unwrap();
        assert!((2.0..=5.0).contains(&p50), "{p50}");
        let p99 = percentile(&h, 100, 0.99).unwrap();
        assert!((100.0..=200.0).contains(&p99), "{p99}");
        assert!(percentile(&h, 0, 0.5).is_none());
    }

    #[test]
    fn records_windows_and_samples() {
        let s = Stats::default();
        for i in 0..30 {
            s.record(CallRecord {
                model: "m",
                key_id: Some("k"),
                latency: Duration::from_millis(10),
                ttfb: Some(Duration::from_millis(5)),
                overhead: Some(Duration::from_micros(300)),
                tokens: 0,
                error: (i % 10 == 0).then(|| ErrorSample {
                    at_unix_ms: 0,
                    request_id: Some(format!("r{i}")),
                    status: 502,
                    upstream_status: 0,
                    upstream_reason: None,
                    class: "upstream_unreachable".into(),
                    key_id: Some("k".into()),
                    api: "native",
                    action: "models.list",
                    model: "m".into(),
                }),
            });
        }
        let p = s.performance();
        assert_eq!(p["overall"]["1m"]["requests"], 30);
        assert_eq!(p["by_key"]["k"]["5m"]["errors"], 3);
        assert_eq!(p["by_model"]["m"]["1h"]["requests"], 30);
        let o = p["by_key"]["k"]["1m"]["overhead_ms"]["p50"]
            .as_f64()
            .unwrap();
        assert!((0.2..=0.5).contains(&o), "{o}");
        let e = s.errors();
        assert_eq!(e["errors"][0]["counts"]["1m"], 3);
        assert_eq!(e["recent"].as_array().unwrap().len(), 3);
    }
}
