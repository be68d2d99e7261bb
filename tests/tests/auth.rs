//! JWT auth on the proxy and admin listeners: every refusal path, tokens in the three places
//! clients put them, model permissions, issuing and revoking, admin login with lockout.

use std::time::Duration;

use gemini_proxy_plugins::auth::{Claims, new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::*;
use serde_json::{Value, json};

const SECRET: &str = "Test-JWT-secret-with-enough-entropy-0123456789!";
const PASSWORD: &str = "Correct-Horse-Battery-9";

fn start() -> Harness {
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"{PASSWORD}\", issuer: gw }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n"
    );
    Harness::start_with(&[("pool-a", "valid-pool-key-a", 1)], &extra, |_| {})
}

fn token_for(claims: &Claims) -> String {
    sign(SECRET, "HS256", None, claims).unwrap()
}

fn user(models: Vec<String>) -> Claims {
    let mut c = new_claims("alice", Role::User, Duration::from_secs(300), models);
    c.iss = Some("gw".into());
    c
}

async fn generate_with(h: &Harness, header: (&str, String), model: &str) -> (u16, Value) {
    json_of(
        h.client
            .post(h.url(&format!("/v1beta/models/{model}:generateContent")))
            .header(header.0, header.1)
            .body(gen_body("hi"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn failures(metrics: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("auth_failures_total{{reason=\"{reason}\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_work_in_all_three_places_and_never_reach_google() {
    let h = start();
    let t = token_for(&user(vec![]));
    let (s, _) = generate_with(&h, ("x-goog-api-key", t.clone()), "gemini-2.5-flash").await;
    assert_eq!(s, 200);
    let (s, _) = generate_with(
        &h,
        ("authorization", format!("Bearer {t}")),
        "gemini-2.5-flash",
    )
    .await;
    assert_eq!(s, 200);
    let r = h
        .client
        .post(h.url(&format!(
            "/v1beta/models/gemini-2.5-flash:generateContent?key={t}"
        )))
        .body(gen_body("q"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = h
        .call(
            "POST",
            "/v1beta/openai/chat/completions",
            ("authorization", &format!("Bearer {t}")),
            Some(
                r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"x"}]}"#.into(),
            ),
        )
        .await;
    assert_eq!(s, 200);
    for r in h.mock.requests() {
        assert_eq!(r.key.as_deref(), Some("valid-pool-key-a"));
        let all = format!("{:?}{:?}", r.headers, r.query);
        assert!(!all.contains(&t), "the gateway token reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_is_refused_with_a_google_style_401() {
    let h = start();
    let mut cases: Vec<(&str, String)> = vec![("missing", String::new())];
    let mut expired = user(vec![]);
    expired.exp -= 3600;
    cases.push(("expired", token_for(&expired)));
    let mut early = user(vec![]);
    early.nbf = Some(early.exp);
    cases.push(("not_yet_valid", token_for(&early)));
    let mut wrong_iss = user(vec![]);
    wrong_iss.iss = Some("someone-else".into());
    cases.push(("issuer", token_for(&wrong_iss)));
    cases.push((
        "bad_signature",
        sign(
            "not-the-secret-0123456789abcdefgh!",
            "HS256",
            None,
            &user(vec![]),
        )
        .unwrap(),
    ));
    cases.push((
        "algorithm",
        sign(SECRET, "HS512", None, &user(vec![])).unwrap(),
    ));
    cases.push(("malformed", "definitely-not-a-jwt".into()));
    // alg: none.
    let none = {
        let enc = |b: &[u8]| {
            const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for c in b.chunks(3) {
                let v = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
                let n = (u32::from(v[0]) << 16) | (u32::from(v[1]) << 8) | u32::from(v[2]);
                for i in 0..=c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        };
        format!(
            "{}.{}.",
            enc(br#"{"alg":"none","typ":"JWT"}"#),
            enc(serde_json::to_string(&user(vec![])).unwrap().as_bytes())
        )
    };
    cases.push(("algorithm_none", none));
    for (why, token) in &cases {
        let (s, body) =
            generate_with(&h, ("x-goog-api-key", token.clone()), "gemini-2.5-flash").await;
        assert_eq!(s, 401, "{why}: {body}");
        assert_eq!(body["error"]["code"], 401, "{why}");
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED", "{why}");
        if !token.is_empty() {
            assert!(
                !body.to_string().contains(token.as_str()),
                "{why}: token echoed"
            );
        }
    }
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");
    let m = h.admin_text("/metrics").await;
    for reason in [
        "missing",
        "expired",
        "not_yet_valid",
        "issuer",
        "bad_signature",
        "algorithm",
        "malformed",
    ] {
        assert!(
            failures(&m, reason) >= 1,
            "auth_failures_total{{reason={reason}}} missing"
        );
    }
    // OpenAI paths answer in OpenAI's shape.
    let (s, body) = h
        .call(
            "POST",
            "/v1beta/openai/chat/completions",
            ("authorization", "Bearer nope"),
            Some("{}".into()),
        )
        .await;
    assert_eq!(s, 401);
    assert!(
        body["error"]["message"].is_string() && body["error"]["type"].is_string(),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_limited_to_some_models_gets_403_for_others() {
    let h = start();
    let t = token_for(&user(vec!["gemini-2.5-flash*".into()]));
    let (s, _) = generate_with(&h, ("x-goog-api-key", t.clone()), "gemini-2.5-flash").await;
    assert_eq!(s, 200);
    let (s, body) = generate_with(&h, ("x-goog-api-key", t.clone()), "gemini-2.5-pro").await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    let m = h.admin_text("/metrics").await;
    assert_eq!(failures(&m, "model_not_allowed"), 1);
}

async fn admin_post(h: &Harness, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = h.client.post(h.admin(path)).json(&body);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    json_of(r.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_login_issues_tokens_that_open_the_admin_api_and_can_revoke() {
    let h = start();
    // No token, a user token: refused.
    let r = h.client.get(h.admin("/api/keys")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let user_token = token_for(&user(vec![]));
    let r = h
        .client
        .get(h.admin("/api/keys"))
        .header("authorization", format!("Bearer {user_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(
        h.client
            .get(h.admin("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let (s, login) = admin_post(&h, "/auth/login", None, json!({"password": PASSWORD})).await;
    assert_eq!(s, 200, "{login}");
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 3600);
    let admin = login["token"].as_str().unwrap().to_string();
    let r = h
        .client
        .get(h.admin("/api/keys"))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Issue a user token, use it, revoke it.
    let (s, issued) = admin_post(
        &h,
        "/api/tokens",
        Some(&admin),
        json!({"sub": "svc-batch", "ttl": "10m", "models": ["gemini-2.5-*"]}),
    )
    .await;
    assert_eq!(s, 201, "{issued}");
    let t = issued["token"].as_str().unwrap().to_string();
    let (s, _) = generate_with(&h, ("x-goog-api-key", t.clone()), "gemini-2.5-flash").await;
    assert_eq!(s, 200);
    let (s, _) = admin_post(
        &h,
        "/api/tokens/revoke",
        Some(&admin),
        json!({"jti": issued["jti"]}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = generate_with(&h, ("x-goog-api-key", t), "gemini-2.5-flash").await;
    assert_eq!(s, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // A user cannot issue tokens.
    let (s, _) = admin_post(&h, "/api/tokens", Some(&user_token), json!({"sub": "x"})).await;
    assert_eq!(s, 403);
    // An admin token cannot mint one that outlives it: admin tokens live at most token_ttl,
    // user tokens at most max_token_ttl.
    for (body, want) in [
        (json!({"sub": "evil", "role": "admin", "ttl": "3650d"}), 400),
        (json!({"sub": "evil", "role": "admin", "ttl": "2h"}), 400),
        (json!({"sub": "ok", "role": "admin", "ttl": "30m"}), 201),
        (json!({"sub": "svc", "ttl": "31d"}), 400),
        (json!({"sub": "svc", "ttl": "0s"}), 400),
        (json!({"sub": "svc", "ttl": "30d"}), 201),
    ] {
        let (s, r) = admin_post(&h, "/api/tokens", Some(&admin), body.clone()).await;
        assert_eq!(s, want, "{body}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_logins_lock_the_ip_out() {
    let h = start();
    for i in 0..5 {
        let (s, _) = admin_post(
            &h,
            "/auth/login",
            None,
            json!({"password": format!("guess-{i}")}),
        )
        .await;
        assert_eq!(s, 401);
    }
    let r = h.login(PASSWORD).await;
    assert_eq!(
        r.status(),
        429,
        "even the right password waits out the lockout"
    );
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 800 && wait <= 900, "{wait}");
    let m = h.admin_text("/metrics").await;
    assert_eq!(failures(&m, "bad_password"), 5);
    assert!(!m.contains(PASSWORD));
}
