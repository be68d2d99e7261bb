//! Loading, migrating and validating config text.
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn deep_nesting_is_refused_quickly() {
    for text in [
        format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{}x", "- ".repeat(5_000)),
        (0..200)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i * 4)))
            .collect::<String>(),
    ] {
        let started = std::time::Instant::now();
        let Err(e) = load_str(&text, "t", &no_env) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("nested more than"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    // Brackets inside strings and comments do not count.
    let ok = format!(
        "server: {{ host: \"{}\" }} # {}\n",
        "[".repeat(100),
        "{".repeat(100)
    );
    assert!(too_deep(&ok).is_none());
}

#[test]
fn the_redaction_placeholder_is_never_a_secret() {
    let text = MINIMAL.replace("your-gemini-api-key", "<redacted>");
    let Err(e) = load_str(&text, "t", &no_env) else {
        panic!("accepted")
    };
    assert!(e.to_string().contains("gemini.api_keys[0].key"), "{e}");
    for near in [" <REDACTED>", "redacted"] {
        let text = MINIMAL.replace("jwt_secret: \"...\"", &format!("jwt_secret: {near:?}"));
        let Err(e) = load_str(&text, "t", &no_env) else {
            panic!("accepted {near:?}")
        };
        assert!(e.to_string().contains("auth.jwt_secret"), "{e}");
    }
}

const MINIMAL: &str = r#"
server: { host: "127.0.0.1", port: 8080, tls: { enabled: false } }
gemini: { api_keys: [ { id: "primary", key: "your-gemini-api-key", weight: 100 } ] }
auth: { enabled: true, jwt_secret: "...", admin_password: "..." }
metrics: { enabled: true, prometheus_port: 9090 }
"#;

#[test]
fn two_listeners_never_share_a_port() {
    let same = MINIMAL.replace("prometheus_port: 9090", "prometheus_port: 8080");
    let e = load_str(&same, "t", &no_env).unwrap_err();
    assert_eq!(e.path, "metrics.prometheus_port", "{e}");
    let acme = |port: u16| {
        MINIMAL.replace(
            "tls: { enabled: false }",
            &format!("tls: {{ enabled: true, acme: {{ enabled: true, domains: [gw.example], http_port: {port} }} }}"),
        )
    };
    for (port, what) in [(8080, "server.port"), (9090, "metrics.prometheus_port")] {
        let e = load_str(&acme(port), "t", &no_env).unwrap_err();
        assert_eq!(e.path, "server.tls.acme.http_port", "{e}");
        assert!(e.message.contains(what), "{e}");
    }
    load_str(&acme(8081), "t", &no_env).unwrap();
}

/// A cluster secret as `openssl rand -hex 32` makes one.
const ENV_SEAL: &str = "9f2c4e81b07a5d36e8f1c2b49a7d0e53c6b8f4a21d97e035b6c8a4f1e2d7093b";

#[test]
fn a_bad_cluster_section_names_its_field() {
    let with = |c: &str| load_str(&format!("{MINIMAL}cluster: {c}\n"), "t", &no_env);
    for (c, path) in [
        ("{ redis: \"http://10.0.0.5\" }", "cluster.redis"),
        ("{ redis: \"redis://:pw@[::1\" }", "cluster.redis"),
        ("{ redis: \"redis+unix:///tmp/r.sock\" }", "cluster.redis"),
        (
            "{ redis: \"redis://h\", instance_id: \"a b\" }",
            "cluster.instance_id",
        ),
        (
            "{ redis: \"redis://h\", key_prefix: \"\" }",
            "cluster.key_prefix",
        ),
        (
            "{ redis: \"redis://h\", op_timeout: 0s }",
            "cluster.op_timeout",
        ),
        (
            "{ redis: \"redis://h\", fallback_instances: 0 }",
            "cluster.fallback_instances",
        ),
        ("{ redis: \"redis://h\", wat: 1 }", "cluster.wat"),
        (
            "{ redis: \"redis://h\", secret: short-pw-seal }",
            "cluster.secret",
        ),
        (
            "{ redis: \"redis://h\", secret: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa }",
            "cluster.secret",
        ),
        (
            "{ redis: \"redis://h\", secret: abcdabcdabcdabcdabcdabcdabcdabcdabcd }",
            "cluster.secret",
        ),
    ] {
        let e = with(c).expect_err(c);
        assert_eq!(e.path, path, "{c}: {e}");
        assert!(!e.to_string().contains("pw@"), "{e}");
        assert!(!e.to_string().contains("short-pw-seal"), "{e}");
    }
    let l = with("{ redis: \"rediss://:pw@10.0.0.5:6380/1\", instance_id: gw-1 }").unwrap();
    assert_eq!(l.config.cluster.unwrap().op_timeout.0.as_millis(), 50);
    // REDIS_URL and CLUSTER_SECRET replace the file's, and only where there is a cluster section.
    let env = |n: &str| match n {
        "REDIS_URL" => Some("redis://other:6379".to_string()),
        "CLUSTER_SECRET" => Some(ENV_SEAL.to_string()),
        _ => None,
    };
    let l = load_str(
        &format!("{MINIMAL}cluster: {{ redis: \"redis://h\" }}\n"),
        "t",
        &env,
    )
    .unwrap();
    let c = l.config.cluster.unwrap();
    assert_eq!(c.redis, "redis://other:6379");
    assert_eq!(c.secret.as_deref(), Some(ENV_SEAL));
    assert!(
        load_str(MINIMAL, "t", &env)
            .unwrap()
            .config
            .cluster
            .is_none()
    );
}

#[test]
fn product_brief_minimal_config_loads() {
    let l = load_str(MINIMAL, "proxy.yaml", &no_env).unwrap();
    assert_eq!(l.config.version, 1);
    assert_eq!(
        l.config.gemini.base_url,
        "https://generativelanguage.googleapis.com"
    );
    assert_eq!(l.config.gemini.api_keys[0].weight, 100);
    assert_eq!(l.config.server.max_body_bytes, 20 * 1024 * 1024);
    assert!(l.warnings.is_empty());
}

#[test]
fn unknown_field_names_file_and_path() {
    let e = load_str(
        &MINIMAL.replace("weight: 100", "weight: 100, wieght: 3"),
        "c.yaml",
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.file, "c.yaml");
    assert_eq!(e.path, "gemini.api_keys[0].wieght");
    assert!(e.message.contains("unknown field `wieght`"), "{e}");
    let e = load_str(
        &MINIMAL.replace("port: 8080", "port: eighty"),
        "c.yaml",
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.path, "server.port");
    let e = load_str(
        "gemini: {api_keys: [{id: a, key: k}]}\nsurprise: 1\n",
        "c.yaml",
        &no_env,
    )
    .unwrap_err();
    assert!(e.message.contains("unknown field `surprise`"), "{e}");
}

#[test]
fn semantic_errors_have_paths() {
    let dup = "gemini: {api_keys: [{id: a, key: key-one-1}, {id: a, key: key-two-2}]}";
    assert_eq!(
        load_str(dup, "f", &no_env).unwrap_err().path,
        "gemini.api_keys[1].id"
    );
    let same = "gemini: {api_keys: [{id: a, key: key-one-1}, {id: b, key: key-one-1}]}";
    let e = load_str(same, "f", &no_env).unwrap_err();
    assert_eq!(e.path, "gemini.api_keys[1].key");
    assert!(
        !e.to_string().contains("key-one-1"),
        "secret leaked into error: {e}"
    );
    let url = "gemini: {base_url: 'ftp://x', api_keys: [{id: a, key: key-one-1}]}";
    assert_eq!(
        load_str(url, "f", &no_env).unwrap_err().path,
        "gemini.base_url"
    );
    let none = "gemini: {api_keys: []}";
    assert_eq!(
        load_str(none, "f", &no_env).unwrap_err().path,
        "gemini.api_keys"
    );
    let ports = "server: {port: 9090}\ngemini: {api_keys: [{id: a, key: key-kkk}]}";
    assert_eq!(
        load_str(ports, "f", &no_env).unwrap_err().path,
        "metrics.prometheus_port"
    );
    let v = "version: 7\ngemini: {api_keys: [{id: a, key: key-kkk}]}";
    assert_eq!(load_str(v, "f", &no_env).unwrap_err().path, "version");
    // A pooled key is long enough to be masked and spelled the same in JSON, headers and URLs.
    for (key, why) in [
        ("abc12", "shorter than 6"),
        ("'has\"quote-123'", "`\"`"),
        ("'back\\slash-123'", "`\\`"),
        ("plus+key-123", "`+`"),
        ("slash/key-123", "`/`"),
    ] {
        let text = format!("gemini: {{api_keys: [{{id: a, key: {key}}}]}}");
        let e = load_str(&text, "f", &no_env).unwrap_err();
        assert_eq!(e.path, "gemini.api_keys[0].key", "{key}");
        assert!(e.message.contains(why), "{key}: {e}");
    }
    let e = load_str(
        "gemini: {api_keys: [{id: SECRETasID123456, key: SECRETasID123456}]}",
        "f",
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.path, "gemini.api_keys[0].id");
    assert!(!e.to_string().contains("SECRETasID"), "{e}");
    let yaml = "gemini: [unclosed";
    assert!(
        load_str(yaml, "f", &no_env)
            .unwrap_err()
            .path
            .starts_with("line ")
    );
}

#[test]
fn migrates_loose_shapes_with_one_warning_each() {
    let old = "api_keys: [AIzaOne, AIzaTwo]\nmetrics: {port: 9191}\nserver: {tls: false}\n";
    let l = load_str(old, "f", &no_env).unwrap();
    assert_eq!(l.warnings.len(), 5, "{:?}", l.warnings);
    let ids: Vec<_> = l
        .config
        .gemini
        .api_keys
        .iter()
        .map(|k| k.id.as_str())
        .collect();
    assert_eq!(ids, ["key-1", "key-2"]);
    assert_eq!(l.config.metrics.prometheus_port, 9191);
    let text = migrated_yaml(&l);
    let again = load_str(&text, "f", &no_env).unwrap();
    assert!(
        again.warnings.is_empty(),
        "migrated output is stable: {:?}",
        again.warnings
    );
    assert_eq!(again.config, l.config);
    let single = load_str("gemini: {api_key: AIzaOne}", "f", &no_env).unwrap();
    assert_eq!(single.config.gemini.api_keys.len(), 1);
}

#[test]
fn env_overrides_secrets_and_keys() {
    let env = |k: &str| match k {
        "JWT_SECRET" => Some("from-env".to_string()),
        "GEMINI_API_KEY" => Some("key-a1, key-b2".to_string()),
        _ => None,
    };
    let l = load_str(MINIMAL, "f", &env).unwrap();
    assert_eq!(l.config.auth.jwt_secret.as_deref(), Some("from-env"));
    let keys: Vec<_> = l
        .config
        .gemini
        .api_keys
        .iter()
        .map(|k| (k.id.as_str(), k.key.as_str()))
        .collect();
    assert_eq!(keys, [("env-1", "key-a1"), ("env-2", "key-b2")]);
    let one = |k: &str| (k == "GEMINI_API_KEY").then(|| "only-key".to_string());
    let l = load_str(MINIMAL, "f", &one).unwrap();
    assert_eq!(
        (
            l.config.gemini.api_keys[0].id.as_str(),
            l.config.gemini.api_keys[0].key.as_str()
        ),
        ("primary", "only-key")
    );
    // An empty key list in the file is fine when the environment supplies keys.
    let l = load_str("gemini: {api_keys: []}", "f", &one).unwrap();
    assert_eq!(l.config.gemini.api_keys.len(), 1);
}

#[test]
fn a_scheduled_export_is_at_most_once_a_second() {
    let with = |every: &str| {
        load_str(
            &format!("{MINIMAL}audit: {{ export_every: {every} }}\n"),
            "t",
            &no_env,
        )
    };
    assert_eq!(with("10ms").unwrap_err().path, "audit.export_every");
    assert!(with("0s").is_ok() && with("1h").is_ok());
}
