//! Prometheus metrics (key ids only, never keys; label values bounded).

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::Mutex;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

static STAGE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "pipeline_stage_errors_total",
            "Pipeline stage failures by stage kind and phase",
        ),
        &["stage", "phase"],
    )
    .expect("valid metric")
});

/// Counts a failed pipeline stage (shared by every gateway in the process).
pub fn global_stage_error(stage: &str, phase: &str) {
    STAGE_ERRORS.with_label_values(&[stage, phase]).inc();
}

/// The distinct values a label may take (model names): a name becomes a label only once the
/// upstream has answered a call for it with success ([`LabelCap::learn`]), so neither
/// unauthenticated calls nor made-up names can fill the set; at most `max` names, the rest are
/// `other`.
pub struct LabelCap {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn shape(value: &str) -> Option<&'static str> {
        if value.is_empty() {
            return Some("none");
        }
        let plain = value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        (!plain).then_some("invalid")
    }

    /// The label for `value`: itself once learned, else `other`.
    pub fn get(&self, value: &str) -> String {
        if let Some(s) = Self::shape(value) {
            return s.into();
        }
        if self.seen.lock().contains(value) {
            value.to_string()
        } else {
            "other".into()
        }
    }

    /// Like [`get`](Self::get), first learning `value` if there is room (call it for a name
    /// the upstream has just served).
    pub fn learn(&self, value: &str) -> String {
        if let Some(s) = Self::shape(value) {
            return s.into();
        }
        let mut seen = self.seen.lock();
        if seen.contains(value) || seen.len() < self.max {
            seen.insert(value.to_string());
            return value.to_string();
        }
        "other".into()
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Live sessions last seconds to hours.
const SESSION_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0];
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0,
];

