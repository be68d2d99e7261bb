//! Rhai scripts, Wasm modules and native plugins in the pipeline, end to end against the mock:
//! decisions change the key and the model the upstream sees, rejections give the scripted
//! status, runaway and trapping programs fall back, broken reloads keep the old version, and
//! reloads under traffic lose no call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gemini_proxy_tests::*;

const KEYS: &[(&str, &str, u32)] = &[
    ("key-a", "valid-a", 1),
    ("key-b", "valid-b", 1),
    ("key-c", "valid-c", 1),
];

fn fixture(name: &str) -> PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("fixtures/wasm")
        .join(name)
}

/// A gateway whose pipeline is `stage` then `key_select`.
fn gateway_with(stage: &str) -> Harness {
    Harness::start_with(
        KEYS,
        &format!("pipeline:\n  - {stage}\n  - key_select\n"),
        |_| {},
    )
}

async fn generate(h: &Harness, model: &str) -> (u16, serde_json::Value) {
    h.call(
        "POST",
        &format!("/v1beta/models/{model}:generateContent"),
        CLIENT,
        Some(gen_body("hello")),
    )
    .await
}

fn keys_seen(h: &Harness) -> Vec<String> {
    h.mock
        .requests()
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect()
}

async fn metric_lines(h: &Harness, name: &str) -> Vec<String> {
    h.admin_text("/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect()
}

/// Polls until `f` holds (up to 5 s).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

const RHAI_ROUTER: &str = r#"
fn route(req) {
    if req.model == "blocked-model" { return #{ reject: 451, message: "blocked by rhai" }; }
    if req.model == "gemini-2.5-pro" { return #{ model: "gemini-2.5-flash", tags: #{ engine: "rhai" } }; }
    ()
}
fn weigh(req, keys) { "key-b" }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn rhai_decisions_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("route.rhai");
    std::fs::write(&script, RHAI_ROUTER).unwrap();
    let h = gateway_with(&format!("rhai: {{ script: \"{}\" }}", script.display()));
    for _ in 0..4 {
        let (s, b) = generate(&h, "gemini-2.5-pro").await;
        assert_eq!(s, 200, "{b}");
    }
    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        assert_eq!(r.key.as_deref(), Some("valid-b"), "weigh chose key-b");
        assert!(
            r.path.contains("/models/gemini-2.5-flash:generateContent"),
            "route rewrote the model: {}",
            r.path
        );
    }
    let (s, b) = generate(&h, "blocked-model").await;
    assert_eq!(s, 451, "{b}");
    assert_eq!(b["error"]["message"], "blocked by rhai");
    assert_eq!(
        h.mock.requests().len(),
        4,
        "a rejected call never reaches the upstream"
    );
    // A model the script keeps goes through unchanged.
    let (s, _) = generate(&h, "gemini-2.0-flash").await;
    assert_eq!(s, 200);
    assert!(h.mock.requests()[4].path.contains("gemini-2.0-flash:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rhai_runaway_and_errors_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("spin.rhai");
    std::fs::write(
        &script,
        "fn route(req) { loop { } }\nfn weigh(req, keys) { keys[99].weight }\n",
    )
    .unwrap();
    let h = gateway_with(&format!(
        "rhai: {{ script: \"{}\", max_operations: 20000 }}",
        script.display()
    ));
    for _ in 0..6 {
        let (s, b) = generate(&h, "gemini-2.5-flash").await;
        assert_eq!(s, 200, "the built-in strategy serves the call: {b}");
    }
    let seen = keys_seen(&h);
    for k in ["valid-a", "valid-b", "valid-c"] {
        assert_eq!(
            seen.iter().filter(|s| *s == k).count(),
            2,
            "round robin: {seen:?}"
        );
    }
    let lines = metric_lines(&h, "script_fallbacks_total").await;
    let find = |hook: &str, reason: &str| {
        lines.iter().any(|l| {
            l.contains("engine=\"rhai\"")
                && l.contains("script=\"spin.rhai\"")
                && l.contains(&format!("hook=\"{hook}\""))
                && l.contains(&format!("reason=\"{reason}\""))
                && l.ends_with(" 6")
        })
    };
    assert!(find("route", "limit"), "{lines:?}");
    assert!(find("weigh", "runtime"), "{lines:?}");
}

/// Calls in a loop until stopped; returns (sent, failed).
fn background_load(
    h: &Arc<Harness>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let h = h.clone();
    tokio::spawn(async move {
        let (sent, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        while !stop.load(Ordering::Relaxed) {
            let (s, _) = generate(&h, "gemini-2.5-flash").await;
            sent.fetch_add(1, Ordering::Relaxed);
            if s != 200 {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        (sent.into_inner(), failed.into_inner())
    })
}

async fn hot_reload_under_traffic(
    engine: &str,
    file: &Path,
    stage: String,
    choose: impl Fn(&str) -> String,
    broken: &str,
) {
    std::fs::write(file, choose("key-a")).unwrap();
    let h = Arc::new(gateway_with(&stage));
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(&h, stop.clone());
    eventually("calls go to key-a", async || {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.last_key() == "valid-a"
    })
    .await;
    // A broken version is refused; the loaded one keeps serving.
    std::fs::write(file, broken).unwrap();
    let script = file.file_name().unwrap().to_string_lossy().to_string();
    eventually("the broken version is refused", async || {
        metric_lines(&h, "script_reloads_total")
            .await
            .iter()
            .any(|l| {
                l.contains(&format!("engine=\"{engine}\""))
                    && l.contains(&format!("script=\"{script}\""))
                    && l.contains("result=\"error\"")
            })
    })
    .await;
    let before = h.mock.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = keys_seen(&h)[before..].to_vec();
    assert!(
        !after.is_empty() && after.iter().all(|k| k == "valid-a"),
        "{after:?}"
    );
    // A good version is swapped in while calls run.
    std::fs::write(file, choose("key-c")).unwrap();
    eventually("calls go to key-c", async || h.last_key() == "valid-c").await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert!(sent > 20, "only {sent} calls ran");
    assert_eq!(failed, 0, "no call failed during reloads");
    assert_eq!(
        h.mock.requests().len(),
        sent,
        "every call reached the upstream once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rhai_hot_reload_under_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pick.rhai");
    let stage = format!(
        "rhai: {{ script: \"{}\", watch_interval_ms: 50 }}",
        file.display()
    );
    hot_reload_under_traffic(
        "rhai",
        &file,
        stage,
        |id| format!("fn weigh(req, keys) {{ \"{id}\" }}\n"),
        "fn weigh(req, keys) { \"unterminated }\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_decisions_reach_the_upstream() {
    let h = gateway_with(&format!(
        "wasm: {{ module: \"{}\", fuel: 100000 }}",
        fixture("router.wat").display()
    ));
    for _ in 0..3 {
        let (s, b) = generate(&h, "gemini-2.5-pro").await;
        assert_eq!(s, 200, "{b}");
    }
    for r in h.mock.requests() {
        assert_eq!(r.key.as_deref(), Some("valid-b"));
        assert!(r.path.contains("/models/gemini-2.5-flash:"), "{}", r.path);
    }
    let (s, b) = generate(&h, "blocked-model").await;
    assert_eq!(s, 451, "{b}");
    assert_eq!(b["error"]["message"], "blocked by wasm");
    assert_eq!(h.mock.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_loops_and_traps_fall_back() {
    for (module, reason) in [("loop.wat", "limit"), ("trap.wat", "trap")] {
        let h = gateway_with(&format!(
            "wasm: {{ module: \"{}\", fuel: 50000 }}",
            fixture(module).display()
        ));
        for _ in 0..3 {
            let (s, b) = generate(&h, "gemini-2.5-flash").await;
            assert_eq!(s, 200, "{module}: {b}");
        }
        let mut seen = keys_seen(&h);
        seen.sort();
        assert_eq!(
            seen,
            ["valid-a", "valid-b", "valid-c"],
            "{module}: round robin"
        );
        let lines = metric_lines(&h, "script_fallbacks_total").await;
        for hook in ["route", "weigh"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("script=\"{module}\""))
                        && l.contains(&format!("hook=\"{hook}\""))
                        && l.contains(&format!("reason=\"{reason}\""))),
                "{module} {hook}: {lines:?}"
            );
        }
    }
    // A wall-clock deadline stops a module that has fuel to spare.
    let h = gateway_with(&format!(
        "wasm: {{ module: \"{}\", fuel: 100000000000, timeout_ms: 5 }}",
        fixture("loop.wat").display()
    ));
    let (s, _) = generate(&h, "gemini-2.5-flash").await;
    assert_eq!(s, 200);
    let lines = metric_lines(&h, "script_fallbacks_total").await;
    assert!(
        lines.iter().any(|l| l.contains("reason=\"timeout\"")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_hot_reload_under_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.wat");
    let source = std::fs::read_to_string(fixture("router.wat")).unwrap();
    let stage = format!(
        "wasm: {{ module: \"{}\", watch_interval_ms: 50 }}",
        file.display()
    );
    // The fixture chooses "key-b"; the same module with another 5-byte id chooses that key.
    hot_reload_under_traffic(
        "wasm",
        &file,
        stage,
        |id| source.replace("\"key-b\"", &format!("\"{id}\"")),
        "(module (func",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_programs_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rhai");
    std::fs::write(&bad, "fn route(req) {").unwrap();
    let mock = MockGemini::start().unwrap();
    for (stage, want) in [
        (
            format!("rhai: {{ script: \"{}\" }}", bad.display()),
            "bad.rhai",
        ),
        (
            format!(
                "rhai: {{ script: \"{}\", headers: [authorization] }}",
                bad.display()
            ),
            "credentials",
        ),
        (
            "wasm: { module: /nonexistent/x.wasm }".to_string(),
            "cannot read",
        ),
    ] {
        let text = config_yaml(
            &mock.base_url(),
            free_port(),
            free_port(),
            KEYS,
            &format!("pipeline:\n  - {stage}\n"),
        );
        let err = gemini_proxy_core::runtime::Shared::new(
            &loaded(&text),
            gemini_proxy_core::builtin_registry(),
        )
        .err()
        .unwrap_or_else(|| panic!("{stage} should be refused"));
        assert!(err.to_string().contains(want), "{stage}: {err}");
    }
}
