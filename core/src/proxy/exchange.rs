//! One upstream exchange on one key: connect (through Pingora's pooled connector), send the
//! request (buffered, or an upload streamed as it arrives), read the response head, read an
//! error or a listing whole, and judge the answer for the key pool. A retryable error the
//! budget allows is handed back to `attempts`; anything else is relayed to the client.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use gemini_proxy_sdk::{Action, UpstreamError, UpstreamOutcome};
use pingora::ErrorType;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;

use super::attempts::{Attempt, Forwarded, Pending};
use super::body::{RequestBody, StreamErr, stream_request_body};
use super::call::CallState;
use super::failure::{During, ErrorClass, Failure};
use super::upstream_request::upstream_request;
use super::{GatewayProxy, Inbound, tenancy};
use crate::pool::{Verdict, classify};
use crate::runtime::{Runtime, UpstreamKey};

/// Largest upstream error body read to classify it.
const MAX_ERROR_BODY: usize = 1024 * 1024;
/// Largest resource listing read to cut it down to the caller's own.
const MAX_LISTING: usize = 8 * 1024 * 1024;

/// An upstream answer whose head is in.
pub struct Exchange {
    pub up: UpstreamSession,
    pub peer: HttpPeer,
    /// The request went out whole: the connection may be reused once the answer is read.
    pub wrote_ok: bool,
    pub started: Instant,
    pub resp: ResponseHeader,
    pub status: u16,
    /// An error or a listing, read whole (masked; a listing cut down to the caller's own).
    pub whole_body: Option<Bytes>,
    pub verdict: Verdict,
}

impl Exchange {
    /// Gives the connection back to the pool when it can serve another call.
    pub async fn release(self, rt: &Runtime) {
        if self.wrote_ok {
            let idle = self.peer.options.idle_timeout;
            rt.upstream
                .connector
                .release_http_session(self.up, &self.peer, idle)
                .await;
        }
    }
}

