//! The audit database as an operator meets it: a gateway killed with SIGKILL keeps every call
//! older than `audit.flush_interval`; `query` answers through the running gateway's admin API
//! and, once it is gone, from the file opened read-only; `export` writes Parquet by day.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gemini_proxy_core::mock::MockGemini;

use gemini_proxy_tests::{free_port, http_once as http};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemini-proxy"))
}

struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path, port: u16, admin: u16) -> Gateway {
    let child = bin()
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = Gateway { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", admin)).is_ok()
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(admin, "GET", "/health", &[], "").0 == 200
        {
            return g;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gateway did not start");
}

/// A mock, a config in a temp folder and a gateway on it.
fn setup(
    key_id: &str,
    key: &str,
    server_extra: &str,
    flush: &str,
) -> (MockGemini, tempfile::TempDir, std::path::PathBuf, Gateway) {
    let mock = MockGemini::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("proxy.yaml");
    // The data folder exists already, readable by all: what the gateway writes there is not.
    std::fs::create_dir(dir.path().join("data")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let all = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir.path().join("data"), all).unwrap();
    }
    std::fs::write(
        &config,
        format!(
            "server: {{ host: 127.0.0.1, port: {port}{server_extra} }}\nmetrics: {{ enabled: true, prometheus_port: {admin} }}\ngemini:\n  base_url: \"{}\"\n  api_keys:\n    - {{ id: {key_id}, key: {key}, weight: 1 }}\npool: {{ state_file: \"\", keys_file: \"\" }}\naudit: {{ flush_interval: {flush} }}\n",
            mock.base_url()
        ),
    )
    .unwrap();
    let g = start(&config, port, admin);
    (mock, dir, config, g)
}

/// `gemini-proxy query [ARGS] --config CONFIG SQL`.
fn query(config: &Path, args: &[&str], sql: &str) -> std::process::Output {
    bin()
        .arg("query")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg(sql)
        .output()
        .unwrap()
}

fn gen_body(text: &str) -> String {
    serde_json::json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}).to_string()
}

#[test]
fn sigkill_loses_at_most_the_flush_interval_and_query_works_both_ways() {
    let (_mock, dir, config, g) = setup("crash-key", "valid-CRASHSECRET", "", "200ms");
    for i in 0..30 {
        let (s, _) = http(
            g.port,
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[("x-request-id", &format!("kept-{i:02}"))],
            &gen_body("hello"),
        );
        assert_eq!(s, 200);
    }
    // `query` while the gateway runs goes through its admin API.
    let out = query(
        &config,
        &["--format", "json"],
        "SELECT count(*) AS n FROM requests WHERE request_id LIKE 'kept-%'",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"][0][0], 30, "{v}");
    // A write through the running gateway is refused.
    let out = query(&config, &[], "DELETE FROM requests");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    // The database file is the gateway's while it runs.
    let out = query(&config, &["--offline"], "SELECT 1");
    assert_eq!(out.status.code(), Some(1));

    for i in 0..10 {
        http(
            g.port,
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[("x-request-id", &format!("older-{i:02}"))],
            &gen_body("hello"),
        );
    }
    // More than the flush interval passes, then calls that may be lost, then SIGKILL.
    std::thread::sleep(Duration::from_millis(600));
    for i in 0..5 {
        http(
            g.port,
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[("x-request-id", &format!("last-{i:02}"))],
            &gen_body("hello"),
        );
    }
    drop(g); // SIGKILL: no shutdown, no flush.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let written = walk(&dir.path().join("data"));
        assert!(
            written
                .iter()
                .any(|p| p.to_string_lossy().ends_with(".wal")),
            "{written:?}"
        );
        for p in written {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }
    }

    // The file, opened read-only (the WAL is replayed), has every call older than the window.
    let out = query(
        &config,
        &["--format", "csv"],
        "SELECT count(*) FILTER (WHERE request_id LIKE 'kept-%') AS kept, count(*) FILTER (WHERE request_id LIKE 'older-%') AS older, count(*) FILTER (WHERE request_id LIKE 'last-%') AS last FROM requests",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout).to_string();
    let row: Vec<u64> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(&row[..2], &[30, 10], "{csv}");
    assert!(row[2] <= 5);
    // And the JSON-lines file too.
    let log = std::fs::read_to_string(dir.path().join("logs/audit.log")).unwrap();
    for i in 0..10 {
        assert!(
            log.contains(&format!("\"older-{i:02}\"")),
            "older-{i:02} missing"
        );
    }
    // The table format is the default.
    let out = query(
        &config,
        &[],
        "SELECT key_id, count(*) AS calls FROM requests WHERE request_id LIKE 'kept-%' GROUP BY key_id",
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines[0], "key_id | calls", "{table}");
    assert!(lines[1].starts_with("-----"), "{table}");
    assert_eq!(lines[2], "crash-key | 30", "{table}");
    assert_eq!(lines[3], "(1 row)", "{table}");
    // Offline, writes and file access are refused too.
    for bad in [
        "DROP TABLE requests",
        "SELECT * FROM read_text('/etc/passwd')",
    ] {
        let out = query(&config, &[], bad);
        assert_eq!(out.status.code(), Some(1), "{bad} was accepted");
    }
    // Export: Parquet per table and day, readable back.
    let out_dir = dir.path().join("parquet");
    let today = String::from_utf8_lossy(
        &query(
            &config,
            &["--format", "csv"],
            "SELECT strftime(max(day), '%Y-%m-%d') FROM requests",
        )
        .stdout,
    )
    .lines()
    .nth(1)
    .unwrap()
    .to_string();
    let out = bin()
        .args(["export", "--since", &today, "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let exported = report["rows"]["requests"].as_u64().unwrap();
    assert!(exported >= 40, "{report}");
    let file = out_dir.join(format!("requests/day={today}/data_0.parquet"));
    assert!(file.exists(), "{report}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..4], b"PAR1");
    // Nothing secret in anything the run wrote.
    for entry in walk(dir.path()) {
        let data = std::fs::read(&entry).unwrap();
        assert!(
            memchr::memmem::find(&data, b"CRASHSECRET").is_none(),
            "the key is in {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        // The config and its saved versions (for rollback) hold the keys by design, 0600.
        let config_copy = p
            .file_name()
            .is_some_and(|n| n == "proxy.yaml" || n == ".gemini-proxy-history");
        if config_copy {
            continue;
        }
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn sigterm_flushes_everything_even_with_a_long_flush_interval() {
    let (_mock, dir, config, mut g) = setup("k", "valid-k", ", grace_period: 1s", "1h");
    for i in 0..25 {
        let (s, _) = http(
            g.port,
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            &[("x-request-id", &format!("term-{i:02}"))],
            &gen_body("hello"),
        );
        assert_eq!(s, 200);
    }
    let pid = g.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = g.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let out = query(
        &config,
        &["--format", "csv"],
        "SELECT count(*) FROM requests WHERE request_id LIKE 'term-%' AND stream AND total_tokens > 0",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "count_star()\n25\n");
    let log = std::fs::read_to_string(dir.path().join("logs/audit.log")).unwrap();
    assert_eq!(log.matches("\"term-").count(), 25);
}
