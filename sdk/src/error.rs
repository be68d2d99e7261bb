use std::time::Duration;

/// What the gateway does when a plugin fails (returns an error or panics).
///
/// Set per pipeline entry in YAML (`failure_mode: open`); `closed` is the default.
///
/// ```
/// use gemini_proxy_sdk::FailureMode;
/// assert_eq!(FailureMode::default(), FailureMode::Closed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Fail the call with a 500-class error: safe for auth and limits.
    #[default]
    Closed,
    /// Log the failure and continue as if the plugin had not run.
    Open,
}

/// An error raised by a plugin hook or factory.
///
/// `mode` lets a plugin insist on a failure mode; when `None`, the pipeline entry's configured
/// [`FailureMode`] decides.
///
/// ```
/// use gemini_proxy_sdk::{FailureMode, PluginError};
/// let e = PluginError::new("token store unavailable").with_mode(FailureMode::Open);
/// assert_eq!(e.to_string(), "token store unavailable");
/// assert_eq!(e.mode, Some(FailureMode::Open));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct PluginError {
    /// What went wrong, safe to log (never include a secret).
    pub message: String,
    /// A failure mode that overrides the entry's configuration, if any.
    pub mode: Option<FailureMode>,
}

impl PluginError {
    /// An error whose handling follows the entry's configured failure mode.
    ///
    /// ```
    /// let e = gemini_proxy_sdk::PluginError::new("boom");
    /// assert!(e.mode.is_none());
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
            mode: None,
        }
    }

    /// The same error, forcing a failure mode.
    ///
    /// ```
    /// use gemini_proxy_sdk::{FailureMode, PluginError};
    /// assert_eq!(PluginError::new("x").with_mode(FailureMode::Closed).mode, Some(FailureMode::Closed));
    /// ```
    pub fn with_mode(mut self, mode: FailureMode) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// A refusal to serve a call, turned by the gateway into a Google-style error body
/// (`{"error":{"code","message","status"}}`, or OpenAI-style on `/openai/` paths).
///
/// ```
/// use gemini_proxy_sdk::Rejection;
/// use std::time::Duration;
/// let r = Rejection::new(429, "slow down").retry_after(Duration::from_secs(3));
/// assert_eq!(r.status, 429);
/// assert_eq!(r.grpc_status(), "RESOURCE_EXHAUSTED");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// HTTP status code sent to the client.
    pub status: u16,
    /// Human-readable message (never a secret).
    pub message: String,
    /// Value for a `Retry-After` header, if any.
    pub retry_after: Option<Duration>,
    /// Extra response headers (name, value).
    pub headers: Vec<(String, String)>,
    /// A short machine-readable cause (`expired`, `bad_signature`, ...), for metrics and audit.
    pub reason: Option<&'static str>,
}

impl Rejection {
    /// A rejection with a status and message.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::Rejection::new(401, "no token").message, "no token");
    /// ```
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
            reason: None,
        }
    }

    /// Names the cause for metrics and audit (`auth_failures_total{reason}`).
    ///
    /// ```
    /// let r = gemini_proxy_sdk::Rejection::new(401, "token expired").reason("expired");
    /// assert_eq!(r.reason, Some("expired"));
    /// ```
    pub fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Adds a `Retry-After`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = gemini_proxy_sdk::Rejection::new(429, "x").retry_after(Duration::from_secs(1));
    /// assert_eq!(r.retry_after, Some(Duration::from_secs(1)));
    /// ```
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Adds a response header.
    ///
    /// ```
    /// let r = gemini_proxy_sdk::Rejection::new(403, "x").header("x-why", "policy");
    /// assert_eq!(r.headers, vec![("x-why".to_string(), "policy".to_string())]);
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The gRPC status name Google uses for this HTTP status.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::Rejection::new(404, "x").grpc_status(), "NOT_FOUND");
    /// ```
    pub fn grpc_status(&self) -> &'static str {
        grpc_status_for(self.status)
    }
}

/// Google's canonical gRPC status name for an HTTP status code.
pub(crate) fn grpc_status_for(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        413 => "INVALID_ARGUMENT",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        502 => "UNAVAILABLE",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if (400..500).contains(&s) => "FAILED_PRECONDITION",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names_follow_google() {
        assert_eq!(grpc_status_for(429), "RESOURCE_EXHAUSTED");
        assert_eq!(grpc_status_for(504), "DEADLINE_EXCEEDED");
        assert_eq!(grpc_status_for(418), "FAILED_PRECONDITION");
    }
}
