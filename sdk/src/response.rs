use std::time::Duration;

/// The response head a plugin observes (status and headers as they go to the client).
///
/// ```
/// let head = gemini_proxy_sdk::ResponseHead::new(200, http::HeaderMap::new());
/// assert!(head.is_success());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResponseHead {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
}

impl ResponseHead {
    /// A head with a status and headers.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::ResponseHead::new(404, Default::default()).status, 404);
    /// ```
    pub fn new(status: u16, headers: http::HeaderMap) -> Self {
        ResponseHead { status, headers }
    }

    /// True for 2xx.
    ///
    /// ```
    /// assert!(!gemini_proxy_sdk::ResponseHead::new(429, Default::default()).is_success());
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A Google error body, parsed (`{"error":{"code","message","status","details"}}`, also
/// inside a one-element array).
///
/// ```
/// use gemini_proxy_sdk::UpstreamError;
/// let body = br#"[{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED",
///   "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26.5s"},
///   {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaValue":"10"}]}]}}]"#;
/// let e = UpstreamError::parse(body).unwrap();
/// assert_eq!(e.status, "RESOURCE_EXHAUSTED");
/// assert_eq!(e.retry_delay, Some(std::time::Duration::from_millis(26_500)));
/// assert_eq!(e.quota_ids, vec!["GenerateRequestsPerMinutePerProjectPerModel-FreeTier".to_string()]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct UpstreamError {
    /// `error.code` (the HTTP status Google meant).
    pub code: u16,
    /// `error.status` (gRPC status name).
    pub status: String,
    /// `error.message`.
    pub message: String,
    /// `ErrorInfo.reason`, e.g. `API_KEY_INVALID`.
    pub reason: Option<String>,
    /// `QuotaFailure.violations[].quotaId`.
    pub quota_ids: Vec<String>,
    /// `QuotaFailure.violations[].quotaValue`, parsed where numeric.
    pub quota_values: Vec<u64>,
    /// `RetryInfo.retryDelay`.
    pub retry_delay: Option<Duration>,
}

impl UpstreamError {
    /// Parses an error body; `None` if it is not a Google error.
    ///
    /// ```
    /// assert!(gemini_proxy_sdk::UpstreamError::parse(b"not json").is_none());
    /// ```
    pub fn parse(body: &[u8]) -> Option<UpstreamError> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let v = match v {
            serde_json::Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
            other => other,
        };
        let err = v.get("error")?;
        let mut out = UpstreamError {
            code: err.get("code").and_then(|c| c.as_u64()).unwrap_or(0) as u16,
            status: err
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string(),
            message: err
                .get("message")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string(),
            ..Default::default()
        };
        for d in err
            .get("details")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
        {
            let ty = d.get("@type").and_then(|t| t.as_str()).unwrap_or("");
            if ty.ends_with("google.rpc.ErrorInfo") {
                out.reason = d.get("reason").and_then(|r| r.as_str()).map(str::to_string);
            } else if ty.ends_with("google.rpc.RetryInfo") {
                out.retry_delay = d
                    .get("retryDelay")
                    .and_then(|r| r.as_str())
                    .and_then(parse_duration);
            } else if ty.ends_with("google.rpc.QuotaFailure") {
                for viol in d
                    .get("violations")
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(id) = viol.get("quotaId").and_then(|q| q.as_str()) {
                        out.quota_ids.push(id.to_string());
                    }
                    if let Some(val) = viol
                        .get("quotaValue")
                        .and_then(|q| q.as_str())
                        .and_then(|q| q.parse().ok())
                    {
                        out.quota_values.push(val);
                    }
                }
            }
        }
        Some(out)
    }
}

/// Parses a protobuf JSON duration (`"39s"`, `"45.837906927s"`).
fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The outcome of one upstream attempt, before anything reached the client.
///
/// ```
/// let o = gemini_proxy_sdk::UpstreamOutcome::new("primary", 200);
/// assert!(o.error.is_none());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamOutcome {
    /// Id of the key used (never the key itself).
    pub key_id: String,
    /// Upstream HTTP status (0 when no response arrived).
    pub status: u16,
    /// Parsed error body, for non-2xx responses that carry one.
    pub error: Option<UpstreamError>,
    /// Time from sending to the response head.
    pub latency: Duration,
    /// A transport failure (connect, timeout), if no response arrived.
    pub transport_error: Option<String>,
}

impl UpstreamOutcome {
    /// An outcome with a status.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::UpstreamOutcome::new("k", 503).status, 503);
    /// ```
    pub fn new(key_id: impl Into<String>, status: u16) -> Self {
        UpstreamOutcome {
            key_id: key_id.into(),
            status,
            error: None,
            latency: Duration::ZERO,
            transport_error: None,
        }
    }
}

/// Token usage, from Gemini's `usageMetadata` (the last, cumulative chunk for streams) or
/// OpenAI's `usage`. Missing counts are 0.
///
/// ```
/// let u = gemini_proxy_sdk::Usage { prompt_tokens: 7, candidates_tokens: 149, thoughts_tokens: 48, cached_tokens: 0, total_tokens: 204 };
/// assert_eq!(u.prompt_tokens + u.candidates_tokens + u.thoughts_tokens, u.total_tokens);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// `promptTokenCount` / `prompt_tokens`.
    pub prompt_tokens: u64,
    /// `candidatesTokenCount` / `completion_tokens`.
    pub candidates_tokens: u64,
    /// `thoughtsTokenCount`.
    pub thoughts_tokens: u64,
    /// `cachedContentTokenCount`.
    pub cached_tokens: u64,
    /// `totalTokenCount` / `total_tokens`.
    pub total_tokens: u64,
}

/// The summary of one finished call, handed to [`Plugin::on_complete`](crate::Plugin::on_complete).
///
/// ```
/// let done = gemini_proxy_sdk::CompletedRequest::default();
/// assert_eq!(done.status, 0);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CompletedRequest {
    /// Status sent to the client (0 if the client went away before a response).
    pub status: u16,
    /// Status of the last upstream attempt (0 if none).
    pub upstream_status: u16,
    /// Key id of the last attempt.
    pub key_id: Option<String>,
    /// Project of that key.
    pub project: Option<String>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Error class (`upstream_unreachable`, `timeout`, `rejected`, `upstream_4xx` ...), if failed.
    pub error_class: Option<String>,
    /// Whole call, first byte in to last byte out.
    pub total_latency: Duration,
    /// Upstream time, request sent to response end.
    pub upstream_latency: Option<Duration>,
    /// Time to the first response byte sent to the client.
    pub time_to_first_byte: Option<Duration>,
    /// Token usage, if the response reported it.
    pub usage: Option<Usage>,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// True if a stream ended without a `finishReason` (an error, not a success).
    pub truncated: bool,
    /// True if the response was streamed (SSE or JSON array).
    pub streamed: bool,
    /// The finish reason of the (last) candidate, if seen.
    pub finish_reason: Option<String>,
}
