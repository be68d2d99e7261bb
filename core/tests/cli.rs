//! The binary's subcommands, as an operator runs them.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemini-proxy"))
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
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
