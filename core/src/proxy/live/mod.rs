//! Live API sessions (`/ws/...BidiGenerateContent`). The gateway answers the WebSocket upgrade
//! itself, reads the client's `setup` (bounded in size and time), admits the session with the
//! model it names as it admits any call (auth, limits, routing, the token's models), chooses a
//! key, and opens the upstream WebSocket with that key ([`upstream`]); a key refused before
//! `setupComplete` is judged like an HTTP answer and another is tried. After that the session
//! belongs to the key, and every message is relayed as it comes ([`relay`]) until a side closes.
//! What goes wrong after the upgrade is a close frame with a code and reason, never HTTP.

mod capped;
mod close;
mod owned;
mod relay;
mod setup;
mod tokens;
mod upstream;

use futures_util::SinkExt;
use gemini_proxy_sdk::{CompletedRequest, Usage};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::GatewayProxy;
use super::call::CallState;
use super::failure::{ErrorClass, Failure};
use super::inbound::Inbound;
use super::key_choice::Choice;
use crate::pool::{Verdict, classify};
pub use close::Close;

/// How long the key of a session that issued a resumption handle serves its resumptions.
const RESUMPTION_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The client's side of a session.
pub(super) type ClientWs = WebSocketStream<capped::Capped<pingora::protocols::Stream>>;

impl GatewayProxy {
    /// Runs a Live session to its end; `Err` only before the upgrade (answered in HTTP).
    pub(super) async fn live(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
        inbound: Inbound,
    ) -> Result<(), Failure> {
        let accept = handshake_key(session, ctx.runtime.config.server.cors.as_ref())?;
        let limits = ctx.runtime.config.live.clone();
        let (stream, preread) = take_connection(session).await?;
        let mut ws = match upgrade(stream, preread, &accept, &limits).await {
            Some(ws) => ws,
            None => {
                ctx.done.status = 499;
                return Ok(());
            }
        };
        ctx.done.status = 101;
        ctx.done.streamed = true;
        let _open = OpenSession::new(&self.shared.metrics);
        let outcome = self.run_live(&mut ws, ctx, &inbound, &limits).await;
        self.count_live(ctx, &outcome);
        self.end_live(&mut ws, ctx, outcome).await;
        Ok(())
    }

    async fn run_live(
        &self,
        ws: &mut ClientWs,
        ctx: &mut CallState,
        inbound: &Inbound,
        limits: &crate::config::LiveConfig,
    ) -> relay::Ended {
        let mut setup = match setup::read(ws, limits).await {
            Ok(s) => s,
            Err(close) => return relay::Ended::refused(close),
        };
        let ephemeral = match self.ephemeral(ctx).await {
            Ok(e) => e,
            Err(close) => return relay::Ended::refused(close),
        };
        if let Err(close) = self.admit_live(ctx, &mut setup).await {
            return relay::Ended::refused(close);
        }
        ctx.owner = super::tenancy::owner(ctx.cx());
        let owned = owned::OwnedOnly::for_call(&self.shared, ctx);
        if let Some(o) = &owned
            && let Err(close) = o.check(setup.text().as_bytes()).await
        {
            return relay::Ended::refused(close);
        }
        let opened = self
            .open_upstream(ctx, inbound, &setup, limits, ephemeral.as_ref())
            .await;
        let (up, first) = match opened {
            Ok(u) => u,
            Err(close) => return relay::Ended::refused(close),
        };
        let closing = self.shared.closing_sessions.subscribe();
        let (pool, key_id, owner) = (
            self.shared.pool.clone(),
            ctx.done.key_id.clone().unwrap_or_default(),
            ctx.owner.clone(),
        );
        let pin = move |handle: &str| {
            pool.pin(handle, &key_id, RESUMPTION_TTL, owner.as_deref());
        };
        let hooks = relay::Hooks {
            pin: &pin,
            owned: owned.as_ref(),
        };
        relay::run(ws, up, first, ctx, limits, closing, &hooks).await
    }

