//! What an upstream answer means for the key pool from its status and Google's
//! error details (`ErrorInfo.reason`, `QuotaFailure` quota ids, `RetryInfo` delays).

use std::time::Duration;

use gemini_proxy_sdk::UpstreamError;

/// Why a key is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// 400 `API_KEY_INVALID` (invalid, not found, expired).
    Invalid,
    /// 403 "reported as leaked".
    Leaked,
    /// 403 `CONSUMER_SUSPENDED`.
    Suspended,
    /// 403 `SERVICE_DISABLED` / `API_KEY_SERVICE_BLOCKED`.
    ServiceDisabled,
    /// Disabled by an operator.
    Operator,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Invalid => "invalid",
            DeadReason::Leaked => "leaked",
            DeadReason::Suspended => "suspended",
            DeadReason::ServiceDisabled => "service_disabled",
            DeadReason::Operator => "operator",
        }
    }
}

/// Which quota window a 429 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaWindow {
    Minute,
    Day,
}

/// The pool's reading of one upstream answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 2xx/3xx: the key works.
    Success,
    /// The key can never serve again until an operator or a probe says so. Rotate.
    KeyDead(DeadReason),
    /// The key's project ran out of a quota for this model. Cool (project, model) down. Rotate.
    ProjectQuota {
        window: QuotaWindow,
        retry_delay: Option<Duration>,
        quota_id: String,
    },
    /// `limit: 0`: this key's tier has no access to the model. Rotate.
    ModelUnavailable,
    /// A 429 without details: short backoff for (key, model), no penalty. Rotate.
    BareRateLimit,
    /// 500/503/504: not the key's fault; retry with backoff, on another key if there is one.
    Transient,
    /// The gateway sent something wrong (401, unregistered caller): alert, pass through.
    GatewayBug,
    /// A file or cached content this key's project cannot see: pass through, never penalise.
    AffinityMiss,
    /// The client's own error: pass through, no retry, no penalty.
    ClientError,
}

impl Verdict {
    /// Whether another key could answer differently.
    pub fn rotates(&self) -> bool {
        matches!(
            self,
            Verdict::KeyDead(_)
                | Verdict::ProjectQuota { .. }
                | Verdict::ModelUnavailable
                | Verdict::BareRateLimit
        )
    }

    /// Stable name for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::KeyDead(_) => "key_dead",
            Verdict::ProjectQuota {
                window: QuotaWindow::Minute,
                ..
            } => "quota_minute",
            Verdict::ProjectQuota {
                window: QuotaWindow::Day,
                ..
            } => "quota_day",
            Verdict::ModelUnavailable => "model_unavailable",
            Verdict::BareRateLimit => "rate_limited",
            Verdict::Transient => "transient",
            Verdict::GatewayBug => "gateway_bug",
            Verdict::AffinityMiss => "affinity_miss",
            Verdict::ClientError => "client_error",
        }
    }
}

/// Classifies an answer from its status and parsed error body. `resource_path` is true for
/// `files/...` and `cachedContents/...` calls.
pub fn classify(status: u16, error: Option<&UpstreamError>, resource_path: bool) -> Verdict {
    if status < 400 {
        return Verdict::Success;
    }
    let reason = error.and_then(|e| e.reason.as_deref()).unwrap_or("");
    let message = error.map(|e| e.message.as_str()).unwrap_or("");
    match status {
        400 if reason == "API_KEY_INVALID"
            || message.starts_with("API key not valid")
            || message.starts_with("API Key not found")
            || message.starts_with("API key expired") =>
        {
            Verdict::KeyDead(DeadReason::Invalid)
        }
        401 => Verdict::GatewayBug,
        403 => {
            if message.contains("reported as leaked") {
                Verdict::KeyDead(DeadReason::Leaked)
            } else if reason == "CONSUMER_SUSPENDED" {
                Verdict::KeyDead(DeadReason::Suspended)
            } else if reason == "SERVICE_DISABLED" || reason == "API_KEY_SERVICE_BLOCKED" {
                Verdict::KeyDead(DeadReason::ServiceDisabled)
            } else if message.contains("unregistered callers") {
                Verdict::GatewayBug
            } else if resource_path || message.contains("permission to access") {
                Verdict::AffinityMiss
            } else {
                Verdict::ClientError
            }
        }
        404 if resource_path => Verdict::AffinityMiss,
        429 => {
            let Some(e) = error.filter(|e| !e.quota_ids.is_empty()) else {
                return Verdict::BareRateLimit;
            };
            if e.quota_values.contains(&0) {
                return Verdict::ModelUnavailable;
            }
            // A day window anywhere wins: the short retryDelay of a daily 429 is misleading.
            let day = e.quota_ids.iter().find(|q| q.contains("PerDay"));
            let minute = e.quota_ids.iter().find(|q| q.contains("PerMinute"));
            match (day, minute) {
                (Some(q), _) => Verdict::ProjectQuota {
                    window: QuotaWindow::Day,
                    retry_delay: e.retry_delay,
                    quota_id: q.clone(),
                },
                (None, Some(q)) => Verdict::ProjectQuota {
                    window: QuotaWindow::Minute,
                    retry_delay: e.retry_delay,
                    quota_id: q.clone(),
                },
                // Some other window (per-hour, spend caps): treat as per minute with its delay.
                (None, None) => Verdict::ProjectQuota {
                    window: QuotaWindow::Minute,
                    retry_delay: e.retry_delay,
                    quota_id: e.quota_ids[0].clone(),
                },
            }
        }
        500 | 502 | 503 | 504 => Verdict::Transient,
        _ => Verdict::ClientError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock;

    fn parse(v: serde_json::Value) -> UpstreamError {
        UpstreamError::parse(v.to_string().as_bytes()).expect("google error")
    }

    #[test]
    fn classifies_the_mock_bodies_like_google_s() {
        let c = |status, v| classify(status, Some(&parse(v)), false);
        assert_eq!(
            c(400, mock::err_key_invalid()),
            Verdict::KeyDead(DeadReason::Invalid)
        );
        assert_eq!(
            c(403, mock::err_leaked()),
            Verdict::KeyDead(DeadReason::Leaked)
        );
        assert_eq!(
            c(403, mock::err_suspended("k")),
            Verdict::KeyDead(DeadReason::Suspended)
        );
        match c(429, mock::err_quota_minute("m", 10, "17s")) {
            Verdict::ProjectQuota {
                window: QuotaWindow::Minute,
                retry_delay,
                ..
            } => assert_eq!(retry_delay, Some(Duration::from_secs(17))),
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            c(429, mock::err_quota_day("m", 250, "3s")),
            Verdict::ProjectQuota {
                window: QuotaWindow::Day,
                ..
            }
        ));
        assert_eq!(c(429, mock::err_quota_zero("m")), Verdict::ModelUnavailable);
        assert_eq!(c(429, mock::err_bare_429()), Verdict::BareRateLimit);
        assert_eq!(c(503, mock::err_overloaded()), Verdict::Transient);
        assert_eq!(c(500, mock::err_internal()), Verdict::Transient);
        assert_eq!(c(404, mock::err_model_not_found("x")), Verdict::ClientError);
        assert_eq!(classify(429, None, false), Verdict::BareRateLimit);
        assert_eq!(classify(404, None, true), Verdict::AffinityMiss);
        assert_eq!(classify(200, None, false), Verdict::Success);
        assert_eq!(classify(401, None, false), Verdict::GatewayBug);
        assert!(!Verdict::Transient.rotates() && Verdict::BareRateLimit.rotates());
    }
}
