//! The request body: read whole (bounded in size and time) for every call but uploads, which
//! are streamed to the upstream as they arrive; then the second half of admission, which needs
//! the body (the model of an OpenAI-style call or a cached content, the pipeline's body phase).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gemini_proxy_sdk::{Action, ApiKind};
use pingora::ErrorType;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;

use super::call::CallState;
use super::failure::{ErrorClass, Failure};
use super::{GatewayProxy, Inbound, model};

/// What the call forwards.
pub enum RequestBody {
    Buffered(Bytes),
    /// Uploads: streamed from the client as it arrives, never held whole.
    Streamed {
        limit: u64,
    },
}

impl GatewayProxy {
    /// Reads the body the call forwards (an upload's is streamed later), then admits what it
    /// says.
    pub(super) async fn body(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        inbound: &Inbound,
    ) -> Result<RequestBody, Failure> {
        let server = &ctx.runtime.config.server;
        // A declared length over the limit was refused at admission.
        let limit = super::admission::body_limit(server, inbound);
        if inbound.route.api_kind == ApiKind::Upload {
            return Ok(RequestBody::Streamed { limit });
        }
        let mut b = read_body(session, limit, server.clients.body_timeout.0).await?;
        if inbound.route.action == Action::CreateAuthToken && !b.is_empty() {
            b = model::canonical_token_request(&b)
                .map_err(|m| Failure::new(400, ErrorClass::BadRequestBody, m))?;
        }
        ctx.done.request_bytes = b.len() as u64;
        self.admit_body(ctx, inbound, &b).await?;
        Ok(RequestBody::Buffered(b))
    }

    /// The second half of admission, once a buffered body is in: the model and `stream` of an
    /// OpenAI-style call come from it, then the pipeline's body phase (token charge, model
    /// permissions) decides.
    async fn admit_body(
        &self,
        ctx: &mut CallState,
        inbound: &Inbound,
        body: &Bytes,
    ) -> Result<(), Failure> {
        let rt = ctx.runtime.clone();
        let cx = ctx.cx();
        cx.request.body_size = Some(body.len() as u64);
        let action = inbound.route.action;
        if matches!(action, Action::ChatCompletions | Action::Embeddings) {
            let head = model::OpenAiHead::parse(body).ok_or_else(Failure::bad_model)?;
            cx.request.model = Some(head.model);
            cx.request.stream = head.stream;
            ctx.done.streamed |= head.stream;
        } else if action == Action::CachedContents && !body.is_empty() {
            // A cached content is made for one model: the token's and the keys' model rules
            // apply to it as to a call of that model.
            if let Some(model) = model::body_model(body).map_err(|()| Failure::bad_model())? {
                cx.request.model = Some(model);
            }
        } else if action == Action::CreateAuthToken && !body.is_empty() {
            // A token may lock its sessions to a model: the rules of that model apply now.
            if let Some(model) = model::token_model(body).map_err(|()| Failure::bad_model())? {
                cx.request.model = Some(model);
            }
        }
        match rt.pipeline.body(ctx.cx(), body).await {
            Ok(None) => Ok(()),
            Ok(Some(rejection)) => Err(self.refused(ctx, rejection)),
            Err(stage) => Err(Failure::stage(&ctx.request_id, stage)),
        }
    }
}

async fn send_continue(session: &mut Session) -> Result<(), Failure> {
    if !crate::util::expects_continue(&session.req_header().headers) {
        return Ok(());
    }
    // Writing a header before the body is read would otherwise turn keep-alive off.
    let ds = &mut session.downstream_session;
    ds.set_close_on_response_before_downstream_finish(false);
    let sent = ds.write_continue_response().await;
    ds.set_close_on_response_before_downstream_finish(true);
    sent.map_err(|_| Failure::client_gone())
}

/// Reads the whole request body, refusing more than `limit` bytes or one that takes longer than
/// `deadline` (`server.clients.body_timeout`).
async fn read_body(
    session: &mut Session,
    limit: u64,
    deadline: Duration,
) -> Result<Bytes, Failure> {
    send_continue(session).await?;
    let until = tokio::time::Instant::now() + deadline;
    let mut buf = BytesMut::new();
    loop {
        let next = tokio::time::timeout_at(until, session.downstream_session.read_request_body())
            .await
            .map_err(|_| Failure::too_slow("request body"))?;
        match next {
            Ok(Some(chunk)) => {
                if (buf.len() + chunk.len()) as u64 > limit {
                    return Err(Failure::too_large("request body", limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                return Err(Failure::new(
                    408,
                    ErrorClass::ClientTimeout,
                    "timed out reading the request body",
                ));
            }
            Err(_) => {
                // The framing is broken: nothing after it on this connection can be trusted.
                return Err(Failure::new(
                    400,
                    ErrorClass::BadRequestBody,
                    "could not read the request body",
                )
                .unread());
            }
        }
    }
}

/// Why streaming an upload stopped.
pub enum StreamErr {
    Client(Failure),
    Upstream(Box<pingora::Error>),
}

/// Copies an upload body from the client to the upstream chunk by chunk. Each chunk must come
/// within `body_timeout`, and once the upload has run that long its average rate must stay at
/// `min_body_rate` or more: a trickling client does not hold an upstream connection.
pub async fn stream_request_body(
    session: &mut Session,
    up: &mut UpstreamSession,
    limit: u64,
    count: &mut u64,
    clients: &crate::config::ClientLimits,
) -> Result<(), StreamErr> {
    send_continue(session).await.map_err(StreamErr::Client)?;
    let started = Instant::now();
    let wait = clients.body_timeout.0;
    loop {
        let next = tokio::time::timeout(wait, session.downstream_session.read_request_body())
            .await
            .map_err(|_| StreamErr::Client(Failure::too_slow("upload")))?;
        let ran = started.elapsed();
        if ran > wait && (*count as f64) < clients.min_body_rate as f64 * ran.as_secs_f64() {
            return Err(StreamErr::Client(Failure::too_slow("upload")));
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
                return Err(StreamErr::Client(
                    Failure::new(
                        400,
                        ErrorClass::BadRequestBody,
                        "could not read the upload body",
                    )
                    .unread(),
                ));
            }
        }
    }
}
