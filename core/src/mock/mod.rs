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
//! Every request is recorded (method, path, query, headers, body hash) for assertions.

mod bodies;

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

pub use bodies::*;

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

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("server", "scaffolding on HTTPServer2")
        .header("x-content-type-options", "nosniff")
        .header("alt-svc", "h3=\":443\"; ma=2592000")
        .body(Full::new(body).map_err(|e: Infallible| match e {}).boxed())
        .expect("response")
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
    full(
        status,
        "application/json; charset=UTF-8",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn google_error(status: u16, v: Value, array: bool) -> Response<Body> {
    if array {
        let text = format!(
            "[{}\n]",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
        full(status, "application/json; charset=UTF-8", text)
    } else {
        json_resp(status, &v)
    }
}

/// A body whose frames come from a channel, so events can be paced.
fn channel_body(
    status: u16,
    content_type: &str,
) -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    Response<Body>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    let resp = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("server", "scaffolding on HTTPServer2")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response");
    (tx, resp)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn serve_conn<S>(st: Arc<State>, conn: ConnInfo, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(st.clone(), conn.clone(), req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn handle(
    state: Arc<State>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let version = format!("{:?}", req.version());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let host = header(&req, "host").unwrap_or("localhost").to_string();
    let chunks: usize = header(&req, "x-mock-chunks")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 10_000);
    let delay = Duration::from_millis(
        header(&req, "x-mock-event-delay-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let pad: usize = header(&req, "x-mock-pad")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0usize)
        .min(64 * 1024);
    let openai = path.contains("/openai/");
    let header_key = header(&req, "x-goog-api-key").map(str::to_string);
    let bearer = header(&req, "authorization").map(str::to_string);
    let query_key = query_param(query.as_deref(), "key").map(str::to_string);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let is_upload_chunk =
        path.starts_with("/upload/") && query_param(query.as_deref(), "upload_id").is_some();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(json_resp(
                400,
                &json!({"error": {"code": 400, "message": "bad body", "status": "INVALID_ARGUMENT"}}),
            ));
        }
    };
    let key = if openai {
        bearer
            .as_deref()
            .and_then(|b| b.strip_prefix("Bearer "))
            .map(str::to_string)
    } else {
        header_key.clone().or(query_key.clone())
    };
    if state.record.load(std::sync::atomic::Ordering::Relaxed) {
        state.records.lock().push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers,
            body_len: body.len(),
            body_sha256: hex::encode(Sha256::digest(&body)),
            key: key.clone(),
            version,
            tls_sni: conn.sni.clone(),
            connection: conn.id,
        });
    }
    if path == "/__mock/health" {
        return Ok(json_resp(200, &json!({"status": "ok"})));
    }

    // Auth, as Google does it.
    if !openai && bearer.is_some() && !is_upload_chunk {
        return Ok(json_resp(401, &err_unauthenticated()));
    }
    let Some(key) = key.or_else(|| is_upload_chunk.then(String::new)) else {
        return Ok(google_error(403, err_unregistered(), openai));
    };
    if !key.is_empty()
        && let Some(resp) = key_fault(&state, &key, openai)
    {
        return Ok(resp);
    }
    let project = state.project_of(&key);

    // Route.
    let rest = path.trim_start_matches('/');
    if let Some(up) = rest.strip_prefix("upload/") {
        return Ok(upload(
            &state,
            &host,
            up,
            query.as_deref(),
            &key,
            &project,
            &body,
            openai,
        )
        .await);
    }
    let (_version, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(oa) = tail.strip_prefix("openai/") {
        return Ok(openai_route(oa, &method, &body, chunks, delay).await);
    }
    if tail == "models" {
        return Ok(json_resp(200, &models_list()));
    }
    if let Some(m) = tail.strip_prefix("models/") {
        let (model, verb) = match m.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => match m.to_ascii_lowercase().find("%3a") {
                Some(i) => (&m[..i], Some(&m[i + 3..])),
                None => (m, None),
            },
        };
        if let Some(resp) = model_fault(model, openai).await {
            return Ok(resp);
        }
        if model == "mock-leaky" {
            return Ok(leaky(&key, verb == Some("streamGenerateContent")).await);
        }
        return Ok(match verb {
            None => json_resp(200, &model_object(model)),
            Some("generateContent") => generate(&state, &project, model, &body),
            Some("streamGenerateContent") => {
                let sse = query_param(query.as_deref(), "alt") == Some("sse");
                stream(model, &body, chunks, delay, sse, pad)
            }
            Some("countTokens") => json_resp(200, &count_tokens(&body)),
            Some("embedContent") => {
                json_resp(200, &json!({"embedding": {"values": embedding(&body, 0)}}))
            }
            Some("batchEmbedContents") => json_resp(200, &batch_embed(&body)),
            Some(other) => google_error(
                400,
                json!({"error": {"code": 400, "message": format!("mock does not implement :{other}"), "status": "INVALID_ARGUMENT"}}),
                false,
            ),
        });
    }
    if let Some(f) = tail.strip_prefix("files") {
        return Ok(resource(
            &state.files,
            "files",
            "file",
            f,
            &method,
            &project,
            &body,
            &state,
        ));
    }
    if let Some(c) = tail.strip_prefix("cachedContents") {
        return Ok(resource(
            &state.caches,
            "cachedContents",
            "cached content",
            c,
            &method,
            &project,
            &body,
            &state,
        ));
    }
    Ok(json_resp(
        404,
        &json!({"error": {"code": 404, "message": format!("mock: no route {path}"), "status": "NOT_FOUND"}}),
    ))
}

fn key_fault(state: &State, key: &str, openai: bool) -> Option<Response<Body>> {
    let k = key;
    if k.starts_with("invalid-") || state.revoked.lock().contains(k) {
        return Some(google_error(400, err_key_invalid(), openai));
    }
    if k.starts_with("leaked-") {
        return Some(google_error(403, err_leaked(), openai));
    }
    if k.starts_with("suspended-") {
        return Some(google_error(403, err_suspended(k), openai));
    }
    if k.starts_with("minute429-") {
        return Some(google_error(
            429,
            err_quota_minute("gemini-2.5-flash", 10, "26s"),
            openai,
        ));
    }
    if k.starts_with("day429-") {
        return Some(google_error(
            429,
            err_quota_day("gemini-2.5-pro", 50, "48s"),
            openai,
        ));
    }
    if k.starts_with("zero-") {
        return Some(google_error(429, err_quota_zero("gemini-2.5-pro"), openai));
    }
    if k.starts_with("bare429-") {
        return Some(google_error(429, err_bare_429(), openai));
    }
    if let Some(rest) = k.strip_prefix("rpm-") {
        let limit: u64 = rest
            .split('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / 60;
        let project = state.project_of(k);
        let mut rpm = state.rpm.lock();
        let used = rpm.entry((project, minute)).or_insert(0);
        *used += 1;
        if *used > limit {
            let left = 60
                - std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
                    % 60;
            return Some(google_error(
                429,
                err_quota_minute("gemini-2.5-flash", limit, &format!("{left}s")),
                openai,
            ));
        }
    }
    None
}

/// An answer that carries `key` in headers and body (an upstream that should never be trusted
/// with what it echoes).
async fn leaky(key: &str, stream: bool) -> Response<Body> {
    let text = format!("the key is {key}; as a consumer: api_key:{key}");
    let mut resp = if stream {
        let event = format!(
            "data: {}\r\n\r\n",
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                   "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}})
        );
        let (tx, resp) = channel_body(200, "text/event-stream");
        tokio::spawn(async move {
            // Small pieces, so the key straddles chunk boundaries.
            for piece in event.as_bytes().chunks(7) {
                if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        resp
    } else {
        json_resp(
            200,
            &json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}]}),
        )
    };
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-mock-key", key.to_string()),
        ("server-timing", format!("upstream;desc=\"{key}\"")),
        (
            "location",
            format!("https://elsewhere.example/next?alt=sse&key={key}"),
        ),
        ("x-goog-upload-status", format!("active {key}")),
    ] {
        if let Ok(v) = value.parse() {
            h.insert(hyper::header::HeaderName::from_static(name), v);
        }
    }
    resp
}

