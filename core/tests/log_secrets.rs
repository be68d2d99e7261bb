//! A malformed request leaves no credential in the log: the real binary asked for `debug`, a head
//! with one bad header carrying a bearer token and a login password, on both listeners.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use gemini_proxy_core::mock::MockGemini;

use gemini_proxy_tests::{free_port, http_once as http};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.TOKEN-THAT-MUST-NOT-BE-LOGGED.c2ln";
const PASSWORD: &str = "Password-That-Must-Not-Be-Logged-2026!";
const KEY: &str = "AIzaKeyThatMustNotBeLogged0123456789";

fn send_raw(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
}

#[test]
fn a_malformed_head_leaves_no_credential_in_the_log() {
    let mock = MockGemini::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ host: 127.0.0.1, port: {port} }}\nmetrics: {{ enabled: true, prometheus_port: {admin} }}\ngemini:\n  base_url: \"{}\"\n  api_keys:\n    - {{ id: k1, key: {KEY} }}\nauth: {{ enabled: true, jwt_secret: \"Str0ng-secret-with-enough-length-and-symbols!\", admin_password: \"{PASSWORD}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n",
            mock.base_url()
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemini-proxy"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--upgrade-sock")
        .arg(dir.path().join("upgrade.sock"))
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(admin, "GET", "/health", &[], "").0 != 200 {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = format!("{{\"password\":\"{PASSWORD}\"}}");
    for (target, path) in [
        (admin, "/auth/login"),
        (admin, "/api/keys"),
        (port, "/v1beta/models"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\nx-goog-api-key: {TOKEN}\r\ncontent-length: {}\r\nX-Bad\x01: 1\r\n\r\n{body}",
            body.len()
        );
        send_raw(target, head.as_bytes());
    }
    // A graceful stop, so the log writer flushes every line.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap()
        + std::fs::read_to_string(dir.path().join("stderr.log"))
            .unwrap()
            .as_str();
    assert!(
        text.contains("gemini-proxy starting"),
        "the log was written:\n{text}"
    );
    for secret in [TOKEN, "TOKEN-THAT-MUST-NOT", PASSWORD, KEY] {
        assert!(!text.contains(secret), "`{secret}` in the log:\n{text}");
    }
    // A client's malformed request is not a server error.
    let errors: Vec<_> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
