//! Why a call failed, as a class (what metrics, `/errors` and the audit row count) and the
//! client error it becomes (Google-style JSON, OpenAI-style on `/openai/`).

use std::time::{Duration, SystemTime};

use gemini_proxy_sdk::Rejection;
use pingora::ErrorType;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::call::CallState;
use super::cors::cors_headers;
use super::errors::error_body;
use crate::pipeline::StageFailure;

/// What went wrong with a call. Every decision about a failure (retry, blame a key) reads
/// this, never the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    HeadersTooLarge,
    BadPath,
    NotFound,
    BadModel,
    BadRequest,
    BadRequestBody,
    BodyTooLarge,
    ClientTimeout,
    ClientGone,
    CorsOrigin,
    Internal,
    /// A pipeline stage failed with failure mode `closed`.
    PipelineError,
    /// Refused by a pipeline stage, with the stage's reason (`unauthenticated`, `rate_limited`).
    Rejected(&'static str),
    NoKey,
    KeysExhausted,
    UpstreamUnresolved,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamTls,
    UpstreamProtocol,
    /// The upstream's own error answer, relayed.
    Upstream429,
    Upstream4xx,
    Upstream5xx,
    /// The upstream body broke off after the head was sent.
    StreamInterrupted,
    /// The stream carried an error event.
    MidstreamError,
    /// The stream ended without its final event.
    TruncatedStream,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        use ErrorClass::*;
        match self {
            HeadersTooLarge => "headers_too_large",
            BadPath => "bad_path",
            NotFound => "not_found",
            BadModel => "bad_model",
            BadRequest => "bad_request",
            BadRequestBody => "bad_request_body",
            BodyTooLarge => "body_too_large",
            ClientTimeout => "client_timeout",
            ClientGone => "client_gone",
            CorsOrigin => "cors_origin",
            Internal => "internal",
            PipelineError => "pipeline_error",
            Rejected(reason) => reason,
            NoKey => "no_key",
            KeysExhausted => "keys_exhausted",
            UpstreamUnresolved => "upstream_unresolved",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamTls => "upstream_tls",
            UpstreamProtocol => "upstream_protocol",
            Upstream429 => "upstream_429",
            Upstream4xx => "upstream_4xx",
            Upstream5xx => "upstream_5xx",
            StreamInterrupted => "stream_interrupted",
            MidstreamError => "midstream_error",
            TruncatedStream => "truncated_stream",
        }
    }

    /// The class of an upstream error status relayed to the client.
    pub fn of_upstream_status(status: u16) -> ErrorClass {
        match status {
            429 => ErrorClass::Upstream429,
            400..=499 => ErrorClass::Upstream4xx,
            _ => ErrorClass::Upstream5xx,
        }
    }

    /// A stream that went wrong after its head was sent: too late to retry, but the key's fault.
    pub fn is_late_stream_error(self) -> bool {
        matches!(
            self,
            ErrorClass::MidstreamError
                | ErrorClass::TruncatedStream
                | ErrorClass::StreamInterrupted
        )
    }
}

/// The step of an upstream exchange a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum During {
    /// Nothing reached the upstream: connecting again is safe.
    Connecting,
    Sending,
    Waiting,
    Reading(&'static str),
}

impl During {
    fn describe(self) -> String {
        match self {
            During::Connecting => "while connecting".into(),
            During::Sending => "while sending the request".into(),
            During::Waiting => "while waiting for the response".into(),
            During::Reading(what) => format!("while reading the {what}"),
        }
    }
}

/// Why a call failed before (or while) answering; turned into a client error.
#[derive(Debug)]
pub struct Failure {
    pub status: u16,
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub headers: Vec<(String, String)>,
    /// The request body was not read: the connection cannot be reused.
    pub body_unread: bool,
    /// For upstream failures: the step it happened in.
    pub during: Option<During>,
}

impl Failure {
    pub fn new(status: u16, class: ErrorClass, message: impl Into<String>) -> Failure {
        Failure {
            status,
            class,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
            body_unread: false,
            during: None,
        }
    }

    /// The request body was left unread: the connection must not be reused.
    pub fn unread(mut self) -> Failure {
        self.body_unread = true;
        self
    }

