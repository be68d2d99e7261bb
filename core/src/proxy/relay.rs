//! Relaying the upstream's answer to the client: the head (hop-by-hop headers dropped, secrets
//! masked, upload URLs pointed at the gateway), then the body, whole or streamed chunk by chunk
//! as it arrives (never buffered), watched for usage, the created resource and a broken stream.

use bytes::Bytes;
use gemini_proxy_sdk::{Action, ResponseHead};
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;

use super::attempts::Pending;
use super::call::CallState;
use super::cors::cors_headers;
use super::exchange::Exchange;
use super::failure::{ErrorClass, Failure};
use super::{BodyFormat, GatewayProxy, Inbound, Observer, StreamScrub, response_head};
use crate::pool::affinity;
use crate::runtime::{Runtime, UpstreamKey};

/// Largest write built from chunks that were already buffered.
const COALESCE_LIMIT: usize = 64 * 1024;

impl GatewayProxy {
    /// Answers the client with the upstream's answer.
    pub(super) async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        inbound: &Inbound,
        key: &UpstreamKey,
        mut ex: Exchange,
    ) -> Result<(), Failure> {
        let rt = ctx.runtime.clone();
        let status = ex.status;
        if let Some(id) = ex
            .resp
            .headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .and_then(upload_id_of)
        {
            let name = format!("upload:{id}");
            let owner = ctx.owner.as_deref();
            self.shared
                .pool
                .pin(&name, &key.id, affinity::UPLOAD_TTL, owner);
        }
        let out = self.client_head(session, ctx, &ex.resp, ex.whole_body.as_ref())?;
        let content_type = out
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The head is a copy of every header: only build it for stages that look at it.
        if rt.pipeline.has_response_observers() {
            let head = ResponseHead::new(status, out.headers.clone());
            if let Err(stage) = rt.pipeline.response(ctx.cx(), &head) {
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
            ctx.error = Some(ErrorClass::ClientGone);
            ex.up.shutdown().await;
            return Ok(());
        }
        ctx.done.time_to_first_byte = Some(ctx.started.elapsed());
        if let Some(b) = ex.whole_body.take() {
            observer.feed(&b);
            ctx.done.response_bytes = b.len() as u64;
            let _ = session.write_response_body(Some(b), true).await;
            ctx.done.upstream_latency = Some(ex.started.elapsed());
            ex.release(&rt).await;
            if status >= 400 {
                ctx.error = Some(ErrorClass::of_upstream_status(status));
            }
            return Ok(());
        }
        self.stream(session, ctx, key, ex, observer).await;
        Ok(())
    }

    /// Streams the body as it arrives, then settles what the stream came to.
    async fn stream(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        key: &UpstreamKey,
        mut ex: Exchange,
        mut observer: Observer,
    ) {
        let rt = ctx.runtime.clone();
        let observe_chunks = rt.pipeline.has_response_observers();
        let mut idle_done = false;
        let mut complete = false;
        let mut client_gone = false;
        let mut scrubbed = StreamScrub::default();
        loop {
            let next = tokio::select! {
                biased;
                r = ex.up.read_response_body() => r,
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
                Ok(Some(first)) => coalesce_ready(&mut ex.up, first),
                Ok(None) => (Bytes::new(), Some(Ok(()))),
                Err(e) => (Bytes::new(), Some(Err(e))),
            };
            let last = matches!(ended, Some(Ok(())));
            let chunk = scrubbed.feed(&rt.scrubber, chunk, last);
            if !chunk.is_empty() {
                observer.feed(&chunk);
                if observe_chunks {
                    rt.pipeline.response_chunk(ctx.cx(), &chunk);
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
                    ctx.error = Some(ErrorClass::StreamInterrupted);
                    break;
                }
                None => {}
            }
        }
        ctx.done.upstream_latency = Some(ex.started.elapsed());
        self.settle_stream(ctx, key, ex.status, observer, complete, client_gone);
        if client_gone {
            ctx.error = Some(ErrorClass::ClientGone);
            ex.up.shutdown().await;
        } else if complete {
            let _ = session.write_response_body(None, true).await;
            ex.release(&rt).await;
        } else {
            // Cut the client connection so it sees an incomplete body, not a clean end.
            ex.up.shutdown().await;
            session.set_keepalive(None);
            session.downstream_session.shutdown().await;
        }
    }

    /// What a streamed answer came to: usage, the resource it created (pinned to the key),
    /// and a broken stream, which counts against the key though it is too late to retry.
    fn settle_stream(
        &self,
        ctx: &mut CallState,
        key: &UpstreamKey,
        status: u16,
        observer: Observer,
        complete: bool,
        client_gone: bool,
    ) {
        let observed = observer.finish(complete);
        if complete
            && (200..300).contains(&status)
            && let Some(name) = &observed.resource_name
        {
            let owner = ctx.owner.as_deref();
            self.shared
                .pool
                .pin(name, &key.id, affinity::ttl_for(name), owner);
        }
        if complete
            && (200..300).contains(&status)
            && ctx.cx().request.action == Action::CreateAuthToken
            && let Some((name, expires)) = &observed.auth_token
        {
            self.vouch_for(ctx, key, name, expires.as_deref());
        }
        ctx.done.usage = observed.usage;
        ctx.done.finish_reason = observed.finish_reason.clone();
        ctx.done.truncated = observed.truncated;
        if let Some(m) = &observed.midstream_error {
            ctx.error = Some(ErrorClass::MidstreamError);
            tracing::debug!(request_id = %ctx.request_id, message = %truncate(m, 200), "error inside the stream");
        } else if observed.truncated && ctx.error.is_none() && !client_gone {
            ctx.error = Some(ErrorClass::TruncatedStream);
        }
        if let Some(class) = ctx.error.filter(|c| c.is_late_stream_error()) {
            self.shared.pool.note_error(&key.id, class.as_str());
            self.shared
                .metrics
                .key_errors
                .with_label_values(&[&key.id, class.as_str()])
                .inc();
        }
    }

    /// The response head for the client, from the upstream's: hop-by-hop headers dropped,
    /// upload URLs pointed at the gateway, the request id added, the body framing set.
    fn client_head(
        &self,
        session: &Session,
        ctx: &CallState,
        resp: &ResponseHeader,
        whole_body: Option<&Bytes>,
    ) -> Result<ResponseHeader, Failure> {
        let rt = &ctx.runtime;
        let status = resp.status.as_u16();
        let method = &session.req_header().method;
        let mut out = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))
            .map_err(|_| Failure::new(502, ErrorClass::UpstreamProtocol, "bad upstream status"))?;
        let base = || public_base(rt, session);
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
    pub(super) async fn relay_pending(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        p: Pending,
    ) -> Result<(), Failure> {
        let out = self.client_head(session, ctx, &p.resp, Some(&p.body))?;
        ctx.error = Some(ErrorClass::of_upstream_status(p.resp.status.as_u16()));
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
}

/// The gateway's origin as clients reach it, for upload URLs: `server.public_url`, else the
/// request's `Host` when it names this listener, else the address the connection reached.
/// An arbitrary `Host` is never believed: it would point a client's upload elsewhere.
fn public_base(rt: &Runtime, session: &Session) -> String {
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

fn upload_id_of(url: &str) -> Option<&str> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .find_map(|p| p.strip_prefix("upload_id="))
        .filter(|id| !id.is_empty())
}

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

fn status_has_no_body(status: u16, m: &http::Method) -> bool {
    status == 204 || status == 304 || *m == http::Method::HEAD
}
