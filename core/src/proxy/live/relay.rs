//! The session once the upstream took it: every message relayed as it comes, both ways,
//! unchanged (text and binary, ping and pong, close codes and reasons), until a side closes,
//! nothing moves for `live.idle_timeout`, or the session reaches `live.max_session`. The
//! server's `usageMetadata` is summed as it passes.
//!
//! A side that stops reading cannot hold the session: every send must end within
//! `server.clients.write_timeout` and before the session's end, else the gateway ends it.

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::upstream::UpstreamWs;
use super::{ClientWs, Close};
use crate::proxy::call::CallState;

/// Tokens the server reported over the session.
#[derive(Debug, Default)]
pub struct LiveUsage {
    pub prompt_tokens: u64,
    pub response_tokens: u64,
    pub total_tokens: u64,
    /// `{prompt|response}_{modality}` → tokens.
    pub by_modality: BTreeMap<String, u64>,
}

/// What passed each way.
#[derive(Debug, Default)]
pub struct Meter {
    pub client_messages: u64,
    pub client_bytes: u64,
    pub server_messages: u64,
    pub server_bytes: u64,
    pub usage: LiveUsage,
}

/// How a session ended.
#[derive(Debug, Default)]
pub struct Ended {
    /// The close the client still has to be sent (the gateway's own, or none when a side's
    /// close was relayed).
    pub close_client: Option<Close>,
    pub upstream_opened: bool,
    /// `client`, `server` or `gateway`.
    pub closed_by: &'static str,
    pub close_code: Option<u16>,
    pub meter: Meter,
}

impl Ended {
    pub fn refused(close: Close) -> Ended {
        Ended {
            close_code: Some(close.code),
            close_client: (close.code != 1000 || !close.reason.is_empty()).then_some(close),
            closed_by: "gateway",
            ..Default::default()
        }
    }

    fn gateway_closes(&mut self, close: Close) {
        self.closed_by = "gateway";
        self.close_code = Some(close.code);
        self.close_client = Some(close);
    }

    /// The session's figures as audit tags.
    pub fn tags(&self) -> Vec<(String, String)> {
        let m = &self.meter;
        let mut t = vec![
            ("live_closed_by".to_string(), self.closed_by.to_string()),
            ("live_messages_in".into(), m.client_messages.to_string()),
            ("live_messages_out".into(), m.server_messages.to_string()),
        ];
        if let Some(c) = self.close_code {
            t.push(("live_close_code".into(), c.to_string()));
        }
        for (k, v) in &m.usage.by_modality {
            t.push((format!("live_tokens_{k}"), v.to_string()));
        }
        t
    }
}

impl Meter {
    fn client(&mut self, m: &Message) {
        self.client_messages += 1;
        self.client_bytes += m.len() as u64;
    }

    /// Counts a server message; the resumption handle it issues, if any.
    fn server(&mut self, m: &Message) -> Option<String> {
        self.server_messages += 1;
        self.server_bytes += m.len() as u64;
        let bytes: &[u8] = match m {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            _ => return None,
        };
        if memchr::memmem::find(bytes, b"usageMetadata").is_some() {
            self.add_usage(bytes);
        }
        if memchr::memmem::find(bytes, b"sessionResumptionUpdate").is_some() {
            let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
            let handle = v["sessionResumptionUpdate"]["newHandle"].as_str()?;
            return super::setup::resumption_pin(handle);
        }
        None
    }

    fn add_usage(&mut self, bytes: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return;
        };
        let u = &v["usageMetadata"];
        let n = |f: &str| u[f].as_u64().unwrap_or(0);
        self.usage.prompt_tokens += n("promptTokenCount");
        self.usage.response_tokens += n("responseTokenCount");
        self.usage.total_tokens += n("totalTokenCount");
        for (side, field) in [
            ("prompt", "promptTokensDetails"),
            ("response", "responseTokensDetails"),
        ] {
            for d in u[field].as_array().into_iter().flatten() {
                let modality = d["modality"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_ascii_lowercase();
                if modality.len() <= 16
                    && modality
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    *self
                        .usage
                        .by_modality
                        .entry(format!("{side}_{modality}"))
                        .or_default() += d["tokenCount"].as_u64().unwrap_or(0);
                }
            }
        }
    }
}

