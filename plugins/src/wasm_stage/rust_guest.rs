use super::*;

/// The Rust guest in `examples/wasm-guest`, once `scripts/build-wasm-guest` has built it
/// (needs the wasm32 target): `cargo test -p gemini-proxy-plugins -- --ignored rust_guest`.
#[test]
#[ignore = "needs scripts/build-wasm-guest (the wasm32 target)"]
fn rust_guest_speaks_the_abi() {
    let path =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../scripts/guest.wasm");
    let bytes = std::fs::read(&path).expect("run scripts/build-wasm-guest first");
    let p = compile(&WasmConfig::for_module("guest.wasm"), &bytes).unwrap();
    let mut req = HookRequest::default();
    req.model = Some("gemini-2.5-pro".into());
    req.prompt_tokens_estimate = 100;
    assert_eq!(
        p.route(&req).unwrap(),
        RouteDecision::Change(
            RouteChange::model("gemini-2.5-flash").with_tag("route", "short-prompt")
        )
    );
    req.prompt_tokens_estimate = 5000;
    assert_eq!(p.route(&req).unwrap(), RouteDecision::Keep);
    let mut keys = vec![HookCandidate::new("a", 10), HookCandidate::new("b", 10)];
    keys[0].latency_ewma_ms = 900.0;
    keys[1].remaining_rpm = Some(0);
    assert_eq!(
        p.weigh(&req, &keys).unwrap(),
        WeighDecision::Weights(vec![10, 0])
    );
}
