//! A raw WebSocket client for Live sessions through the gateway, shared by the Live tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};

use super::{Harness, json_of};

pub const LIVE: &str =
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub async fn connect(h: &Harness, credential: Option<&str>) -> Ws {
    match credential {
        Some(c) => connect_to(h, LIVE, &[("x-goog-api-key", c)]).await,
        None => connect_to(h, LIVE, &[]).await,
    }
}

/// A session on `path` with these upgrade headers.
pub async fn connect_to(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Ws {
    let addr = h.gateway.proxy_addr;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade")
        .0
}

pub fn setup(model: &str) -> Message {
    Message::text(json!({"setup": {"model": format!("models/{model}"), "generationConfig": {"responseModalities": ["TEXT"]}}}).to_string())
}

pub fn turn(text: &str) -> Message {
    Message::text(
        json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": true}})
            .to_string(),
    )
}

/// The next message as JSON, or the close frame.
pub async fn next(ws: &mut Ws) -> Result<Value, Option<CloseFrame>> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer in time");
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Binary(b))) => return Ok(serde_json::from_slice(&b).unwrap()),
            Some(Ok(Message::Close(f))) => return Err(f),
            Some(Ok(_)) => continue,
            _ => return Err(None),
        }
    }
}

/// The texts of one model turn, up to its `turnComplete`.
pub async fn answer(ws: &mut Ws) -> (String, Value) {
    let mut text = String::new();
    loop {
        let v = next(ws).await.expect("a message, not a close");
        for p in v["serverContent"]["modelTurn"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            text += p["text"].as_str().unwrap_or("");
        }
        if v["serverContent"]["turnComplete"] == true {
            return (text, v["usageMetadata"].clone());
        }
    }
}

pub fn live_calls(h: &Harness) -> Vec<super::Recorded> {
    h.mock
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/ws/"))
        .collect()
}

pub async fn sql(h: &Harness, admin: &str, q: &str) -> Value {
    let r = h
        .client
        .post(h.admin("/api/sql"))
        .bearer_auth(admin)
        .json(&json!({ "sql": q }))
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(r).await;
    assert_eq!(status, 200, "{v}");
    v
}

pub async fn refused_with(h: &Harness, credential: Option<&str>, model: &str) -> CloseFrame {
    let mut ws = connect(h, credential).await;
    ws.send(setup(model)).await.unwrap();
    next(&mut ws)
        .await
        .expect_err("refused")
        .expect("with a frame")
}

/// `POST /v1alpha/auth_tokens` as `bearer`: the status and the answer.
pub async fn create_ephemeral_token(h: &Harness, bearer: &str, body: Value) -> (u16, Value) {
    let bearer = format!("Bearer {bearer}");
    h.call(
        "POST",
        "/v1alpha/auth_tokens",
        ("authorization", &bearer),
        Some(body.to_string()),
    )
    .await
}

/// An RFC 3339 time `d` from now, as an ephemeral token's `expireTime` names it.
pub fn expire_time_in(d: Duration) -> String {
    gemini_proxy_core::util::clock::format_rfc3339(std::time::SystemTime::now() + d)
}
