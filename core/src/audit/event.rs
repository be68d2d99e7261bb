//! The audit lines: typed calls (cheap to build on the hot path; serialized by the writer
//! thread), and config changes and security events with free fields.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::util::clock::StampMs;

/// One line of the audit log: calls are typed (cheap to build on the hot path; serialized by
/// the writer thread), the rarer config changes and security events carry free fields.
#[derive(Debug, Clone)]
pub enum AuditEvent {
    Call(Box<CallAudit>),
    Other(Box<GenericEvent>),
}

impl AuditEvent {
    /// The UTC day of the line (`YYYY-MM-DD`), for rotation.
    pub(super) fn day(&self) -> [u8; 10] {
        match self {
            AuditEvent::Call(c) => StampMs::of(c.at).day(),
            AuditEvent::Other(g) => {
                let mut d = *b"1970-01-01";
                if let Some(p) = g.timestamp.as_bytes().get(..10) {
                    d.copy_from_slice(p);
                }
                d
            }
        }
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(StampMs::of(*t).as_str())
}

fn skip_zero(n: &u16) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// The `ApiCall` line, field for field.
#[derive(Debug, Clone, Serialize)]
pub struct CallAudit {
    #[serde(rename = "timestamp", serialize_with = "ser_time")]
    pub at: SystemTime,
    pub event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    pub action: String,
    pub result: &'static str,
    pub duration_ms: f64,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    pub api: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub status: u16,
    #[serde(skip_serializing_if = "skip_zero")]
    pub upstream_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub rotations: u32,
    /// Attempts Google answered with 429.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub upstream_429s: u32,
    /// The quota id of the last 429 (`GenerateRequestsPerMinutePerProjectPerModel` ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub candidates_tokens: u64,
    pub thoughts_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<u8>,
    pub truncated: bool,
    /// The call's tags (the `audit` stage and other plugins), capped.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Default for CallAudit {
    /// An empty successful native call at the epoch (for building records field by field).
    fn default() -> Self {
        CallAudit {
            at: SystemTime::UNIX_EPOCH,
            event_type: "ApiCall",
            source_ip: None,
            action: String::new(),
            result: "Success",
            duration_ms: 0.0,
            request_id: String::new(),
            user: None,
            role: None,
            api: "native",
            model: None,
            stream: false,
            key_id: None,
            project: None,
            status: 0,
            upstream_status: 0,
            error_class: None,
            attempts: 0,
            retries: 0,
            rotations: 0,
            upstream_429s: 0,
            quota_id: None,
            upstream_ms: None,
            ttfb_ms: None,
            prompt_tokens: 0,
            candidates_tokens: 0,
            thoughts_tokens: 0,
            cached_tokens: 0,
            total_tokens: 0,
            request_bytes: 0,
            response_bytes: 0,
            risk_score: None,
            truncated: false,
            tags: Default::default(),
        }
    }
}

/// Most tags recorded per call, and the longest tag name and value.
const MAX_TAGS: usize = 16;
const MAX_TAG_NAME: usize = 64;
const MAX_TAG_VALUE: usize = 256;

fn capped_tags(
    tags: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    use gemini_proxy_sdk::prefix_within;
    tags.iter()
        .take(MAX_TAGS)
        .map(|(k, v)| {
            (
                prefix_within(k, MAX_TAG_NAME).to_string(),
                prefix_within(v, MAX_TAG_VALUE).to_string(),
            )
        })
        .collect()
}

/// A config change or security event line.
#[derive(Debug, Clone, Serialize)]
pub struct GenericEvent {
    pub timestamp: String,
    /// `ApiCall`, `ConfigChange`, `SecurityEvent`.
    pub event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    pub action: String,
    /// `Success`, `Failure`, `Blocked`, `Applied` ...
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Everything else, flattened into the line.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

pub(super) fn now_rfc3339_ms() -> String {
    StampMs::of(SystemTime::now()).as_str().to_string()
}

impl GenericEvent {
    pub fn new(event_type: &'static str, action: impl Into<String>, result: &'static str) -> Self {
        GenericEvent {
            timestamp: now_rfc3339_ms(),
            event_type,
            source_ip: None,
            action: action.into(),
            result,
            duration_ms: None,
            fields: serde_json::Map::new(),
        }
    }

