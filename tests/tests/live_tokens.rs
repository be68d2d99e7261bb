//! Ephemeral tokens made through the gateway (`POST /v1alpha/auth_tokens`): a Live session on
//! one is admitted as the caller that made it, runs in the project of the key that made it with
//! the token as its upstream credential, and a token the gateway did not see made (or whose
//! maker was revoked) never reaches the upstream.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::live::*;
use gemini_proxy_tests::*;
use serde_json::{Value, json};

const SECRET: &str = "Live-token-JWT-secret-with-enough-entropy-0123456789!";
const CONSTRAINED: &str =
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained";

fn harness() -> Harness {
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\" }}\naudit: {{ flush_interval: 50ms }}\n"
    );
    Harness::start_with(
        &[
            ("a", "valid-live-a", 1),
            ("b", "valid-live-b", 1),
            ("c", "valid-live-c", 1),
        ],
        &extra,
        |_| {},
    )
}

fn token_for(sub: &str, role: Role, models: &[&str]) -> (String, String) {
    let claims = new_claims(
        sub,
        role,
        Duration::from_secs(600),
        models.iter().map(|m| m.to_string()).collect(),
    );
    let jti = claims.jti.clone().unwrap();
    (sign(SECRET, "HS256", None, &claims).unwrap(), jti)
}

/// A session on `token` as the SDK opens one (both headers), to its `setupComplete` or close.
async fn open(h: &Harness, token: &str) -> Result<Ws, String> {
    let auth = format!("Token {token}");
    open_with(
        h,
        &[("authorization", auth.as_str()), ("x-goog-api-key", token)],
    )
    .await
}

async fn open_with(h: &Harness, headers: &[(&str, &str)]) -> Result<Ws, String> {
    let mut ws = connect_to(h, CONSTRAINED, headers).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    match next(&mut ws).await {
        Ok(v) if v == json!({"setupComplete": {}}) => Ok(ws),
        Ok(v) => Err(format!("not a setupComplete: {v}")),
        Err(Some(f)) => Err(format!("{} {}", u16::from(f.code), f.reason)),
        Err(None) => Err("no close frame".into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_on_an_ephemeral_token_runs_as_its_maker_on_its_key() {
    let h = harness();
    let (alice, _) = token_for("alice", Role::User, &["gemini-live-*"]);
    let (admin, _) = token_for("ops", Role::Admin, &[]);
    let body = json!({"uses": 3, "expireTime": expire_time_in(Duration::from_secs(600)), "bidiGenerateContentSetup": {"model": "models/gemini-live-2.5-flash"}});
    let (status, made) = create_ephemeral_token(&h, &alice, body).await;
    assert_eq!(status, 200, "{made}");
    let name = made["name"].as_str().expect("a token name").to_string();
    assert!(name.starts_with("auth_tokens/"), "{made}");
    let maker = h
        .mock
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1alpha/auth_tokens")
        .and_then(|r| r.key)
        .expect("made upstream with a key");
    for i in 0..3 {
        let mut ws = open(&h, &name).await.expect("a session");
        ws.send(turn(&format!("hello {i}"))).await.unwrap();
        assert_eq!(answer(&mut ws).await.0, format!("Echo: hello {i}"));
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let calls = live_calls(&h);
    assert_eq!(calls.len(), 3);
    for c in &calls {
        // The mock runs a token's session on the key that made it.
        assert_eq!(c.key.as_deref(), Some(maker.as_str()), "{c:?}");
        assert_eq!(c.path, CONSTRAINED);
        let header = |n: &str| {
            c.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("authorization"), Some(format!("Token {name}")));
        assert_eq!(
            header("x-goog-api-key"),
            None,
            "no pooled key beside the token"
        );
    }
    // Audited as alice's sessions, on the key that made the token; the token is nowhere.
    let q = "SELECT user_id, key_id FROM requests WHERE api = 'live' AND status = 101";
    let mut rows = Value::Null;
    for _ in 0..100 {
        rows = sql(&h, &admin, q).await["rows"].clone();
        if rows.as_array().is_some_and(|r| r.len() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let maker_id = &maker["valid-live-".len()..];
    for r in rows.as_array().expect("rows") {
        assert_eq!(r, &json!(["alice", maker_id]), "{rows}");
    }
    let leaked = "SELECT count(*) FROM request_tags WHERE value LIKE '%auth_tokens/%'";
    assert_eq!(sql(&h, &admin, leaked).await["rows"], json!([[0]]));
    let metrics = h.admin_text_with("/metrics", &admin).await;
    assert!(!metrics.contains(&name));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_not_made_here_or_of_a_revoked_maker_never_reach_the_upstream() {
    let h = harness();
    let (alice, alice_jti) = token_for("alice", Role::User, &["gemini-live-*"]);
    let (admin, _) = token_for("ops", Role::Admin, &[]);
    // A token locked to a model the maker may not use is not made.
    let locked = json!({"bidiGenerateContentSetup": {"model": "models/gemini-2.5-pro"}});
    assert_eq!(create_ephemeral_token(&h, &alice, locked).await.0, 403);
    let snake = json!({"bidi_generate_content_setup": {"model": "gemini-2.5-pro"}});
    assert_eq!(create_ephemeral_token(&h, &alice, snake).await.0, 403);
    // A gateway credential is needed to make one.
    assert_eq!(
        create_ephemeral_token(&h, "not-a-token", json!({})).await.0,
        401
    );
    // Alice may use only some models: her token is locked to one, and ends before hers.
    let in_five_minutes = expire_time_in(Duration::from_secs(300));
    let body = json!({"uses": 1, "expireTime": in_five_minutes, "bidiGenerateContentSetup": {"model": "models/gemini-live-2.5-flash"}});
    let (status, made) = create_ephemeral_token(&h, &alice, body).await;
    assert_eq!(status, 200, "{made}");
    let name = made["name"].as_str().unwrap().to_string();
    // Made upstream but not through the gateway, a guess, and a gateway token in its place.
    let refused = [
        "Token auth_tokens/forged-0001".to_string(),
        format!("Token {name}x"),
        format!("Token {alice}"),
        format!("Bearer {name}x"),
    ];
    for forged in &refused {
        let close = open_with(&h, &[("authorization", forged.as_str())])
            .await
            .expect_err("refused");
        assert!(close.contains("1008"), "{close}");
        assert!(!close.contains(&forged[6..]), "{close}");
    }
    let query = format!("{CONSTRAINED}?access_token=auth_tokens%2Fforged-0002");
    let mut ws = connect_to(&h, &query, &[]).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    let close = next(&mut ws).await.expect_err("refused").expect("a frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    // The token's model rules are its maker's.
    let auth = format!("Token {name}");
    let mut ws = connect_to(&h, CONSTRAINED, &[("authorization", auth.as_str())]).await;
    ws.send(setup("gemini-2.5-pro")).await.unwrap();
    let close = next(&mut ws).await.expect_err("refused").expect("a frame");
    assert!(close.reason.starts_with("PERMISSION_DENIED"), "{close:?}");
    assert!(live_calls(&h).is_empty(), "nothing reached the upstream");
    // Revoking the maker's token ends what it made.
    let r = h
        .client
        .post(h.admin("/api/tokens/revoke"))
        .bearer_auth(&admin)
        .json(&json!({ "jti": alice_jti }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let close = open(&h, &name).await.expect_err("refused once revoked");
    assert!(
        close.contains("1008") && close.contains("revoked"),
        "{close}"
    );
    assert!(live_calls(&h).is_empty());
}
