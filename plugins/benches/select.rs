//! Key selection cost with 1,000 keys, per strategy (`cargo bench -p gemini-proxy-plugins`).
//! Each iteration builds the selection (as the gateway does per attempt) and picks.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gemini_proxy_sdk::{BuildEnv, Candidate, KeyStats, Selection, testing};

struct Stats(Vec<u32>);

impl KeyStats for Stats {
    fn in_flight(&self, i: usize) -> u32 {
        self.0[i]
    }
    fn latency_ewma_ms(&self, i: usize) -> f64 {
        f64::from(self.0[i]) * 3.0 + 50.0
    }
    fn headroom(&self, i: usize, _: Option<&str>) -> Option<f64> {
        Some(f64::from(self.0[i] % 100) / 100.0)
    }
}

fn select(c: &mut Criterion) {
    let cands: Vec<Candidate> = (0..1000)
        .map(|i| Candidate::new(&format!("key-{i}"), 1 + (i % 10) as u32))
        .collect();
    let stats = Stats((0..1000u32).map(|i| (i * 7919) % 13).collect());
    let registry = gemini_proxy_plugins::builtin_registry();
    let mut cx = testing::request("POST", "/v1beta/models/gemini-2.5-flash:generateContent");
    cx.request
        .headers
        .insert("x-user", http::HeaderValue::from_static("user-42"));
    let mut group = c.benchmark_group("select_1000_keys");
    for (name, strategy, hash_on) in [
        ("wrr_all_eligible", "weighted_round_robin", None),
        ("least_in_flight", "least_in_flight", None),
        ("latency_p2c", "latency", None),
        ("quota_headroom", "quota_headroom", None),
        ("consistent_hash", "consistent_hash", Some("header:x-user")),
    ] {
        let mut v = serde_json::json!({ "strategy": strategy });
        if let Some(h) = hash_on {
            v["hash_on"] = h.into();
        }
        let plugin = registry
            .build("key_select", v, &BuildEnv::default())
            .expect("plugin");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sel = Selection::new(&cands).with_stats(&stats);
                plugin.on_select(&cx, &mut sel).expect("select");
                black_box(sel.chosen_index())
            })
        });
    }
    let plugin = registry
        .build(
            "key_select",
            serde_json::json!({"strategy": "weighted_round_robin"}),
            &BuildEnv::default(),
        )
        .expect("plugin");
    group.bench_function("wrr_10pct_resting", |b| {
        b.iter(|| {
            let mut sel = Selection::new(&cands).with_stats(&stats);
            for i in (0..1000).step_by(10) {
                sel.exclude(i);
            }
            plugin.on_select(&cx, &mut sel).expect("select");
            black_box(sel.chosen_index())
        })
    });
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
