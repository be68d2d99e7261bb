//! The admin config API: read (redacted), replace (validated, hot), history, rollback.

use gemini_proxy_tests::*;
use serde_json::{Value, json};

const SECRET: &str = "Config-API-test-secret-0123456789-abcdef!";
const PASSWORD: &str = "Config-Api-Admin-Pass-1";

async fn admin_token(h: &Harness) -> String {
    let (_, v) = json_of(h.login(PASSWORD).await).await;
    v["token"].as_str().unwrap().to_string()
}

async fn req(
    h: &Harness,
    m: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> (u16, Value) {
    let mut r = h
        .client
        .request(m, h.admin(path))
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        let media = if path == "/api/config" {
            "application/yaml"
        } else {
            "application/json"
        };
        r = r.header("content-type", media).body(b);
    }
    json_of(r.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn config_is_read_redacted_replaced_versioned_and_rolled_back() {
    let auth = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"{PASSWORD}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n"
    );
    let h = Harness::start_with(&[("a", "valid-SECRETKEY-a", 1)], &auth, |_| {});
    let r = h.client.get(h.admin("/api/config")).send().await.unwrap();
    assert_eq!(r.status(), 401, "the config API needs an admin token");
    let t = admin_token(&h).await;
    let (s, cfg) = req(&h, reqwest::Method::GET, "/api/config", &t, None).await;
    assert_eq!(s, 200);
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["config"]["gemini"]["api_keys"][0]["key"], "<redacted>");
    let text = cfg.to_string();
    for secret in ["valid-SECRETKEY-a", SECRET, PASSWORD] {
        assert!(!text.contains(secret), "secret in GET /api/config");
    }

    // Replace: a second key and a preset.
    let original = h.config_text();
    let new = original.replace(
        "    - { id: a, key: valid-SECRETKEY-a, weight: 1 }\n",
        "    - { id: a, key: valid-SECRETKEY-a, weight: 1 }\n    - { id: b, key: valid-b, weight: 5 }\n",
    );
    assert_ne!(new, original);
    let (s, r) = req(
        &h,
        reqwest::Method::PUT,
        "/api/config",
        &t,
        Some(new.clone()),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["version"]["version"], 2);
    assert_eq!(r["version"]["by"], "admin");
    assert_eq!(r["version"]["source"], "api");
    assert_eq!(h.config_text(), new, "written to the file");
    let keys = h.admin_json_with("/api/keys", &t).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);

    // An invalid config is refused with its field path, and nothing changes.
    let bad = new.replace("weight: 5", "weight: -5");
    let (s, r) = req(&h, reqwest::Method::PUT, "/api/config", &t, Some(bad)).await;
    assert_eq!(s, 400);
    assert!(
        r["error"]["message"].as_str().unwrap().contains("weight"),
        "{r}"
    );
    assert_eq!(h.config_text(), new);

    // An admin token cannot turn itself into lasting access or into the pooled keys: who is
    // trusted, how calls are authenticated, where keys go and native code change in the file.
    let auth_line = new
        .lines()
        .find(|l| l.starts_with("auth:"))
        .unwrap()
        .to_string();
    let with_pipeline = |p: &str| format!("{new}pipeline:\n{p}");
    for (locked, why) in [
        (
            new.replace("enabled: true", "enabled: false"),
            "`auth:` section",
        ),
        (new.replace(SECRET, "short"), "`auth:` section"),
        (
            new.replace(SECRET, "Another-Strong-Secret-0123456789-abcdefgh!"),
            "`auth:` section",
        ),
        (new.replace(PASSWORD, "admin"), "`auth:` section"),
        (
            new.replace(&auth_line, &auth_line.replace(" }", ", leeway: 3650d }")),
            "`auth:` section",
        ),
        (
            new.replace(
                &auth_line,
                &auth_line.replace(
                    " }",
                    ", keys: [ { kid: weak, algorithm: HS256, secret: a } ] }",
                ),
            ),
            "`auth:` section",
        ),
        (
            new.replace(
                &auth_line,
                &auth_line.replace(" }", ", revocations_file: other-revoked.json }"),
            ),
            "`auth:` section",
        ),
        (
            with_pipeline("  - auth: { when: { path_prefix: [ /nothing ] } }\n  - key_select\n"),
            "`auth` stage",
        ),
        (with_pipeline("  - key_select\n  - auth\n"), "`auth` stage"),
        (
            with_pipeline("  - auth\n  - native: { path: ./evil.so }\n  - key_select\n"),
            "a program a stage loads",
        ),
        (
            with_pipeline("  - auth\n  - rhai: { script: /etc/passwd }\n  - key_select\n"),
            "a program a stage loads",
        ),
        (
            new.replace(
                "pool: { state_file: \"\", keys_file: \"\" }",
                "pool: { state_file: \"revoked-tokens.json\", keys_file: \"\" }",
            ),
            "a file the gateway writes",
        ),
        (
            format!("{new}audit: {{ log_path: proxy.yaml }}\n"),
            "a file the gateway writes",
        ),
        (
            new.replacen(
                "server: { host: 127.0.0.1,",
                "server: { host: 127.0.0.1, public_url: \"http://evil.example\",",
                1,
            ),
            "`server:`",
        ),
        (
            new.replace(&h.mock.base_url(), "http://127.0.0.2:9"),
            "where the pooled keys are sent",
        ),
        (
            // Shared state in a Redis of the caller's choice would lift every limit.
            format!("{new}cluster: {{ redis: \"redis://evil.example:6379/0\" }}\n"),
            "`cluster:`",
        ),
        (
            new.replacen(
                "server: { host: 127.0.0.1,",
                "server: { host: 127.0.0.1, trusted_proxies: [ 0.0.0.0/0 ],",
                1,
            ),
            "`server:`",
        ),
    ] {
        assert_ne!(locked, new);
        let (s, r) = req(&h, reqwest::Method::PUT, "/api/config", &t, Some(locked)).await;
        assert_eq!(s, 400, "{why}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        assert!(
            !message.contains("short")
                && !message.contains(SECRET)
                && !message.contains("Another-Strong"),
            "{message}"
        );
        assert_eq!(h.config_text(), new, "{why}: nothing written");
    }
    // The calls still need a credential.
    let (s, _) = h
        .call(
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("x-goog-api-key", "garbage"),
            Some("{}".into()),
        )
        .await;
    assert_eq!(s, 401);

    let (s, hist) = req(&h, reqwest::Method::GET, "/api/config/history", &t, None).await;
    assert_eq!(s, 200);
    let versions = hist["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(
        versions[1]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "gemini.api_keys"),
        "{hist}"
    );
    assert!(
        !hist.to_string().contains("valid-b"),
        "no values in the history"
    );

    // Roll back to version 1.
    let (s, r) = req(
        &h,
        reqwest::Method::POST,
        "/api/config/rollback",
        &t,
        Some(json!({"version": 1}).to_string()),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["version"]["version"], 3);
    assert_eq!(r["version"]["source"], "rollback");
    assert_eq!(h.config_text(), original);
    let keys = h.admin_json_with("/api/keys", &t).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    let (s, _) = req(
        &h,
        reqwest::Method::POST,
        "/api/config/rollback",
        &t,
        Some(json!({"version": 99}).to_string()),
    )
    .await;
    assert_eq!(s, 404);
}

