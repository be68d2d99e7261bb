//! The two decisions a routing program makes, with the same meaning in every engine (Rhai
//! scripts, Wasm modules, native plugins, or a Rust [`Router`] of your own):
//!
//! - [`Router::route`] sees the request once, after admission, and may keep it, rewrite the
//!   model, pin a project, add tags, or reject it ([`RouteDecision`]);
//! - [`Router::weigh`] sees the request and the eligible keys ([`HookCandidate`]) for each
//!   upstream attempt, and may return new weights or choose one key ([`WeighDecision`]).
//!
//! Nothing secret crosses: candidates carry key ids, never keys; headers are an allowlist.
//!
//! ```
//! use gemini_proxy_sdk::hooks::{HookRequest, RouteDecision, RouteChange, Router, WeighDecision, HookCandidate, HookError};
//!
//! /// Short prompts go to flash; the key with the fewest calls in flight wins.
//! struct Thrifty;
//! impl Router for Thrifty {
//!     fn route(&self, req: &HookRequest) -> Result<RouteDecision, HookError> {
//!         if req.prompt_tokens_estimate < 1_000 && req.model.as_deref() == Some("gemini-2.5-pro") {
//!             return Ok(RouteDecision::Change(RouteChange::model("gemini-2.5-flash")));
//!         }
//!         Ok(RouteDecision::Keep)
//!     }
//!     fn weigh(&self, _req: &HookRequest, keys: &[HookCandidate]) -> Result<WeighDecision, HookError> {
//!         Ok(keys.iter().enumerate().min_by_key(|(_, k)| k.in_flight)
//!             .map_or(WeighDecision::Keep, |(i, _)| WeighDecision::Choose(i)))
//!     }
//! }
//!
//! let mut req = HookRequest::default();
//! req.model = Some("gemini-2.5-pro".into());
//! req.prompt_tokens_estimate = 12;
//! assert!(matches!(Thrifty.route(&req).unwrap(), RouteDecision::Change(c) if c.model.as_deref() == Some("gemini-2.5-flash")));
//! ```

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::{Admission, KeyState, Rejection, RequestContext, Selection};

mod apply;
pub use apply::{apply_route, apply_weigh};

/// Bytes per token assumed by [`estimate_prompt_tokens`] (Gemini's own rule of thumb is about
/// four characters per token for English text).
///
/// ```
/// assert_eq!(gemini_proxy_sdk::hooks::BYTES_PER_TOKEN, 4);
/// ```
pub const BYTES_PER_TOKEN: u64 = 4;

/// A cheap estimate of the prompt tokens of a call from its body size, before the body is read
/// (JSON framing included, so it errs high).
///
/// ```
/// assert_eq!(gemini_proxy_sdk::hooks::estimate_prompt_tokens(4_000), 1_000);
/// ```
pub fn estimate_prompt_tokens(body_bytes: u64) -> u64 {
    body_bytes.div_ceil(BYTES_PER_TOKEN)
}

/// The request as a routing program sees it. Built once per call by the gateway.
///
/// ```
/// let cx = gemini_proxy_sdk::testing::request("POST", "/v1beta/models/gemini-2.5-pro:generateContent");
/// let req = gemini_proxy_sdk::hooks::HookRequest::from_context(&cx, &[]);
/// assert_eq!(req.model.as_deref(), Some("gemini-2.5-pro"));
/// assert_eq!(req.action, "generateContent");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct HookRequest {
    /// HTTP method (`POST`).
    pub method: String,
    /// Path without the query (`/v1beta/models/gemini-2.5-pro:generateContent`).
    pub path: String,
    /// API family: `native`, `openai` or `upload`.
    pub api: &'static str,
    /// What the call does (`generateContent`, `chat.completions`, ...).
    pub action: &'static str,
    /// Model id from the path, when the call names one.
    pub model: Option<String>,
    /// True for streaming calls.
    pub stream: bool,
    /// The caller's subject (`sub`), once authenticated.
    pub subject: Option<String>,
    /// The caller's role (`user`, `admin`), once authenticated.
    pub role: Option<&'static str>,
    /// All token claims (`null` without auth).
    pub claims: serde_json::Value,
    /// The client's address.
    pub client_ip: Option<String>,
    /// The allowlisted request headers (lowercase names), in request order.
    pub headers: Vec<(String, String)>,
    /// Declared body size in bytes (0 when unknown).
    pub body_size: u64,
    /// [`estimate_prompt_tokens`] of the body size.
    pub prompt_tokens_estimate: u64,
    /// When the gateway received the call, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Upstream attempts made so far (0 in `route` and in the first `weigh`; 1 when weighing
    /// for a retry).
    pub attempt: u32,
}