    pub fn field(mut self, k: &str, v: impl Into<Value>) -> Self {
        let v = v.into();
        if !v.is_null() {
            self.fields.insert(k.to_string(), v);
        }
        self
    }
}

/// What the proxy knows of a call beyond the sdk's `CompletedRequest`.
#[derive(Debug, Clone, Default)]
pub struct CallExtra {
    pub retries: u32,
    pub rotations: u32,
    pub upstream_429s: u32,
    pub quota_id: Option<String>,
}

/// The `ApiCall` line of a finished call.
#[allow(clippy::too_many_arguments)]
pub fn call_event(
    request_id: &str,
    method: &str,
    path: &str,
    cx: Option<&gemini_proxy_sdk::RequestContext>,
    done: &gemini_proxy_sdk::CompletedRequest,
    api: &'static str,
    model: Option<&str>,
    extra: &CallExtra,
) -> AuditEvent {
    let usage = done.usage.unwrap_or_default();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let identity = cx.and_then(|c| c.identity.as_ref());
    let mut action = String::with_capacity(method.len() + 1 + path.len());
    action.push_str(method);
    action.push(' ');
    action.push_str(path);
    AuditEvent::Call(Box::new(CallAudit {
        at: SystemTime::now(),
        event_type: "ApiCall",
        source_ip: cx.and_then(|c| c.request.client_ip),
        action,
        result: if done.status < 400 && done.error_class.is_none() {
            "Success"
        } else {
            "Failure"
        },
        duration_ms: ms(done.total_latency),
        request_id: request_id.to_string(),
        user: identity.map(|i| i.subject.clone()),
        role: identity.map(|i| i.role.as_str()),
        api,
        model: model.map(str::to_string),
        stream: done.streamed,
        key_id: done.key_id.clone(),
        project: done.project.clone(),
        status: done.status,
        upstream_status: done.upstream_status,
        error_class: done.error_class.clone(),
        attempts: done.attempts,
        retries: extra.retries,
        rotations: extra.rotations,
        upstream_429s: extra.upstream_429s,
        quota_id: extra.quota_id.clone(),
        upstream_ms: done.upstream_latency.map(ms),
        ttfb_ms: done.time_to_first_byte.map(ms),
        prompt_tokens: usage.prompt_tokens,
        candidates_tokens: usage.candidates_tokens,
        thoughts_tokens: usage.thoughts_tokens,
        cached_tokens: usage.cached_tokens,
        total_tokens: usage.total_tokens,
        request_bytes: done.request_bytes,
        response_bytes: done.response_bytes,
        risk_score: cx.and_then(|c| c.risk_score),
        truncated: done.truncated,
        tags: cx.map(|c| capped_tags(&c.tags)).unwrap_or_default(),
    }))
}

/// A `SecurityEvent` line.
pub fn security_event(
    action: &str,
    result: &'static str,
    source_ip: Option<String>,
    detail: Value,
) -> AuditEvent {
    let mut e = GenericEvent::new("SecurityEvent", action, result).field("detail", detail);
    e.source_ip = source_ip;
    AuditEvent::Other(Box::new(e))
}

/// An `AdminAction` line (analyst SQL, exports): kept with the security events.
pub fn admin_event(
    action: &str,
    result: &'static str,
    source_ip: Option<String>,
    detail: Value,
) -> AuditEvent {
    let mut e = GenericEvent::new("AdminAction", action, result).field("detail", detail);
    e.source_ip = source_ip;
    AuditEvent::Other(Box::new(e))
}

/// A `ConfigChange` line.
pub fn config_event(v: &crate::config_history::Version) -> AuditEvent {
    AuditEvent::Other(Box::new(
        GenericEvent::new("ConfigChange", format!("config {}", v.source), "Applied")
            .field("version", v.version)
            .field("by", v.by.clone())
            .field("sha256", v.sha256.clone())
            .field("changed", json!(v.changed)),
    ))
}
