//! The Live API: `GET /ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent`
//! upgraded to a WebSocket, as Google runs it. Every server message is JSON in a binary frame.
//!
//! - The first client message must be `setup` (`{"setup": {"model": "models/..."}}`), answered
//!   with `setupComplete`. Not JSON, or not a setup: close 1007.
//! - Keys, after the setup: `invalid-*` (or revoked) → close 1008 `API key not valid`;
//!   `suspended-*` → close 1008 naming the key (as Google's message does); quota keys
//!   (`minute429-*`, `day429-*`, `zero-*`, `bare429-*`) → close 1011 `You exceeded your current
//!   quota`. No key → HTTP 403 before the upgrade.
//! - Models: `mock-overloaded` → close 1013; `mock-live-silent` → never answers the setup;
//!   `mock-live-echo` → every later message sent back as it came (benchmarks);
//!   `mock-live-telltale` → the key it was called with in `setupComplete` and in a turn;
//!   `nosuch-*` → close 1008 not found.
//! - `clientContent` turns: the text echoed in two `serverContent` parts, then `turnComplete` with
//!   `usageMetadata` (TEXT; prompt = words sent, response = words answered). The texts `goaway`
//!   (a `goAway` first), `close-1011` (an error close), `resume` (a `sessionResumptionUpdate`)
//!   and `binary-echo` (the next client message sent back as it came) act on demand.
//! - `POST auth_tokens` makes an ephemeral token of the calling key; a session on
//!   `...Constrained` with `Authorization: Token auth_tokens/...` runs on that key (an unknown
//!   token closes 1008 after the setup).
//! - `realtimeInput` audio chunks come back as `inlineData` audio; `audioStreamEnd` ends the turn
//!   with AUDIO usage.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

use super::*;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

pub(crate) fn is_live(path: &str) -> bool {
    path.starts_with("/ws/")
}

/// Answers the upgrade and runs the session on its own task.
pub(crate) fn accept(
    state: Arc<State>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let query = req.uri().query().map(str::to_string);
    let token = header(&req, "authorization")
        .and_then(|v| v.strip_prefix("Token "))
        .map(str::to_string);
    let key = match token {
        Some(t) => Some(
            state
                .auth_tokens
                .lock()
                .get(&t)
                .cloned()
                .unwrap_or_else(|| "invalid-token".into()),
        ),
        None => header(&req, "x-goog-api-key")
            .map(str::to_string)
            .or_else(|| query_param(query.as_deref(), "key").map(str::to_string)),
    };
    record(&state, &conn, &req, key.clone());
    let Some(ws_key) = header(&req, "sec-websocket-key").map(str::to_string) else {
        let v = json!({"error": {"code": 400, "message": "a WebSocket upgrade is expected here", "status": "INVALID_ARGUMENT"}});
        return json_resp(400, &v);
    };
    let Some(key) = key else {
        return google_error(403, err_unregistered(), false);
    };
    let accept_key =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(ws_key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(&mut req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        session(&state, &key, ws).await;
    });
    Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept_key)
        .body(
            Full::new(Bytes::new())
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("response")
}

fn record(state: &State, conn: &ConnInfo, req: &Request<Incoming>, key: Option<String>) {
    if !state.record.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    state.records.lock().push(Recorded {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: 0,
        body_sha256: String::new(),
        key,
        version: format!("{:?}", req.version()),
        tls_sni: conn.sni.clone(),
        connection: conn.id,
    });
}

/// `POST auth_tokens`: a new ephemeral token of `key`, with the `expireTime` asked for.
pub(crate) fn create_token(state: &State, key: &str, body: &[u8]) -> Value {
    let name = format!(
        "auth_tokens/{}{:016x}",
        state.next_id(),
        rand::random::<u64>()
    );
    state
        .auth_tokens
        .lock()
        .insert(name.clone(), key.to_string());
    let asked: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut token = json!({"name": name});
    if let Some(t) = asked.get("expireTime") {
        token["expireTime"] = t.clone();
    }
    token
}

async fn close(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.chars().take(120).collect::<String>().into(),
    };
    let _ = ws.close(Some(frame)).await;
}

async fn send(ws: &mut Ws, v: Value) -> bool {
    ws.send(Message::Binary(v.to_string().into())).await.is_ok()
}

fn json_of(m: &Message) -> Option<Value> {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
        Message::Binary(b) => serde_json::from_slice(b).ok(),
        _ => None,
    }
}

/// Why a key cannot open a session: the close Google sends.
fn key_close(state: &State, key: &str) -> Option<(u16, String)> {
    if key.starts_with("invalid-") || state.revoked.lock().contains(key) {
        return Some((
            1008,
            "API key not valid. Please pass a valid API key.".into(),
        ));
    }
    if key.starts_with("suspended-") {
        return Some((
            1008,
            format!("Consumer 'api_key:{key}' has been suspended."),
        ));
    }
    if ["minute429-", "day429-", "zero-", "bare429-"]
        .iter()
        .any(|p| key.starts_with(p))
    {
        return Some((
            1011,
            "You exceeded your current quota, please check your plan and billing details.".into(),
        ));
    }
    None
}

