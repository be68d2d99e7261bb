//! SIGHUP reloads the config (own test binary: the signal reaches every gateway in the process).

use std::time::Duration;

use gemini_proxy_tests::*;

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
    let base = h.config_text();
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
    h.wait_generation(2).await;
    assert_eq!(
        h.gateway.shared.runtime.load().generation,
        2,
        "SIGHUP did not reload"
    );
    h.generate("x").await;
    assert_eq!(h.last_key(), "valid-after-hup");
}