    /// The pipeline's admission with the model the setup names; a routing stage's model goes
    /// into the setup sent upstream.
    async fn admit_live(&self, ctx: &mut CallState, setup: &mut setup::Setup) -> Result<(), Close> {
        ctx.cx().request.model = Some(setup.model.clone());
        let rt = ctx.runtime.clone();
        match rt.pipeline.admit(ctx.cx()).await {
            Ok(None) => {}
            Ok(Some(rejection)) => {
                let f = self.refused(ctx, rejection);
                ctx.error = Some(f.class);
                return Err(Close::from_failure(&f));
            }
            Err(stage) => {
                let f = Failure::stage(&ctx.request_id, stage);
                ctx.error = Some(f.class);
                return Err(Close::from_failure(&f));
            }
        }
        if let Some(model) = ctx.cx().routing.model.take()
            && model != setup.model
        {
            ctx.cx()
                .tags
                .insert("model_requested".into(), setup.model.clone());
            setup.set_model(&model);
            ctx.cx().request.model = Some(model);
        }
        Ok(())
    }

    /// The key of the session a setup resumes: only its own user may resume it (as every
    /// instance of a cluster knows), and a caller with an identity only a session the gateway
    /// saw started.
    async fn resumed_key(
        &self,
        ctx: &CallState,
        rt: &crate::runtime::Runtime,
        setup: &setup::Setup,
    ) -> Result<Option<usize>, Close> {
        let Some(pin) = setup.resumes() else {
            return Ok(None);
        };
        if let Some(c) = &self.shared.cluster {
            crate::cluster::pins::fetch(c, &self.shared.pool, std::slice::from_ref(&pin)).await;
        }
        match self.shared.pool.owner_of(&pin) {
            Some(owner) if owner != ctx.owner => Err(Close::new(
                1008,
                "PERMISSION_DENIED: the session to resume belongs to another caller",
            )),
            None if ctx.owner.is_some() => Err(Close::new(
                1008,
                "PERMISSION_DENIED: the session to resume was not started through this gateway, or too long ago",
            )),
            _ => Ok(super::key_choice::creating_key(
                &self.shared.pool,
                rt,
                &[pin],
            )),
        }
    }

    /// Tries keys until one takes the session, as the retry budget allows; the close for the
    /// client when none did. A session on an ephemeral token is its project's: the token is the
    /// upstream credential, and a refusal of it says nothing about the key.
    async fn open_upstream(
        &self,
        ctx: &mut CallState,
        inbound: &Inbound,
        setup: &setup::Setup,
        limits: &crate::config::LiveConfig,
        ephemeral: Option<&tokens::Ephemeral>,
    ) -> Result<
        (
            upstream::UpstreamWs,
            tokio_tungstenite::tungstenite::Message,
        ),
        Close,
    > {
        let rt = ctx.runtime.clone();
        let cfg = &rt.config.pool;
        let resumed = self.resumed_key(ctx, &rt, setup).await?;
        let pinned = ephemeral.map(|e| e.key_index).or(resumed);
        let token = ephemeral.map(|e| e.token.as_str());
        let (mut rotations, mut retries, mut after_transient) = (0u32, 0u32, false);
        let mut last: Option<Close> = None;
        loop {
            let index = match self.choose_key(ctx, &rt, pinned, after_transient) {
                Ok(Choice::Key(i)) => i,
                Ok(Choice::NoneLeft(gate)) => {
                    let f = Failure::no_key(&gate, ctx.model());
                    ctx.error.get_or_insert(f.class);
                    return Err(last.unwrap_or_else(|| Close::from_failure(&f)));
                }
                Err(f) => {
                    ctx.error = Some(f.class);
                    return Err(Close::from_failure(&f));
                }
            };
            self.begin_attempt(ctx, &rt, index);
            let key = &rt.keys[index];
            let started = std::time::Instant::now();
            let opened = upstream::open(
                &rt,
                key,
                token,
                &inbound.path,
                inbound.query.as_deref(),
                setup.text(),
                limits,
            )
            .await;
            let refusal = match opened {
                Ok(up) => {
                    ctx.done.upstream_status = 101;
                    self.judge(ctx, key, &Verdict::Success, started.elapsed());
                    return Ok(up);
                }
                Err(r) => r,
            };
            self.shared.pool.end(&key.id, &rt.live[index]);
            ctx.key_index = None;
            ctx.done.upstream_status = refusal.status;
            let verdict = if refusal.unreachable {
                Verdict::Transient
            } else {
                classify(refusal.status, refusal.error.as_ref(), false)
            };
            if token.is_some() && verdict != Verdict::Transient {
                ctx.error = Some(ErrorClass::Upstream4xx);
                return Err(refusal.close);
            }
            if let Some(e) = &refusal.error {
                ctx.upstream_reason =
                    crate::stats::code_word(e.reason.as_deref().unwrap_or(&e.status));
            }
            self.judge(ctx, key, &verdict, started.elapsed());
            let again = if verdict.rotates() {
                rotations += 1;
                rotations <= cfg.max_rotations
            } else if verdict == Verdict::Transient {
                retries += 1;
                retries <= cfg.max_retries
            } else {
                false
            };
            if !again {
                ctx.error = Some(if verdict == Verdict::Transient {
                    ErrorClass::UpstreamUnreachable
                } else {
                    ErrorClass::Upstream4xx
                });
                return Err(refusal.close);
            }
            self.count_retry(ctx, key, verdict.class());
            after_transient = verdict == Verdict::Transient;
            last = Some(refusal.close);
        }
    }

