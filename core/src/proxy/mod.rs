//! The proxy listener: Pingora's `request_filter` drives each call itself (read the bounded
//! body, pick a key, call the upstream through Pingora's pooled `Connector`, stream the answer
//! back), so a request body can be resent on another key at any size and SSE is never
//! buffered. See `shared/reference/retry-spike.md` (approach B).

mod errors;
mod inbound;
mod observer;
mod response_head;
mod scrub;
pub mod tenancy;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gemini_proxy_sdk::{
    Action, ApiKind, CompletedRequest, Rejection, RequestContext, RequestView, ResponseHead,
    Selection, UpstreamError, UpstreamOutcome,
};
use http::HeaderValue;
use pingora::ErrorType;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::{ProxyHttp, Session};

pub use errors::{ErrorStyle, error_body, grpc_status};
pub use inbound::{Cidr, Inbound, client_ip, sanitize_headers, split_key_param};
pub use observer::{BodyFormat, Observed, Observer};
pub use scrub::{Scrubber, StreamScrub};

use crate::pipeline::StageFailure;
use crate::pool::{Verdict, classify};
use crate::runtime::{LiveStats, Runtime, Shared, UpstreamKey};
use crate::stats::{CallRecord, ErrorSample};

/// Largest upstream error body read to classify it.
const MAX_ERROR_BODY: usize = 1024 * 1024;
/// Largest resource listing read to cut it down to the caller's own.
const MAX_LISTING: usize = 8 * 1024 * 1024;

/// Reads a whole upstream body of at most `max` bytes.
async fn read_whole(up: &mut UpstreamSession, max: usize, what: &str) -> Result<BytesMut, Failure> {
    let mut buf = BytesMut::new();
    loop {
        match up.read_response_body().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > max {
                    return Err(Failure::new(
                        502,
                        "upstream_protocol",
                        format!("upstream {what} too large"),
                    ));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(buf),
            Err(e) => {
                return Err(Failure::from_upstream(
                    &e,
                    &format!("while reading the {what}"),
                ));
            }
        }
    }
}

/// Why a call failed before (or while) answering; turned into a client error.
#[derive(Debug)]
struct Failure {
    status: u16,
    class: &'static str,
    message: String,
    retry_after: Option<Duration>,
    headers: Vec<(String, String)>,
    /// The request body was not read: the connection cannot be reused.
    body_unread: bool,
}

impl Failure {
    fn new(status: u16, class: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            class,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
            body_unread: false,
        }
    }

    /// The request body was left unread: the connection must not be reused.
    fn unread(mut self) -> Failure {
        self.body_unread = true;
        self
    }

    fn too_large(what: &str, limit: u64) -> Failure {
        Failure::new(
            413,
            "body_too_large",
            format!("{what} exceeds {limit} bytes"),
        )
        .unread()
    }

    /// A pipeline stage failed with failure mode `closed`.
    fn stage(request_id: &str, stage: StageFailure) -> Failure {
        tracing::error!(request_id, error = %stage, "pipeline stage failed");
        Failure::new(
            500,
            "pipeline_error",
            format!("gateway stage `{}` failed", stage.stage),
        )
    }

    fn rejected(r: Rejection) -> Failure {
        Failure {
            status: r.status,
            class: r.reason.unwrap_or("rejected"),
            message: r.message,
            retry_after: r.retry_after,
            headers: r.headers,
            body_unread: true,
        }
    }

    fn from_upstream(e: &pingora::Error, during: &str) -> Failure {
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Failure::new(
                    504,
                    "upstream_timeout",
                    format!("upstream timed out {during}"),
                )
            }
            ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::TLSWantX509Lookup => Failure::new(
                502,
                "upstream_tls",
                format!(
                    "TLS with the upstream failed {during}: {} (is its certificate trusted \
                     (gemini.ca_file) and issued for the base_url's host?)",
                    e.etype().as_str()
                ),
            ),
            _ => Failure::new(
                502,
                "upstream_unreachable",
                format!("upstream unreachable {during}: {}", e.etype().as_str()),
            ),
        }
    }
}

/// An upstream error held back while the call tries another key.
struct Pending {
    verdict: Verdict,
    resp: ResponseHeader,
    body: Bytes,
}

enum Forwarded {
    /// The client has its answer (or is gone).
    Done,
    /// The answer was a retryable error; nothing reached the client.
    Retry(Box<Pending>),
}

/// One try of a call on one key.
struct Attempt<'a> {
    key: &'a UpstreamKey,
    body: &'a RequestBody,
    budget: RetryBudget,
}

/// Which retryable outcomes an attempt may hand back instead of answering.
#[derive(Clone, Copy)]
struct RetryBudget {
    rotate: bool,
    transient: bool,
}

impl RetryBudget {
    const NONE: RetryBudget = RetryBudget {
        rotate: false,
        transient: false,
    };

    fn allows(&self, v: &Verdict) -> bool {
        if v.rotates() {
            self.rotate
        } else {
            *v == Verdict::Transient && self.transient
        }
    }
}

/// Waits out the backoff before transient retry `n`, never past the call's deadline.
async fn sleep_before_retry(base: Duration, n: u32, deadline: Instant) {
    let wait = backoff(base, n).min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(wait).await;
}

/// Backoff before transient retry `n` (1-based): base·2^(n-1), ±50% jitter.
fn backoff(base: Duration, n: u32) -> Duration {
    let exp = base.saturating_mul(1 << (n.saturating_sub(1)).min(6));
    exp.mul_f64(0.5 + rand::random::<f64>())
}

/// Per-call state, created by `new_ctx` with the runtime snapshot the call keeps to the end.
pub struct CallState {
    runtime: Arc<Runtime>,
    request_id: String,
    started: Instant,
    cx: Option<RequestContext>,
    done: CompletedRequest,
    style: ErrorStyle,
    api: &'static str,
    action: &'static str,
    model: Option<String>,
    /// The upstream's error status or reason (`PERMISSION_DENIED`, `CONSUMER_SUSPENDED`):
    /// what `/errors` shows instead of a message (messages echo what clients sent).
    upstream_reason: Option<String>,
    /// The client sent its own `x-request-id` (not shown on the open `/errors` page).
    client_request_id: bool,
    /// Who owns what this call creates (see `tenancy`).
    owner: Option<String>,
    /// A listing to cut down to the caller's own resources.
    own_listing: bool,
    counted_in_flight: bool,
    /// Index (in the runtime's keys) of the key of the last attempt.
    key_index: Option<usize>,
    /// Retries, rotations and 429s for the audit row.
    extra: crate::audit::CallExtra,
}

pub struct GatewayProxy {
    shared: Arc<Shared>,
}