impl GatewayProxy {
    /// One upstream attempt: send, read the head, answer the client, unless the answer is an
    /// error `budget` allows retrying: then it is held back and returned.
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        inbound: &Inbound,
        attempt: Attempt<'_>,
    ) -> Result<Forwarded, Failure> {
        let Attempt { key, body, budget } = attempt;
        let mut ex = self.send(session, ctx, inbound, key, body).await?;
        self.read_answer(ctx, inbound, key, &mut ex).await?;
        if ex.status >= 400
            && let Some(b) = ex.whole_body.clone()
            && budget.allows(&ex.verdict)
        {
            // The error body was read to its end: the connection can serve another call.
            let (verdict, resp) = (ex.verdict.clone(), ex.resp.clone());
            ex.release(&ctx.runtime).await;
            return Ok(Forwarded::Retry(Box::new(Pending {
                verdict,
                resp,
                body: b,
            })));
        }
        self.relay(session, ctx, inbound, key, ex).await?;
        Ok(Forwarded::Done)
    }

    /// Connects, sends the request and reads the response head. A pooled connection found
    /// stale is replaced once (a buffered body can be sent again).
    async fn send(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        inbound: &Inbound,
        key: &UpstreamKey,
        body: &RequestBody,
    ) -> Result<Exchange, Failure> {
        let rt = ctx.runtime.clone();
        let method = session.req_header().method.clone();
        let peer = rt.upstream.peer().ok_or_else(|| {
            Failure::new(
                502,
                ErrorClass::UpstreamUnresolved,
                format!("upstream host {} does not resolve", rt.upstream.target.host),
            )
        })?;
        let started = Instant::now();
        let content_length = match body {
            RequestBody::Buffered(b) => Some(b.len().to_string()),
            RequestBody::Streamed { .. } => inbound.content_length.map(|n| n.to_string()),
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let (mut up, reused) = rt
                .upstream
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| Failure::from_upstream(&e, During::Connecting))?;
            up.set_read_timeout(Some(rt.upstream.read_timeout));
            up.set_write_timeout(Some(rt.upstream.write_timeout));
            let req = upstream_request(&rt, key, inbound, &method, content_length.clone())?;
            let wrote = match write_request(session, ctx, &mut up, req, body).await {
                Err(StreamErr::Client(f)) => return Err(f),
                Err(StreamErr::Upstream(e)) => Err(e),
                Ok(()) => up.finish_request_body().await,
            };
            // An upstream that answers early and closes makes the write fail: still read it.
            let e = match read_head(&mut up).await {
                Ok(()) => {
                    let resp = up.response_header().cloned().ok_or_else(|| {
                        Failure::new(
                            502,
                            ErrorClass::UpstreamProtocol,
                            "upstream sent no response head",
                        )
                    })?;
                    return Ok(Exchange {
                        up,
                        peer,
                        wrote_ok: wrote.is_ok(),
                        started,
                        status: resp.status.as_u16(),
                        resp,
                        whole_body: None,
                        verdict: Verdict::Success,
                    });
                }
                Err(e) => e,
            };
            let stale = reused
                && matches!(body, RequestBody::Buffered(_))
                && tries < 2
                && !matches!(
                    e.etype(),
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout
                );
            if stale {
                tracing::debug!(request_id = %ctx.request_id, "pooled upstream connection was stale; retrying once");
                continue;
            }
            return Err(match wrote {
                Err(w) => Failure::from_upstream(&w, During::Sending),
                Ok(()) => Failure::from_upstream(&e, During::Waiting),
            });
        }
    }

    /// Reads an error (to classify it) or a listing (to cut it down) whole, lets the pipeline
    /// see the outcome, and judges it for the key pool.
    async fn read_answer(
        &self,
        ctx: &mut CallState,
        inbound: &Inbound,
        key: &UpstreamKey,
        ex: &mut Exchange,
    ) -> Result<(), Failure> {
        let rt = ctx.runtime.clone();
        let status = ex.status;
        ctx.done.upstream_status = status;
        let mut outcome = UpstreamOutcome::new(key.id.to_string(), status);
        outcome.latency = ex.started.elapsed();
        if status >= 400 {
            let mut buf = read_whole(&mut ex.up, MAX_ERROR_BODY, "error body").await?;
            // Google may name the key it was called with (a suspended consumer's 403).
            rt.scrubber.mask(&mut buf);
            let bytes = buf.freeze();
            outcome.error = UpstreamError::parse(&bytes);
            ex.whole_body = Some(bytes);
        } else if ctx.own_listing && (200..300).contains(&status) {
            let mut buf = read_whole(&mut ex.up, MAX_LISTING, "listing").await?;
            rt.scrubber.mask(&mut buf);
            let owner = ctx.owner.clone();
            let pool = &self.shared.pool;
            // A listing the gateway cannot read is not passed on: it may list others' resources.
            let own = tenancy::filter_listing(&buf, |k| pool.owner_of(k).flatten() == owner)
                .ok_or_else(|| {
                    Failure::new(
                        502,
                        ErrorClass::UpstreamProtocol,
                        "the upstream listing could not be read",
                    )
                })?;
            ex.whole_body = Some(Bytes::from(own));
        }
        if let Err(stage) = rt.pipeline.upstream_outcome(ctx.cx(), &outcome) {
            return Err(Failure::stage(&ctx.request_id, stage));
        }
        if let Some(e) = &outcome.error {
            ctx.upstream_reason = crate::stats::code_word(e.reason.as_deref().unwrap_or(&e.status));
        }
        let resource = matches!(inbound.route.action, Action::Files | Action::CachedContents);
        ex.verdict = classify(status, outcome.error.as_ref(), resource);
        self.judge(ctx, key, &ex.verdict, outcome.latency);
        Ok(())
    }

    /// Records the verdict in the key pool; a key it disables is an audited security event.
    pub(super) fn judge(
        &self,
        ctx: &mut CallState,
        key: &UpstreamKey,
        verdict: &Verdict,
        latency: std::time::Duration,
    ) {
        if ctx.done.upstream_status == 429 {
            ctx.extra.upstream_429s += 1;
        }
        if let Verdict::ProjectQuota { quota_id, .. } = verdict {
            ctx.extra.quota_id = Some(quota_id.clone());
        }
        let cfg = &ctx.runtime.config.pool;
        let disabled = self
            .shared
            .pool
            .record(cfg, &key.id, ctx.model(), verdict, Some(latency));
        if let Some(reason) = disabled {
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
        if *verdict == Verdict::GatewayBug {
            tracing::error!(request_id = %ctx.request_id, key_id = %key.id, status = ctx.done.upstream_status, "upstream refused the gateway's credential handling (gateway bug?)");
        }
    }
}

/// Writes the request head and body (an upload copied from the client as it comes).
async fn write_request(
    session: &mut Session,
    ctx: &mut CallState,
    up: &mut UpstreamSession,
    req: pingora::http::RequestHeader,
    body: &RequestBody,
) -> Result<(), StreamErr> {
    match body {
        // Head and body in one write (patched pingora-core, see vendor/pingora-core/PATCH.md).
        RequestBody::Buffered(b) => up
            .write_request_header_with_body(Box::new(req), b.clone())
            .await
            .map_err(StreamErr::Upstream),
        RequestBody::Streamed { limit } => {
            up.write_request_header(Box::new(req))
                .await
                .map_err(StreamErr::Upstream)?;
            let clients = &ctx.runtime.config.server.clients;
            stream_request_body(session, up, *limit, &mut ctx.done.request_bytes, clients).await
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

/// Reads a whole upstream body of at most `max` bytes.
async fn read_whole(
    up: &mut UpstreamSession,
    max: usize,
    what: &'static str,
) -> Result<BytesMut, Failure> {
    let mut buf = BytesMut::new();
    loop {
        match up.read_response_body().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > max {
                    return Err(Failure::new(
                        502,
                        ErrorClass::UpstreamProtocol,
                        format!("upstream {what} too large"),
                    ));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(buf),
            Err(e) => return Err(Failure::from_upstream(&e, During::Reading(what))),
        }
    }
}
