//! The operator console's surfaces on the admin listener: the embedded files and their headers,
//! path tricks on `/ui/`, the timeline, config validation without applying, and the audit rows
//! of operator actions. (The pages themselves run in a real browser in `scripts/test`.)

use gemini_proxy_tests::*;
use serde_json::{Value, json};

const SECRET: &str = "Console-test-signing-secret-0123456789-abcdef!";
const PASSWORD: &str = "Console-Admin-Pass-1";
const KEY: &str = "valid-CONSOLESECRET-a";

fn start(dir: &tempfile::TempDir) -> Harness {
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"{PASSWORD}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\naudit: {{ log_path: \"{0}/a.jsonl\", db_path: \"{0}/a.duckdb\", flush_interval: 100ms }}\n",
        dir.path().display()
    );
    Harness::start_with(
        &[("a", KEY, 1), ("b", "valid-b-console", 1)],
        &extra,
        |_| {},
    )
}

async fn token(h: &Harness) -> String {
    let (_, v) = json_of(h.login(PASSWORD).await).await;
    v["token"].as_str().unwrap().to_string()
}

async fn get(h: &Harness, path: &str) -> reqwest::Response {
    h.client.get(h.admin(path)).send().await.unwrap()
}

async fn send(
    h: &Harness,
    m: reqwest::Method,
    path: &str,
    t: &str,
    media: &str,
    body: &str,
) -> (u16, Value) {
    let r = h
        .client
        .request(m, h.admin(path))
        .header("authorization", format!("Bearer {t}"))
        .header("content-type", media)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    json_of(r).await
}