impl GatewayProxy {
    pub fn new(shared: Arc<Shared>) -> GatewayProxy {
        GatewayProxy { shared }
    }
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn is_expect_continue(req: &RequestHeader) -> bool {
    req.headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

async fn send_continue(session: &mut Session) -> pingora::Result<()> {
    if is_expect_continue(session.req_header()) {
        // Writing a header before the body is read would otherwise turn keep-alive off.
        session
            .downstream_session
            .set_close_on_response_before_downstream_finish(false);
        session.downstream_session.write_continue_response().await?;
        session
            .downstream_session
            .set_close_on_response_before_downstream_finish(true);
    }
    Ok(())
}

fn body_too_slow(what: &str) -> Failure {
    Failure::new(
        408,
        "client_timeout",
        format!("the {what} arrived too slowly"),
    )
    .unread()
}

/// Reads the whole request body, refusing more than `limit` bytes or one that takes longer than
/// `deadline` (`server.clients.body_timeout`).
async fn read_body(
    session: &mut Session,
    limit: u64,
    deadline: Duration,
) -> Result<Bytes, Failure> {
    send_continue(session)
        .await
        .map_err(|_| Failure::new(499, "client_gone", "client went away"))?;
    let until = tokio::time::Instant::now() + deadline;
    let mut buf = BytesMut::new();
    loop {
        let next = tokio::time::timeout_at(until, session.downstream_session.read_request_body())
            .await
            .map_err(|_| body_too_slow("request body"))?;
        match next {
            Ok(Some(chunk)) => {
                if (buf.len() + chunk.len()) as u64 > limit {
                    return Err(Failure::too_large("request body", limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err(match e.etype() {
                    ErrorType::ReadTimedout => {
                        Failure::new(408, "client_timeout", "timed out reading the request body")
                    }
                    _ => Failure::new(400, "bad_request_body", "could not read the request body"),
                });
            }
        }
    }
}

enum RequestBody {
    Buffered(Bytes),
    /// Uploads: streamed from the client as it arrives, never held whole.
    Streamed {
        limit: u64,
    },
}

impl GatewayProxy {
    /// The gateway's origin as clients reach it, for upload URLs: `server.public_url`, else the
    /// request's `Host` when it names this listener, else the address the connection reached.
    /// An arbitrary `Host` is never believed: it would point a client's upload elsewhere.
    fn public_base(&self, rt: &Runtime, session: &Session) -> String {
        if let Some(u) = &rt.public_url {
            return u.clone();
        }
        let server = &rt.config.server;
        let scheme = if server.tls.enabled { "https" } else { "http" };
        let names: Vec<String> = server
            .tls
            .acme
            .as_ref()
            .map(|a| a.domains.clone())
            .unwrap_or_default();
        if let Some(host) = session
            .req_header()
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .filter(|h| crate::config::host_names_listener(h, &server.host, server.port, &names))
        {
            return format!("{scheme}://{host}");
        }
        match session
            .downstream_session
            .server_addr()
            .and_then(|a| a.as_inet())
        {
            Some(a) => format!("{scheme}://{a}"),
            None => format!("{scheme}://{}:{}", server.host, server.port),
        }
    }

    /// Answers a CORS preflight (no credential needed: browsers send none on preflight).
    async fn preflight(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        cors: &crate::config::CorsConfig,
    ) -> Result<(), Failure> {
        let origin = session
            .req_header()
            .headers
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(allow) = cors.allow(origin) else {
            return Err(Failure::new(403, "cors_origin", "origin not allowed").unread());
        };
        let mut resp = ResponseHeader::build(204, Some(6))
            .map_err(|_| Failure::new(500, "internal", "response"))?;
        let _ = resp.insert_header("access-control-allow-origin", allow);
        let _ = resp.insert_header(
            "access-control-allow-methods",
            "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        );
        let _ = resp.insert_header(
            "access-control-allow-headers",
            cors.allowed_headers.join(", "),
        );
        let _ = resp.insert_header(
            "access-control-max-age",
            cors.max_age.0.as_secs().to_string(),
        );
        let _ = resp.insert_header("vary", "Origin");
        let _ = resp.insert_header("x-request-id", ctx.request_id.as_str());
        ctx.done.status = 204;
        let _ = session.write_response_header(Box::new(resp), true).await;
        Ok(())
    }

    async fn write_failure(&self, session: &mut Session, ctx: &mut CallState, f: Failure) {
        ctx.done.status = f.status;
        ctx.done.error_class = Some(f.class.to_string());
        if f.status == 499 || session.response_written().is_some() {
            return;
        }
        if f.body_unread {
            session.set_keepalive(None);
        }
        let body = error_body(ctx.style, f.status, &f.message);
        let mut resp = match ResponseHeader::build(f.status, Some(6)) {
            Ok(r) => r,
            Err(_) => return,
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

    async fn handle(&self, session: &mut Session, ctx: &mut CallState) -> Result<(), Failure> {
        let rt = ctx.runtime.clone();
        let req = session.req_header();
        let method = req.method.clone();
        let header_bytes: u64 = req
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
            .sum::<u64>()
            + req.uri.path_and_query().map_or(0, |p| p.as_str().len()) as u64
            + req.uri.authority().map_or(0, |a| a.as_str().len()) as u64;
        if header_bytes > rt.config.server.max_header_bytes {
            return Err(Failure::new(
                431,
                "headers_too_large",
                format!(
                    "request headers are larger than {} bytes",
                    rt.config.server.max_header_bytes
                ),
            )
            .unread());
        }
        if let Some(cors) = &rt.config.server.cors
            && method == http::Method::OPTIONS
            && req.headers.contains_key("access-control-request-method")
        {
            return self.preflight(session, ctx, cors).await;
        }
        if inbound::path_is_suspicious(req.uri.path()) {
            return Err(Failure::new(
                400,
                "bad_path",
                "the path contains dot segments or encoded separators",
            )
            .unread());
        }
        let path = inbound::normalized_path(req.uri.path())
            .map_err(|why| Failure::new(400, "bad_path", why).unread())?;
        let Some(mut inbound) =
            Inbound::parse(method.as_str(), &path, req.uri.query(), &req.headers)
        else {
            return Err(Failure::new(
                404,
                "not_found",
                format!("no route for {} {}", method, req.uri.path()),
            )
            .unread());
        };
        if let Some(m) = &inbound.route.model
            && !inbound::valid_model(m)
        {
            return Err(bad_model().unread());
        }
        ctx.api = inbound.route.api_kind.as_str();
        ctx.action = inbound.route.action.as_str();
        ctx.model = inbound.route.model.clone();
        let mut view =
            RequestView::new(ctx.request_id.clone(), method.clone(), inbound.path.clone());
        view.query = inbound.query.clone();
        view.headers = inbound.headers.clone();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        view.client_ip = client_ip(peer, &session.req_header().headers, &rt.trusted_proxies);
        view.body_size = inbound.content_length;
        ctx.done.streamed = inbound.route.stream;
        let cx = ctx
            .cx
            .insert(RequestContext::new(view, inbound.credential.clone()));

        match rt.pipeline.admit(cx).await {
            Ok(None) => {}
            Ok(Some(rejection)) => return Err(self.refused(ctx, rejection)),
            Err(stage) => return Err(Failure::stage(&ctx.request_id, stage).unread()),
        }
        if let Some(cx) = ctx.cx.as_mut()
            && let Some(model) = cx.routing.model.take()
            && ctx.model.as_deref() != Some(model.as_str())
        {
            // A routing stage chose another model: it goes into the upstream path.
            let old = ctx.model.clone().unwrap_or_default();
            match inbound::rewrite_model(&inbound.path, &old, &model) {
                Some(path) => {
                    inbound.path = path.clone();
                    inbound.route.model = Some(model.clone());
                    cx.request.path = path;
                    cx.request.model = Some(model.clone());
                    cx.tags.insert("model_requested".into(), old);
                    ctx.model = Some(model);
                }
                None => {
                    tracing::warn!(request_id = %ctx.request_id, "routing asked for a model change on a path without a model segment; kept");
                }
            }
        }

        let upload = inbound.route.api_kind == ApiKind::Upload;
        let limit = if upload {
            rt.config.server.max_upload_bytes
        } else {
            rt.config.server.max_body_bytes
        };
        if inbound.content_length.is_some_and(|n| n > limit) {
            return Err(Failure::too_large("request body", limit));
        }
        let body = if upload {
            RequestBody::Streamed { limit }
        } else {
            RequestBody::Buffered(
                read_body(session, limit, rt.config.server.clients.body_timeout.0).await?,
            )
        };
        if let RequestBody::Buffered(b) = &body {
            ctx.done.request_bytes = b.len() as u64;
            self.admit_body(ctx, &rt, &inbound, b)?;
        }
        let cx = ctx.cx.as_ref().expect("set by handle");
        let isolated = tenancy::isolated(cx, rt.config.auth.tenant_isolation);
        ctx.owner = tenancy::owner(cx);
        // Resources the call names (path, upload session, body): their project, their owner.
        let refs = if isolated || self.shared.pool.has_pins() {
            let scan = match &body {
                RequestBody::Buffered(b) if !b.is_empty() => Some(&b[..]),
                _ => None,
            };
            tenancy::resource_refs(&inbound.path, inbound.query.as_deref(), scan)
        } else {
            Vec::new()
        };
        if isolated {
            self.own_resources_only(ctx, &method, &inbound, &refs)?;
        }
        self.attempts(session, ctx, &rt, &inbound, body, &refs)
            .await
    }

    /// A non-admin caller reaches only resources it created: others are 404, as if they did
    /// not exist, and a listing shows only its own.
    fn own_resources_only(
        &self,
        ctx: &mut CallState,
        method: &http::Method,
        inbound: &Inbound,
        refs: &[String],
    ) -> Result<(), Failure> {
        if refs.len() > tenancy::MAX_REFS {
            return Err(Failure::new(
                400,
                "bad_request",
                format!("a call may name at most {} resources", tenancy::MAX_REFS),
            ));
        }
        for r in refs {
            let key = r
                .strip_prefix("upload:")
                .map(|_| r.clone())
                .or_else(|| tenancy::resource_key(r));
            let Some(key) = key else { continue };
            if self.shared.pool.owner_of(&key).flatten() != ctx.owner {
                return Err(Failure::new(
                    404,
                    "not_found",
                    format!("{key} was not found"),
                ));
            }
        }
        ctx.own_listing = tenancy::listed_collection(method, &inbound.path).is_some();
        Ok(())
    }

    /// The second half of admission, once a buffered body is in: the model and `stream` of an
    /// OpenAI-style call come from it, then the pipeline's body phase (token charge, model
    /// permissions) decides.
    fn admit_body(
        &self,
        ctx: &mut CallState,
        rt: &Runtime,
        inbound: &Inbound,
        body: &Bytes,
    ) -> Result<(), Failure> {
        let cx = ctx.cx.as_mut().expect("set by handle");
        cx.request.body_size = Some(body.len() as u64);
        if matches!(
            inbound.route.action,
            Action::ChatCompletions | Action::Embeddings
        ) {
            let head = inbound::OpenAiHead::parse(body).ok_or_else(bad_model)?;
            cx.request.model = Some(head.model.clone());
            cx.request.stream = head.stream;
            ctx.done.streamed |= head.stream;
            ctx.model = Some(head.model);
        } else if inbound.route.action == Action::CachedContents && !body.is_empty() {
            // A cached content is made for one model: the token's and the keys' model rules
            // apply to it as to a call of that model.
            if let Some(model) = inbound::body_model(body).map_err(|()| bad_model())? {
                cx.request.model = Some(model.clone());
                ctx.model = Some(model);
            }
        }
        let cx = ctx.cx.as_mut().expect("set by handle");
        match rt.pipeline.body(cx, body) {
            Ok(None) => Ok(()),
            Ok(Some(rejection)) => Err(self.refused(ctx, rejection)),
            Err(stage) => Err(Failure::stage(&ctx.request_id, stage)),
        }
    }

    /// A pipeline refusal: counted, logged and audited like every refused call.
    fn refused(&self, ctx: &CallState, rejection: Rejection) -> Failure {
        let reason = rejection.reason.unwrap_or("other");
        let ip = ctx.cx.as_ref().and_then(|c| c.request.client_ip);
        if matches!(rejection.status, 401 | 403) {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&[reason])
                .inc();
            tracing::info!(target: "gemini_proxy::security", request_id = %ctx.request_id, status = rejection.status, reason, client_ip = ?ip, "call refused");
        }
        if matches!(rejection.status, 401 | 403 | 429) {
            self.shared.audit(crate::audit::security_event(
                &format!("request refused: {reason}"),
                "Blocked",
                ip.map(|ip| ip.to_string()),
                serde_json::json!({"request_id": ctx.request_id, "status": rejection.status}),
            ));
        }
        Failure::rejected(rejection)
    }

    /// Tries keys until one answers, a budget runs out, or no key is left.
    async fn attempts(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        rt: &Arc<Runtime>,
        inbound: &Inbound,
        body: RequestBody,
        refs: &[String],
    ) -> Result<(), Failure> {
        let cfg = &rt.config.pool;
        let retryable_body = matches!(body, RequestBody::Buffered(_));
        let deadline = ctx.started + cfg.retry_deadline.0;
        let (mut rotations, mut retries) = (0u32, 0u32);
        let mut pending: Option<Pending> = None;
        // Keys that failed transiently: blamed only if another key then succeeds.
        let mut transient_keys: Vec<Arc<str>> = Vec::new();
        let mut last_transient = false;
        // Files, cached contents, batches and upload sessions live in the project that made them.
        let pinned: Option<usize> = refs
            .iter()
            .find_map(|r| self.shared.pool.pinned(r))
            .and_then(|id| rt.keys.iter().position(|k| *k.id == *id));
        loop {
            let cx = ctx.cx.as_mut().expect("set by handle");
            let stats = LiveStats {
                runtime: rt,
                pool: &self.shared.pool,
            };
            let mut sel = Selection::new(&rt.candidates).with_stats(&stats);
            if rt.keys_have_rules {
                let now = SystemTime::now();
                let bound = inbound.route.action.model_bound();
                for (i, k) in rt.keys.iter().enumerate() {
                    if !k.admits(ctx.model.as_deref(), bound, now) {
                        sel.exclude(i);
                    }
                }
            }
            if let Some(pi) = pinned {
                let project = &rt.keys[pi].project;
                for (i, k) in rt.keys.iter().enumerate() {
                    if k.project != *project {
                        sel.exclude(i);
                    }
                }
            } else if let Some(project) = cx.routing.project.as_deref() {
                // Pinned by a routing stage (a resource's own project wins over it).
                if !rt.keys.iter().any(|k| &*k.project == project) {
                    return Err(Failure::new(
                        503,
                        "no_key",
                        format!("the routing stage pinned project `{project}`, which has no key"),
                    ));
                }
                for (i, k) in rt.keys.iter().enumerate() {
                    if &*k.project != project {
                        sel.exclude(i);
                    }
                }
            }
            let gate = self
                .shared
                .pool
                .gate(&rt.index, ctx.model.as_deref(), &mut sel);
            // A key that already failed this call is not asked again, unless a transient
            // error left no other key.
            let tried: Vec<usize> = cx
                .tried_keys
                .iter()
                .filter_map(|t| rt.index.index_of(t))
                .collect();
            let untried_left = sel.eligible().any(|(i, _)| !tried.contains(&i));
            if !last_transient || untried_left {
                for &i in &tried {
                    sel.exclude(i);
                }
            }
            if let Some(pi) = pinned {
                // The creating key itself when it can serve; else another key of its project.
                sel.choose(pi);
            }
            if let Err(stage) = rt.pipeline.select(cx, &mut sel) {
                return Err(Failure::stage(&ctx.request_id, stage));
            }
            let Some(index) = sel.chosen_index().or_else(|| rt.fallback.pick(&sel)) else {
                return match pending {
                    Some(p) if p.verdict == Verdict::Transient => {
                        self.relay_pending(session, ctx, rt, p).await
                    }
                    _ => Err(no_key_failure(&gate, ctx.model.as_deref())),
                };
            };
            let key = &rt.keys[index];
            cx.attempt += 1;
            cx.tried_keys.push(key.id.to_string());
            ctx.done.attempts += 1;
            ctx.done.key_id = Some(key.id.to_string());
            ctx.done.project = Some(key.project.to_string());
            self.shared
                .metrics
                .key_usage
                .with_label_values(&[&key.id])
                .inc();
            let time_left = Instant::now() < deadline;
            let budget = if retryable_body && time_left {
                RetryBudget {
                    rotate: rotations < cfg.max_rotations,
                    transient: retries < cfg.max_retries,
                }
            } else {
                RetryBudget::NONE
            };
            ctx.key_index = Some(index);
            self.shared.pool.begin(&key.id, &rt.live[index]);
            self.shared
                .pool
                .count_request(&key.project, ctx.model.as_deref());
            let attempt = Attempt {
                key,
                body: &body,
                budget,
            };
            let result = self.forward(session, ctx, rt, inbound, attempt).await;
            self.shared.pool.end(&key.id, &rt.live[index]);
            match result {
                Ok(Forwarded::Done) => {
                    let success = ctx.done.upstream_status > 0 && ctx.done.upstream_status < 400;
                    if success {
                        for k in transient_keys.iter().filter(|k| **k != key.id) {
                            self.shared.pool.blame(cfg, k);
                        }
                    }
                    return Ok(());
                }
                Ok(Forwarded::Retry(p)) => {
                    let class = p.verdict.class();
                    self.shared
                        .metrics
                        .key_errors
                        .with_label_values(&[&key.id, class])
                        .inc();
                    self.shared
                        .metrics
                        .retries
                        .with_label_values(&[class])
                        .inc();
                    tracing::debug!(request_id = %ctx.request_id, key_id = %key.id, class, "retrying on another key");
                    last_transient = p.verdict == Verdict::Transient;
                    if last_transient {
                        retries += 1;
                        ctx.extra.retries = retries;
                        transient_keys.push(key.id.clone());
                        sleep_before_retry(cfg.backoff.0, retries, deadline).await;
                    } else {
                        rotations += 1;
                        ctx.extra.rotations = rotations;
                    }
                    pending = Some(*p);
                }
                Err(f) => {
                    self.shared
                        .metrics
                        .key_errors
                        .with_label_values(&[&key.id, f.class])
                        .inc();
                    // Nothing reached the upstream: connecting again is safe.
                    let connect_failed =
                        f.class == "upstream_unreachable" && f.message.contains("while connecting");
                    // A read timeout comes after the body was sent: retried only on opt-in.
                    let timed_out = f.class == "upstream_timeout"
                        && cfg
                            .retry_read_timeouts
                            .iter()
                            .any(|a| a == "*" || a == inbound.route.action.as_str());
                    if (connect_failed || timed_out) && budget.transient {
                        retries += 1;
                        ctx.extra.retries = retries;
                        last_transient = true;
                        self.shared
                            .metrics
                            .retries
                            .with_label_values(&["connect"])
                            .inc();
                        sleep_before_retry(cfg.backoff.0, retries, deadline).await;
                        continue;
                    }
                    return Err(f);
                }
            }
        }
    }

    fn upstream_request(
        &self,
        rt: &Runtime,
        key: &UpstreamKey,
        inbound: &Inbound,
        method: &http::Method,
        content_length: Option<String>,
    ) -> Result<RequestHeader, Failure> {
        let mut target =
            String::with_capacity(rt.upstream.target.path_prefix.len() + inbound.path.len() + 32);
        target.push_str(&rt.upstream.target.path_prefix);
        target.push_str(&inbound.path);
        if let Some(q) = &inbound.query {
            target.push('?');
            target.push_str(q);
        }
        let bad = |_| Failure::new(400, "bad_request", "request cannot be forwarded");
        let mut req = RequestHeader::build(
            method.clone(),
            target.as_bytes(),
            Some(inbound.headers.len() + 4),
        )
        .map_err(bad)?;
        for (name, value) in &inbound.headers {
            req.append_header(name.clone(), value.clone())
                .map_err(bad)?;
        }
        req.insert_header("host", rt.upstream.authority.clone())
            .map_err(bad)?;
        // Identity encoding keeps usage observable; Gemini answers are small next to the call.
        req.insert_header("accept-encoding", "identity")
            .map_err(bad)?;
        if inbound.route.api_kind == ApiKind::OpenAi {
            req.insert_header("authorization", key.bearer.clone())
                .map_err(bad)?;
        } else {
            req.insert_header("x-goog-api-key", key.goog_api_key.clone())
                .map_err(bad)?;
        }
        match content_length {
            Some(n) => req.insert_header("content-length", n).map_err(bad)?,
            None if !method_has_no_body(method) => req
                .insert_header("transfer-encoding", "chunked")
                .map_err(bad)?,
            None => {}
        }
        Ok(req)
    }

    /// The response head for the client, from the upstream's: hop-by-hop headers dropped,
    /// upload URLs pointed at the gateway, the request id added, the body framing set.
    fn client_head(
        &self,
        rt: &Runtime,
        session: &Session,
        ctx: &CallState,
        resp: &ResponseHeader,
        whole_body: Option<&Bytes>,
    ) -> Result<ResponseHeader, Failure> {
        let status = resp.status.as_u16();
        let method = &session.req_header().method;
        let mut out = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))
            .map_err(|_| Failure::new(502, "upstream_protocol", "bad upstream status"))?;
        let base = || self.public_base(rt, session);
        for (name, value) in response_head::client_headers(resp.headers.iter(), &rt.scrubber, &base)
        {
            let _ = out.append_header(name, value);
        }
        let _ = out.insert_header("x-request-id", ctx.request_id.as_str());
        cors_headers(rt, session, &mut out);
        match whole_body {
            Some(b) => {
                let _ = out.insert_header("content-length", b.len().to_string());
            }
            None => {
                if out.headers.get("content-length").is_none()
                    && !session.is_http2()
                    && !status_has_no_body(status, method)
                {
                    let _ = out.insert_header("transfer-encoding", "chunked");
                }
            }
        }
        Ok(out)
    }

    /// Answers the client with an upstream error that was held back for a retry that did not
    /// happen (no key or budget left): passed through unchanged, as if there had been no retry.
    async fn relay_pending(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        rt: &Runtime,
        p: Pending,
    ) -> Result<(), Failure> {
        let out = self.client_head(rt, session, ctx, &p.resp, Some(&p.body))?;
        ctx.done.error_class = Some(classify_status(p.resp.status.as_u16()).into());
        ctx.done.response_bytes = p.body.len() as u64;
        if session
            .write_response_header(Box::new(out), false)
            .await
            .is_ok()
        {
            ctx.done.time_to_first_byte = Some(ctx.started.elapsed());
            let _ = session.write_response_body(Some(p.body), true).await;
        }
        Ok(())
    }

    /// One upstream attempt: send, read the head, answer the client, unless the answer is an
    /// error `budget` allows retrying: then it is held back and returned.
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        rt: &Runtime,
        inbound: &Inbound,
        attempt: Attempt<'_>,
    ) -> Result<Forwarded, Failure> {
        let Attempt { key, body, budget } = attempt;
        let method = session.req_header().method.clone();
        let peer = rt.upstream.peer().ok_or_else(|| {
            Failure::new(
                502,
                "upstream_unresolved",
                format!("upstream host {} does not resolve", rt.upstream.target.host),
            )
        })?;
        let upstream_started = Instant::now();
        let mut tries = 0;
        let (mut up, wrote_ok) = loop {
            tries += 1;
            let (mut up, reused) = rt
                .upstream
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| Failure::from_upstream(&e, "while connecting"))?;
            up.set_read_timeout(Some(rt.upstream.read_timeout));
            up.set_write_timeout(Some(rt.upstream.write_timeout));
            let content_length = match body {
                RequestBody::Buffered(b) => Some(b.len().to_string()),
                RequestBody::Streamed { .. } => inbound.content_length.map(|n| n.to_string()),
            };
            let req = self.upstream_request(rt, key, inbound, &method, content_length)?;
            let wrote: pingora::Result<()> = async {
                up.write_request_header(Box::new(req)).await?;
                match body {
                    RequestBody::Buffered(b) => {
                        if !b.is_empty() {
                            up.write_request_body(b.clone(), true).await?;
                        }
                    }
                    RequestBody::Streamed { .. } => {}
                }
                Ok(())
            }
            .await;
            let wrote = match (body, wrote) {
                (RequestBody::Streamed { limit }, Ok(())) => {
                    match stream_request_body(
                        session,
                        &mut up,
                        *limit,
                        &mut ctx.done.request_bytes,
                        &rt.config.server.clients,
                    )
                    .await
                    {
                        Ok(()) => Ok(()),
                        Err(StreamErr::Client(f)) => return Err(f),
                        Err(StreamErr::Upstream(e)) => Err(e),
                    }
                }
                (_, w) => w,
            };
            let wrote = match wrote {
                Ok(()) => up.finish_request_body().await,
                Err(e) => Err(e),
            };
            // An upstream that answers early and closes makes the write fail: still read it.
            match read_head(&mut up).await {
                Ok(()) => break (up, wrote.is_ok()),
                Err(e) => {
                    let buffered = matches!(body, RequestBody::Buffered(_));
                    let stale = reused
                        && buffered
                        && tries < 2
                        && !matches!(
                            e.etype(),
                            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                        );
                    if stale {
                        tracing::debug!(request_id = %ctx.request_id, "pooled upstream connection was stale; retrying once");
                        continue;
                    }
                    let during = if wrote.is_err() {
                        "while sending the request"
                    } else {
                        "while waiting for the response"
                    };
                    return Err(Failure::from_upstream(
                        wrote.as_ref().err().map(|b| b.as_ref()).unwrap_or(&e),
                        during,
                    ));
                }
            }
        };
        let head_latency = upstream_started.elapsed();
        let resp = up.response_header().cloned().ok_or_else(|| {
            Failure::new(502, "upstream_protocol", "upstream sent no response head")
        })?;
        let status = resp.status.as_u16();
        ctx.done.upstream_status = status;

        // Errors are small: read them whole to classify, then pass them on (masked). A listing
        // held to the caller's own resources is read whole too, to be cut down.
        let mut whole_body: Option<Bytes> = None;
        let mut outcome = UpstreamOutcome::new(key.id.to_string(), status);
        outcome.latency = head_latency;
        if status >= 400 {
            let mut buf = read_whole(&mut up, MAX_ERROR_BODY, "error body").await?;
            // Google may name the key it was called with (a suspended consumer's 403).
            rt.scrubber.mask(&mut buf);
            let bytes = buf.freeze();
            outcome.error = UpstreamError::parse(&bytes);
            whole_body = Some(bytes);
        } else if ctx.own_listing && (200..300).contains(&status) {
            let mut buf = read_whole(&mut up, MAX_LISTING, "listing").await?;
            rt.scrubber.mask(&mut buf);
            let owner = ctx.owner.clone();
            let pool = &self.shared.pool;
            whole_body = Some(
                match tenancy::filter_listing(&buf, |k| pool.owner_of(k).flatten() == owner) {
                    Some(own) => Bytes::from(own),
                    None => buf.freeze(),
                },
            );
        }
        {
            let cx = ctx.cx.as_ref().expect("context");
            if let Err(stage) = rt.pipeline.upstream_outcome(cx, &outcome) {
                return Err(Failure::stage(&ctx.request_id, stage));
            }
        }
        if let Some(e) = &outcome.error {
            ctx.upstream_reason = crate::stats::code_word(e.reason.as_deref().unwrap_or(&e.status));
        }

        let resource = matches!(inbound.route.action, Action::Files | Action::CachedContents);
        let verdict = classify(status, outcome.error.as_ref(), resource);
        if status == 429 {
            ctx.extra.upstream_429s += 1;
        }
        if let Verdict::ProjectQuota { quota_id, .. } = &verdict {
            ctx.extra.quota_id = Some(quota_id.clone());
        }
        if let Some(reason) = self.shared.pool.record(
            &rt.config.pool,
            &key.id,
            ctx.model.as_deref(),
            &verdict,
            Some(head_latency),
        ) {
            self.shared
                .metrics
                .keys_disabled
                .with_label_values(&[reason.as_str()])
                .inc();
            tracing::warn!(target: "gemini_proxy::security", request_id = %ctx.request_id, key_id = %key.id, reason = reason.as_str(), "upstream key disabled: it will not be used until an operator re-enables it");
            self.shared.audit(crate::audit::security_event(
                "key disabled",
                "Applied",
                None,
                serde_json::json!({"key_id": &*key.id, "reason": reason.as_str(), "request_id": ctx.request_id}),
            ));
        }
        if verdict == Verdict::GatewayBug {
            tracing::error!(request_id = %ctx.request_id, key_id = %key.id, status, "upstream refused the gateway's credential handling (gateway bug?)");
        }
        if let Some(b) = whole_body.as_ref().filter(|_| status >= 400)
            && budget.allows(&verdict)
        {
            // The error body was read to its end: the connection can serve another call.
            if wrote_ok {
                rt.upstream
                    .connector
                    .release_http_session(up, &peer, peer.options.idle_timeout)
                    .await;
            }
            return Ok(Forwarded::Retry(Box::new(Pending {
                verdict,
                resp,
                body: b.clone(),
            })));
        }

        if let Some(id) = resp
            .headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .and_then(upload_id_of)
        {
            self.shared.pool.pin(
                &format!("upload:{id}"),
                &key.id,
                UPLOAD_AFFINITY,
                ctx.owner.as_deref(),
            );
        }
        let out = self.client_head(rt, session, ctx, &resp, whole_body.as_ref())?;
        let content_type = out
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let observe_chunks = rt.pipeline.has_response_observers();
        // The head is a copy of every header: only build it for stages that look at it.
        if observe_chunks {
            let head = ResponseHead::new(status, out.headers.clone());
            let cx = ctx.cx.as_mut().expect("context");
            if let Err(stage) = rt.pipeline.response(cx, &head) {
                return Err(Failure::stage(&ctx.request_id, stage));
            }
        }
        let format = Observer::format_for(content_type.as_deref());
        if format == BodyFormat::Sse {
            ctx.done.streamed = true;
        }
        let expect_finish = (200..300).contains(&status)
            && matches!(
                inbound.route.action,
                Action::GenerateContent | Action::StreamGenerateContent | Action::ChatCompletions
            );
        let mut observer = Observer::new(format, expect_finish);

        if session
            .write_response_header(Box::new(out), false)
            .await
            .is_err()
        {
            ctx.done.error_class = Some("client_gone".into());
            up.shutdown().await;
            return Ok(Forwarded::Done);
        }
        ctx.done.time_to_first_byte = Some(ctx.started.elapsed());

        if let Some(b) = whole_body {
            observer.feed(&b);
            ctx.done.response_bytes = b.len() as u64;
            let _ = session.write_response_body(Some(b), true).await;
            ctx.done.upstream_latency = Some(upstream_started.elapsed());
            if wrote_ok {
                rt.upstream
                    .connector
                    .release_http_session(up, &peer, peer.options.idle_timeout)
                    .await;
            }
            if status >= 400 {
                ctx.done.error_class = Some(classify_status(status).into());
            }
            return Ok(Forwarded::Done);
        }

        let mut idle_done = false;
        let mut complete = false;
        let mut client_gone = false;
        let mut scrubbed = StreamScrub::default();
        loop {
            let next = tokio::select! {
                biased;
                r = up.read_response_body() => r,
                r = session.downstream_session.read_body_or_idle(true), if !idle_done => {
                    match r {
                        Err(_) => { client_gone = true; break; }
                        Ok(_) => { idle_done = true; continue; }
                    }
                }
            };
            let (chunk, ended) = match next {
                // Chunks the upstream already delivered (one read often carries several SSE
                // events) go out in one write: no added latency, fewer syscalls.
                Ok(Some(first)) => coalesce_ready(&mut up, first),
                Ok(None) => (Bytes::new(), Some(Ok(()))),
                Err(e) => (Bytes::new(), Some(Err(e))),
            };
            let last = matches!(ended, Some(Ok(())));
            let chunk = scrubbed.feed(&rt.scrubber, chunk, last);
            if !chunk.is_empty() {
                observer.feed(&chunk);
                if observe_chunks {
                    let cx = ctx.cx.as_mut().expect("context");
                    rt.pipeline.response_chunk(cx, &chunk);
                }
                ctx.done.response_bytes += chunk.len() as u64;
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    client_gone = true;
                    break;
                }
            }
            match ended {
                Some(Ok(())) => {
                    complete = true;
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(request_id = %ctx.request_id, key_id = %key.id, error = %e.etype().as_str(), "upstream body failed mid-stream");
                    ctx.done.error_class = Some("stream_interrupted".into());
                    break;
                }
                None => {}
            }
        }
        ctx.done.upstream_latency = Some(upstream_started.elapsed());
        let observed = observer.finish(complete);
        if complete
            && (200..300).contains(&status)
            && let Some(name) = &observed.resource_name
        {
            let ttl = if name.starts_with("files/") {
                FILE_AFFINITY
            } else if ["tunedModels/", "fileSearchStores/", "corpora/"]
                .iter()
                .any(|c| name.starts_with(c))
            {
                LASTING_AFFINITY
            } else {
                RESOURCE_AFFINITY
            };
            self.shared
                .pool
                .pin(name, &key.id, ttl, ctx.owner.as_deref());
        }
        ctx.done.usage = observed.usage;
        ctx.done.finish_reason = observed.finish_reason.clone();
        ctx.done.truncated = observed.truncated;
        if let Some(m) = &observed.midstream_error {
            ctx.done.error_class = Some("midstream_error".into());
            tracing::debug!(request_id = %ctx.request_id, message = %truncate(m, 200), "error inside the stream");
        } else if observed.truncated && ctx.done.error_class.is_none() && !client_gone {
            ctx.done.error_class = Some("truncated_stream".into());
        }
        // Too late to retry, but it counts against the key.
        let late: Option<&'static str> = match ctx.done.error_class.as_deref() {
            Some("midstream_error") => Some("midstream_error"),
            Some("truncated_stream") => Some("truncated_stream"),
            Some("stream_interrupted") => Some("stream_interrupted"),
            _ => None,
        };
        if let Some(class) = late {
            self.shared.pool.note_error(&key.id, class);
            self.shared
                .metrics
                .key_errors
                .with_label_values(&[&key.id, class])
                .inc();
        }
        if client_gone {
            ctx.done.error_class = Some("client_gone".into());
            up.shutdown().await;
            return Ok(Forwarded::Done);
        }
        if complete {
            let _ = session.write_response_body(None, true).await;
            if wrote_ok {
                rt.upstream
                    .connector
                    .release_http_session(up, &peer, peer.options.idle_timeout)
                    .await;
            }
        } else {
            // Cut the client connection so it sees an incomplete body, not a clean end.
            up.shutdown().await;
            session.set_keepalive(None);
            session.downstream_session.shutdown().await;
        }
        Ok(Forwarded::Done)
    }
}

fn bad_model() -> Failure {
    Failure::new(
        400,
        "bad_model",
        "the model name is missing or invalid (1-128 characters: letters, digits, `.`, `_`, `-`)",
    )
}

/// The answer when no key may serve the call: 429 with the earliest recovery while keys rest,
/// 503 when none is alive.
fn no_key_failure(gate: &crate::pool::Gate, model: Option<&str>) -> Failure {
    if let Some(at) = gate.earliest_recovery {
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let mut f = Failure::new(
            429,
            "keys_exhausted",
            format!(
                "every upstream key is cooling down for {}; retry in {}s",
                model.unwrap_or("this call"),
                wait.as_secs_f64().ceil()
            ),
        );
        f.retry_after = Some(wait);
        f
    } else {
        Failure::new(503, "no_key", "no upstream key is available")
    }
}

/// Fuzzing entry: interprets bytes as a request target line followed by header lines and runs
/// every parser a request meets before routing. Must never panic.
pub fn fuzz_inbound(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    let _ = inbound::path_is_suspicious(target);
    if let Some((_, q)) = target.split_once('?') {
        let _ = split_key_param(q);
    }
    let _ = tenancy::resource_refs(target, target.split_once('?').map(|(_, q)| q), Some(data));
    let _ = client_ip(
        Some(std::net::IpAddr::from([10, 0, 0, 1])),
        &headers,
        &[Cidr::parse("10.0.0.0/8").expect("cidr")],
    );
    if let Ok(uri) = target.parse::<http::Uri>()
        && let Ok(path) = inbound::normalized_path(uri.path())
    {
        for m in ["GET", "POST", "DELETE", "PATCH"] {
            if let Some(i) = Inbound::parse(m, &path, uri.query(), &headers) {
                let _ = i.route.model.as_deref().map(inbound::valid_model);
            }
        }
    }
    let _ = inbound::OpenAiHead::parse(data);
}

/// Adds `Access-Control-Allow-Origin` when the request's origin is allowed.
fn cors_headers(rt: &Runtime, session: &Session, out: &mut ResponseHeader) {
    let Some(cors) = &rt.config.server.cors else {
        return;
    };
    if let Some(allow) = session
        .req_header()
        .headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .and_then(|o| cors.allow(o))
    {
        let _ = out.insert_header("access-control-allow-origin", allow);
        let _ = out.insert_header(
            "access-control-expose-headers",
            "x-request-id, x-goog-upload-url, x-goog-upload-status, retry-after",
        );
        let _ = out.append_header("vary", "Origin");
    }
}

/// Google keeps uploaded files 48 hours.
const FILE_AFFINITY: Duration = Duration::from_secs(48 * 3600);
/// Cached contents and batches: a week (their own TTLs are usually shorter).
const RESOURCE_AFFINITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Tuned models, file search stores and corpora last until deleted: their owner is kept a year
/// after the gateway last saw them named.
const LASTING_AFFINITY: Duration = Duration::from_secs(400 * 24 * 3600);
/// Upload sessions: Google's resumable sessions last about a week.
const UPLOAD_AFFINITY: Duration = Duration::from_secs(7 * 24 * 3600);

fn upload_id_of(url: &str) -> Option<&str> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .find_map(|p| p.strip_prefix("upload_id="))
        .filter(|id| !id.is_empty())
}

