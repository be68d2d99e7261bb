//! `security_score`: a 0-100 risk score per request from cheap signals, with thresholds to log,
//! slow down or block. The score lands in `RequestContext::risk_score` (and so in the audit row).
//!
//! Signals (points): recent auth failures from the client IP (up to 40), a burst of calls from it
//! (20), path anomalies such as `..`, encoded slashes or double encoding (40), a missing
//! `User-Agent` (10), a body larger than `large_body_bytes` (10), a POST that does not say it is
//! JSON (10), a rate-limit budget nearly spent (15, when the `rate_limit` stage runs first).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_proxy_sdk::{
    Admission, BuildEnv, CompletedRequest, Phases, Plugin, PluginError, PluginFactory, Rejection,
    RequestContext,
};
use parking_lot::Mutex;
use serde::Deserialize;

fn d_log() -> u8 {
    30
}
fn d_throttle() -> u8 {
    60
}
fn d_block() -> u8 {
    80
}
fn d_burst() -> u32 {
    50
}
fn d_large() -> u64 {
    8 * 1024 * 1024
}

/// Config of the `security_score` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityScoreConfig {
    /// Score from which the call is logged on the `gemini_proxy::security` target.
    #[serde(default = "d_log")]
    pub log_at: u8,
    /// Score from which the call is delayed by `throttle_delay_ms`.
    #[serde(default = "d_throttle")]
    pub throttle_at: u8,
    #[serde(default)]
    pub throttle_delay_ms: Option<u64>,
    /// Score from which the call is refused (403).
    #[serde(default = "d_block")]
    pub block_at: u8,
    /// Calls from one IP within 10 s that count as a burst.
    #[serde(default = "d_burst")]
    pub burst_per_10s: u32,
    #[serde(default = "d_large")]
    pub large_body_bytes: u64,
    /// Addresses (IPv6: /64 ranges) remembered at most (at least 100).
    #[serde(default = "d_max_ips")]
    pub max_ips: usize,
}

fn d_max_ips() -> usize {
    100_000
}

impl Default for SecurityScoreConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

#[derive(Default)]
struct IpHistory {
    /// (second, calls) for the last 10 seconds: constant memory however busy the IP is.
    calls: VecDeque<(u64, u32)>,
    calls_total: u32,
    last_seen: u64,
    auth_failures: VecDeque<Instant>,
}

/// Auth failures kept per address (the signal saturates at four).
const MAX_FAILURES_KEPT: usize = 16;

/// The `security_score` stage.
pub struct SecurityScore {
    config: SecurityScoreConfig,
    ips: Mutex<HashMap<IpAddr, IpHistory>>,
    epoch: Instant,
    lines: LogBudget,
}