async fn model_fault(model: &str, openai: bool) -> Option<Response<Body>> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model == "mock-overloaded" {
        return Some(google_error(503, err_overloaded(), openai));
    }
    if model == "mock-internal" {
        return Some(google_error(500, err_internal(), openai));
    }
    if model.starts_with("nosuch") {
        return Some(google_error(404, err_model_not_found(model), openai));
    }
    if let Some(ms) = model
        .strip_prefix("mock-slow-")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    None
}

fn generate(state: &State, project: &str, model: &str, body: &[u8]) -> Response<Body> {
    // Like Google: a file or cached content of another project is invisible.
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(cc) = v.get("cachedContent").and_then(|c| c.as_str())
        && state
            .caches
            .lock()
            .get(cc)
            .is_none_or(|(owner, _)| owner != project)
    {
        return json_resp(
            403,
            &json!({"error": {"code": 403, "message": format!("You do not have permission to access the CachedContent {cc} or it may not exist."), "status": "PERMISSION_DENIED"}}),
        );
    }
    let text = String::from_utf8_lossy(body);
    for uri in text.split("\"fileUri\":").skip(1) {
        let uri = uri.trim_start().trim_start_matches('"');
        if let Some(i) = uri.find("files/") {
            let id: String = uri[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            let name = format!("files/{id}");
            if state
                .files
                .lock()
                .get(&name)
                .is_none_or(|(owner, _)| owner != project)
            {
                return json_resp(
                    403,
                    &json!({"error": {"code": 403, "message": format!("You do not have permission to access the File {id} or it may not exist."), "status": "PERMISSION_DENIED"}}),
                );
            }
        }
    }
    json_resp(200, &generate_response(model, body))
}

fn stream(
    model: &str,
    body: &[u8],
    chunks: usize,
    delay: Duration,
    sse: bool,
    pad: usize,
) -> Response<Body> {
    let events = stream_events(model, body, chunks);
    // An SSE comment before each event: bulk for tests of clients that stop reading.
    let padding = if sse && pad > 0 {
        format!(": {}\r\n", "x".repeat(pad))
    } else {
        String::new()
    };
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    let (tx, mut resp) = channel_body(200, ct);
    if sse {
        resp.headers_mut()
            .insert("content-disposition", "attachment".parse().expect("hv"));
    }
    let cut = model == "mock-cut";
    tokio::spawn(async move {
        let n = events.len();
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let text = serde_json::to_string(&ev).unwrap_or_default();
            let frame = if sse {
                format!("{padding}data: {text}\r\n\r\n")
            } else if i == 0 {
                format!("[{}", serde_json::to_string_pretty(&ev).unwrap_or_default())
            } else {
                format!(
                    "\n,\r\n{}",
                    serde_json::to_string_pretty(&ev).unwrap_or_default()
                )
            };
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                return;
            }
            if cut && i == 0 {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock cut",
                    )))
                    .await;
                return;
            }
            if !sse && i + 1 == n {
                let _ = tx.send(Ok(Bytes::from_static(b"\n]"))).await;
            }
        }
    });
    resp
}

