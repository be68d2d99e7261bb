//! No key or client secret appears in logs, metrics, admin output or error bodies.
//! (Own test binary: it installs a global log subscriber that captures everything.)

use std::io::Write;
use std::sync::{Arc, Mutex};

use gemini_proxy_tests::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_any_output() {
    let capture = Capture::default();
    let sink = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(gemini_proxy_core::cli::log_filter("trace"))
        .with_writer(move || sink.clone())
        .init();
    let pool = [
        "valid-SECRETPOOLKEY-1",
        "invalid-SECRETPOOLKEY-2",
        "suspended-SECRETPOOLKEY-4",
    ];
    let h = Harness::start_with(
        &[
            ("one", pool[0], 1),
            ("two", pool[1], 1),
            ("four", pool[2], 1),
        ],
        "pipeline: [request_log, key_select]\n",
        |_| {},
    );
    let client_secret = "CLIENTSECRET-abc";
    let mut bodies = String::new();
    for path in [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/mock-overloaded:generateContent",
        "/v1beta/models/mock-slow-10:streamGenerateContent?alt=sse",
        "/v1beta/models/mock-cut:streamGenerateContent?alt=sse",
        "/v1beta/models/mock-leaky:generateContent",
        "/v1beta/models/mock-leaky:streamGenerateContent?alt=sse",
        "/nowhere",
    ] {
        for cred in [
            ("x-goog-api-key", client_secret.to_string()),
            ("authorization", format!("Bearer {client_secret}")),
        ] {
            let sep = if path.contains('?') { '&' } else { '?' };
            let r = h
                .client
                .post(h.url(&format!("{path}{sep}key={client_secret}")))
                .header(cred.0, cred.1)
                .body(gen_body("hi"))
                .send()
                .await
                .unwrap();
            bodies.push_str(&format!("{:?}", r.headers()));
            bodies.push_str(&r.text().await.unwrap_or_default());
        }
    }
    let r = h
        .client
        .post(h.url("/upload/v1beta/files?key=CLIENTSECRET-abc"))
        .header("x-goog-upload-command", "start")
        .body("{}")
        .send()
        .await
        .unwrap();
    bodies.push_str(&format!("{:?}", r.headers()));
    for p in ["/metrics", "/errors", "/performance", "/health"] {
        bodies.push_str(
            &h.client
                .get(h.admin(p))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    // The same with auth, rate limits and risk scoring on: tokens, the JWT secret and the admin
    // password must not show up either.
    let jwt_secret = "JWTSECRET-Aa1!-long-enough-for-the-checks-0123";
    let admin_password = "ADMINPASSWORD-Aa1!-long";
    let authed = Harness::start_with(
        &[("three", "valid-SECRETPOOLKEY-3", 1)],
        &format!(
            "auth: {{ enabled: true, jwt_secret: \"{jwt_secret}\", admin_password: \"{admin_password}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\npipeline:\n  - request_log\n  - rate_limit: {{ per_ip: {{ rpm: 1000 }} }}\n  - security_score\n  - key_select\n"
        ),
        |_| {},
    );
    let token = gemini_proxy_plugins::auth::sign(
        jwt_secret,
        "HS256",
        None,
        &gemini_proxy_plugins::auth::new_claims(
            "secret-test",
            gemini_proxy_sdk::Role::User,
            std::time::Duration::from_secs(60),
            vec![],
        ),
    )
    .unwrap();
    let mut tokens = vec![token.clone()];
    for (name, value) in [
        ("x-goog-api-key", token.clone()),
        ("authorization", format!("Bearer {token}")),
        ("x-goog-api-key", format!("{token}tampered")),
    ] {
        let r = authed
            .client
            .post(authed.url(&format!(
                "/v1beta/models/gemini-2.5-flash:generateContent?key={token}"
            )))
            .header(name, value)
            .body(gen_body("hi"))
            .send()
            .await
            .unwrap();
        bodies.push_str(&format!("{:?}", r.headers()));
        bodies.push_str(&r.text().await.unwrap_or_default());
    }
    for pw in ["wrong-password-guess", admin_password] {
        let r = authed
            .client
            .post(authed.admin("/auth/login"))
            .json(&serde_json::json!({ "password": pw }))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if let Some(t) = v["token"].as_str() {
            tokens.push(t.to_string());
        }
    }
    let admin = tokens.last().unwrap().clone();
    for p in [
        "/api/keys",
        "/api/config",
        "/api/security",
        "/api/config/history",
        "/metrics",
    ] {
        bodies.push_str(
            &authed
                .client
                .get(authed.admin(p))
                .header("authorization", format!("Bearer {admin}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    // Everything both gateways audited: database rows (read back with SQL) and the JSON lines.
    for (hh, bearer) in [(&h, None), (&authed, Some(admin.clone()))] {
        for t in ["requests", "security_events", "config_changes"] {
            let mut req = hh
                .client
                .post(hh.admin("/api/sql"))
                .json(&serde_json::json!({ "sql": format!("SELECT * FROM {t}") }));
            if let Some(a) = &bearer {
                req = req.header("authorization", format!("Bearer {a}"));
            }
            let text = req.send().await.unwrap().text().await.unwrap();
            assert!(text.contains("\"rows\""), "{t}: {text}");
            bodies.push_str(&text);
        }
        let dir = hh.config_path.as_ref().unwrap().parent().unwrap();
        let log = std::fs::read_to_string(dir.join("logs/audit.log")).unwrap();
        assert!(log.contains("ApiCall"));
        bodies.push_str(&log);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    for secret in [jwt_secret, admin_password, "SECRETPOOLKEY-3"] {
        assert!(!logs.contains(secret), "secret {secret} in logs");
        assert!(!bodies.contains(secret), "secret {secret} in responses");
    }
    for t in &tokens {
        if let Some(i) = logs.find(t.as_str()) {
            let line_start = logs[..i].rfind('\n').map_or(0, |n| n + 1);
            let line_end = logs[i..].find('\n').map_or(logs.len(), |n| i + n);
            panic!(
                "a token in the logs: {}",
                &logs[line_start..line_end.min(line_start + 600)]
            );
        }
    }
    assert!(
        logs.contains("request_id"),
        "the capture saw the request log"
    );
    if let Ok(p) = std::env::var("DUMP_LOGS") {
        std::fs::write(p, &logs).unwrap();
    }
    for secret in pool.iter().copied().chain([client_secret, "SECRETPOOLKEY"]) {
        assert!(!logs.contains(secret), "secret {secret} in logs");
        if let Some(i) = bodies.find(secret) {
            panic!(
                "secret {secret} in responses: {}",
                &bodies[i.saturating_sub(300)..(i + 100).min(bodies.len())]
            );
        }
    }
}