impl HookRequest {
    /// Builds the view of `cx`, copying only the `headers` named (lowercase).
    ///
    /// ```
    /// let mut cx = gemini_proxy_sdk::testing::request("GET", "/v1beta/models");
    /// cx.request.headers.insert("x-tenant", "acme".parse().unwrap());
    /// cx.request.headers.insert("cookie", "no".parse().unwrap());
    /// let req = gemini_proxy_sdk::hooks::HookRequest::from_context(&cx, &["x-tenant".into()]);
    /// assert_eq!(req.headers, vec![("x-tenant".to_string(), "acme".to_string())]);
    /// ```
    pub fn from_context(cx: &RequestContext, headers: &[String]) -> HookRequest {
        let r = &cx.request;
        let mut copied = Vec::new();
        for name in headers {
            for v in r.headers.get_all(name.as_str()) {
                if let Ok(v) = v.to_str() {
                    copied.push((name.clone(), v.to_string()));
                }
            }
        }
        let body_size = r.body_size.unwrap_or(0);
        HookRequest {
            method: r.method.as_str().to_string(),
            path: r.path.clone(),
            api: r.api_kind.as_str(),
            action: r.action.as_str(),
            model: r.model.clone(),
            stream: r.stream,
            subject: cx.identity.as_ref().map(|i| i.subject.clone()),
            role: cx.identity.as_ref().map(|i| i.role.as_str()),
            claims: cx
                .identity
                .as_ref()
                .map_or(serde_json::Value::Null, |i| i.claims.clone()),
            client_ip: r.client_ip.map(|ip| ip.to_string()),
            headers: copied,
            body_size,
            prompt_tokens_estimate: estimate_prompt_tokens(body_size),
            unix_ms: r
                .received_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            attempt: cx.attempt,
        }
    }

    /// The first value of an allowlisted header.
    ///
    /// ```
    /// let mut req = gemini_proxy_sdk::hooks::HookRequest::default();
    /// req.headers.push(("x-tier".into(), "gold".into()));
    /// assert_eq!(req.header("x-tier"), Some("gold"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One eligible upstream key, as a routing program sees it (never the key itself).
///
/// ```
/// let c = gemini_proxy_sdk::hooks::HookCandidate::new("k1", 10);
/// assert_eq!((&*c.id, c.weight), ("k1", 10));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HookCandidate {
    /// Key id from the config.
    pub id: Arc<str>,
    /// Google Cloud project of the key.
    pub project: Arc<str>,
    /// Current weight for this attempt (after presets and earlier stages).
    pub weight: u32,
    /// Health state.
    pub state: KeyState,
    /// Calls in flight on the key.
    pub in_flight: u32,
    /// Latency EWMA to the response head, in ms (0 when unknown).
    pub latency_ewma_ms: f64,
    /// Requests left this minute in the key's project for this model, when a limit is set.
    pub remaining_rpm: Option<u64>,
    /// Tokens left this minute, when a limit is set.
    pub remaining_tpm: Option<u64>,
    /// Requests left this (Pacific) day, when a limit is set.
    pub remaining_rpd: Option<u64>,
}

impl HookCandidate {
    /// An idle active candidate in a project of its own, without limits.
    ///
    /// ```
    /// assert_eq!(&*gemini_proxy_sdk::hooks::HookCandidate::new("a", 1).project, "a");
    /// ```
    pub fn new(id: &str, weight: u32) -> HookCandidate {
        let id: Arc<str> = Arc::from(id);
        HookCandidate {
            project: id.clone(),
            id,
            weight,
            state: KeyState::Active,
            in_flight: 0,
            latency_ewma_ms: 0.0,
            remaining_rpm: None,
            remaining_tpm: None,
            remaining_rpd: None,
        }
    }

    /// The eligible candidates of `sel` with live figures, and their indices in the selection.
    ///
    /// ```
    /// use gemini_proxy_sdk::{Selection, hooks::HookCandidate};
    /// let c = gemini_proxy_sdk::testing::candidates(&[("a", 1), ("b", 2)]);
    /// let mut sel = Selection::new(&c);
    /// sel.exclude(0);
    /// let (views, idx) = HookCandidate::from_selection(&sel, None);
    /// assert_eq!((views.len(), idx), (1, vec![1]));
    /// ```
    pub fn from_selection(
        sel: &Selection<'_>,
        model: Option<&str>,
    ) -> (Vec<HookCandidate>, Vec<usize>) {
        let stats = sel.stats();
        let mut views = Vec::with_capacity(sel.candidates().len());
        let mut index = Vec::with_capacity(sel.candidates().len());
        for (i, c) in sel.eligible() {
            let remaining = stats.map(|s| s.remaining(i, model)).unwrap_or_default();
            views.push(HookCandidate {
                id: c.id.clone(),
                project: c.project.clone(),
                weight: sel.weight(i),
                state: c.state,
                in_flight: stats.map_or(c.in_flight, |s| s.in_flight(i)),
                latency_ewma_ms: stats.map_or(c.latency_ewma_ms, |s| s.latency_ewma_ms(i)),
                remaining_rpm: remaining.rpm.or(c.remaining_rpm),
                remaining_tpm: remaining.tpm.or(c.remaining_tpm),
                remaining_rpd: remaining.rpd.or(c.remaining_rpd),
            });
            index.push(i);
        }
        (views, index)
    }
}

