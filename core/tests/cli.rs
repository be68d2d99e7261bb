//! The binary's subcommands, as an operator runs them.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemini-proxy"))
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn version_and_help() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = bin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "demo", "check"] {
        assert!(text.contains(cmd), "{cmd} missing from --help");
    }
}

#[test]
fn check_migrate_prints_the_upgraded_file() {
    let out = bin()
        .args(["check", "--migrate", "--config"])
        .arg(root().join("examples/configs/legacy-keys.yaml"))
        .env_remove("GEMINI_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upgraded = String::from_utf8_lossy(&out.stdout);
    let v: serde_yaml::Value = serde_yaml::from_str(&upgraded).unwrap();
    assert_eq!(v["version"].as_u64(), Some(1));
    assert_eq!(v["gemini"]["api_keys"][1]["id"].as_str(), Some("key-2"));
    assert_eq!(v["metrics"]["prometheus_port"].as_u64(), Some(9191));
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert_eq!(warnings.matches("migrated:").count(), 4, "{warnings}");
}

#[test]
fn check_reports_file_path_and_problem() {
    let dir = std::env::temp_dir().join(format!("gp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "gemini:\n  api_keys:\n    - { id: a, key: k, weight: -3 }\n",
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .env_remove("GEMINI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml: gemini.api_keys[0].weight:"),
        "{err}"
    );
    let out = bin()
        .args(["check", "--format", "json", "--config"])
        .arg(&bad)
        .env_remove("GEMINI_API_KEY")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["path"], "gemini.api_keys[0].weight");
    let out = bin()
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "serve refuses an invalid config"
    );
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_reports_security_findings_and_production_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let weak = write(
        dir.path(),
        "weak.yaml",
        "server: { host: 0.0.0.0, port: 18999, mode: production }\ngemini: { api_keys: [ { id: a, key: your-gemini-api-key } ] }\nauth: { enabled: true, jwt_secret: short, admin_password: admin }\n",
    );
    let out = bin()
        .args(["check", "--format", "json", "--config"])
        .arg(&weak)
        .env_remove("JWT_SECRET")
        .env_remove("ADMIN_PASSWORD")
        .env_remove("GEMINI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = v["security"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    for id in [
        "jwt-secret-weak",
        "admin-password-weak",
        "api-key-placeholder",
        "tls-required-in-production",
    ] {
        assert!(ids.contains(&id), "{id} missing: {ids:?}");
    }
    assert!(v["security"]["score"].as_u64().unwrap() < 70);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("\"short\"") && !text.contains("admin\""),
        "secrets in the report"
    );
    // serve refuses to start in production with this config.
    let out = bin()
        .args(["serve", "--config"])
        .arg(&weak)
        .env_remove("JWT_SECRET")
        .env_remove("ADMIN_PASSWORD")
        .env_remove("GEMINI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("production mode refuses to start"));
}

#[test]
fn token_command_prints_a_token_the_gateway_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gw.yaml",
        "server: { host: 127.0.0.1, port: 18998 }\ngemini: { api_keys: [ { id: a, key: AIzaKeyForTokenTest } ] }\nauth: { enabled: true, jwt_secret: \"Cli-Test-Secret-0123456789-abcdef!\", issuer: gw }\n",
    );
    let out = bin()
        .args([
            "token",
            "--sub",
            "ci-bot",
            "--role",
            "admin",
            "--ttl",
            "10m",
            "--models",
            "gemini-2.5-*,gemma-*",
            "--tenant",
            "acme",
            "--config",
        ])
        .arg(&cfg)
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let stage: gemini_proxy_plugins::auth::AuthStageConfig = serde_json::from_value(
        serde_json::json!({"jwt_secret": "Cli-Test-Secret-0123456789-abcdef!", "issuer": "gw"}),
    )
    .unwrap();
    let v = gemini_proxy_plugins::auth::Verifier::new(&stage, dir.path()).unwrap();
    let claims = v.verify(&token).unwrap();
    assert_eq!(claims.sub, "ci-bot");
    assert_eq!(claims.role.as_deref(), Some("admin"));
    assert_eq!(claims.models, vec!["gemini-2.5-*", "gemma-*"]);
    assert!(claims.exp - claims.iat.unwrap() == 600);
    assert_eq!(claims.tenant.as_deref(), Some("acme"));
    // A subject that would forge a log line is refused.
    let out = bin()
        .args(["token", "--sub", "a\nb", "--config"])
        .arg(&cfg)
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // hash-password prints an Argon2 hash.
    use std::io::Write;
    let mut child = bin()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Another-Long-Passw0rd\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("$argon2id$"));
}

#[test]
fn serve_refuses_an_upgrade_socket_other_users_could_take() {
    let dir = tempfile::tempdir().unwrap();
    // Held for the whole test: should the check be missing, serve fails to bind, not hangs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let taken_too = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_port = taken_too.local_addr().unwrap().port();
    let config = write(
        dir.path(),
        "dev.yaml",
        &format!(
            "server: {{ host: 127.0.0.1, port: {port} }}\ngemini: {{ api_keys: [ {{ id: a, key: AIzaTestKeyForTheUpgradeSocketCheck }} ] }}\nmetrics: {{ prometheus_port: {admin_port} }}\n"
        ),
    );
    // `/tmp` is writable by everyone: another user could bind the name first.
    let out = bin()
        .args([
            "serve",
            "--upgrade-sock",
            "/tmp/gemini-proxy-upgrade.sock",
            "--config",
        ])
        .arg(&config)
        .env_remove("GEMINI_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{:?} {err}", out.status);
    assert!(err.contains("can be written by other users"), "{err}");
    assert!(!err.contains("AIzaTestKey"), "{err}");
}