/// Registers metrics in one registry.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.0.register(Box::new(m.clone())).expect("unique metric");
        m
    }
    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }
    fn latency(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        self.histogram(name, help, labels, LATENCY_BUCKETS)
    }
    fn overhead(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        self.histogram(name, help, labels, OVERHEAD_BUCKETS)
    }
    fn session_seconds(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        self.histogram(name, help, labels, SESSION_BUCKETS)
    }
    fn histogram(&self, name: &str, help: &str, labels: &[&str], b: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(b.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

/// The metrics table: each field with its type, how it is registered, its name and help, and
/// its labels. Expands to the `Metrics` struct and its constructor.
macro_rules! metrics_table {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty = $make:ident($name:literal, $help:literal $(, [$($label:literal),*])?); )*) => {
        pub struct Metrics {
            pub registry: Registry,
            $( $(#[$doc])* pub $field: $ty, )*
            pub models: LabelCap,
        }

        impl Metrics {
            pub fn new() -> Metrics {
                let registry = Registry::new();
                registry
                    .register(Box::new(STAGE_ERRORS.clone()))
                    .expect("unique metric");
                let r = Registrar(&registry);
                $( let $field = r.$make($name, $help $(, &[$($label),*])?); )*
                Metrics {
                    $( $field, )*
                    registry,
                    models: LabelCap::new(100),
                }
            }
        }
    };
}

metrics_table! {
    http_requests: IntCounterVec = counters("http_requests_total",
        "Requests served by the proxy listener", ["api", "method", "status"]);
    gemini_calls: IntCounterVec = counters("gemini_api_calls_total",
        "Calls forwarded to Gemini", ["action", "model", "status"]);
    key_usage: IntCounterVec = counters("api_key_usage",
        "Upstream attempts per key id", ["key_id"]);
    key_errors: IntCounterVec = counters("api_key_errors_total",
        "Failed upstream attempts per key id and class", ["key_id", "class"]);
    /// Client connections closed at accept because the listener was full.
    connections_refused: IntCounterVec = counters("client_connections_refused_total",
        "Client connections closed at accept: the listener had server.clients.max_connections open",
        ["listener"]);
    /// Client connections admitted and not yet closed, per listener.
    connections_open: IntGaugeVec = gauges("client_connections_open",
        "Client connections admitted and still open, per listener", ["listener"]);
    request_duration: HistogramVec = latency("http_request_duration_seconds",
        "Whole-call latency at the gateway", ["api"]);
    upstream_duration: HistogramVec = latency("upstream_duration_seconds",
        "Upstream time from request sent to response end", ["action"]);
    ttfb: HistogramVec = latency("time_to_first_byte_seconds",
        "Time to the first response byte sent to the client", ["action"]);
    /// Whole-call time minus the upstream time of the answering attempt.
    overhead: HistogramVec = overhead("gateway_overhead_seconds",
        "Time the gateway adds: whole call minus the answering attempt's upstream time (failed attempts and backoff included)",
        ["api"]);
    tokens: IntCounterVec = counters("gemini_tokens_total",
        "Tokens by model and direction", ["model", "direction"]);
    reloads: IntCounterVec = counters("config_reloads_total",
        "Config reloads by result", ["result"]);
    truncated: IntCounter = counter("streams_truncated_total",
        "Streams that ended without a finish reason");
    in_flight: IntGauge = gauge("requests_in_flight", "Proxy calls in progress");
    streams_active: IntGauge = gauge("streams_active",
        "Streamed calls (SSE, JSON-array streams) being relayed");
    config_generation: IntGauge = gauge("config_generation", "Generation of the active config");
    key_enabled: IntGaugeVec = gauges("api_key_enabled",
        "1 if the key is enabled in the active config", ["key_id"]);
    /// Attempts repeated on another key (`reason` = the verdict that moved the call).
    retries: IntCounterVec = counters("key_retries_total",
        "Upstream attempts repeated (on another key where possible), by the reason", ["reason"]);
    /// Keys found dead, by reason.
    keys_disabled: IntCounterVec = counters("keys_disabled_total",
        "Keys the pool found dead, by reason", ["reason"]);
    /// Refused credentials (proxy and admin listeners), by reason.
    auth_failures: IntCounterVec = counters("auth_failures_total",
        "Calls refused for their credential or permissions, by reason", ["reason"]);
    /// Audit events dropped because the queue was full (a counter, set from the sink).
    audit_dropped: IntGauge = gauge("audit_dropped_total",
        "Audit events dropped because the writer's queue was full");
    audit_written: IntGauge = gauge("audit_events_written_total", "Audit events written");
    audit_queue_depth: IntGauge = gauge("audit_queue_depth", "Audit events waiting for the writer");
    audit_db_errors: IntGauge = gauge("audit_db_errors_total",
        "Audit events or commits the DuckDB database refused (the JSON-lines file has them)");
    /// 1 while an anomaly is raised for (key, model, signal).
    anomalies_active: IntGaugeVec = gauges("anomaly_active",
        "1 while an anomaly is raised for a key, model and signal", ["key_id", "model", "signal"]);
    /// Anomalies raised and cleared, by signal.
    anomalies: IntCounterVec = counters("anomalies_total",
        "Anomalies raised and cleared, by signal", ["signal", "transition"]);
    /// 1 for the key's current state (`active`, `cooling_down`, `half_open`, `disabled`).
    key_state: IntGaugeVec = gauges("api_key_state",
        "1 for the state each key is in", ["key_id", "state"]);
    /// Counted by the script stages (plugins crate), published at scrape time.
    script_fallbacks: IntGaugeVec = gauges("script_fallbacks_total",
        "Rhai/Wasm/native hook calls that failed and fell back to the built-in behaviour",
        ["engine", "script", "hook", "reason"]);
    certificate_expiry: IntGauge = gauge("certificate_expiry_seconds",
        "Seconds until the served TLS certificate expires (negative once expired)");
    script_reloads: IntGaugeVec = gauges("script_reloads_total",
        "Program files recompiled after a change, by result (error keeps the old version)",
        ["engine", "script", "result"]);
    key_cooldown_seconds: IntGaugeVec = gauges("api_key_cooldown_seconds",
        "Seconds until the key's longest cooldown ends (0 when none)", ["key_id"]);
    key_in_flight: IntGaugeVec = gauges("api_key_in_flight", "Calls in flight per key", ["key_id"]);
    cluster_degraded: IntGauge = gauge("cluster_degraded",
        "1 while Redis does not answer and this instance runs on local state");
    /// A counter, set from the link at scrape time.
    cluster_redis_errors: IntGauge = gauge("cluster_redis_errors_total",
        "Redis operations that failed or ran out of time");
    cluster_instances: IntGauge = gauge("cluster_instances", "Live instances last seen");
    cluster_dropped: IntGauge = gauge("cluster_adjustments_dropped_total",
        "Limit corrections dropped while Redis stayed away");
    /// Counters, set from the limits at scrape time.
    cluster_admissions: IntGaugeVec = gauges("cluster_limit_admissions_total",
        "Calls admitted through the shared limits: by a script on Redis, or from a grant made ahead",
        ["by"]);
    live_active: IntGauge = gauge("live_sessions_active", "Live API sessions open");
    /// `result`: `ok` (the upstream took it and a side closed it), `refused` (never opened
    /// upstream), `error` (the upstream failed it, or a limit ended it).
    live_sessions: IntCounterVec = counters("live_sessions_total",
        "Live API sessions ended, by result", ["result"]);
    live_seconds: HistogramVec = session_seconds("live_session_seconds",
        "Length of Live API sessions", ["result"]);
    live_messages: IntCounterVec = counters("live_messages_total",
        "Live API messages relayed, by direction (client_to_server, server_to_client)", ["direction"]);
    live_bytes: IntCounterVec = counters("live_bytes_total",
        "Live API payload bytes relayed, by direction", ["direction"]);
}

impl Metrics {
    /// Refreshes the per-key gauges from the pool (at scrape time, off the hot path).
    pub fn publish_pool(&self, keys: &[crate::pool::KeyReport]) {
        self.key_state.reset();
        self.key_cooldown_seconds.reset();
        self.key_in_flight.reset();
        for k in keys {
            self.key_state.with_label_values(&[&k.id, k.state]).set(1);
            let longest = k.cooldowns.iter().map(|c| c.remaining_s).max().unwrap_or(0);
            self.key_cooldown_seconds
                .with_label_values(&[&k.id])
                .set(longest as i64);
            self.key_in_flight
                .with_label_values(&[&k.id])
                .set(i64::from(k.in_flight));
        }
    }

    /// Copies the script stages' counters into their metrics.
    pub fn publish_scripts(&self) {
        for ((engine, script, hook, reason), n) in
            gemini_proxy_plugins::scripting::fallback_counts()
        {
            self.script_fallbacks
                .with_label_values(&[engine, &script, hook, reason])
                .set(n as i64);
        }
        for ((engine, script, result), n) in gemini_proxy_plugins::scripting::reload_counts() {
            self.script_reloads
                .with_label_values(&[engine, &script, result])
                .set(n as i64);
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_bounds_values() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.get("a"), "other", "not served yet");
        assert_eq!(cap.learn("a"), "a");
        assert_eq!(cap.learn("b"), "b");
        assert_eq!(cap.learn("c"), "other");
        assert_eq!(cap.get("a"), "a");
        assert_eq!(cap.get("c"), "other");
        assert_eq!(cap.get("bad value\n"), "invalid");
        assert_eq!(cap.get(&"x".repeat(100)), "invalid");
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_the_gateway_exports() {
        let m = Metrics::new();
        // One sample in every family, so each is rendered.
        m.http_requests
            .with_label_values(&["native", "POST", "200"])
            .inc();
        m.gemini_calls
            .with_label_values(&["generateContent", "m", "200"])
            .inc();
        m.key_usage.with_label_values(&["k"]).inc();
        m.key_errors.with_label_values(&["k", "transient"]).inc();
        m.request_duration
            .with_label_values(&["native"])
            .observe(0.1);
        m.upstream_duration
            .with_label_values(&["generateContent"])
            .observe(0.1);
        m.ttfb.with_label_values(&["generateContent"]).observe(0.1);
        m.overhead.with_label_values(&["native"]).observe(0.0001);
        m.tokens.with_label_values(&["m", "prompt"]).inc();
        m.reloads.with_label_values(&["applied"]).inc();
        m.retries.with_label_values(&["transient"]).inc();
        m.keys_disabled.with_label_values(&["invalid"]).inc();
        m.auth_failures.with_label_values(&["expired"]).inc();
        m.key_state.with_label_values(&["k", "active"]).set(1);
        m.key_cooldown_seconds.with_label_values(&["k"]).set(0);
        m.key_in_flight.with_label_values(&["k"]).set(0);
        m.anomalies_active
            .with_label_values(&["k", "m", "latency"])
            .set(1);
        m.anomalies.with_label_values(&["latency", "raised"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        let exported: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let dash: serde_json::Value = serde_json::from_str(include_str!(
            "../../examples/grafana/gemini-proxy-dashboard.json"
        ))
        .unwrap();
        for name in [
            "http_requests_total",
            "gemini_api_calls_total",
            "api_key_usage",
            "auth_failures_total",
            "http_request_duration_seconds_bucket",
        ] {
            assert!(exported.contains(name), "{name} missing");
        }
        let mut used = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !word.contains('_')
                        || word.starts_with('_')
                        || ["histogram_quantile", "key_id"].contains(&word)
                    {
                        continue;
                    }
                    used += 1;
                    assert!(
                        exported.contains(word),
                        "panel `{}` uses `{word}`, which /metrics does not export",
                        panel["title"]
                    );
                }
            }
        }
        assert!(used >= 18, "{used}");
    }
}