#[tokio::test(flavor = "multi_thread")]
async fn console_files_are_public_plain_and_locked_down() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(&dir);
    let r = h.client.get(h.admin("/")).send().await.unwrap();
    // reqwest follows the redirect to the page itself.
    assert_eq!(r.url().path(), "/ui/");
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe"),
        "no unsafe-inline or unsafe-eval: {csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let html = r.text().await.unwrap();
    assert!(html.contains("app.js"), "{html}");

    let mut all = String::new();
    for f in [
        "app.js",
        "lib.js",
        "keys.js",
        "console.css",
        "uplot.iife.min.js",
        "LICENSE-uplot",
    ] {
        let r = get(&h, &format!("/ui/{f}")).await;
        assert_eq!(r.status(), 200, "{f}");
        assert!(
            r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        all.push_str(&r.text().await.unwrap());
    }
    for secret in [KEY, SECRET, PASSWORD] {
        assert!(!all.contains(secret), "the console's files hold no secret");
    }
    for (path, want) in [
        ("/ui/nosuch.js", 404),
        ("/ui/../api/keys", 400),
        ("/ui//app.js", 400),
        ("/ui/%61pp.js", 400),
        ("/ui/app.js/", 400),
        ("/ui/a/b.js", 404),
        ("/ui", 404),
        ("/UI/", 400),
        ("/UI/app.js", 404),
    ] {
        let port = h.gateway.admin_addr.unwrap().port();
        let (status, body) = http_once(port, "GET", path, &[], "");
        assert_eq!(status, want, "{path}: {body}");
    }
    let r = h
        .client
        .post(h.admin("/ui/app.js"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Another site's page cannot load the console into a frame or read it.
    let r = h
        .client
        .get(h.admin("/ui/"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // An unchanged file is not sent again.
    let r = get(&h, "/ui/app.js").await;
    let tag = r.headers()["etag"].to_str().unwrap().to_string();
    let r = h
        .client
        .get(h.admin("/ui/app.js"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timeline_shows_the_last_calls_to_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(&dir);
    assert_eq!(get(&h, "/api/timeline").await.status(), 401);
    let t = token(&h).await;
    let user = {
        let (_, v) = send(
            &h,
            reqwest::Method::POST,
            "/api/tokens",
            &t,
            "application/json",
            r#"{"sub":"u1"}"#,
        )
        .await;
        v["token"].as_str().unwrap().to_string()
    };
    for _ in 0..5 {
        let r = h
            .client
            .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
            .header("authorization", format!("Bearer {user}"))
            .header("content-type", "application/json")
            .body(gen_body("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The last call is recorded as it ends, just after its answer.
    within(
        std::time::Duration::from_secs(5),
        "five calls in the timeline",
        || async {
            let v = h.admin_json_with("/api/timeline", &t).await;
            v["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["calls"].as_u64().unwrap())
                .sum::<u64>()
                >= 5
        },
    )
    .await;
    let v = h.admin_json_with("/api/timeline", &t).await;
    assert_eq!(v["step_seconds"], 10);
    let points = v["points"].as_array().unwrap();
    let calls: u64 = points.iter().map(|p| p["calls"].as_u64().unwrap()).sum();
    let tokens: u64 = points.iter().map(|p| p["tokens"].as_u64().unwrap()).sum();
    assert!(calls >= 5, "{v}");
    assert!(tokens > 0, "the mock reports usage: {v}");
    assert!(points.iter().any(|p| p["p50_ms"].is_number()), "{v}");
    // The sampler runs once a second: open calls are sampled too.
    within(
        std::time::Duration::from_secs(5),
        "a gauge sample",
        || async {
            let v = h.admin_json_with("/api/timeline", &t).await;
            v["points"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["in_flight"].is_number())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn config_validation_checks_everything_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(&dir);
    let t = token(&h).await;
    let cfg = h.admin_json_with("/api/config", &t).await;
    let yaml = cfg["yaml"].as_str().unwrap().to_string();
    assert!(
        yaml.contains("<redacted>") && !yaml.contains(KEY) && !yaml.contains(SECRET),
        "{yaml}"
    );
    let before = h.admin_json_with("/api/config/history", &t).await;
    let generation = h.admin_json("/health").await["config_generation"].clone();
    let file = h.config_text();

    // The redacted file sent back as it is: valid, nothing would change.
    let (s, v) = send(
        &h,
        reqwest::Method::POST,
        "/api/config/validate",
        &t,
        "application/yaml",
        &yaml,
    )
    .await;
    assert_eq!((s, v["changed"].clone()), (200, json!([])), "{v}");
    // An edit: valid, with the field it changes.
    let edited = yaml.replacen("weight: 1", "weight: 7", 1);
    let (s, v) = send(
        &h,
        reqwest::Method::POST,
        "/api/config/validate",
        &t,
        "application/yaml",
        &edited,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changed"], json!(["gemini.api_keys"]), "{v}");
    // Invalid: the field path, as PUT would say.
    let bad = yaml.replacen("pool:\n", "pool:\n  max_rotations: lots\n", 1);
    let (s, v) = send(
        &h,
        reqwest::Method::POST,
        "/api/config/validate",
        &t,
        "application/yaml",
        &bad,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("pool.max_rotations"), "{msg}");
    // Locked sections and the placeholder in a new place are refused like PUT refuses them.
    let locked = yaml.replacen("enabled: true", "enabled: false", 1);
    let (s, _) = send(
        &h,
        reqwest::Method::POST,
        "/api/config/validate",
        &t,
        "application/yaml",
        &locked,
    )
    .await;
    assert_eq!(s, 400);
    // Only admins, only with a config body type.
    let (s, _) = send(
        &h,
        reqwest::Method::POST,
        "/api/config/validate",
        "nope",
        "application/yaml",
        &yaml,
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = send(
        &h,
        reqwest::Method::POST,
        "/api/config/validate",
        &t,
        "text/plain",
        &yaml,
    )
    .await;
    assert_eq!(s, 415);

    assert_eq!(h.config_text(), file, "validation never writes the file");
    assert_eq!(h.admin_json_with("/api/config/history", &t).await, before);
    assert_eq!(
        h.admin_json("/health").await["config_generation"],
        generation
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_actions_are_audited_with_ids_not_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(&dir);
    let t = token(&h).await;
    let post = |path: &'static str, body: &'static str| {
        let t = t.clone();
        let h = &h;
        async move { send(h, reqwest::Method::POST, path, &t, "application/json", body).await }
    };
    assert_eq!(post("/api/keys/b/disable", "{}").await.0, 200);
    assert_eq!(post("/api/keys/nosuch/reset", "{}").await.0, 404);
    let (s, issued) = post(
        "/api/tokens",
        r#"{"sub":"carol","models":["gemini-2.5-flash"]}"#,
    )
    .await;
    assert_eq!(s, 201);
    let jti = issued["jti"].as_str().unwrap().to_string();
    let jwt = issued["token"].as_str().unwrap().to_string();
    let revoke = format!(r#"{{"jti":"{jti}"}}"#);
    let (s, _) = send(
        &h,
        reqwest::Method::POST,
        "/api/tokens/revoke",
        &t,
        "application/json",
        &revoke,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = send(
        &h,
        reqwest::Method::POST,
        "/api/keys",
        &t,
        "application/json",
        r#"{"id":"c","key":"valid-NEWKEYSECRET-c"}"#,
    )
    .await;
    assert_eq!(s, 201);

    let sql = json!({"sql": "SELECT action, result, detail FROM security_events WHERE event_type = 'AdminAction' AND action <> 'sql query' ORDER BY ts"}).to_string();
    let mut rows = Value::Null;
    for _ in 0..100 {
        rows = send(
            &h,
            reqwest::Method::POST,
            "/api/sql",
            &t,
            "application/json",
            &sql,
        )
        .await
        .1;
        if rows["rows"].as_array().map_or(0, Vec::len) >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = rows.to_string();
    for want in [
        "key disabled",
        "key reset",
        "token issued",
        "token revoked",
        "key added",
        "carol",
        &jti,
        "\\\"by\\\":\\\"admin\\\"",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    assert!(
        text.contains("Failure"),
        "the refused reset is audited as a failure: {text}"
    );
    for secret in ["valid-NEWKEYSECRET-c", &jwt, KEY] {
        assert!(!text.contains(secret), "a secret in the audit rows: {text}");
    }
    let log = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
    assert!(log.contains("token issued") && !log.contains(&jwt) && !log.contains("NEWKEYSECRET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_editable_yaml_never_shows_a_key_however_the_file_spells_it() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"{PASSWORD}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\naudit: {{ log_path: \"{0}/a.jsonl\", db_path: \"{0}/a.duckdb\" }}\n",
        dir.path().display()
    );
    // The oldest spelling: one bare key.
    let h = Harness::start_with(&[], &extra, |t| {
        *t = t.replace("  api_keys:\n", "  api_key: valid-LEGACYSECRET-1\n");
    });
    let t = token(&h).await;
    let cfg = h.admin_json_with("/api/config", &t).await;
    let yaml = cfg["yaml"].as_str().unwrap().to_string();
    assert!(!yaml.contains("LEGACYSECRET"), "{yaml}");
    assert!(yaml.contains("<redacted>"), "{yaml}");
    // Sent back as shown, it is valid and keeps the key.
    let (s, v) = send(
        &h,
        reqwest::Method::POST,
        "/api/config/validate",
        &t,
        "application/yaml",
        &yaml,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changed"], json!([]), "{v}");
    let (s, v) = send(
        &h,
        reqwest::Method::PUT,
        "/api/config",
        &t,
        "application/yaml",
        &yaml,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let r = h.generate("still served").await;
    assert_eq!(
        r.status(),
        401,
        "auth is on; what matters is that the key survived"
    );
    assert!(
        h.config_text().contains("valid-LEGACYSECRET-1"),
        "the file keeps the key itself"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_refuses_aliases_and_leaves_no_watcher_behind() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/latency_pick.rhai");
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"{PASSWORD}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\naudit: {{ log_path: \"{0}/a.jsonl\", db_path: \"{0}/a.duckdb\" }}\npipeline:\n  - rhai: {{ script: \"{1}\", watch_interval_ms: 3600000 }}\n  - key_select\n",
        dir.path().display(),
        script.display()
    );
    let h = Harness::start_with(&[("a", KEY, 1)], &extra, |_| {});
    let t = token(&h).await;
    let yaml = h.admin_json_with("/api/config", &t).await["yaml"]
        .as_str()
        .unwrap()
        .to_string();
    // A few aliases of a large anchor would expand into millions of nodes.
    // However they are spelled: a bare CR ending a comment, quotes, JSON-style keys.
    for tail in [
        "x: &a [1, 2, 3]\ny: [*a, *a, *a]\n",
        "# c\rx: &a [1, 2, 3]\ry: [*a, *a]\r",
        "x: &a [1]\ny: [it's, *a]\n",
        "x: &a [1]\ny: {\"q\":*a}\n",
    ] {
        let bomb = format!("{yaml}{tail}");
        let (s, v) = send(
            &h,
            reqwest::Method::POST,
            "/api/config/validate",
            &t,
            "application/yaml",
            &bomb,
        )
        .await;
        assert_eq!(s, 400, "{tail:?}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("aliases"),
            "{v}"
        );
    }
    // Every validation builds the stages, and lets them go again.
    let watchers = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == "rhai-watch")
            .count()
    };
    let before = watchers();
    for _ in 0..5 {
        let (s, v) = send(
            &h,
            reqwest::Method::POST,
            "/api/config/validate",
            &t,
            "application/yaml",
            &yaml,
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    within(
        std::time::Duration::from_secs(3),
        "the validations' watchers gone",
        || async { watchers() <= before },
    )
    .await;
}