/// Risky-request log lines written in the current second, and those left out since the last
/// line: a flood of risky calls (a burst is one of the signals) must not become a flood of log
/// lines. Every call's score is in its audit row either way.
#[derive(Default)]
struct LogBudget {
    /// (second since `epoch`) << 32 | lines written in it.
    second_and_count: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

/// Risky-request lines written per second at most.
const LOG_LINES_PER_SECOND: u64 = 10;

impl LogBudget {
    /// `Some(lines left out before this one)` when this line may be written.
    fn take(&self, sec: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let cur = self.second_and_count.load(Relaxed);
        let next = if cur >> 32 == sec {
            if cur & 0xffff_ffff >= LOG_LINES_PER_SECOND {
                self.suppressed.fetch_add(1, Relaxed);
                return None;
            }
            cur + 1
        } else {
            (sec << 32) | 1
        };
        if self
            .second_and_count
            .compare_exchange(cur, next, Relaxed, Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

/// Path tricks that have no business in a Gemini API call.
fn path_anomalous(path: &str, query: Option<&str>) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("..")
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%25")
        || lower.contains('\\')
        || lower.contains("//")
        || path.len() > 2048
        || query.is_some_and(|q| q.len() > 4096 || q.to_ascii_lowercase().contains("%25"))
}

/// Reasons and points for one call (pure, for tests).
pub fn signals(
    cx: &RequestContext,
    recent_auth_failures: usize,
    calls_last_10s: usize,
    config: &SecurityScoreConfig,
) -> Vec<(&'static str, u8)> {
    let r = &cx.request;
    let mut out = Vec::new();
    if recent_auth_failures > 0 {
        out.push((
            "auth_failures",
            (recent_auth_failures as u8).saturating_mul(10).min(40),
        ));
    }
    if calls_last_10s as u32 > config.burst_per_10s {
        out.push(("burst", 20));
    }
    if path_anomalous(&r.path, r.query.as_deref()) {
        out.push(("path_anomaly", 40));
    }
    if !r.headers.contains_key("user-agent") {
        out.push(("no_user_agent", 10));
    }
    if r.body_size.is_some_and(|n| n > config.large_body_bytes) {
        out.push(("large_body", 10));
    }
    let json = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if r.method == http::Method::POST
        && !json
        && r.body_size.unwrap_or(0) > 0
        && !r.path.starts_with("/upload/")
    {
        out.push(("not_json", 10));
    }
    if let Some(budget) = cx.extensions.get::<crate::rate_limit::Budget>()
        && budget.remaining_share < 0.1
    {
        out.push(("budget_nearly_spent", 15));
    }
    out
}

impl SecurityScore {
    fn score(&self, cx: &mut RequestContext) -> (u8, Vec<(&'static str, u8)>) {
        let now = Instant::now();
        let (failures, calls) = match cx.request.client_ip {
            Some(ip) => {
                let sec = self.epoch.elapsed().as_secs();
                let mut ips = self.ips.lock();
                let h = ips.entry(gemini_proxy_sdk::caller_scope(ip)).or_default();
                while let Some(&(s, n)) = h.calls.front() {
                    if s + 10 > sec {
                        break;
                    }
                    h.calls_total -= n;
                    h.calls.pop_front();
                }
                while h
                    .auth_failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(300))
                {
                    h.auth_failures.pop_front();
                }
                match h.calls.back_mut() {
                    Some(b) if b.0 == sec => b.1 += 1,
                    _ => h.calls.push_back((sec, 1)),
                }
                h.calls_total += 1;
                h.last_seen = sec;
                (h.auth_failures.len(), h.calls_total as usize)
            }
            None => (0, 0),
        };
        let s = signals(cx, failures, calls, &self.config);
        let total: u32 = s.iter().map(|(_, p)| u32::from(*p)).sum();
        (total.min(100) as u8, s)
    }
}

#[gemini_proxy_sdk::async_trait]
impl Plugin for SecurityScore {
    fn name(&self) -> &str {
        "security_score"
    }

    fn phases(&self) -> Phases {
        Phases::ADMIT | Phases::COMPLETE
    }

    async fn on_admit(&self, cx: &mut RequestContext) -> Result<Admission, PluginError> {
        let (score, reasons) = self.score(cx);
        cx.risk_score = Some(score);
        let names: Vec<&str> = reasons.iter().map(|(n, _)| *n).collect();
        if score >= self.config.log_at
            && let Some(suppressed) = self.lines.take(self.epoch.elapsed().as_secs())
        {
            tracing::warn!(target: "gemini_proxy::security", request_id = %cx.request.request_id, client_ip = ?cx.request.client_ip, score, signals = ?names, suppressed, "risky request");
        }
        if score >= self.config.block_at {
            return Ok(Admission::Reject(
                Rejection::new(
                    403,
                    format!("request refused by the security policy (risk {score})"),
                )
                .reason("risk_blocked"),
            ));
        }
        if score >= self.config.throttle_at {
            let delay = self.config.throttle_delay_ms.unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok(Admission::Continue)
    }

    fn on_complete(&self, cx: &RequestContext, done: &CompletedRequest) {
        let sec = self.epoch.elapsed().as_secs();
        let mut ips = self.ips.lock();
        if matches!(done.status, 401 | 403)
            && let Some(ip) = cx.request.client_ip
        {
            let h = ips.entry(gemini_proxy_sdk::caller_scope(ip)).or_default();
            // The score stops growing at a few failures: more need not be kept.
            if h.auth_failures.len() >= MAX_FAILURES_KEPT {
                h.auth_failures.pop_front();
            }
            h.auth_failures.push_back(Instant::now());
            h.last_seen = sec;
        }
        if ips.len() > self.config.max_ips.max(100) {
            // Whatever an address did, it is forgotten 300 s after its last call.
            ips.retain(|_, h| sec < h.last_seen + 300);
            if ips.len() > self.config.max_ips.max(100) {
                let mut seen: Vec<u64> = ips.values().map(|h| h.last_seen).collect();
                seen.sort_unstable();
                let cut = seen[seen.len() / 2];
                ips.retain(|_, h| h.last_seen > cut);
            }
        }
    }
}

impl PluginFactory for SecurityScore {
    const KIND: &'static str = "security_score";
    type Config = SecurityScoreConfig;

    fn build(config: SecurityScoreConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        if !(config.log_at <= config.throttle_at && config.throttle_at <= config.block_at) {
            return Err(PluginError::new(
                "thresholds must satisfy log_at <= throttle_at <= block_at",
            ));
        }
        Ok(Arc::new(SecurityScore {
            config,
            ips: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            lines: LogBudget::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gemini_proxy_sdk::testing;

    fn cx(path: &str) -> RequestContext {
        let mut c = testing::request("POST", path);
        c.request.client_ip = Some("192.0.2.7".parse().unwrap());
        c.request
            .headers
            .insert("user-agent", http::HeaderValue::from_static("test"));
        c.request.headers.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        c.request.body_size = Some(100);
        c
    }

    #[test]
    fn risky_request_lines_are_bounded_per_second_and_say_what_was_left_out() {
        let b = LogBudget::default();
        for _ in 0..LOG_LINES_PER_SECOND {
            assert_eq!(b.take(5), Some(0));
        }
        assert_eq!(b.take(5), None);
        assert_eq!(b.take(5), None);
        assert_eq!(
            b.take(6),
            Some(2),
            "the next second's first line counts the two left out"
        );
        assert_eq!(b.take(6), Some(0));
    }

    #[test]
    fn callers_that_only_fail_auth_do_not_grow_the_map() {
        let p = SecurityScore {
            config: SecurityScoreConfig::default(),
            ips: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            lines: LogBudget::default(),
        };
        let mut done = CompletedRequest::default();
        done.status = 401;
        let max = p.config.max_ips;
        for i in 0..(max as u32 * 2 + 10) {
            let mut cx =
                gemini_proxy_sdk::testing::request("POST", "/v1beta/models/m:generateContent");
            cx.request.client_ip = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)));
            p.on_complete(&cx, &done);
        }
        assert!(p.ips.lock().len() <= max + 1);
        let mut cx = gemini_proxy_sdk::testing::request("POST", "/v1beta/models/m:generateContent");
        cx.request.client_ip = Some("10.9.9.9".parse().unwrap());
        for _ in 0..10_000 {
            p.on_complete(&cx, &done);
        }
        let ips = p.ips.lock();
        assert!(
            ips[&"10.9.9.9".parse::<IpAddr>().unwrap()]
                .auth_failures
                .len()
                <= MAX_FAILURES_KEPT
        );
    }

    #[test]
    fn a_plain_call_scores_zero_and_tricks_score_high() {
        let conf = SecurityScoreConfig::default();
        assert!(signals(&cx("/v1beta/models/m:generateContent"), 0, 1, &conf).is_empty());
        for p in [
            "/v1beta/../admin",
            "/v1beta/models%2F..%2Fx",
            "/v1beta/%252e%252e/x",
            "/v1beta//models",
        ] {
            let s = signals(&cx(p), 0, 1, &conf);
            assert!(s.iter().any(|(n, _)| *n == "path_anomaly"), "{p}: {s:?}");
        }
        let mut bare = cx("/v1beta/models/m:generateContent");
        bare.request.headers.remove("user-agent");
        bare.request.headers.remove("content-type");
        bare.request.body_size = Some(20 * 1024 * 1024);
        let names: Vec<_> = signals(&bare, 3, 100, &conf)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            vec![
                "auth_failures",
                "burst",
                "no_user_agent",
                "large_body",
                "not_json"
            ]
        );
    }

    #[test]
    fn scores_block_after_repeated_auth_failures_and_anomalies() {
        let p = crate::builtin_registry()
            .build(
                "security_score",
                serde_json::json!({"throttle_at": 79, "throttle_delay_ms": 1}),
                &BuildEnv::default(),
            )
            .unwrap();
        let mut normal = cx("/v1beta/models/m:generateContent");
        assert!(matches!(
            testing::block_on(p.on_admit(&mut normal)).unwrap(),
            Admission::Continue
        ));
        assert_eq!(normal.risk_score, Some(0));
        let mut failed = CompletedRequest::default();
        failed.status = 401;
        for _ in 0..4 {
            p.on_complete(&normal, &failed);
        }
        // 4 failures (40) + a path trick (40) = 80: blocked.
        let mut tricky = cx("/v1beta/../models/m:generateContent");
        match testing::block_on(p.on_admit(&mut tricky)).unwrap() {
            Admission::Reject(r) => {
                assert_eq!(r.status, 403);
                assert_eq!(r.reason, Some("risk_blocked"));
            }
            _ => panic!("not blocked"),
        }
        assert_eq!(tricky.risk_score, Some(80));
    }

    #[test]
    fn thresholds_are_validated() {
        assert!(
            crate::builtin_registry()
                .build(
                    "security_score",
                    serde_json::json!({"log_at": 90, "block_at": 50}),
                    &BuildEnv::default()
                )
                .is_err()
        );
    }
}