async fn session(state: &State, key: &str, mut ws: Ws) {
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let Ok(Some(Ok(first))) = first else { return };
    let Some(setup) = json_of(&first).and_then(|v| v.get("setup").cloned()) else {
        return close(
            &mut ws,
            1007,
            "Invalid JSON payload received. The first message must be setup.",
        )
        .await;
    };
    if let Some((code, reason)) = key_close(state, key) {
        return close(&mut ws, code, &reason).await;
    }
    let model = setup["model"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("models/")
        .to_string();
    if model == "mock-overloaded" {
        return close(&mut ws, 1013, "The service is currently unavailable.").await;
    }
    if model.starts_with("nosuch-") {
        let reason =
            format!("models/{model} is not found, or is not supported for bidiGenerateContent");
        return close(&mut ws, 1008, &reason).await;
    }
    if model == "mock-live-silent" {
        while let Some(Ok(_)) = ws.next().await {}
        return;
    }
    if model == "mock-live-telltale" {
        return telltale(ws, key).await;
    }
    if !send(&mut ws, json!({"setupComplete": {}})).await {
        return;
    }
    if model == "mock-live-echo" {
        return echo(ws).await;
    }
    let mut turn = Turn::default();
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Close(_)) {
            return;
        }
        if !matches!(m, Message::Text(_) | Message::Binary(_)) {
            continue;
        }
        if std::mem::take(&mut turn.echo_next) {
            if ws.send(m).await.is_err() {
                return;
            }
            continue;
        }
        let Some(v) = json_of(&m) else {
            return close(&mut ws, 1007, "Invalid JSON payload received.").await;
        };
        if !reply(state, &mut ws, &v, &mut turn).await {
            return;
        }
    }
}

/// Echoes the key it was called with in `setupComplete` and in a turn (leak tests).
async fn telltale(mut ws: Ws, key: &str) {
    let setup = json!({"setupComplete": {}, "debug": format!("api_key:{key}")});
    let said = json!({"serverContent": {"modelTurn": {"parts": [{"text": format!("key={key}")}]}, "turnComplete": true}});
    if send(&mut ws, setup).await && send(&mut ws, said).await {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                return;
            }
        }
    }
}

/// Every message back as it came (benchmarks).
async fn echo(mut ws: Ws) {
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Close(_))
            || (matches!(m, Message::Text(_) | Message::Binary(_)) && ws.send(m).await.is_err())
        {
            return;
        }
    }
}

/// What a session remembers between messages.
#[derive(Default)]
struct Turn {
    echo_next: bool,
    audio_in: u64,
}

/// Answers one client message; `false` when the session is over.
async fn reply(state: &State, ws: &mut Ws, v: &Value, turn: &mut Turn) -> bool {
    if let Some(turns) = field(v, "clientContent").and_then(|c| c.get("turns")) {
        let text = texts_of(turns);
        match text.as_str() {
            "goaway" => {
                let _ = send(ws, json!({"goAway": {"timeLeft": "1s"}})).await;
            }
            "close-1011" => {
                close(ws, 1011, "Internal error encountered.").await;
                return false;
            }
            "binary-echo" => {
                turn.echo_next = true;
                return true;
            }
            "resume" => {
                let handle = format!("resume-{}", state.next_id());
                let update =
                    json!({"sessionResumptionUpdate": {"newHandle": handle, "resumable": true}});
                let _ = send(ws, update).await;
            }
            _ => {}
        }
        return answer_text(ws, &text).await;
    }
    let Some(input) = field(v, "realtimeInput") else {
        return true;
    };
    if let Some(data) = input["audio"]["data"].as_str() {
        turn.audio_in += data.len() as u64 / 100 + 1;
        let part = json!({"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}});
        if !send(
            ws,
            json!({"serverContent": {"modelTurn": {"parts": [part]}}}),
        )
        .await
        {
            return false;
        }
    }
    if field(input, "audioStreamEnd") == Some(&Value::Bool(true)) {
        let n = std::mem::take(&mut turn.audio_in);
        let usage = usage("AUDIO", n, n);
        return send(
            ws,
            json!({"serverContent": {"turnComplete": true}, "usageMetadata": usage}),
        )
        .await;
    }
    true
}

/// A field by its JSON name or its proto name (Google accepts both; the Python SDK sends
/// `client_content` and `realtime_input`).
fn field<'a>(v: &'a Value, camel: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| {
        let snake: String = camel
            .chars()
            .flat_map(|c| {
                if c.is_ascii_uppercase() {
                    vec!['_', c.to_ascii_lowercase()]
                } else {
                    vec![c]
                }
            })
            .collect();
        v.get(snake.as_str())
    })
}

fn texts_of(turns: &Value) -> String {
    let list = match turns {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    list.iter()
        .flat_map(|t| t["parts"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn answer_text(ws: &mut Ws, text: &str) -> bool {
    let parts = ["Echo: ".to_string(), text.to_string()];
    for p in &parts {
        if !send(
            ws,
            json!({"serverContent": {"modelTurn": {"parts": [{"text": p}]}}}),
        )
        .await
        {
            return false;
        }
    }
    let prompt = text.split_whitespace().count() as u64;
    let usage = usage("TEXT", prompt, prompt + 1);
    send(
        ws,
        json!({"serverContent": {"turnComplete": true}, "usageMetadata": usage}),
    )
    .await
}

fn usage(modality: &str, prompt: u64, response: u64) -> Value {
    json!({
        "promptTokenCount": prompt,
        "responseTokenCount": response,
        "totalTokenCount": prompt + response,
        "promptTokensDetails": [{"modality": modality, "tokenCount": prompt}],
        "responseTokensDetails": [{"modality": modality, "tokenCount": response}],
    })
}
