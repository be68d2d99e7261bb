//! Any bytes as a gateway token: verification must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static VERIFIER: std::sync::LazyLock<gemini_proxy_plugins::auth::Verifier> =
        std::sync::LazyLock::new(|| {
            let c: gemini_proxy_plugins::auth::AuthStageConfig = serde_json::from_value(
                serde_json::json!({"jwt_secret": "Fuzz-secret-0123456789-abcdefghij!"}),
            )
            .unwrap();
            gemini_proxy_plugins::auth::Verifier::new(&c, std::path::Path::new(".")).unwrap()
        });
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = VERIFIER.verify(s);
    }
});
