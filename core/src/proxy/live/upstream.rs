//! The upstream side of a session: the WebSocket to Google opened with one pooled key (the
//! client's credential never goes there), the setup sent, and the first answer read. A refusal
//! (an HTTP answer to the upgrade, or a close before `setupComplete`) comes back as the HTTP
//! answer it stands for, so the key is judged and another tried as for any call.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use gemini_proxy_sdk::UpstreamError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::close::{self, Close};
use crate::runtime::{Runtime, UpstreamKey};

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type UpstreamWs = WebSocketStream<Box<dyn Io>>;

/// Why the upstream did not take the session on this key.
pub struct Refusal {
    /// The HTTP answer it stands for (502 when nothing answered).
    pub status: u16,
    pub error: Option<UpstreamError>,
    /// What the client is told if no other key is tried (the reason masked of any key).
    pub close: Close,
    /// Nothing answered (connect failed or timed out): safe to try again.
    pub unreachable: bool,
}

impl Refusal {
    fn unreachable(why: &str) -> Refusal {
        Refusal {
            status: 502,
            error: None,
            close: Close::new(1011, format!("UNAVAILABLE: the upstream {why}")),
            unreachable: true,
        }
    }

    fn closed(rt: &Runtime, code: u16, reason: &str) -> Refusal {
        let mut bytes = reason.as_bytes().to_vec();
        rt.scrubber.mask(&mut bytes);
        let reason = String::from_utf8_lossy(&bytes).into_owned();
        let (status, error) = close::as_http(code, &reason);
        Refusal {
            status,
            error,
            close: Close::new(code, reason),
            unreachable: false,
        }
    }
}

/// The header the upstream upgrade carries: the pooled key, or an ephemeral token, which is its
/// own credential (the key only says whose project it is).
fn credential(key: &UpstreamKey, token: Option<&str>) -> Option<(&'static str, http::HeaderValue)> {
    let Some(t) = token else {
        return Some(("x-goog-api-key", key.goog_api_key.clone()));
    };
    let value = http::HeaderValue::try_from(format!("Token {t}")).ok()?;
    Some(("authorization", value))
}

/// Opens the session on `key`: connected, upgraded, setup sent, `setupComplete` (or whatever
/// the upstream said first) read, all within `live.connect_timeout`.
pub async fn open(
    rt: &Runtime,
    key: &UpstreamKey,
    token: Option<&str>,
    path: &str,
    query: Option<&str>,
    setup: String,
    limits: &crate::config::LiveConfig,
) -> Result<(UpstreamWs, Message), Refusal> {
    let wait = limits.connect_timeout.0;
    let opening = open_within(rt, key, token, path, query, setup, limits);
    match tokio::time::timeout(wait, opening).await {
        Ok(r) => r,
        Err(_) => Err(Refusal {
            unreachable: false,
            ..Refusal::unreachable(&format!("did not answer the setup within {wait:?}"))
        }),
    }
}

async fn open_within(
    rt: &Runtime,
    key: &UpstreamKey,
    token: Option<&str>,
    path: &str,
    query: Option<&str>,
    setup: String,
    limits: &crate::config::LiveConfig,
) -> Result<(UpstreamWs, Message), Refusal> {
    let base: http::Uri = rt
        .config
        .gemini
        .base_url
        .parse()
        .map_err(|_| Refusal::unreachable("address is not a URL"))?;
    let tls = base.scheme_str() == Some("https");
    let host = base.host().unwrap_or("localhost").to_string();
    let port = base.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let scheme = if tls { "wss" } else { "ws" };
    let url = match query {
        Some(q) => format!("{scheme}://{host}:{port}{path}?{q}"),
        None => format!("{scheme}://{host}:{port}{path}"),
    };
    let mut req = url
        .into_client_request()
        .map_err(|_| Refusal::unreachable("address is not a WebSocket URL"))?;
    let (name, value) = credential(key, token).ok_or_else(|| Refusal {
        status: 400,
        error: None,
        close: Close::new(
            1008,
            "INVALID_ARGUMENT: the token is not a valid credential",
        ),
        unreachable: false,
    })?;
    req.headers_mut().insert(name, value);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|_| Refusal::unreachable("could not be reached"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if tls {
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| Refusal::unreachable("host is not a valid TLS name"))?;
        let connector = tokio_rustls::TlsConnector::from(
            tls_config(rt.config.gemini.ca_file.as_deref()).map_err(Refusal::unreachable)?,
        );
        Box::new(
            connector
                .connect(name, tcp)
                .await
                .map_err(|_| Refusal::unreachable("TLS handshake failed"))?,
        )
    } else {
        Box::new(tcp)
    };
    let config = super::ws_config(limits);
    let (mut ws, _) =
        match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok(ok) => ok,
            Err(WsError::Http(resp)) => {
                let status = resp.status().as_u16();
                let mut body = resp.body().clone().unwrap_or_default();
                rt.scrubber.mask(&mut body);
                let error = UpstreamError::parse(&body);
                let message = error
                    .as_ref()
                    .map_or("", |e| e.message.as_str())
                    .to_string();
                return Err(Refusal {
                    status,
                    error,
                    close: Close::from_status(status, &message),
                    unreachable: false,
                });
            }
            Err(_) => return Err(Refusal::unreachable("refused the WebSocket upgrade")),
        };
    ws.send(Message::text(setup))
        .await
        .map_err(|_| Refusal::unreachable("closed before the setup"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                return Err(Refusal::closed(rt, code, &reason));
            }
            Some(Ok(first)) => return Ok((ws, first)),
            _ => return Err(Refusal::closed(rt, 1006, "")),
        }
    }
}

/// The trust for `wss://` upstreams: the system's roots and `gemini.ca_file`; built once per
/// CA file.
fn tls_config(
    ca_file: Option<&str>,
) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, &'static str> {
    static BUILT: std::sync::OnceLock<
        parking_lot::Mutex<
            std::collections::HashMap<Option<String>, Arc<tokio_rustls::rustls::ClientConfig>>,
        >,
    > = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let name = ca_file.map(str::to_string);
    if let Some(c) = built.lock().get(&name) {
        return Ok(c.clone());
    }
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|_| "CA file cannot be read")?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| "TLS setup failed")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    built.lock().insert(name, cfg.clone());
    Ok(cfg)
}
