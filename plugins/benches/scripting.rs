//! Per-request cost of a routing program: `route` (admission) plus `weigh` (selection) over
//! 8 candidate keys, through the same stage the gateway runs (views built from the request
//! context and the selection, decisions applied), for Rhai, Wasm and the built-in strategy.
//! `cargo bench -p gemini-proxy-plugins --bench scripting`; targets: Wasm < 5 µs, Rhai < 15 µs.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gemini_proxy_sdk::hooks::Remaining;
use gemini_proxy_sdk::{BuildEnv, Candidate, KeyStats, Selection, testing};

struct Stats;

impl KeyStats for Stats {
    fn in_flight(&self, i: usize) -> u32 {
        (i as u32 * 7) % 5
    }
    fn latency_ewma_ms(&self, i: usize) -> f64 {
        120.0 + 40.0 * i as f64
    }
    fn remaining(&self, i: usize, _: Option<&str>) -> Remaining {
        Remaining {
            rpm: Some(100 + i as u64),
            tpm: Some(50_000 * i as u64),
            rpd: Some(10_000),
        }
    }
}

fn pair(c: &mut Criterion) {
    let root =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("..");
    let env = BuildEnv::new(&root);
    let registry = gemini_proxy_plugins::builtin_registry();
    let cands: Vec<Candidate> = (0..8)
        .map(|i| Candidate::new(&format!("key-{}", (b'a' + i) as char), 10).in_project("p"))
        .collect();
    let mut cx = testing::request("POST", "/v1beta/models/gemini-2.5-pro:generateContent");
    cx.request.body_size = Some(1200);
    let builtin = registry
        .build("key_select", serde_json::json!({}), &env)
        .expect("key_select");
    let stages = [
        (
            "rhai_cost_aware",
            registry
                .build(
                    "rhai",
                    serde_json::json!({"script": "scripts/cost_aware.rhai", "watch": false}),
                    &env,
                )
                .expect("rhai"),
        ),
        (
            "rhai_latency_pick",
            registry
                .build(
                    "rhai",
                    serde_json::json!({"script": "scripts/latency_pick.rhai", "watch": false}),
                    &env,
                )
                .expect("rhai"),
        ),
        (
            "wasm_router",
            registry
                .build(
                    "wasm",
                    serde_json::json!({"module": "tests/fixtures/wasm/router.wat", "watch": false}),
                    &env,
                )
                .expect("wasm"),
        ),
    ];
    let mut group = c.benchmark_group("route_and_weigh_8_keys");
    group.bench_function("builtin_wrr", |b| {
        b.iter(|| {
            let mut sel = Selection::new(&cands).with_stats(&Stats);
            builtin.on_select(&cx, &mut sel).expect("select");
            black_box(sel.chosen_index())
        })
    });
    for (name, stage) in &stages {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let admitted = testing::block_on(stage.on_admit(&mut cx)).expect("route");
                black_box(&admitted);
                cx.routing = Default::default();
                let mut sel = Selection::new(&cands).with_stats(&Stats);
                stage.on_select(&cx, &mut sel).expect("weigh");
                builtin.on_select(&cx, &mut sel).expect("select");
                black_box(sel.chosen_index())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pair);
criterion_main!(benches);