/// What the relay does besides relaying: pin the resumption handles the server issues, and
/// keep a tenant's messages to its own resources.
pub struct Hooks<'a> {
    pub pin: &'a (dyn Fn(&str) + Sync),
    pub owned: Option<&'a super::owned::OwnedOnly>,
}

/// Relays until the session ends; `first` is the upstream's first message (`setupComplete`).
pub async fn run(
    client: &mut ClientWs,
    mut up: UpstreamWs,
    first: Message,
    ctx: &mut CallState,
    limits: &crate::config::LiveConfig,
    mut closing: tokio::sync::watch::Receiver<bool>,
    hooks: &Hooks<'_>,
) -> Ended {
    let pin = hooks.pin;
    let mut ended = Ended {
        upstream_opened: true,
        ..Default::default()
    };
    let scrubber = ctx.runtime.scrubber.clone();
    let started = Instant::now();
    ctx.done.time_to_first_byte = Some(ctx.started.elapsed());
    if let Some(handle) = ended.meter.server(&first) {
        pin(&handle);
    }
    let session_end = tokio::time::Instant::now() + limits.max_session.0;
    let write_timeout = ctx.runtime.config.server.clients.write_timeout.0;
    let sends = Sends {
        until: move || (tokio::time::Instant::now() + write_timeout).min(session_end),
    };
    if sends.send(client, masked(&scrubber, first)).await.is_err() {
        ended.closed_by = "client";
        let _ = sends.send(&mut up, Message::Close(None)).await;
        return ended;
    }
    let end_of_session = tokio::time::sleep_until(session_end);
    tokio::pin!(end_of_session);
    let mut last = Instant::now();
    loop {
        let idle = tokio::time::sleep_until((last + limits.idle_timeout.0).into());
        let go_on = tokio::select! {
            m = client.next() => {
                last = Instant::now();
                from_client(m, &mut up, &mut ended, limits, &sends, hooks).await
            }
            m = up.next() => {
                last = Instant::now();
                from_server(m, client, &mut ended, &scrubber, pin, &sends).await
            }
            _ = idle => {
                ended.gateway_closes(Close::new(1000, format!("idle for {:?}", limits.idle_timeout.0)));
                false
            }
            _ = shutting_down(&mut closing) => {
                ended.gateway_closes(Close::new(1001, "the gateway is shutting down"));
                false
            }
            _ = &mut end_of_session => {
                let why = format!("the session reached its longest time ({:?})", limits.max_session.0);
                ended.gateway_closes(Close::new(1000, why));
                false
            }
        };
        if !go_on {
            break;
        }
    }
    if ended.closed_by != "server" {
        let _ = tokio::time::timeout(CLOSE_WAIT, up.close(None)).await;
    }
    ctx.done.upstream_latency = Some(started.elapsed());
    ended
}

/// Longest wait for a close frame to go out to a side that may not read.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends bounded in time: `until` gives the latest instant the send may end at.
struct Sends<F: Fn() -> tokio::time::Instant> {
    until: F,
}