/// A stage only the embedding binary knows.
struct HouseStage;

impl gemini_proxy_sdk::Plugin for HouseStage {
    fn name(&self) -> &str {
        "house_stage"
    }
    fn phases(&self) -> gemini_proxy_sdk::Phases {
        gemini_proxy_sdk::Phases::NONE
    }
}

impl gemini_proxy_sdk::PluginFactory for HouseStage {
    const KIND: &'static str = "house_stage";
    type Config = serde_json::Value;
    fn build(
        _: serde_json::Value,
        _: &gemini_proxy_sdk::BuildEnv,
    ) -> Result<std::sync::Arc<dyn gemini_proxy_sdk::Plugin>, gemini_proxy_sdk::PluginError> {
        Ok(std::sync::Arc::new(HouseStage))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_config_is_validated_with_the_registry_the_gateway_runs() {
    let mut registry = gemini_proxy_core::builtin_registry();
    registry.register::<HouseStage>();
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"{PASSWORD}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\npipeline:\n  - auth\n  - house_stage\n  - key_select\n"
    );
    let h = Harness::start_embedded(
        MockGemini::start().unwrap(),
        &[("a", "valid-a", 1)],
        &extra,
        |_| {},
        std::time::Duration::from_millis(100),
        registry,
    );
    let t = admin_token(&h).await;
    // The same config with one more key: the embedder's stage is valid here.
    let new = h.config_text().replace(
        "    - { id: a, key: valid-a, weight: 1 }\n",
        "    - { id: a, key: valid-a, weight: 1 }\n    - { id: b, key: valid-b, weight: 1 }\n",
    );
    let (s, v) = req(&h, reqwest::Method::PUT, "/api/config", &t, Some(new)).await;
    assert_eq!(s, 200, "{v}");
    // A stage nobody registered is still refused, and nothing changes.
    let unknown = h
        .config_text()
        .replace("  - house_stage\n", "  - nobody_stage\n");
    let (s, v) = req(&h, reqwest::Method::PUT, "/api/config", &t, Some(unknown)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("nobody_stage"), "{v}");
    assert!(h.config_text().contains("house_stage"));
}
