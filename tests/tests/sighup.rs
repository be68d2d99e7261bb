//! SIGHUP reloads the config (own test binary: the signal reaches every gateway in the process).

use std::time::Duration;

use gemini_proxy_tests::*;

fn key_of_last(h: &Harness) -> String {
    h.mock
        .requests()
        .last()
        .and_then(|r| r.key.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads() {
    // Poll rarely, so only the signal can explain the reload.
    let h = Harness::start_full(
        MockGemini::start().unwrap(),
        &[("old", "valid-old", 1)],
        "",
        |_| {},
        Duration::from_secs(3600),
    );
    let base = std::fs::read_to_string(h.config_path.as_ref().unwrap()).unwrap();
    h.write_config(&base.replace("valid-old", "valid-after-hup"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.gateway.shared.runtime.load().generation,
        1,
        "not reloaded before the signal"
    );
    let pid = std::process::id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    for _ in 0..100 {
        if h.gateway.shared.runtime.load().generation == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.gateway.shared.runtime.load().generation,
        2,
        "SIGHUP did not reload"
    );
    h.client
        .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", "t")
        .body(gen_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(key_of_last(&h), "valid-after-hup");
}
