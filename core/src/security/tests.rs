use super::*;
use crate::config::load_str;

const STRONG: &str = "Str0ng-secret-with-enough-length-and-symbols!";

fn report(yaml: &str) -> Report {
    assess(&load_str(yaml, "(test)", &|_| None).expect("config"))
}

fn ids(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.id).collect()
}

fn base(server: &str, auth: &str) -> String {
    format!(
        "server: {server}\ngemini: {{ base_url: \"https://generativelanguage.googleapis.com\", api_keys: [ {{ id: a, key: AIzaRealLookingKey123 }} ] }}\nauth: {auth}\n"
    )
}

#[cfg(unix)]
#[test]
fn writable_programs_are_findings() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("route.rhai");
    std::fs::write(&script, "fn route(req) { () }").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = format!(
        "{}pipeline:\n  - rhai: {{ script: \"{}\" }}\n",
        base("{ host: 127.0.0.1 }", "{ enabled: false }"),
        script.display()
    );
    assert!(!ids(&report(&yaml)).contains(&"program-writable-by-others"));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = report(&yaml);
    let f = r
        .findings
        .iter()
        .find(|f| f.id == "program-writable-by-others")
        .expect("finding");
    assert_eq!(f.cwe, "CWE-732");
}

#[test]
fn each_check_fires_on_a_config_made_to_trip_it() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            base("{ host: 127.0.0.1 }", "{ enabled: false }"),
            "auth-disabled",
            "CWE-306",
        ),
        (
            base(
                "{ host: 127.0.0.1 }",
                "{ enabled: true, jwt_secret: short }",
            ),
            "jwt-secret-weak",
            "CWE-326",
        ),
        (
            base(
                "{ host: 127.0.0.1 }",
                &format!(
                    "{{ enabled: true, jwt_secret: \"{STRONG}\", keys: [ {{ kid: k2, algorithm: HS256, secret: a }} ] }}"
                ),
            ),
            "jwt-key-weak",
            "CWE-326",
        ),
        (
            base(
                "{ host: 127.0.0.1 }",
                &format!("{{ enabled: true, jwt_secret: \"{STRONG}\", leeway: 30d }}"),
            ),
            "auth-leeway-long",
            "CWE-613",
        ),
        (
            base(
                "{ host: 127.0.0.1 }",
                &format!(
                    "{{ enabled: true, jwt_secret: \"{STRONG}\", admin_password: password123 }}"
                ),
            ),
            "admin-password-weak",
            "CWE-521",
        ),
        (
            format!(
                "server: {{ host: 127.0.0.1 }}\ngemini: {{ api_keys: [ {{ id: a, key: your-gemini-api-key }} ] }}\nauth: {{ enabled: true, jwt_secret: \"{STRONG}\" }}\n"
            ),
            "api-key-placeholder",
            "CWE-798",
        ),
        (
            base(
                "{ host: 0.0.0.0, mode: production }",
                &format!("{{ enabled: true, jwt_secret: \"{STRONG}\" }}"),
            ),
            "tls-required-in-production",
            "CWE-319",
        ),
        (
            base(
                "{ host: 0.0.0.0 }",
                &format!("{{ enabled: true, jwt_secret: \"{STRONG}\" }}"),
            ),
            "public-bind-without-tls",
            "CWE-319",
        ),
        (
            base(
                "{ host: 127.0.0.1 }",
                &format!(
                    "{{ enabled: true, jwt_secret: \"{STRONG}\" }}\nmetrics: {{ host: 0.0.0.0 }}"
                ),
            ),
            "admin-listener-public",
            "CWE-668",
        ),
        (
            base(
                "{ host: 127.0.0.1 }",
                &format!("{{ enabled: true, jwt_secret: \"{STRONG}\" }}"),
            ),
            "secrets-in-file",
            "CWE-312",
        ),
    ];
    for (yaml, id, cwe) in cases {
        let r = report(&yaml);
        let f = r
            .findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("{id} did not fire: {:?}\n{yaml}", ids(&r)));
        assert_eq!(f.cwe, cwe);
        assert!(!r.text().contains(STRONG), "a secret in the report");
    }
}

#[test]
fn the_secure_template_with_secrets_from_the_environment_is_clean() {
    let path =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../config/proxy.yaml.secure");
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    for f in ["cert.pem", "key.pem"] {
        let p = dir.path().join(f);
        std::fs::write(&p, "pem").unwrap();
        text = text.replace(
            &format!("/etc/gemini-proxy/tls/{f}"),
            &p.display().to_string(),
        );
    }
    let env = |k: &str| match k {
        "GEMINI_API_KEY" => Some("AIzaSyRealLookingKeyFromEnvironment".to_string()),
        "JWT_SECRET" => Some(STRONG.to_string()),
        "ADMIN_PASSWORD" => Some("Tr1cky-Long-Admin-Pass".to_string()),
        _ => None,
    };
    let loaded = load_str(&text, "proxy.yaml.secure", &env).unwrap();
    let r = assess(&loaded);
    assert!(r.findings.is_empty(), "{}", r.text());
    assert_eq!(r.score, 100);
    assert!(!r.blocks_production);
}

#[test]
fn production_is_blocked_by_a_critical_finding_or_a_low_score() {
    let r = report(&base(
        "{ host: 0.0.0.0, mode: production }",
        &format!("{{ enabled: true, jwt_secret: \"{STRONG}\" }}"),
    ));
    assert!(r.blocks_production);
    let ok = report(&base(
        "{ host: 127.0.0.1 }",
        &format!("{{ enabled: true, jwt_secret: \"{STRONG}\" }}"),
    ));
    assert!(!ok.blocks_production, "{}", ok.text());
    assert!(ok.score >= MIN_PRODUCTION_SCORE);
}

#[test]
fn a_remote_redis_without_password_or_tls_is_flagged() {
    let with = |url: &str| {
        let yaml = format!(
            "{}cluster: {{ redis: \"{url}\" }}\n",
            base("{ host: 127.0.0.1 }", "{ enabled: false }")
        );
        report(&yaml)
    };
    let r = with("redis://10.0.0.5:6379/0");
    let f = |id: &str| r.findings.iter().find(|f| f.id == id).map(|f| f.cwe);
    assert_eq!(f("cluster-redis-without-password"), Some("CWE-306"));
    assert_eq!(f("cluster-redis-cleartext"), Some("CWE-319"));
    assert_eq!(f("cluster-events-unsigned"), Some("CWE-345"));
    let r =
        with("rediss://:S3cret-pass@10.0.0.5:6380/0\", secret: \"9f2c4e81b07a5d36e8f1c2b49a7d0e53");
    assert!(
        !ids(&r).iter().any(|i| i.starts_with("cluster-")),
        "{:?}",
        ids(&r)
    );
    // The password never reaches a finding's text.
    let r = with("redis://:S3cret-pass@10.0.0.5:6379/0");
    assert_eq!(
        ids(&r).iter().filter(|i| i.starts_with("cluster-")).count(),
        2
    );
    assert!(!serde_json::to_string(&r).unwrap().contains("S3cret-pass"));
    // Loopback Redis (one machine) is not flagged.
    let r = with("redis://127.0.0.1:6379/0");
    assert!(!ids(&r).iter().any(|i| i.starts_with("cluster-")));
}