/// Largest write built from chunks that were already buffered.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Appends to `first` every body chunk the upstream session can hand over without waiting.
/// Returns the bytes and, if the body ended meanwhile, how it ended.
fn coalesce_ready(
    up: &mut UpstreamSession,
    first: Bytes,
) -> (Bytes, Option<Result<(), Box<pingora::Error>>>) {
    use futures_util::FutureExt;
    let mut buf: Option<bytes::BytesMut> = None;
    let mut ended = None;
    while buf.as_ref().map_or(first.len(), |b| b.len()) < COALESCE_LIMIT {
        // Reading the body is cancel-safe (the select! loop already relies on it).
        match up.read_response_body().now_or_never() {
            None => break,
            Some(Ok(Some(more))) => buf
                .get_or_insert_with(|| {
                    let mut b = bytes::BytesMut::with_capacity(first.len() + more.len() + 1024);
                    b.extend_from_slice(&first);
                    b
                })
                .extend_from_slice(&more),
            Some(Ok(None)) => {
                ended = Some(Ok(()));
                break;
            }
            Some(Err(e)) => {
                ended = Some(Err(e));
                break;
            }
        }
    }
    (buf.map_or(first, |b| b.freeze()), ended)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    format!("{}...", gemini_proxy_sdk::prefix_within(s, max))
}

