//! A mock Gemini API on loopback, for the demo, the tests and the benchmarks. No network, no key.
//!
//! Behaviour is chosen by the key and the model a call uses :
//! - keys: `invalid-*` → 400 `API_KEY_INVALID`; `leaked-*` → 403 leaked; `suspended-*` → 403
//!   `CONSUMER_SUSPENDED`; `minute429-*` / `day429-*` → 429 with `QuotaFailure` + `RetryInfo`;
//!   `zero-*` → 429 `limit: 0`; `bare429-*` → 429 without details; `rpm-N-*` → a real limit of N
//!   calls a minute; anything else is valid. No key → 403; `Bearer` on a native path → 401.
//! - models: `mock-overloaded` → 503; `mock-internal` → 500; `mock-slow-N` → answers after N ms;
//!   `mock-midstream-error` → two chunks then an error event; `mock-truncated` → a stream that
//!   ends without `finishReason`; `mock-cut` → the connection drops mid-stream; `mock-empty`,
//!   `mock-blocked`, `mock-fc` → Google's special answers (no candidates, a blocked prompt, a function call); unknown `nosuch-*` models → 404.
//! - `mock-leaky` answers with the key it was called with everywhere an upstream could put it:
//!   in response headers, a `Location` with `?key=`, and the body (a stream cuts it across
//!   chunks). The gateway must mask all of it.
//! - headers: `x-mock-chunks: N` (stream length), `x-mock-event-delay-ms: N` (pause between
//!   stream events), `x-mock-pad: N` (an SSE comment of N bytes before each event).
//!
//! - the Live API (`/ws/...BidiGenerateContent`): a WebSocket session; see the `live` module.
//!
//! Every request is recorded (method, path, query, headers, body hash) for assertions.

mod answers;
mod bodies;
mod handle;
mod live;
mod resources;
mod respond;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use answers::*;
pub use bodies::*;
use handle::*;
use resources::*;
use respond::*;

type Body = BoxBody<Bytes, std::io::Error>;

/// One request as the mock received it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_sha256: String,
    /// The key the mock authenticated the call with (header, query or bearer).
    pub key: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The server name the client sent in its TLS handshake (TLS mocks only).
    pub tls_sni: Option<String>,
    /// Which accepted connection carried the call (1, 2, ...): shows connection reuse.
    pub connection: u64,
}

/// Certificate and key (PEM) for a mock serving HTTPS, offering h2 and http/1.1 by ALPN.
#[derive(Clone)]
pub struct MockTls {
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// How to start a mock.
#[derive(Clone)]
pub struct MockOptions {
    pub addr: SocketAddr,
    pub threads: usize,
    pub tls: Option<MockTls>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            threads: 1,
            tls: None,
        }
    }
}

/// What the mock knows about the connection a request came on.
#[derive(Clone, Default)]
struct ConnInfo {
    id: u64,
    sni: Option<String>,
}

fn tls_acceptor(tls: &MockTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let certs =
        rustls_pemfile::certs(&mut tls.cert_chain_pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut tls.key_pem.as_slice())?
        .ok_or_else(|| bad("no private key in the PEM".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type UploadSession = (String, Value, Vec<u8>);

#[derive(Default)]
struct State {
    records: Mutex<Vec<Recorded>>,
    files: Mutex<HashMap<String, (String, Value)>>,
    caches: Mutex<HashMap<String, (String, Value)>>,
    /// upload id → (owner project, file metadata, bytes so far)
    uploads: Mutex<HashMap<String, UploadSession>>,
    rpm: Mutex<HashMap<(String, u64), u64>>,
    projects: Mutex<HashMap<String, String>>,
    /// Keys that answer 400 `API_KEY_INVALID` until restored.
    revoked: Mutex<std::collections::HashSet<String>>,
    /// Ephemeral token name → the key that created it.
    auth_tokens: Mutex<HashMap<String, String>>,
    seq: std::sync::atomic::AtomicU64,
    connections: std::sync::atomic::AtomicU64,
    record: std::sync::atomic::AtomicBool,
}

impl State {
    fn project_of(&self, key: &str) -> String {
        self.projects
            .lock()
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string())
    }
    fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("m{n:06x}{:04x}", rand::random::<u16>())
    }
}

/// A running mock. Dropping it stops the server.
pub struct MockGemini {
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockGemini {
    /// Starts on `127.0.0.1:0` (an ephemeral port) with its own runtime thread.
    pub fn start() -> std::io::Result<MockGemini> {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), 1)
    }

    /// Starts on `addr` with `threads` worker threads.
    pub fn start_on(addr: SocketAddr, threads: usize) -> std::io::Result<MockGemini> {
        Self::start_with(MockOptions {
            addr,
            threads,
            tls: None,
        })
    }

    /// Starts as `opts` says (HTTPS when `opts.tls` is set).
    pub fn start_with(opts: MockOptions) -> std::io::Result<MockGemini> {
        let acceptor = opts.tls.as_ref().map(tls_acceptor).transpose()?;
        let std_listener = std::net::TcpListener::bind(opts.addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State::default());
        state
            .record
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let threads = opts.threads;
        let thread = std::thread::Builder::new().name("mock-gemini".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()
                .expect("mock runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        acc = listener.accept() => {
                            let Ok((stream, _)) = acc else { continue };
                            let _ = stream.set_nodelay(true);
                            let st = st.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let id = st.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                                match acceptor {
                                    None => serve_conn(st, ConnInfo { id, sni: None }, stream).await,
                                    Some(acceptor) => {
                                        // A failed handshake (the client refused our certificate) just ends the connection.
                                        let Ok(tls) = acceptor.accept(stream).await else { return };
                                        let sni = tls.get_ref().1.server_name().map(str::to_string);
                                        serve_conn(st, ConnInfo { id, sni }, tls).await
                                    }
                                }
                            });
                        }
                    }
                }
            });
        })?;
        Ok(MockGemini {
            addr,
            tls: opts.tls.is_some(),
            state,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` for a TLS mock, the name its
    /// certificate is expected to carry).
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// How many connections the mock has accepted.
    pub fn connections(&self) -> u64 {
        self.state
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.records.lock().clone()
    }

    pub fn clear(&self) {
        self.state.records.lock().clear();
    }

    /// Stops recording (benchmarks).
    pub fn set_recording(&self, on: bool) {
        self.state
            .record
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes `key` answer like a revoked key (400 `API_KEY_INVALID`) until [`restore`](Self::restore).
    pub fn revoke(&self, key: &str) {
        self.state.revoked.lock().insert(key.to_string());
    }

    /// Undoes [`revoke`](Self::revoke).
    pub fn restore(&self, key: &str) {
        self.state.revoked.lock().remove(key);
    }

    /// Declares that `key` belongs to `project` (quota and resources are shared per project).
    pub fn set_project(&self, key: &str, project: &str) {
        self.state
            .projects
            .lock()
            .insert(key.to_string(), project.to_string());
    }
}

impl Drop for MockGemini {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_conn<S>(st: Arc<State>, conn: ConnInfo, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(st.clone(), conn.clone(), req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
}
