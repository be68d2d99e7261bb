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

const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub gemini_calls: IntCounterVec,
    pub key_usage: IntCounterVec,
    pub key_errors: IntCounterVec,
    /// Client connections closed at accept because the listener was full.
    pub connections_refused: IntCounterVec,
    /// Client connections admitted and not yet closed, per listener.
    pub connections_open: IntGaugeVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub ttfb: HistogramVec,
    /// Whole-call time minus the upstream time of the answering attempt.
    pub overhead: HistogramVec,
    pub tokens: IntCounterVec,
    pub reloads: IntCounterVec,
    pub truncated: IntCounter,
    pub in_flight: IntGauge,
    pub config_generation: IntGauge,
    pub key_enabled: IntGaugeVec,
    /// Attempts repeated on another key (`reason` = the verdict that moved the call).
    pub retries: IntCounterVec,
    /// Keys found dead, by reason.
    pub keys_disabled: IntCounterVec,
    /// Refused credentials (proxy and admin listeners), by reason.
    pub auth_failures: IntCounterVec,
    /// Audit events dropped because the queue was full (a counter, set from the sink).
    pub audit_dropped: IntGauge,
    pub audit_written: IntGauge,
    pub audit_queue_depth: IntGauge,
    pub audit_db_errors: IntGauge,
    /// 1 while an anomaly is raised for (key, model, signal).
    pub anomalies_active: IntGaugeVec,
    /// Anomalies raised and cleared, by signal.
    pub anomalies: IntCounterVec,
    /// 1 for the key's current state (`active`, `cooling_down`, `half_open`, `disabled`).
    pub key_state: IntGaugeVec,
    pub script_fallbacks: IntGaugeVec,
    pub certificate_expiry: IntGauge,
    pub script_reloads: IntGaugeVec,
    pub key_cooldown_seconds: IntGaugeVec,
    pub key_in_flight: IntGaugeVec,
    pub models: LabelCap,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let hist = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let http_requests = counter(
            "http_requests_total",
            "Requests served by the proxy listener",
            &["api", "method", "status"],
        );
        let gemini_calls = counter(
            "gemini_api_calls_total",
            "Calls forwarded to Gemini",
            &["action", "model", "status"],
        );
        let key_usage = counter("api_key_usage", "Upstream attempts per key id", &["key_id"]);
        let connections_refused = counter(
            "client_connections_refused_total",
            "Client connections closed at accept: the listener had server.clients.max_connections open",
            &["listener"],
        );
        let key_errors = counter(
            "api_key_errors_total",
            "Failed upstream attempts per key id and class",
            &["key_id", "class"],
        );
        let request_duration = hist(
            "http_request_duration_seconds",
            "Whole-call latency at the gateway",
            &["api"],
        );
        let upstream_duration = hist(
            "upstream_duration_seconds",
            "Upstream time from request sent to response end",
            &["action"],
        );
        let ttfb = hist(
            "time_to_first_byte_seconds",
            "Time to the first response byte sent to the client",
            &["action"],
        );
        let overhead = {
            let h = HistogramVec::new(
                HistogramOpts::new(
                    "gateway_overhead_seconds",
                    "Time the gateway adds: whole call minus the answering attempt's upstream time (failed attempts and backoff included)",
                )
                .buckets(OVERHEAD_BUCKETS.to_vec()),
                &["api"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let tokens = counter(
            "gemini_tokens_total",
            "Tokens by model and direction",
            &["model", "direction"],
        );
        let reloads = counter(
            "config_reloads_total",
            "Config reloads by result",
            &["result"],
        );
        let truncated = IntCounter::new(
            "streams_truncated_total",
            "Streams that ended without a finish reason",
        )
        .expect("valid");
        registry
            .register(Box::new(truncated.clone()))
            .expect("unique metric");
        let in_flight =
            IntGauge::new("requests_in_flight", "Proxy calls in progress").expect("valid");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique metric");
        let config_generation =
            IntGauge::new("config_generation", "Generation of the active config").expect("valid");
        registry
            .register(Box::new(config_generation.clone()))
            .expect("unique metric");
        let key_enabled = IntGaugeVec::new(
            Opts::new(
                "api_key_enabled",
                "1 if the key is enabled in the active config",
            ),
            &["key_id"],
        )
        .expect("valid");
        registry
            .register(Box::new(key_enabled.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(STAGE_ERRORS.clone()))
            .expect("unique metric");
        let retries = counter(
            "key_retries_total",
            "Upstream attempts repeated (on another key where possible), by the reason",
            &["reason"],
        );
        let keys_disabled = counter(
            "keys_disabled_total",
            "Keys the pool found dead, by reason",
            &["reason"],
        );
        let auth_failures = counter(
            "auth_failures_total",
            "Calls refused for their credential or permissions, by reason",
            &["reason"],
        );
        let audit_dropped = IntGauge::new(
            "audit_dropped_total",
            "Audit events dropped because the writer's queue was full",
        )
        .expect("valid");
        registry
            .register(Box::new(audit_dropped.clone()))
            .expect("unique metric");
        let audit_written =
            IntGauge::new("audit_events_written_total", "Audit events written").expect("valid");
        registry
            .register(Box::new(audit_written.clone()))
            .expect("unique metric");
        let audit_queue_depth =
            IntGauge::new("audit_queue_depth", "Audit events waiting for the writer")
                .expect("valid");
        registry
            .register(Box::new(audit_queue_depth.clone()))
            .expect("unique metric");
        let audit_db_errors = IntGauge::new(
            "audit_db_errors_total",
            "Audit events or commits the DuckDB database refused (the JSON-lines file has them)",
        )
        .expect("valid");
        registry
            .register(Box::new(audit_db_errors.clone()))
            .expect("unique metric");
        let anomalies = counter(
            "anomalies_total",
            "Anomalies raised and cleared, by signal",
            &["signal", "transition"],
        );
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let connections_open = gauge(
            "client_connections_open",
            "Client connections admitted and still open, per listener",
            &["listener"],
        );
        let key_state = gauge(
            "api_key_state",
            "1 for the state each key is in",
            &["key_id", "state"],
        );
        let key_cooldown_seconds = gauge(
            "api_key_cooldown_seconds",
            "Seconds until the key's longest cooldown ends (0 when none)",
            &["key_id"],
        );
        let key_in_flight = gauge("api_key_in_flight", "Calls in flight per key", &["key_id"]);
        let certificate_expiry = IntGauge::new(
            "certificate_expiry_seconds",
            "Seconds until the served TLS certificate expires (negative once expired)",
        )
        .expect("valid");
        registry
            .register(Box::new(certificate_expiry.clone()))
            .expect("unique metric");
        // Counted by the script stages (plugins crate), published at scrape time.
        let script_fallbacks = gauge(
            "script_fallbacks_total",
            "Rhai/Wasm/native hook calls that failed and fell back to the built-in behaviour",
            &["engine", "script", "hook", "reason"],
        );
        let script_reloads = gauge(
            "script_reloads_total",
            "Program files recompiled after a change, by result (error keeps the old version)",
            &["engine", "script", "result"],
        );
        let anomalies_active = gauge(
            "anomaly_active",
            "1 while an anomaly is raised for a key, model and signal",
            &["key_id", "model", "signal"],
        );
        Metrics {
            registry,
            http_requests,
            gemini_calls,
            key_usage,
            key_errors,
            connections_refused,
            connections_open,
            request_duration,
            upstream_duration,
            ttfb,
            overhead,
            tokens,
            reloads,
            truncated,
            in_flight,
            config_generation,
            key_enabled,
            retries,
            keys_disabled,
            auth_failures,
            audit_dropped,
            audit_written,
            audit_queue_depth,
            audit_db_errors,
            anomalies_active,
            anomalies,
            key_state,
            script_fallbacks,
            script_reloads,
            certificate_expiry,
            key_cooldown_seconds,
            key_in_flight,
            models: LabelCap::new(100),
        }
    }

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