fn classify_status(status: u16) -> &'static str {
    match status {
        429 => "upstream_429",
        400..=499 => "upstream_4xx",
        _ => "upstream_5xx",
    }
}

fn method_has_no_body(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
    )
}

fn status_has_no_body(status: u16, m: &http::Method) -> bool {
    status == 204 || status == 304 || *m == http::Method::HEAD
}

enum StreamErr {
    Client(Failure),
    Upstream(Box<pingora::Error>),
}

/// Copies an upload body from the client to the upstream chunk by chunk. Each chunk must come
/// within `body_timeout`, and once the upload has run that long its average rate must stay at
/// `min_body_rate` or more: a trickling client does not hold an upstream connection.
async fn stream_request_body(
    session: &mut Session,
    up: &mut UpstreamSession,
    limit: u64,
    count: &mut u64,
    clients: &crate::config::ClientLimits,
) -> Result<(), StreamErr> {
    send_continue(session)
        .await
        .map_err(|_| StreamErr::Client(Failure::new(499, "client_gone", "client went away")))?;
    let started = Instant::now();
    let wait = clients.body_timeout.0;
    loop {
        let next = tokio::time::timeout(wait, session.downstream_session.read_request_body())
            .await
            .map_err(|_| StreamErr::Client(body_too_slow("upload")))?;
        let ran = started.elapsed();
        if ran > wait && (*count as f64) < clients.min_body_rate as f64 * ran.as_secs_f64() {
            return Err(StreamErr::Client(body_too_slow("upload")));
        }
        match next {
            Ok(Some(chunk)) => {
                *count += chunk.len() as u64;
                if *count > limit {
                    return Err(StreamErr::Client(Failure::too_large("upload", limit)));
                }
                up.write_request_body(chunk, false)
                    .await
                    .map_err(StreamErr::Upstream)?;
            }
            Ok(None) => return Ok(()),
            Err(_) => {
                return Err(StreamErr::Client(Failure::new(
                    400,
                    "bad_request_body",
                    "could not read the upload body",
                )));
            }
        }
    }
}

