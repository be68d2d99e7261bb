//! The state of one call, from its first byte to its audit row.

use std::sync::Arc;
use std::time::Instant;

use gemini_proxy_sdk::{CompletedRequest, RequestContext};

use super::errors::ErrorStyle;
use super::failure::ErrorClass;
use crate::runtime::Runtime;

/// Per-call state, created by `new_ctx` with the runtime snapshot the call keeps to the end.
/// The model lives in one place: the pipeline's view of the request (`cx.request.model`).
pub struct CallState {
    pub(super) runtime: Arc<Runtime>,
    pub(super) request_id: String,
    /// The client sent its own `x-request-id` (not shown on the open `/errors` page).
    pub(super) client_request_id: bool,
    pub(super) started: Instant,
    /// The pipeline's context, once the call has a route.
    pub(super) cx: Option<RequestContext>,
    /// What the call came to, handed to every observer when it ends.
    pub(super) done: CompletedRequest,
    /// Why it failed, if it did.
    pub(super) error: Option<ErrorClass>,
    pub(super) style: ErrorStyle,
    pub(super) api: &'static str,
    pub(super) action: &'static str,
    /// The upstream's error status or reason (`PERMISSION_DENIED`, `CONSUMER_SUSPENDED`):
    /// what `/errors` shows instead of a message (messages echo what clients sent).
    pub(super) upstream_reason: Option<String>,
    /// Who owns what this call creates (see `tenancy`).
    pub(super) owner: Option<String>,
    /// A listing to cut down to the caller's own resources.
    pub(super) own_listing: bool,
    pub(super) counted_in_flight: bool,
    /// Counted in `streams_active` (taken off when the call ends).
    pub(super) counted_stream: bool,
    /// Index (in the runtime's keys) of the key of the last attempt.
    pub(super) key_index: Option<usize>,
    /// Retries, rotations and 429s for the audit row.
    pub(super) extra: crate::audit::CallExtra,
}

impl CallState {
    pub(super) fn new(runtime: Arc<Runtime>) -> CallState {
        CallState {
            runtime,
            request_id: String::new(),
            client_request_id: false,
            started: Instant::now(),
            cx: None,
            done: CompletedRequest::default(),
            error: None,
            style: ErrorStyle::Google,
            api: "unknown",
            action: "unknown",
            upstream_reason: None,
            owner: None,
            own_listing: false,
            counted_in_flight: false,
            counted_stream: false,
            key_index: None,
            extra: crate::audit::CallExtra::default(),
        }
    }

    /// The model the call is for (after any routing change).
    pub(super) fn model(&self) -> Option<&str> {
        self.cx.as_ref()?.request.model.as_deref()
    }

    /// The pipeline's context. Every phase after admission has one.
    pub(super) fn cx(&mut self) -> &mut RequestContext {
        self.cx.as_mut().expect("set at admission")
    }

    /// Takes the client's `x-request-id` when it is a sane one, else makes one up.
    pub(super) fn set_request_id(&mut self, incoming: Option<&str>) {
        self.request_id = match incoming {
            Some(v) if valid_request_id(v) => {
                self.client_request_id = true;
                v.to_string()
            }
            _ => format!("{:016x}", rand::random::<u64>()),
        };
    }
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