    pub fn too_large(what: &str, limit: u64) -> Failure {
        Failure::new(
            413,
            ErrorClass::BodyTooLarge,
            format!("{what} exceeds {limit} bytes"),
        )
        .unread()
    }

    pub fn too_slow(what: &str) -> Failure {
        Failure::new(
            408,
            ErrorClass::ClientTimeout,
            format!("the {what} arrived too slowly"),
        )
        .unread()
    }

    pub fn client_gone() -> Failure {
        Failure::new(499, ErrorClass::ClientGone, "client went away")
    }

    pub fn bad_model() -> Failure {
        Failure::new(
            400,
            ErrorClass::BadModel,
            "the model name is missing or invalid (1-128 characters: letters, digits, `.`, `_`, `-`)",
        )
    }

    /// A pipeline stage failed with failure mode `closed`.
    pub fn stage(request_id: &str, stage: StageFailure) -> Failure {
        tracing::error!(request_id, error = %stage, "pipeline stage failed");
        Failure::new(
            500,
            ErrorClass::PipelineError,
            format!("gateway stage `{}` failed", stage.stage),
        )
    }

    pub fn rejected(r: Rejection) -> Failure {
        Failure {
            status: r.status,
            class: ErrorClass::Rejected(r.reason.unwrap_or("rejected")),
            message: r.message,
            retry_after: r.retry_after,
            headers: r.headers,
            body_unread: true,
            during: None,
        }
    }

    pub fn from_upstream(e: &pingora::Error, during: During) -> Failure {
        let when = during.describe();
        let mut f = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Failure::new(
                    504,
                    ErrorClass::UpstreamTimeout,
                    format!("upstream timed out {when}"),
                )
            }
            ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::TLSWantX509Lookup => Failure::new(
                502,
                ErrorClass::UpstreamTls,
                format!(
                    "TLS with the upstream failed {when}: {} (is its certificate trusted \
                     (gemini.ca_file) and issued for the base_url's host?)",
                    e.etype().as_str()
                ),
            ),
            _ => Failure::new(
                502,
                ErrorClass::UpstreamUnreachable,
                format!("upstream unreachable {when}: {}", e.etype().as_str()),
            ),
        };
        f.during = Some(during);
        f
    }

    /// The answer when no key may serve the call: 429 with the earliest recovery while keys
    /// rest, 503 when none is alive.
    pub fn no_key(gate: &crate::pool::Gate, model: Option<&str>) -> Failure {
        let Some(at) = gate.earliest_recovery else {
            return Failure::new(503, ErrorClass::NoKey, "no upstream key is available");
        };
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let mut f = Failure::new(
            429,
            ErrorClass::KeysExhausted,
            format!(
                "every upstream key is cooling down for {}; retry in {}s",
                model.unwrap_or("this call"),
                wait.as_secs_f64().ceil()
            ),
        );
        f.retry_after = Some(wait);
        f
    }
}

/// Answers the client with `f` (unless it is gone or already has an answer).
pub async fn write_failure(session: &mut Session, ctx: &mut CallState, f: Failure) {
    ctx.done.status = f.status;
    ctx.error = Some(f.class);
    // A `100 Continue` already sent is not an answer: the final one still has to go out.
    let answered = session
        .response_written()
        .is_some_and(|r| !r.status.is_informational());
    if f.status == 499 || answered {
        return;
    }
    if f.body_unread {
        session.set_keepalive(None);
    }
    let body = error_body(ctx.style, f.status, &f.message);
    let Ok(mut resp) = ResponseHeader::build(f.status, Some(6)) else {
        return;
    };
    let _ = resp.insert_header("content-type", "application/json; charset=UTF-8");
    let _ = resp.insert_header("content-length", body.len().to_string());
    let _ = resp.insert_header("x-request-id", ctx.request_id.as_str());
    cors_headers(&ctx.runtime, session, &mut resp);
    if let Some(after) = f.retry_after {
        let _ = resp.insert_header(
            "retry-after",
            after.as_secs_f64().ceil().max(1.0).to_string(),
        );
    }
    for (k, v) in f.headers {
        let _ = resp.append_header(k, v);
    }
    ctx.done.response_bytes = body.len() as u64;
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}
