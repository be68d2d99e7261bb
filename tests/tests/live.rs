//! Live API sessions through the gateway, with a raw WebSocket client against the mock's Live
//! endpoint: the key swapped, messages relayed both ways, failover before `setupComplete`, and
//! every refusal a close with a code and reason (or a 400 before the upgrade).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gemini_proxy_tests::live::*;
use gemini_proxy_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};

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

const SECRET: &str = "Live-JWT-secret-with-enough-entropy-0123456789!";

#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_admitted_as_its_user_within_its_limits_and_audited_once() {
    use gemini_proxy_plugins::auth::{new_claims, sign};
    use gemini_proxy_sdk::Role;
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\" }}\naudit: {{ flush_interval: 50ms }}\npipeline:\n  - rate_limit: {{ per_user: {{ concurrent_streams: 1 }} }}\n  - key_select\n"
    );
    let h = Harness::start_with(&[("a", "valid-live-a", 1)], &extra, |_| {});
    let claims = new_claims(
        "alice",
        Role::User,
        Duration::from_secs(600),
        vec!["gemini-live-*".into()],
    );
    let token = sign(SECRET, "HS256", None, &claims).unwrap();
    let admin = new_claims("ops", Role::Admin, Duration::from_secs(600), vec![]);
    let admin = sign(SECRET, "HS256", None, &admin).unwrap();
    // No credential, a forged one, a model the token does not allow: refused, nothing upstream.
    for (credential, model, status) in [
        (None, "gemini-live-2.5-flash", "UNAUTHENTICATED"),
        (
            Some("not-a-token"),
            "gemini-live-2.5-flash",
            "UNAUTHENTICATED",
        ),
        (Some(token.as_str()), "gemini-2.5-pro", "PERMISSION_DENIED"),
    ] {
        let close = refused_with(&h, credential, model).await;
        assert_eq!(u16::from(close.code), 1008, "{close:?}");
        assert!(close.reason.starts_with(status), "{close:?}");
        assert!(!close.reason.contains(&token), "{close:?}");
    }
    assert!(
        live_calls(&h).is_empty(),
        "refused sessions reached the upstream"
    );
    // One session at a time for alice.
    let mut ws = connect(&h, Some(&token)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    let second = refused_with(&h, Some(&token), "gemini-live-2.5-flash").await;
    assert_eq!(u16::from(second.code), 1013, "{second:?}");
    ws.send(turn("hello there")).await.unwrap();
    assert_eq!(answer(&mut ws).await.0, "Echo: hello there");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    assert_eq!(live_calls(&h).len(), 1);
    // One row for the session, with the user, the key and the tokens the server reported.
    let q = "SELECT request_id, user_id, model, key_id, status, prompt_tokens, candidates_tokens, total_tokens, request_bytes > 0 AS sent, response_bytes > 0 AS received FROM requests WHERE api = 'live' AND key_id IS NOT NULL";
    let mut rows = Value::Null;
    for _ in 0..100 {
        rows = sql(&h, &admin, q).await["rows"].clone();
        if rows.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = rows.as_array().expect("rows").clone();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(
        r.as_array().unwrap()[1..].to_vec(),
        vec![
            json!("alice"),
            json!("gemini-live-2.5-flash"),
            json!("a"),
            json!(101),
            json!(2),
            json!(3),
            json!(5),
            json!(true),
            json!(true)
        ],
        "{r}"
    );
    let tags = sql(
        &h,
        &admin,
        &format!(
            "SELECT tag, value FROM request_tags WHERE request_id = '{}' ORDER BY tag",
            r[0].as_str().unwrap()
        ),
    )
    .await;
    let tags: std::collections::BTreeMap<String, String> = tags["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t[0].as_str().unwrap().to_string(),
                t[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tags.get("live_closed_by").map(String::as_str),
        Some("client"),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("live_tokens_prompt_text").map(String::as_str),
        Some("2"),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("live_tokens_response_text").map(String::as_str),
        Some("3"),
        "{tags:?}"
    );
    let metrics = h.admin_text_with("/metrics", &admin).await;
    for line in [
        "live_sessions_active 0",
        "live_sessions_total{result=\"ok\"} 1",
        "live_sessions_total{result=\"refused\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    assert!(!metrics.contains(&token));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_session_goes_to_the_key_that_issued_its_handle() {
    let h = Harness::start(&[
        ("a", "valid-live-a", 1),
        ("b", "valid-live-b", 1),
        ("c", "valid-live-c", 1),
    ]);
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    next(&mut ws).await.unwrap();
    ws.send(turn("resume")).await.unwrap();
    let update = next(&mut ws).await.unwrap();
    let handle = update["sessionResumptionUpdate"]["newHandle"]
        .as_str()
        .expect("a handle")
        .to_string();
    answer(&mut ws).await;
    ws.close(None).await.unwrap();
    let issuer = live_calls(&h)[0].key.clone().unwrap();
    for _ in 0..6 {
        let mut ws = connect(&h, Some(CLIENT.1)).await;
        let resume = json!({"setup": {"model": "models/gemini-live-2.5-flash", "sessionResumption": {"handle": handle}}});
        ws.send(Message::text(resume.to_string())).await.unwrap();
        assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
        ws.close(None).await.unwrap();
    }
    let calls = live_calls(&h);
    assert_eq!(calls.len(), 7);
    assert!(
        calls
            .iter()
            .all(|c| c.key.as_deref() == Some(issuer.as_str())),
        "{:?}",
        calls.iter().map(|c| c.key.clone()).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_reload_leaves_an_open_session_alone() {
    let h = Harness::start(&[("a", "valid-live-a", 1)]);
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    next(&mut ws).await.unwrap();
    let generation = h.gateway.shared.runtime.load().generation;
    // The key the session uses is replaced by another in the new config.
    h.write_config(&h.config_text().replace(
        "{ id: a, key: valid-live-a, weight: 1 }",
        "{ id: z, key: valid-live-z, weight: 1 }",
    ));
    h.wait_generation(generation + 1).await;
    ws.send(turn("after the reload")).await.unwrap();
    assert_eq!(answer(&mut ws).await.0, "Echo: after the reload");
    ws.close(None).await.unwrap();
    // New sessions use the new config.
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    next(&mut ws).await.unwrap();
    ws.close(None).await.unwrap();
    let keys: Vec<_> = live_calls(&h)
        .into_iter()
        .map(|c| c.key.unwrap_or_default())
        .collect();
    assert_eq!(keys, vec!["valid-live-a", "valid-live-z"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_ws_paths_are_not_routes_and_a_message_over_the_limit_closes_1009() {
    let h = Harness::start_with(
        &[("a", "valid-live-a", 1)],
        "live: { max_message_bytes: 4096 }\n",
        |_| {},
    );
    for path in [
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.Other",
        "/ws/../v1beta/models",
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent/extra",
    ] {
        // Sent as written (an HTTP client library would resolve the dot segments first).
        let port = h.gateway.proxy_addr.port();
        let upgrade = [
            (CLIENT.0, CLIENT.1),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let (status, body) =
            tokio::task::spawn_blocking(move || http_once(port, "GET", path, &upgrade, ""))
                .await
                .unwrap();
        assert!(matches!(status, 400 | 404), "{path}: {status} {body}");
    }
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    next(&mut ws).await.unwrap();
    let _ = ws.send(Message::text("x".repeat(10_000))).await;
    let close = next(&mut ws)
        .await
        .expect_err("closed")
        .expect("with a frame");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    // The upstream saw the setup only.
    assert_eq!(live_calls(&h).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_caller_who_got_a_resumption_handle_may_resume_with_it() {
    use gemini_proxy_plugins::auth::{new_claims, sign};
    use gemini_proxy_sdk::Role;
    let extra =
        format!("auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\" }}\n");
    let h = Harness::start_with(
        &[("a", "valid-live-a", 1), ("b", "valid-live-b", 1)],
        &extra,
        |_| {},
    );
    let token = |sub: &str| {
        sign(
            SECRET,
            "HS256",
            None,
            &new_claims(sub, Role::User, Duration::from_secs(600), vec![]),
        )
        .unwrap()
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let mut ws = connect(&h, Some(&alice)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    next(&mut ws).await.unwrap();
    ws.send(turn("resume")).await.unwrap();
    let handle = next(&mut ws).await.unwrap()["sessionResumptionUpdate"]["newHandle"]
        .as_str()
        .unwrap()
        .to_string();
    answer(&mut ws).await;
    ws.close(None).await.unwrap();
    let resume = json!({"setup": {"model": "models/gemini-live-2.5-flash", "sessionResumption": {"handle": handle}}}).to_string();
    let mut ws = connect(&h, Some(&bob)).await;
    ws.send(Message::text(resume.clone())).await.unwrap();
    let close = next(&mut ws)
        .await
        .expect_err("refused")
        .expect("with a frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.starts_with("PERMISSION_DENIED"), "{close:?}");
    let mut ws = connect(&h, Some(&alice)).await;
    ws.send(Message::text(resume)).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    ws.close(None).await.unwrap();
    assert_eq!(
        live_calls(&h).len(),
        2,
        "bob's attempt never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_name_that_reads_like_a_key_error_does_not_condemn_the_key() {
    let h = Harness::start(&[("only", "valid-live-only", 1)]);
    for model in [
        "nosuch-API_KEY_INVALID",
        "nosuch-api-key-not-valid",
        "nosuch-you-exceeded-your-current-quota",
        "nosuch-Consumer-has-been-suspended",
    ] {
        let mut ws = connect(&h, Some(CLIENT.1)).await;
        ws.send(setup(model)).await.unwrap();
        let close = next(&mut ws)
            .await
            .expect_err("closed")
            .expect("with a frame");
        assert_eq!(u16::from(close.code), 1008, "{model}: {close:?}");
        assert!(close.reason.contains("not found"), "{close:?}");
    }
    let keys = h.admin_json("/api/keys").await;
    let only = &keys["keys"][0];
    assert_eq!(only["state"], "active", "{only}");
    assert!(only["dead_reason"].is_null(), "{only}");
    assert_eq!(only["cooldowns"], json!([]), "{only}");
    // The one key still serves sessions.
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    ws.send(turn("y")).await.unwrap();
    assert_eq!(answer(&mut ws).await.0, "Echo: y");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_key_echoed_by_the_upstream_never_reaches_the_client() {
    let key = "valid-live-telltale-0123456789";
    let h = Harness::start(&[("t", key, 1)]);
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    ws.send(setup("mock-live-telltale")).await.unwrap();
    let setup_complete = next(&mut ws).await.unwrap();
    assert!(
        setup_complete.get("setupComplete").is_some(),
        "{setup_complete}"
    );
    let said = next(&mut ws).await.unwrap();
    for m in [&setup_complete, &said] {
        let text = m.to_string();
        assert!(!text.contains(key), "{text}");
        assert!(!text.contains("0123456789"), "{text}");
    }
    assert!(said.to_string().contains("key="), "{said}");
}
