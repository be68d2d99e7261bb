use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../tests/fixtures/wasm")
        .join(name);
    std::fs::read(p).unwrap()
}

fn req(model: &str) -> HookRequest {
    let mut r = HookRequest::default();
    r.model = Some(model.into());
    r.method = "POST".into();
    r.path = format!("/v1beta/models/{model}:generateContent");
    r
}

fn keys() -> Vec<HookCandidate> {
    ["key-a", "key-b", "key-c"]
        .iter()
        .map(|id| HookCandidate::new(id, 10))
        .collect()
}

#[test]
fn router_fixture_decisions() {
    let p = compile(
        &WasmConfig::for_module("router.wat"),
        &fixture("router.wat"),
    )
    .unwrap();
    assert_eq!(
        p.hooks(),
        Hooks {
            route: true,
            weigh: true
        }
    );
    assert_eq!(
        p.route(&req("blocked-model")).unwrap(),
        RouteDecision::Reject {
            status: 451,
            message: "blocked by wasm".into()
        }
    );
    assert_eq!(
        p.route(&req("gemini-2.5-pro-preview")).unwrap(),
        RouteDecision::Change(RouteChange::model("gemini-2.5-flash").with_tag("engine", "wasm"))
    );
    assert_eq!(p.route(&req("other")).unwrap(), RouteDecision::Keep);
    assert_eq!(
        p.weigh(&req("m"), &keys()).unwrap(),
        WeighDecision::Choose(1)
    );
    assert_eq!(
        p.weigh(&req("m"), &keys()[..1]).unwrap(),
        WeighDecision::Keep
    );
    // Instances are reused, not rebuilt per call.
    assert_eq!(p.pool.lock().len(), 1);
}

#[test]
fn big_inputs_grow_the_buffer() {
    let p = compile(
        &WasmConfig::for_module("router.wat"),
        &fixture("router.wat"),
    )
    .unwrap();
    let mut many: Vec<HookCandidate> = (0..3000)
        .map(|i| HookCandidate::new(&format!("key-{i:05}"), 1))
        .collect();
    many.push(HookCandidate::new("key-b", 1));
    assert_eq!(
        p.weigh(&req("m"), &many).unwrap(),
        WeighDecision::Choose(3000)
    );
}

#[test]
fn weights_example_writes_weights() {
    let src = std::fs::read(
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../scripts/weights.wat"),
    )
    .unwrap();
    let p = compile(&WasmConfig::for_module("weights.wat"), &src).unwrap();
    let mut k = keys();
    k[0].latency_ewma_ms = 900.0; // 10 * 1000 / 1000 = 10
    k[1].latency_ewma_ms = 0.0; // 10 * 1000 / 100 = 100
    k[2].remaining_rpm = Some(0); // exhausted: 0
    assert_eq!(
        p.weigh(&req("m"), &k).unwrap(),
        WeighDecision::Weights(vec![10, 100, 0])
    );
    assert!(!p.hooks().route);
}

#[test]
fn runaway_and_trapping_modules_fail_cleanly() {
    let mut cfg = WasmConfig::for_module("loop.wat");
    cfg.fuel = 100_000;
    let p = compile(&cfg, &fixture("loop.wat")).unwrap();
    assert_eq!(p.route(&req("m")).unwrap_err().reason, "limit");
    assert_eq!(p.weigh(&req("m"), &keys()).unwrap_err().reason, "limit");
    // With fuel to spare the epoch deadline stops it.
    cfg.fuel = u64::MAX / 2;
    cfg.timeout_ms = 5;
    let p = compile(&cfg, &fixture("loop.wat")).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(p.route(&req("m")).unwrap_err().reason, "timeout");
    assert!(t.elapsed() < Duration::from_secs(2));
    let p = compile(&WasmConfig::for_module("trap.wat"), &fixture("trap.wat")).unwrap();
    assert_eq!(p.route(&req("m")).unwrap_err().reason, "trap");
    // A failed instance is not put back.
    assert!(p.pool.lock().is_empty());
    assert_eq!(p.weigh(&req("m"), &keys()).unwrap_err().reason, "trap");
}

#[test]
fn refused_modules() {
    let cfg = WasmConfig::for_module("x.wat");
    let wasi = br#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "gp_abi_version") (result i32) (i32.const 1))
        (func (export "gp_buffer") (param i32) (result i32) (i32.const 0))
        (func (export "route") (param i32) (result i32) (i32.const 0)))"#;
    let e = compile(&cfg, wasi).err().unwrap();
    assert!(e.contains("no WASI"), "{e}");
    let v2 = br#"(module (memory (export "memory") 1)
        (func (export "gp_abi_version") (result i32) (i32.const 2))
        (func (export "gp_buffer") (param i32) (result i32) (i32.const 0))
        (func (export "route") (param i32) (result i32) (i32.const 0)))"#;
    let e = compile(&cfg, v2).err().unwrap();
    assert!(e.contains("ABI version 2"), "{e}");
    let big = br#"(module (memory (export "memory") 1000)
        (func (export "gp_abi_version") (result i32) (i32.const 1))
        (func (export "gp_buffer") (param i32) (result i32) (i32.const 0))
        (func (export "route") (param i32) (result i32) (i32.const 0)))"#;
    assert!(
        compile(&cfg, big).is_err(),
        "64 MB of memory is over the 16 MB cap"
    );
    let nohooks = br#"(module (memory (export "memory") 1)
        (func (export "gp_abi_version") (result i32) (i32.const 1))
        (func (export "gp_buffer") (param i32) (result i32) (i32.const 0)))"#;
    assert!(compile(&cfg, nohooks).err().unwrap().contains("neither"));
    assert!(compile(&cfg, b"(module (func").is_err());
}
