//! Live API sessions through the gateway, with a raw WebSocket client against the mock's Live
//! endpoint: the key swapped, messages relayed both ways, failover before `setupComplete`, and
//! every refusal a close with a code and reason (or a 400 before the upgrade).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gemini_proxy_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};

const LIVE: &str = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(h: &Harness, credential: Option<&str>) -> Ws {
    let addr = h.gateway.proxy_addr;
    let mut req = format!("ws://{addr}{LIVE}").into_client_request().unwrap();
    if let Some(c) = credential {
        req.headers_mut()
            .insert("x-goog-api-key", c.parse().unwrap());
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade")
        .0
}

fn setup(model: &str) -> Message {
    Message::text(json!({"setup": {"model": format!("models/{model}"), "generationConfig": {"responseModalities": ["TEXT"]}}}).to_string())
}

fn turn(text: &str) -> Message {
    Message::text(
        json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": true}})
            .to_string(),
    )
}

/// The next message as JSON, or the close frame.
async fn next(ws: &mut Ws) -> Result<Value, Option<CloseFrame>> {
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
async fn answer(ws: &mut Ws) -> (String, Value) {
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

fn live_calls(h: &Harness) -> Vec<gemini_proxy_core::mock::Recorded> {
    h.mock
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/ws/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_session_is_relayed_with_the_pooled_key() {
    let h = Harness::start(&[("a", "valid-live-a", 1)]);
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    ws.send(turn("hello there")).await.unwrap();
    let (text, usage) = answer(&mut ws).await;
    assert_eq!(text, "Echo: hello there");
    assert_eq!(usage["promptTokenCount"], 2);
    ws.send(turn("again")).await.unwrap();
    assert_eq!(answer(&mut ws).await.0, "Echo: again");
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let calls = live_calls(&h);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].key.as_deref(), Some("valid-live-a"));
    assert!(
        calls[0].headers.iter().all(|(_, v)| !v.contains(CLIENT.1)),
        "{:?}",
        calls[0].headers
    );
    assert_eq!(calls[0].path, LIVE);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_refused_before_setup_complete_is_replaced_unseen() {
    let h = Harness::start(&[
        ("dead", "invalid-live-1", 100),
        ("quota", "minute429-live-1", 100),
        ("good", "valid-live-g", 1),
    ]);
    for _ in 0..4 {
        let mut ws = connect(&h, Some(CLIENT.1)).await;
        ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
        assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
        ws.send(turn("x")).await.unwrap();
        assert_eq!(answer(&mut ws).await.0, "Echo: x");
        ws.close(None).await.unwrap();
    }
    let calls = live_calls(&h);
    let with = |k: &str| calls.iter().filter(|r| r.key.as_deref() == Some(k)).count();
    // The invalid key is dead after its first refusal; the quota one rests.
    assert!(with("invalid-live-1") <= 1, "{calls:?}");
    assert!(with("minute429-live-1") <= 1, "{calls:?}");
    assert_eq!(with("valid-live-g"), 4);
    let keys = h.admin_json("/api/keys").await;
    let dead = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "dead")
        .unwrap();
    assert!(
        with("invalid-live-1") == 0 || !dead["dead_reason"].is_null(),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_closes_with_reasons_and_reach_no_upstream() {
    let h = Harness::start_with(
        &[("s", "suspended-live-key-0123456789", 1)],
        "live: { max_setup_bytes: 1024 }\n",
        |_| {},
    );
    // A plain GET on the Live path: a Google-style 400 before any upgrade.
    let r = h
        .client
        .get(h.url(LIVE))
        .header(CLIENT.0, CLIENT.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT", "{body}");
    // Not a setup, a malformed model, a setup over the limit.
    for (first, code) in [
        (Message::text("{\"clientContent\":{}}"), 1007),
        (Message::text("not json"), 1007),
        (setup("../files"), 1007),
        (
            Message::text(
                json!({"setup": {"model": "models/m", "systemInstruction": "x".repeat(2000)}})
                    .to_string(),
            ),
            1009,
        ),
    ] {
        let mut ws = connect(&h, Some(CLIENT.1)).await;
        ws.send(first).await.unwrap();
        let close = next(&mut ws)
            .await
            .expect_err("closed")
            .expect("with a frame");
        assert_eq!(u16::from(close.code), code, "{close:?}");
        assert!(!close.reason.is_empty());
    }
    assert!(live_calls(&h).is_empty(), "nothing went upstream");
    // The upstream's close names the key it was called with: the client never sees it.
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    let close = next(&mut ws)
        .await
        .expect_err("closed")
        .expect("with a frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(
        !close.reason.contains("suspended-live-key-0123456789"),
        "{close:?}"
    );
    assert!(close.reason.contains("suspended"), "{close:?}");
}
