//! Live sessions against clients that misbehave on purpose: one that stops reading, a page of
//! another site, a second setup, another tenant's resources, a resumption handle the gateway
//! never issued, ephemeral tokens that would outlive or outreach their maker.

use std::time::Duration;

use futures_util::SinkExt;
use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::live::*;
use gemini_proxy_tests::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "Live-abuse-JWT-secret-with-enough-entropy-0123456789!";

fn user(sub: &str, models: &[&str], ttl: Duration) -> String {
    let claims = new_claims(
        sub,
        Role::User,
        ttl,
        models.iter().map(|m| m.to_string()).collect(),
    );
    sign(SECRET, "HS256", None, &claims).unwrap()
}

fn with_auth(extra: &str) -> Harness {
    let text = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\", leeway: 0s }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n{extra}"
    );
    Harness::start_with(&[("a", "valid-live-a", 1)], &text, |_| {})
}

async fn live_open(h: &Harness) -> i64 {
    let m = h.admin_text("/metrics").await;
    m.lines()
        .find(|l| l.starts_with("live_sessions_active "))
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_loses_its_session_within_the_write_timeout() {
    let h = Harness::start_with(
        &[("a", "valid-live-a", 1)],
        "live: { idle_timeout: 60s, max_session: 10m }\n",
        |t| {
            set_server_line(t, None, "clients: { write_timeout: 2s }");
        },
    );
    // A client with a small receive window that never reads what comes back.
    let addr = h.gateway.proxy_addr;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let req = format!("ws://{addr}{LIVE}").into_client_request().unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws.send(setup("mock-live-echo")).await.unwrap();
    let big = "x".repeat(256 * 1024);
    let started = std::time::Instant::now();
    // Echoed messages pile up on the way back until the gateway's writes stall.
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let msg = Message::text(json!({"realtimeInput": {"text": big}}).to_string());
        match tokio::time::timeout(Duration::from_millis(500), ws.send(msg)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    assert!(sent > 4, "sent {sent}");
    assert!(live_open(&h).await >= 0);
    within(
        Duration::from_secs(8),
        "the stalled session closed",
        || async { live_open(&h).await == 0 },
    )
    .await;
    let keys = h.admin_json("/api/keys").await;
    assert_eq!(
        keys["keys"][0]["in_flight"], 0,
        "the key's slot is free: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_another_site_cannot_open_a_session() {
    let h = Harness::start_with(&[("a", "valid-live-a", 1)], "", |t| {
        set_server_line(
            t,
            None,
            "cors: { allowed_origins: [\"https://app.example\"] }",
        );
    });
    for (origin, want) in [("https://evil.example", 403), ("null", 403)] {
        let (status, body) = http_once(
            h.gateway.proxy_addr.port(),
            "GET",
            LIVE,
            &[
                ("origin", origin),
                ("upgrade", "websocket"),
                ("connection", "upgrade"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("x-goog-api-key", CLIENT.1),
            ],
            "",
        );
        assert_eq!(status, want, "{origin}: {body}");
        assert!(body.contains("origin"), "{body}");
    }
    // The allowed origin, and clients that send none (SDKs), are served.
    let mut ws = connect_to(
        &h,
        LIVE,
        &[
            ("origin", "https://app.example"),
            ("x-goog-api-key", CLIENT.1),
        ],
    )
    .await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    assert!(
        live_calls(&h).len() == 1,
        "the refused upgrades reached no upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_setup_ends_the_session() {
    let h = Harness::start(&[("a", "valid-live-a", 1)]);
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    ws.send(setup("gemini-2.5-pro")).await.unwrap();
    let close = next(&mut ws).await.unwrap_err().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("one setup"), "{}", close.reason);
    // However the name is escaped.
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("mock-live-echo")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    ws.send(Message::text(
        r#"{"\u0073etup":{"model":"models/gemini-2.5-pro"}}"#,
    ))
    .await
    .unwrap();
    let close = next(&mut ws).await.unwrap_err().expect("a close frame");
    assert!(close.reason.contains("one setup"), "{}", close.reason);
}

/// A cached content made as `token`; its name.
async fn cache(h: &Harness, token: &str) -> String {
    let body = json!({"model": "models/gemini-2.5-flash", "contents": []}).to_string();
    let (s, v) = h
        .call(
            "POST",
            "/v1beta/cachedContents",
            ("x-goog-api-key", token),
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["name"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_cannot_name_another_tenants_resource() {
    let h = with_auth("");
    let (alice, bob) = (
        user("alice", &[], Duration::from_secs(600)),
        user("bob", &[], Duration::from_secs(600)),
    );
    let file = cache(&h, &alice).await;
    h.mock.clear();
    let uri = format!("https://generativelanguage.googleapis.com/v1beta/{file}");
    // In the setup: refused before the upstream.
    let mut ws = connect(&h, Some(&bob)).await;
    let s = json!({"setup": {"model": "models/gemini-live-2.5-flash", "systemInstruction": {"parts": [{"text": format!("see {uri}")}]}}});
    ws.send(Message::text(s.to_string())).await.unwrap();
    let close = next(&mut ws).await.unwrap_err().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("NOT_FOUND"), "{}", close.reason);
    assert!(live_calls(&h).is_empty());
    // In a later message: the session ends, the message never goes upstream.
    let mut ws = connect(&h, Some(&bob)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    let m = json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": format!("use {uri}")}]}], "turnComplete": true}});
    ws.send(Message::text(m.to_string())).await.unwrap();
    let close = next(&mut ws).await.unwrap_err().expect("a close frame");
    assert!(
        close.reason.contains(&format!("{file} was not found")),
        "{}",
        close.reason
    );
    // Its owner may.
    let mut ws = connect(&h, Some(&alice)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    ws.send(Message::text(m.to_string())).await.unwrap();
    assert!(next(&mut ws).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handle_the_gateway_never_issued_is_refused_to_a_user() {
    let h = with_auth("");
    let mut ws = connect(&h, Some(&user("carol", &[], Duration::from_secs(600)))).await;
    let s = json!({"setup": {"model": "models/gemini-live-2.5-flash", "sessionResumption": {"handle": "handle-from-elsewhere"}}});
    ws.send(Message::text(s.to_string())).await.unwrap();
    let close = next(&mut ws).await.unwrap_err().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(
        close.reason.contains("not started through this gateway"),
        "{}",
        close.reason
    );
    assert!(live_calls(&h).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn ephemeral_tokens_stay_within_their_makers_token() {
    let h = with_auth("");
    // A token that may use only some models makes only tokens locked to one of them.
    let narrow = user("dana", &["gemini-live-2.5-*"], Duration::from_secs(3600));
    let (s, v) = create_ephemeral_token(
        &h,
        &narrow,
        json!({"uses": 1, "expireTime": expire_time_in(Duration::from_secs(600))}),
    )
    .await;
    assert_eq!(s, 403, "an unlocked token: {v}");
    let locked = |m: &str| json!({"uses": 1, "expireTime": expire_time_in(Duration::from_secs(600)), "bidiGenerateContentSetup": {"model": format!("models/{m}")}});
    assert_eq!(
        create_ephemeral_token(&h, &narrow, locked("gemini-2.5-pro"))
            .await
            .0,
        403
    );
    assert_eq!(
        create_ephemeral_token(&h, &narrow, locked("gemini-live-2.5-flash"))
            .await
            .0,
        200
    );
    // None outlives its maker: not its expireTime, nor Google's 30-minute default.
    let brief = user("erin", &[], Duration::from_secs(300));
    let (s, v) = create_ephemeral_token(
        &h,
        &brief,
        json!({"expireTime": expire_time_in(Duration::from_secs(3600))}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(create_ephemeral_token(&h, &brief, json!({})).await.0, 400);
    assert_eq!(
        create_ephemeral_token(&h, &brief, json!({"expireTime": "soon"}))
            .await
            .0,
        400
    );
    let (s, v) = create_ephemeral_token(&h, &brief, json!({"expireTime": expire_time_in(Duration::from_secs(120)), "newSessionExpireTime": expire_time_in(Duration::from_secs(60))})).await;
    assert_eq!(s, 200, "{v}");
    // One spelling checked and the other sent upstream: refused, and what goes upstream is
    // what was checked.
    let both = json!({"expireTime": expire_time_in(Duration::from_secs(120)), "expire_time": expire_time_in(Duration::from_secs(86_000))});
    assert_eq!(create_ephemeral_token(&h, &brief, both).await.0, 400);
    h.mock.clear();
    let escaped = format!(
        r#"{{"\u0065xpireTime":"{}","newSessionExpireTime":"{}"}}"#,
        expire_time_in(Duration::from_secs(86_000)),
        expire_time_in(Duration::from_secs(60))
    );
    let r = h
        .client
        .post(h.url("/v1alpha/auth_tokens"))
        .bearer_auth(&brief)
        .body(escaped)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "an escaped name is read as Google reads it"
    );
    // No other spelling of the path goes upstream past these checks.
    h.mock.clear();
    for path in [
        "/v1alpha/auth_tokens/",
        "/v1alpha/auth_tokens:create",
        "/v1alpha/Auth_tokens",
        "/v1beta/openai/auth_tokens",
    ] {
        let r = h
            .client
            .post(h.url(path))
            .bearer_auth(&brief)
            .json(&json!({"expireTime": expire_time_in(Duration::from_secs(86_000))}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert!(h.mock.requests().is_empty(), "{:?}", h.mock.requests());
    // A fieldMask that leaves the model unlocked is refused to a restricted maker.
    let mask = |m: &str| json!({"uses": 1, "expireTime": expire_time_in(Duration::from_secs(600)), "fieldMask": m, "bidiGenerateContentSetup": {"model": "models/gemini-live-2.5-flash"}});
    assert_eq!(
        create_ephemeral_token(&h, &narrow, mask("generationConfig.temperature"))
            .await
            .0,
        403
    );
    assert_eq!(
        create_ephemeral_token(&h, &narrow, mask("model,generationConfig.temperature"))
            .await
            .0,
        200
    );

    // A token made by a caller whose own token then expired speaks for nobody.
    let short = user("fay", &[], Duration::from_secs(3));
    let (s, v) = create_ephemeral_token(&h, &short, json!({"expireTime": expire_time_in(Duration::from_secs(2)), "newSessionExpireTime": expire_time_in(Duration::from_secs(2))})).await;
    assert_eq!(s, 200, "{v}");
    let name = v["name"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let auth = format!("Token {name}");
    let path =
        "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained";
    let mut ws = connect_to(&h, path, &[("authorization", auth.as_str())]).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    let close = next(&mut ws).await.unwrap_err().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("expired"), "{}", close.reason);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_of_zero_allows_no_call_and_is_not_issued() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(
        &[("a", "valid-live-a", 1)],
        &format!(
            "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"Zero-Limit-Admin-1\", revocations_file: \"{}/r.json\" }}\npipeline:\n  - auth\n  - rate_limit: {{ per_user: {{ rpm: 100 }} }}\n  - key_select\n",
            dir.path().display()
        ),
        |_| {},
    );
    let (_, v) = json_of(h.login("Zero-Limit-Admin-1").await).await;
    let admin = v["token"].as_str().unwrap().to_string();
    let r = h
        .client
        .post(h.admin("/api/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"sub": "z", "limits": {"rpm": 0}}))
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.rpm"),
        "{v}"
    );
    // A token signed elsewhere with a 0 gets nothing, every time.
    let mut claims = new_claims("z", Role::User, Duration::from_secs(600), vec![]);
    claims.limits = Some(gemini_proxy_plugins::auth::TokenLimits {
        rpm: Some(0),
        tpm: None,
        concurrent_streams: None,
    });
    let zero = sign(SECRET, "HS256", None, &claims).unwrap();
    for _ in 0..3 {
        let r = h
            .client
            .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
            .bearer_auth(&zero)
            .header("content-type", "application/json")
            .body(gen_body("z"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert!(h.mock.requests().is_empty());
}