/// What is left of a key's configured quota in the current windows (see
/// [`KeyStats::remaining`](crate::KeyStats::remaining)).
///
/// ```
/// let r = gemini_proxy_sdk::hooks::Remaining { rpm: Some(3), ..Default::default() };
/// assert_eq!(r.tpm, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Requests left this minute.
    pub rpm: Option<u64>,
    /// Tokens left this minute.
    pub tpm: Option<u64>,
    /// Requests left today.
    pub rpd: Option<u64>,
}

/// Changes a `route` hook asks for. Every field is optional; several may be set at once.
///
/// ```
/// use gemini_proxy_sdk::hooks::RouteChange;
/// let c = RouteChange::model("gemini-2.5-flash").with_tag("route", "short-prompt");
/// assert_eq!(c.tags, vec![("route".to_string(), "short-prompt".to_string())]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteChange {
    /// Send the call to this model instead (native paths: the model is in the path).
    pub model: Option<String>,
    /// Use only keys of this project.
    pub project: Option<String>,
    /// Tags added to the call (audited).
    pub tags: Vec<(String, String)>,
}

impl RouteChange {
    /// A change of model.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::hooks::RouteChange::model("m").model.as_deref(), Some("m"));
    /// ```
    pub fn model(model: impl Into<String>) -> RouteChange {
        RouteChange {
            model: Some(model.into()),
            ..Default::default()
        }
    }

    /// A project pin.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::hooks::RouteChange::project("p").project.as_deref(), Some("p"));
    /// ```
    pub fn project(project: impl Into<String>) -> RouteChange {
        RouteChange {
            project: Some(project.into()),
            ..Default::default()
        }
    }

    /// The same change with one more tag.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::hooks::RouteChange::default().with_tag("a", "b").tags.len(), 1);
    /// ```
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> RouteChange {
        self.tags.push((key.into(), value.into()));
        self
    }
}

/// The result of a `route` hook.
///
/// ```
/// use gemini_proxy_sdk::hooks::RouteDecision;
/// let d = RouteDecision::Reject { status: 403, message: "not on weekends".into() };
/// assert!(matches!(d, RouteDecision::Reject { status: 403, .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteDecision {
    /// Change nothing.
    Keep,
    /// Apply the changes.
    Change(RouteChange),
    /// Refuse the call with this status (400-599) and message (sent to the client).
    Reject {
        /// HTTP status.
        status: u16,
        /// Message for the client.
        message: String,
    },
}

/// The result of a `weigh` hook. Indices refer to the `candidates` slice the hook was given.
///
/// ```
/// use gemini_proxy_sdk::hooks::WeighDecision;
/// assert!(matches!(WeighDecision::Weights(vec![1, 0, 3]), WeighDecision::Weights(w) if w.len() == 3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeighDecision {
    /// Leave the weights alone (the configured strategy picks).
    Keep,
    /// New weights, one per candidate (0 removes a key from this attempt); the configured
    /// strategy then picks among them.
    Weights(Vec<u32>),
    /// Use this candidate.
    Choose(usize),
}

/// Why a hook did not produce a decision. The gateway falls back to the built-in behaviour
/// (keep the route, leave the weights) and counts it.
///
/// ```
/// let e = gemini_proxy_sdk::hooks::HookError::new("limit", "too many operations");
/// assert_eq!(e.to_string(), "limit: too many operations");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
#[non_exhaustive]
pub struct HookError {
    /// A short stable cause for metrics: `runtime`, `limit`, `timeout`, `trap`, `invalid`.
    pub reason: &'static str,
    /// Details for the log (never a secret).
    pub message: String,
}

impl HookError {
    /// An error with a cause and details.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::hooks::HookError::new("trap", "x").reason, "trap");
    /// ```
    pub fn new(reason: &'static str, message: impl Into<String>) -> HookError {
        HookError {
            reason,
            message: message.into(),
        }
    }
}