    /// Closes the client's side as the session ended and fills the call's outcome for its audit row.
    async fn end_live(&self, ws: &mut ClientWs, ctx: &mut CallState, ended: relay::Ended) {
        // A client that does not read gets no more than a moment to take the close.
        let wait = relay::CLOSE_WAIT;
        if let Some(close) = &ended.close_client {
            let _ = tokio::time::timeout(wait, ws.close(Some(close.frame()))).await;
        }
        let _ = tokio::time::timeout(wait, ws.flush()).await;
        if let Some(i) = ctx.key_index {
            let rt = ctx.runtime.clone();
            self.shared.pool.end(&rt.keys[i].id, &rt.live[i]);
        }
        record(&mut ctx.done, &ended);
        if ended.close_client.is_some() && ctx.error.is_none() && !ended.upstream_opened {
            ctx.error = Some(ErrorClass::BadRequest);
        }
        if let Some(cx) = ctx.cx.as_mut() {
            for (k, v) in ended.tags() {
                cx.tags.insert(k, v);
            }
        }
    }
}

/// Counts a session in `live_sessions_active` while it is open (however it ends).
struct OpenSession(prometheus::IntGauge);

impl OpenSession {
    fn new(m: &crate::metrics::Metrics) -> OpenSession {
        m.live_active.inc();
        OpenSession(m.live_active.clone())
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl GatewayProxy {
    fn count_live(&self, ctx: &CallState, ended: &relay::Ended) {
        let m = &self.shared.metrics;
        let result = if !ended.upstream_opened {
            "refused"
        } else if ended.closed_by == "gateway" && ended.close_code != Some(1000)
            || matches!(ended.close_code, Some(c) if c >= 1011 || c == 1006)
        {
            "error"
        } else {
            "ok"
        };
        m.live_sessions.with_label_values(&[result]).inc();
        m.live_seconds
            .with_label_values(&[result])
            .observe(ctx.started.elapsed().as_secs_f64());
        let meter = &ended.meter;
        for (dir, n, bytes) in [
            (
                "client_to_server",
                meter.client_messages,
                meter.client_bytes,
            ),
            (
                "server_to_client",
                meter.server_messages,
                meter.server_bytes,
            ),
        ] {
            m.live_messages.with_label_values(&[dir]).inc_by(n);
            m.live_bytes.with_label_values(&[dir]).inc_by(bytes);
        }
    }
}

fn record(done: &mut CompletedRequest, ended: &relay::Ended) {
    done.request_bytes = ended.meter.client_bytes;
    done.response_bytes = ended.meter.server_bytes;
    let u = &ended.meter.usage;
    if u.total_tokens > 0 || u.prompt_tokens > 0 {
        let usage = Usage {
            prompt_tokens: u.prompt_tokens,
            candidates_tokens: u.response_tokens,
            total_tokens: u.total_tokens.max(u.prompt_tokens + u.response_tokens),
            ..Default::default()
        };
        done.usage = Some(usage);
    }
}

/// `Sec-WebSocket-Accept` for a valid upgrade request; anything else is a 400.
fn handshake_key(
    session: &Session,
    cors: Option<&crate::config::CorsConfig>,
) -> Result<String, Failure> {
    let req = session.req_header();
    let h = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    let has = |n: &str, want: &str| {
        h(n).is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
    };
    let bad = |m: &str| Err(Failure::new(400, ErrorClass::BadRequest, m.to_string()).unread());
    // Browsers send every WebSocket their page opens with its Origin, and no CORS rule stops
    // one: only origins allowed for browser clients (`server.cors`) may open a session.
    if req.headers.contains_key("origin")
        && cors.is_none_or(|c| h("origin").and_then(|o| c.allow(o)).is_none())
    {
        return Err(Failure::new(
            403,
            ErrorClass::CorsOrigin,
            "this origin may not open Live sessions (server.cors.allowed_origins)".to_string(),
        )
        .unread());
    }
    if session.as_http1().is_none() {
        return bad("Live sessions need an HTTP/1.1 WebSocket upgrade");
    }
    if req.method != http::Method::GET
        || !has("upgrade", "websocket")
        || !has("connection", "upgrade")
    {
        return bad("this path takes a WebSocket upgrade (a Live API session)");
    }
    if h("sec-websocket-version") != Some("13") {
        return bad("WebSocket version 13 is expected");
    }
    match h("sec-websocket-key") {
        Some(k) if !k.is_empty() && k.len() <= 64 => {
            Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.trim().as_bytes()))
        }
        _ => bad("the upgrade has no Sec-WebSocket-Key"),
    }
}