impl<F: Fn() -> tokio::time::Instant> Sends<F> {
    /// `Err` when the peer did not take the message in time, or is gone.
    async fn send<S>(&self, sink: &mut S, msg: Message) -> Result<(), ()>
    where
        S: futures_util::Sink<Message, Error = WsError> + Unpin,
    {
        match tokio::time::timeout_at((self.until)(), sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

/// Resolves once the gateway closes its sessions for a shutdown (never, if it cannot tell).
async fn shutting_down(closing: &mut tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type Received = Option<Result<Message, WsError>>;

/// One client message relayed; `false` when the session ends with it.
async fn from_client<F: Fn() -> tokio::time::Instant>(
    m: Received,
    up: &mut UpstreamWs,
    ended: &mut Ended,
    limits: &crate::config::LiveConfig,
    sends: &Sends<F>,
    hooks: &Hooks<'_>,
) -> bool {
    match m {
        Some(Ok(Message::Close(frame))) => {
            ended.closed_by = "client";
            ended.close_code = frame.as_ref().map(|f| u16::from(f.code));
            let _ = sends.send(up, Message::Close(frame)).await;
            false
        }
        Some(Ok(msg)) => {
            ended.meter.client(&msg);
            if let Err(close) = allowed(&msg, hooks).await {
                ended.gateway_closes(close);
                return false;
            }
            if sends.send(up, msg).await.is_err() {
                ended.closed_by = "server";
                ended.close_code = Some(1011);
                ended.close_client = Some(Close::new(1011, "UNAVAILABLE: the upstream went away"));
                return false;
            }
            true
        }
        Some(Err(WsError::Capacity(_))) => {
            let why = format!("a message is over {} bytes", limits.max_message_bytes);
            ended.gateway_closes(Close::new(1009, why));
            false
        }
        _ => {
            ended.closed_by = "client";
            ended.close_code = Some(1006);
            false
        }
    }
}

/// A client message the session may carry: not a second setup, no other tenant's resource.
async fn allowed(msg: &Message, hooks: &Hooks<'_>) -> Result<(), super::Close> {
    let bytes: &[u8] = match msg {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => return Ok(()),
    };
    if super::owned::is_setup(bytes) {
        return Err(super::Close::new(
            1008,
            "INVALID_ARGUMENT: a session takes one setup, as its first message",
        ));
    }
    match hooks.owned {
        Some(o) => o.check(bytes).await,
        None => Ok(()),
    }
}

/// One server message relayed (masked of any pooled key); `false` when the session ends with it.
async fn from_server<F: Fn() -> tokio::time::Instant>(
    m: Received,
    client: &mut ClientWs,
    ended: &mut Ended,
    scrubber: &crate::scrub::Scrubber,
    pin: &(dyn Fn(&str) + Sync),
    sends: &Sends<F>,
) -> bool {
    match m {
        Some(Ok(Message::Close(frame))) => {
            ended.closed_by = "server";
            let frame = frame.map(|mut f| {
                let mut r = f.reason.as_bytes().to_vec();
                if scrubber.mask(&mut r) {
                    f.reason = String::from_utf8_lossy(&r).into_owned().into();
                }
                f
            });
            ended.close_code = frame.as_ref().map(|f| u16::from(f.code));
            let _ = sends.send(client, Message::Close(frame)).await;
            false
        }
        Some(Ok(msg)) => {
            if let Some(handle) = ended.meter.server(&msg) {
                pin(&handle);
            }
            if sends.send(client, masked(scrubber, msg)).await.is_err() {
                // Gone, or not reading: the session ends here (no close frame could reach it).
                ended.closed_by = "client";
                ended.close_code = Some(1006);
                return false;
            }
            true
        }
        _ => {
            ended.closed_by = "server";
            ended.close_code = Some(1011);
            ended.close_client = Some(Close::new(
                1011,
                "UNAVAILABLE: the upstream connection ended",
            ));
            false
        }
    }
}

/// A server message with any pooled key masked (an upstream may echo the key it was called with).
fn masked(scrubber: &crate::scrub::Scrubber, msg: Message) -> Message {
    match msg {
        Message::Text(t) if scrubber.finds(t.as_bytes()) => {
            let mut b = t.as_bytes().to_vec();
            scrubber.mask(&mut b);
            Message::text(String::from_utf8_lossy(&b).into_owned())
        }
        Message::Binary(b) if scrubber.finds(&b) => {
            let mut v = b.to_vec();
            scrubber.mask(&mut v);
            Message::binary(v)
        }
        Message::Ping(b) if scrubber.finds(&b) => {
            let mut v = b.to_vec();
            scrubber.mask(&mut v);
            Message::Ping(v.into())
        }
        Message::Pong(b) if scrubber.finds(&b) => {
            let mut v = b.to_vec();
            scrubber.mask(&mut v);
            Message::Pong(v.into())
        }
        other => other,
    }
}
