//! The admin listener probed as an attacker would: path spellings that slip past a prefix check,
//! requests without credentials, cross-site and rebinding requests, a guessing burst, and
//! saving back the redacted config.

use std::io::{Read, Write};

use gemini_proxy_tests::*;
use serde_json::{Value, json};

const SECRET: &str = "Admin-attack-JWT-secret-0123456789-abcdef!";
const PASSWORD: &str = "Admin-Attack-Pass-77";

fn with_auth() -> Harness {
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"{PASSWORD}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n"
    );
    Harness::start_with(&[("a", "valid-attack-key-a", 1)], &extra, |_| {})
}

/// One raw HTTP/1.1 request (so nothing normalises the path or the headers).
fn raw(addr: std::net::SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

async fn login(h: &Harness) -> String {
    let (_, v) = json_of(h.login(PASSWORD).await).await;
    v["token"].as_str().expect("admin token").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_path_reaches_an_admin_route_without_a_token() {
    let h = with_auth();
    let admin = h.gateway.admin_addr.unwrap();
    let host = format!("host: {admin}");
    for path in [
        "//api/tokens",
        "/api//tokens",
        "/./api/tokens",
        "/api/tokens/",
        "/api/tokens;",
        "/api/%74okens",
        "/auth/../api/tokens",
        "/api/tokens\\",
    ] {
        let (status, text) = raw(
            admin,
            &format!("POST {path} HTTP/1.1\r\n{host}\r\ncontent-type: application/json"),
            r#"{"sub":"mallory","role":"admin"}"#,
        );
        assert_eq!(status, 400, "{path}: {text}");
        assert!(!text.contains("\"token\""), "{path}: {text}");
    }
    for path in [
        "//api/keys/a/disable",
        "/api/keys/a/disable/",
        "/api/keys/a/./disable",
    ] {
        let (status, _) = raw(
            admin,
            &format!("POST {path} HTTP/1.1\r\n{host}\r\ncontent-type: application/json"),
            "{}",
        );
        assert_eq!(status, 400, "{path}");
    }
    let keys = h.gateway.shared.pool.report();
    assert!(
        keys.iter().all(|k| k.dead_reason.is_none()),
        "no key was disabled"
    );
    // The plain spelling needs a token, and says so in Google's terms.
    let (status, text) = raw(
        admin,
        &format!("POST /api/tokens HTTP/1.1\r\n{host}\r\ncontent-type: application/json"),
        r#"{"sub":"mallory","role":"admin"}"#,
    );
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    // Unknown routes are 404, known paths with another method 405, even for an admin.
    let t = login(&h).await;
    for (m, p, want) in [
        ("GET", "/api/everything", 404),
        ("GET", "/api", 404),
        ("DELETE", "/api/sql", 405),
        ("GET", "/api/tokens", 405),
        ("GET", "/index.html", 404),
        // The root is the console's (a redirect to `/ui/`, followed here).
        ("GET", "/", 200),
        ("POST", "/", 405),
    ] {
        let r = h
            .client
            .request(
                reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
                h.admin(p),
            )
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{m} {p}");
    }
    // A user token is not an admin token.
    let (s, v) = json_of(
        h.client
            .post(h.admin("/api/tokens"))
            .bearer_auth(&t)
            .json(&json!({"sub": "bob"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201);
    let user = v["token"].as_str().unwrap().to_string();
    let r = h
        .client
        .get(h.admin("/api/keys"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A subject that would forge a log line is refused.
    let (s, _) = json_of(
        h.client
            .post(h.admin("/api/tokens"))
            .bearer_auth(&t)
            .json(&json!({"sub": "bob\n2026-12-03T00:00:00Z INFO admin logged in"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_and_rebinding_requests_are_refused_without_auth() {
    // As in the demo: no auth, admin listener on loopback.
    let h = Harness::start(&[("a", "valid-a", 1), ("b", "valid-b", 1)]);
    let admin = h.gateway.admin_addr.unwrap();
    let port = admin.port();
    // A page on another site posting a "simple" request (no preflight).
    let (status, text) = raw(
        admin,
        &format!(
            "POST /api/keys/a/disable HTTP/1.1\r\nhost: {admin}\r\norigin: https://evil.example\r\ncontent-type: text/plain"
        ),
        "{}",
    );
    assert_eq!(status, 403, "{text}");
    // The same without an Origin but as text/plain (an old browser or a form).
    let (status, _) = raw(
        admin,
        &format!("POST /api/keys/a/disable HTTP/1.1\r\nhost: {admin}\r\ncontent-type: text/plain"),
        "{}",
    );
    assert_eq!(status, 415);
    // DNS rebinding: evil.example resolves to 127.0.0.1; the page is same-origin with itself.
    let (status, text) = raw(
        admin,
        &format!(
            "POST /api/sql HTTP/1.1\r\nhost: evil.example:{port}\r\norigin: http://evil.example:{port}\r\ncontent-type: application/json"
        ),
        r#"{"sql":"SELECT * FROM requests"}"#,
    );
    assert_eq!(status, 421, "{text}");
    let (status, _) = raw(
        admin,
        &format!("GET /api/keys HTTP/1.1\r\nhost: evil.example:{port}"),
        "",
    );
    assert_eq!(status, 421, "reads too");
    let (status, _) = raw(
        admin,
        &format!(
            "POST /api/keys/a/disable HTTP/1.1\r\nhost: {admin}\r\nsec-fetch-site: cross-site\r\ncontent-type: application/json"
        ),
        "{}",
    );
    assert_eq!(status, 403);
    assert!(
        h.gateway
            .shared
            .pool
            .report()
            .iter()
            .all(|k| k.dead_reason.is_none())
    );
    // The operator's own tools still work: same origin, JSON.
    let (status, text) = raw(
        admin,
        &format!(
            "POST /api/keys/a/disable HTTP/1.1\r\nhost: localhost:{port}\r\norigin: http://localhost:{port}\r\ncontent-type: application/json"
        ),
        "{}",
    );
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_parallel_guesses_gets_no_more_tries_than_the_limit() {
    let h = with_auth();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = h.client.clone();
        let url = h.admin("/auth/login");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"password": format!("guess-{i}")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        evaluated <= 5,
        "{evaluated} guesses were checked: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    // Once five were wrong, the right password waits too.
    while h
        .gateway
        .shared
        .metrics
        .auth_failures
        .with_label_values(&["bad_password"])
        .get()
        < 5
    {
        let r = h
            .client
            .post(h.admin("/auth/login"))
            .json(&json!({"password": "again"}))
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 401 | 429));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(h.login(PASSWORD).await.status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn saving_back_the_redacted_config_keeps_the_secrets() {
    let h = with_auth();
    let t = login(&h).await;
    let cfg: Value = h
        .client
        .get(h.admin("/api/config"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doc = cfg["config"].clone();
    assert_eq!(doc["auth"]["jwt_secret"], "<redacted>");
    let mut edited = doc.clone();
    edited["pool"]["max_rotations"] = json!(2);
    let r = h
        .client
        .put(h.admin("/api/config"))
        .bearer_auth(&t)
        .json(&edited)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let text = h.config_text();
    assert!(text.contains(SECRET) && text.contains(PASSWORD), "{text}");
    assert!(!text.contains("<redacted>"), "{text}");
    // Nobody logs in with the placeholder; the old token still verifies (same secret).
    assert_eq!(
        h.client
            .post(h.admin("/auth/login"))
            .json(&json!({"password": "<redacted>"}))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = h
        .client
        .get(h.admin("/api/keys"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A key added with the placeholder as its secret is refused, not stored.
    let r = h
        .client
        .post(h.admin("/api/keys"))
        .bearer_auth(&t)
        .json(&json!({"id": "new", "key": "<redacted>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut with_new = doc.clone();
    with_new["gemini"]["api_keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "n2", "key": "<redacted>"}));
    let r = h
        .client
        .put(h.admin("/api/config"))
        .bearer_auth(&t)
        .json(&with_new)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("gemini.api_keys[1].key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_body_declared_too_large_is_refused_before_it_is_read() {
    let h = with_auth();
    let addr = h.gateway.admin_addr.unwrap();
    let token = login(&h).await;
    for (path, auth) in [
        ("/auth/login", String::new()),
        ("/api/tokens", format!("authorization: Bearer {token}\r\n")),
    ] {
        let started = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        // Declares 10 MB, sends nothing of it.
        write!(
            s,
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}content-type: application/json\r\ncontent-length: 10000000\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 413"), "{path}: {out}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{path}: answered only after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_client_that_waits_for_100_continue_gets_it() {
    let h = with_auth();
    let addr = h.gateway.admin_addr.unwrap();
    let body = format!("{{\"password\":\"{PASSWORD}\"}}");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "POST /auth/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    let n = s.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"token\""), "{out}");
}