/// Reads the response head, skipping 1xx informational heads on HTTP/1.
async fn read_head(up: &mut UpstreamSession) -> pingora::Result<()> {
    loop {
        up.read_response_header().await?;
        let informational = up
            .response_header()
            .is_some_and(|h| h.status.is_informational());
        if !(informational && up.as_http1().is_some()) {
            return Ok(());
        }
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = CallState;

    fn new_ctx(&self) -> CallState {
        CallState {
            runtime: self.shared.runtime.load_full(),
            request_id: String::new(),
            started: Instant::now(),
            cx: None,
            done: CompletedRequest::default(),
            style: ErrorStyle::Google,
            api: "unknown",
            action: "unknown",
            model: None,
            upstream_reason: None,
            client_request_id: false,
            owner: None,
            own_listing: false,
            counted_in_flight: false,
            key_index: None,
            extra: crate::audit::CallExtra::default(),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut CallState,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Never reached: request_filter answers every call itself.
        Error::e_explain(ErrorType::InternalError, "upstream phase is not used")
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
    ) -> pingora::Result<bool> {
        ctx.started = Instant::now();
        let incoming = session
            .req_header()
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok());
        ctx.request_id = match incoming {
            Some(v) if valid_request_id(v) => {
                ctx.client_request_id = true;
                v.to_string()
            }
            _ => new_request_id(),
        };
        ctx.style = ErrorStyle::for_path(session.req_header().uri.path());
        // A client that stops reading (a stream it never drains) loses the call.
        session
            .downstream_session
            .set_write_timeout(Some(ctx.runtime.config.server.clients.write_timeout.0));
        self.shared.metrics.in_flight.inc();
        ctx.counted_in_flight = true;
        if let Err(f) = self.handle(session, ctx).await {
            self.write_failure(session, ctx, f).await;
        }
        Ok(true)
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut CallState,
    ) {
        if ctx.counted_in_flight {
            self.shared.metrics.in_flight.dec();
        }
        let m = &self.shared.metrics;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if ctx.done.status == 0 {
            ctx.done.status = status;
        }
        ctx.done.total_latency = ctx.started.elapsed();
        let method = session.req_header().method.as_str().to_string();
        let status_label = status.to_string();
        m.http_requests
            .with_label_values(&[ctx.api, &method, &status_label])
            .inc();
        m.request_duration
            .with_label_values(&[ctx.api])
            .observe(ctx.done.total_latency.as_secs_f64());
        // Only a model the upstream has served becomes a label (see `LabelCap`).
        let name = ctx.model.as_deref().unwrap_or("");
        let model = if (200..300).contains(&ctx.done.upstream_status) {
            m.models.learn(name)
        } else {
            m.models.get(name)
        };
        if ctx.done.attempts > 0 {
            m.gemini_calls
                .with_label_values(&[ctx.action, &model, &status_label])
                .inc();
            if let Some(d) = ctx.done.upstream_latency {
                m.upstream_duration
                    .with_label_values(&[ctx.action])
                    .observe(d.as_secs_f64());
                m.overhead
                    .with_label_values(&[ctx.api])
                    .observe(ctx.done.total_latency.saturating_sub(d).as_secs_f64());
            }
            if let Some(d) = ctx.done.time_to_first_byte {
                m.ttfb
                    .with_label_values(&[ctx.action])
                    .observe(d.as_secs_f64());
            }
        }
        if let (Some(u), Some(i)) = (ctx.done.usage, ctx.key_index)
            && let Some(k) = ctx.runtime.keys.get(i)
        {
            // Gemini's TPM limits count input tokens.
            self.shared
                .pool
                .count_tokens(&k.project, ctx.model.as_deref(), u.prompt_tokens);
        }
        if let Some(u) = ctx.done.usage {
            m.tokens
                .with_label_values(&[&model, "prompt"])
                .inc_by(u.prompt_tokens);
            m.tokens
                .with_label_values(&[&model, "candidates"])
                .inc_by(u.candidates_tokens);
            m.tokens
                .with_label_values(&[&model, "thoughts"])
                .inc_by(u.thoughts_tokens);
            m.tokens
                .with_label_values(&[&model, "cached"])
                .inc_by(u.cached_tokens);
        }
        if ctx.done.truncated {
            m.truncated.inc();
        }
        let failed = ctx.done.error_class.is_some() || status >= 400;
        let error = failed.then(|| ErrorSample {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            request_id: (!ctx.client_request_id).then(|| ctx.request_id.clone()),
            status,
            upstream_status: ctx.done.upstream_status,
            upstream_reason: ctx.upstream_reason.clone(),
            class: ctx
                .done
                .error_class
                .clone()
                .unwrap_or_else(|| classify_status(status).into()),
            key_id: ctx.done.key_id.clone(),
            api: ctx.api,
            action: ctx.action,
            model: model.clone(),
        });
        if let Some(k) = ctx.done.key_id.as_deref() {
            let t = self.shared.anomalies.observe(
                crate::anomaly::now_ms(),
                k,
                &model,
                ctx.done.total_latency.as_secs_f64() * 1e3,
                // The key's errors: server-side failures and broken streams, not the client's.
                status >= 500 || ctx.done.truncated,
                ctx.extra.upstream_429s > 0 || status == 429,
            );
            if !t.is_empty() {
                self.shared.report_anomalies(t);
            }
        }
        self.shared.stats.record(CallRecord {
            model: &model,
            key_id: ctx.done.key_id.as_deref(),
            latency: ctx.done.total_latency,
            ttfb: ctx.done.time_to_first_byte,
            overhead: ctx
                .done
                .upstream_latency
                .map(|u| ctx.done.total_latency.saturating_sub(u)),
            error,
        });
        if let Some(cx) = &ctx.cx {
            ctx.runtime.pipeline.complete(cx, &ctx.done);
        } else if ctx.done.status == 404 {
            tracing::debug!(request_id = %ctx.request_id, path = %session.req_header().uri.path(), "no route");
        }
        if let Some(audit) = &self.shared.audit {
            // The path without its query: `?key=` may hold a credential.
            let e = crate::audit::call_event(
                &ctx.request_id,
                &method,
                session.req_header().uri.path(),
                ctx.cx.as_ref(),
                &ctx.done,
                ctx.api,
                ctx.model.as_deref(),
                &ctx.extra,
            );
            audit.record_async(e).await;
        }
    }
}

#[cfg(test)]
mod fuzz_tests {
    /// Bounded pseudo-random and mutated inputs through every pre-routing parser (the stable
    /// stand-in for `fuzz/`'s cargo-fuzz target; `scripts/fuzz`).
    #[test]
    fn fuzz_inbound_never_panics() {
        let seeds: &[&[u8]] = &[
            b"/v1beta/models/gemini-2.5-flash:generateContent?key=abc&alt=sse\nx-goog-api-key: t\nx-forwarded-for: 1.2.3.4, 10.0.0.2",
            b"/upload/v1beta/files?upload_id=u1&upload_protocol=resumable\nauthorization: Bearer x",
            b"http://generativelanguage.googleapis.com/v1beta/openai/chat/completions\ncontent-length: 99999999999999999999",
            b"/v1beta/files/abc:download?%%%\nx-forwarded-for: ::1, garbage, 999.1.1.1",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        const ALPHABET: &[u8] = b"/:?&=%.,;\\\n -_aZ09\x00\xff\xc3\xa9[]@#";
        for i in 0..20_000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 8) {
                let r = next();
                let pos = (r as usize >> 8) % (input.len() + 1);
                match r % 4 {
                    0 => input.insert(pos, ALPHABET[(r >> 40) as usize % ALPHABET.len()]),
                    1 if pos < input.len() => {
                        input.remove(pos);
                    }
                    2 if pos < input.len() => input[pos] = (r >> 32) as u8,
                    _ => {
                        let chunk: Vec<u8> = input[pos..].iter().take(16).copied().collect();
                        input.splice(pos..pos, chunk);
                    }
                }
            }
            super::fuzz_inbound(&input);
        }
    }
}