/// Takes the client's connection out of Pingora's session, leaving a copy of the request head
/// in its place so the call's end (metrics, audit) reads the same method and path.
async fn take_connection(
    session: &mut Session,
) -> Result<(pingora::protocols::Stream, Option<bytes::BytesMut>), Failure> {
    let head = session.downstream_session.to_h1_raw();
    let mut stand_in = ServerSession::new_http1(Box::new(std::io::Cursor::new(head.to_vec())));
    let failed = || {
        Failure::new(
            500,
            ErrorClass::BadRequest,
            "cannot take over the connection",
        )
    };
    stand_in.read_request().await.map_err(|_| failed())?;
    let taken = std::mem::replace(&mut *session.downstream_session, stand_in);
    match taken {
        ServerSession::H1(h1) => Ok(h1.into_upgrade_parts()),
        _ => Err(failed()),
    }
}

/// Answers `101` and wraps the connection as the server side of a WebSocket.
async fn upgrade(
    mut stream: pingora::protocols::Stream,
    preread: Option<bytes::BytesMut>,
    accept: &str,
    limits: &crate::config::LiveConfig,
) -> Option<ClientWs> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.flush().await.ok()?;
    let config = ws_config(limits);
    let already = preread.as_ref().map_or(0, |p| p.len());
    let stream = capped::Capped::new(stream, limits.max_setup_bytes, already);
    Some(match preread {
        Some(pre) => {
            WebSocketStream::from_partially_read(stream, pre.to_vec(), Role::Server, Some(config))
                .await
        }
        None => WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await,
    })
}

/// Message limits from the config; a small read buffer, since most sessions idle most of the
/// time and each holds two (tungstenite's default is 128 KiB each).
pub(super) fn ws_config(limits: &crate::config::LiveConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes))
}

const READ_BUFFER: usize = 8 * 1024;