/// A routing program: implement either hook or both. Engines (Rhai, Wasm, native) implement it;
/// so can a plain Rust type in tests.
///
/// ```
/// use gemini_proxy_sdk::hooks::{Router, HookRequest, RouteDecision};
/// struct Nothing;
/// impl Router for Nothing {}
/// assert_eq!(Nothing.route(&HookRequest::default()).unwrap(), RouteDecision::Keep);
/// ```
pub trait Router: Send + Sync {
    /// Decides the route of a call (once, after admission).
    fn route(&self, _req: &HookRequest) -> Result<RouteDecision, HookError> {
        Ok(RouteDecision::Keep)
    }

    /// Weighs or chooses among the eligible keys (once per attempt).
    fn weigh(
        &self,
        _req: &HookRequest,
        _candidates: &[HookCandidate],
    ) -> Result<WeighDecision, HookError> {
        Ok(WeighDecision::Keep)
    }
}

/// Routing changes asked for during admission, applied by the gateway before key selection.
///
/// ```
/// let cx = gemini_proxy_sdk::testing::request("GET", "/v1beta/models");
/// assert!(cx.routing.model.is_none() && cx.routing.project.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Routing {
    /// The model the call goes to upstream, if changed.
    pub model: Option<String>,
    /// The project whose keys serve the call, if pinned.
    pub project: Option<String>,
}

/// Longest model id or project name a hook may set.
///
/// ```
/// use gemini_proxy_sdk::hooks::{valid_name, MAX_NAME_LEN};
/// assert!(!valid_name(&"m".repeat(MAX_NAME_LEN + 1)));
/// ```
pub const MAX_NAME_LEN: usize = 128;

/// True for a model id or project name a hook may set: 1-128 characters of `A-Z a-z 0-9 . _ -`
/// (nothing that could change the shape of the upstream path).
///
/// ```
/// use gemini_proxy_sdk::hooks::valid_name;
/// assert!(valid_name("gemini-2.5-flash"));
/// assert!(!valid_name("../admin") && !valid_name("a:b") && !valid_name(""));
/// ```
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_apply_by_index_map() {
        let c = crate::testing::candidates(&[("a", 5), ("b", 5), ("c", 5)]);
        let mut sel = Selection::new(&c);
        sel.exclude(1);
        let (views, index) = HookCandidate::from_selection(&sel, None);
        assert_eq!(views.iter().map(|v| &*v.id).collect::<Vec<_>>(), ["a", "c"]);
        apply_weigh(&mut sel, &index, WeighDecision::Weights(vec![0, 9])).unwrap();
        assert_eq!((sel.weight(0), sel.weight(2)), (0, 9));
        assert!(apply_weigh(&mut sel, &index, WeighDecision::Weights(vec![1])).is_err());
        assert!(apply_weigh(&mut sel, &index, WeighDecision::Weights(vec![0, 0])).is_err());
        assert!(apply_weigh(&mut sel, &index, WeighDecision::Choose(2)).is_err());
    }

    #[test]
    fn route_rejects_bad_values_without_side_effects() {
        let mut cx = crate::testing::request("POST", "/v1beta/openai/chat/completions");
        let bad = RouteDecision::Change(RouteChange::model("gemini-2.5-flash").with_tag("a", "b"));
        assert!(apply_route(&mut cx, bad).is_err());
        assert!(cx.tags.is_empty() && cx.routing.model.is_none());
        let r = apply_route(
            &mut cx,
            RouteDecision::Reject {
                status: 200,
                message: "x".into(),
            },
        );
        assert!(r.is_err());
        let r = apply_route(
            &mut cx,
            RouteDecision::Reject {
                status: 451,
                message: "no".into(),
            },
        )
        .unwrap();
        assert!(matches!(r, Admission::Reject(rej) if rej.status == 451));
        apply_route(&mut cx, RouteDecision::Change(RouteChange::project("p-1"))).unwrap();
        assert_eq!(cx.routing.project.as_deref(), Some("p-1"));
    }

    #[test]
    fn route_respects_the_tokens_model_list() {
        let mut cx =
            crate::testing::request("POST", "/v1beta/models/gemini-2.5-flash:generateContent");
        let mut id = crate::Identity::new("alice", crate::Role::User);
        id.claims = serde_json::json!({"models": ["gemini-2.5-flash*"]});
        cx.identity = Some(id);
        let pro = RouteDecision::Change(RouteChange::model("gemini-2.5-pro"));
        let e = apply_route(&mut cx, pro).unwrap_err();
        assert!(e.message.contains("not allowed"), "{e}");
        let lite = RouteDecision::Change(RouteChange::model("gemini-2.5-flash-lite"));
        apply_route(&mut cx, lite).unwrap();
        assert_eq!(cx.routing.model.as_deref(), Some("gemini-2.5-flash-lite"));
    }
}
