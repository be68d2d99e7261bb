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
    let pool = ["valid-SECRETPOOLKEY-1", "invalid-SECRETPOOLKEY-2"];
    let h = Harness::start_with(
        &[("one", pool[0], 1), ("two", pool[1], 1)],
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
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("request_id"),
        "the capture saw the request log"
    );
    if let Ok(p) = std::env::var("DUMP_LOGS") {
        std::fs::write(p, &logs).unwrap();
    }
    for secret in pool.iter().copied().chain([client_secret, "SECRETPOOLKEY"]) {
        assert!(!logs.contains(secret), "secret {secret} in logs");
        assert!(!bodies.contains(secret), "secret {secret} in responses");
    }
}