async fn openai_route(
    path: &str,
    method: &hyper::Method,
    body: &[u8],
    chunks: usize,
    delay: Duration,
) -> Response<Body> {
    let path = path.trim_end_matches('/');
    if path == "models" {
        return json_resp(200, &openai_models());
    }
    if let Some(id) = path.strip_prefix("models/") {
        return json_resp(
            200,
            &json!({"id": format!("models/{id}"), "object": "model", "owned_by": "google"}),
        );
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("gemini-2.5-flash")
        .to_string();
    if let Some(resp) = model_fault(&model, true).await {
        return resp;
    }
    match (method.as_str(), path) {
        ("POST", "chat/completions") => {
            if req.get("stream").and_then(|s| s.as_bool()) == Some(true) {
                let events = openai_stream_events(&model, &req, chunks);
                let (tx, resp) = channel_body(200, "text/event-stream");
                let midstream = model == "mock-midstream-error";
                tokio::spawn(async move {
                    for (i, ev) in events.iter().enumerate() {
                        if i > 0 && !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        if tx
                            .send(Ok(Bytes::from(format!("data: {}\n\n", ev))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    if !midstream && model != "mock-truncated" {
                        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                    }
                });
                resp
            } else {
                json_resp(200, &openai_completion(&model, &req))
            }
        }
        ("POST", "embeddings") => json_resp(200, &openai_embeddings(&model, &req)),
        _ => google_error(
            404,
            json!({"error": {"code": 404, "message": format!("mock: no openai route {path}"), "status": "NOT_FOUND"}}),
            true,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload(
    state: &State,
    host: &str,
    rest: &str,
    query: Option<&str>,
    key: &str,
    project: &str,
    body: &[u8],
    _openai: bool,
) -> Response<Body> {
    let _ = rest;
    if let Some(id) = query_param(query, "upload_id") {
        let mut uploads = state.uploads.lock();
        let Some((owner, meta, data)) = uploads.get_mut(id) else {
            return json_resp(
                404,
                &json!({"error": {"code": 404, "message": "upload session not found", "status": "NOT_FOUND"}}),
            );
        };
        data.extend_from_slice(body);
        let _ = key;
        let name = format!("files/{id}");
        let mut file = meta.clone();
        file["name"] = json!(name);
        file["sizeBytes"] = json!(data.len().to_string());
        file["sha256Hash"] = json!(hex::encode(Sha256::digest(&*data)));
        file["uri"] = json!(format!(
            "https://generativelanguage.googleapis.com/v1beta/{name}"
        ));
        file["state"] = json!("ACTIVE");
        let owner = owner.clone();
        drop(uploads);
        state.files.lock().insert(name, (owner, file.clone()));
        let mut resp = json_resp(200, &json!({"file": file}));
        resp.headers_mut()
            .insert("x-goog-upload-status", "final".parse().expect("hv"));
        return resp;
    }
    let id = state.next_id();
    let meta: Value = serde_json::from_slice(body)
        .ok()
        .and_then(|v: Value| v.get("file").cloned())
        .unwrap_or(json!({}));
    state
        .uploads
        .lock()
        .insert(id.clone(), (project.to_string(), meta, Vec::new()));
    let mut url =
        format!("http://{host}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable");
    if query_param(query, "key").is_some() {
        // Google echoes a query key into the upload URL; the gateway must strip it.
        url = format!(
            "http://{host}/upload/v1beta/files?key={key}&upload_id={id}&upload_protocol=resumable"
        );
    }
    let mut resp = full(200, "text/plain; charset=utf-8", Bytes::new());
    let h = resp.headers_mut();
    h.insert("x-goog-upload-url", url.parse().expect("hv"));
    h.insert("x-goog-upload-status", "active".parse().expect("hv"));
    h.insert(
        "x-goog-upload-chunk-granularity",
        "8388608".parse().expect("hv"),
    );
    resp
}

#[allow(clippy::too_many_arguments)]
fn resource(
    store: &Mutex<HashMap<String, (String, Value)>>,
    collection: &str,
    noun: &str,
    rest: &str,
    method: &hyper::Method,
    project: &str,
    body: &[u8],
    state: &State,
) -> Response<Body> {
    let id = rest.trim_start_matches('/');
    let denied = |id: &str| {
        json_resp(
            403,
            &json!({"error": {"code": 403, "message": format!("You do not have permission to access the {} {id} or it may not exist.", if noun == "file" { "File" } else { "CachedContent" }), "status": "PERMISSION_DENIED"}}),
        )
    };
    match (method.as_str(), id.is_empty()) {
        ("GET", true) => {
            let list: Vec<Value> = store
                .lock()
                .values()
                .filter(|(p, _)| p == project)
                .map(|(_, v)| v.clone())
                .collect();
            json_resp(200, &json!({ collection: list }))
        }
        ("POST", true) => {
            let name = format!("{collection}/{}", state.next_id());
            let mut v: Value = serde_json::from_slice(body).unwrap_or(json!({}));
            if collection == "files" {
                v = v.get("file").cloned().unwrap_or(v);
            }
            v["name"] = json!(name);
            v["createTime"] = json!("2025-10-24T07:50:00.000000Z");
            store.lock().insert(name, (project.to_string(), v.clone()));
            json_resp(200, &v)
        }
        (m, false) => {
            let name = format!("{collection}/{}", id.split(':').next().unwrap_or(id));
            let mut guard = store.lock();
            match guard.get_mut(&name) {
                Some((owner, _)) if owner != project => denied(id),
                None => denied(id),
                Some((_, v)) => match m {
                    "GET" => json_resp(200, v),
                    "PATCH" => {
                        if let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) {
                            for (k, val) in patch {
                                v[k] = val;
                            }
                        }
                        json_resp(200, v)
                    }
                    "DELETE" => {
                        guard.remove(&name);
                        json_resp(200, &json!({}))
                    }
                    _ => json_resp(
                        405,
                        &json!({"error": {"code": 405, "message": "method", "status": "INVALID_ARGUMENT"}}),
                    ),
                },
            }
        }
        _ => json_resp(
            405,
            &json!({"error": {"code": 405, "message": "method", "status": "INVALID_ARGUMENT"}}),
        ),
    }
}
