use super::*;
use gemini_proxy_sdk::testing;
use std::collections::HashMap;

fn picks(
    plugin: &dyn Plugin,
    cands: &[gemini_proxy_sdk::Candidate],
    n: usize,
) -> HashMap<String, usize> {
    let cx = testing::request("POST", "/v1beta/models/m:generateContent");
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut sel = Selection::new(cands);
        plugin.on_select(&cx, &mut sel).unwrap();
        *counts
            .entry(sel.chosen().unwrap().id.to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn follows_weights_exactly_over_a_full_cycle() {
    let p = KeySelect::build(KeySelectConfig::default(), &BuildEnv::default()).unwrap();
    let cands = testing::candidates(&[("a", 5), ("b", 1), ("c", 1)]);
    let counts = picks(&*p, &cands, 7 * 1000);
    assert_eq!(counts["a"], 5000);
    assert_eq!(counts["b"], 1000);
    assert_eq!(counts["c"], 1000);
}

#[test]
fn smooth_interleaves_instead_of_bunching() {
    let p = KeySelect::build(KeySelectConfig::default(), &BuildEnv::default()).unwrap();
    let cands = testing::candidates(&[("a", 5), ("b", 1), ("c", 1)]);
    let cx = testing::request("GET", "/v1beta/models");
    let seq: String = (0..7)
        .map(|_| {
            let mut sel = Selection::new(&cands);
            p.on_select(&cx, &mut sel).unwrap();
            sel.chosen().unwrap().id.to_string()
        })
        .collect();
    // nginx's documented sequence for {5,1,1}.
    assert_eq!(seq, "aabacaa");
}

#[test]
fn skips_excluded_and_zero_weight_keys() {
    let p = KeySelect::build(KeySelectConfig::default(), &BuildEnv::default()).unwrap();
    let cands = testing::candidates(&[("a", 1), ("b", 0), ("c", 1)]);
    let cx = testing::request("GET", "/v1beta/models");
    for _ in 0..10 {
        let mut sel = Selection::new(&cands);
        sel.exclude(0);
        p.on_select(&cx, &mut sel).unwrap();
        assert_eq!(sel.chosen().map(|c| &*c.id), Some("c"));
    }
    let mut sel = Selection::new(&cands);
    sel.exclude(0);
    sel.exclude(2);
    p.on_select(&cx, &mut sel).unwrap();
    assert!(sel.chosen().is_none());
}

fn build(strategy: &str, hash_on: Option<&str>) -> Arc<dyn Plugin> {
    let mut v = serde_json::json!({ "strategy": strategy });
    if let Some(h) = hash_on {
        v["hash_on"] = h.into();
    }
    crate::builtin_registry()
        .build("key_select", v, &BuildEnv::default())
        .unwrap()
}

/// Figures a test controls.
struct Fixed {
    in_flight: Vec<u32>,
    latency: Vec<f64>,
    headroom: Vec<Option<f64>>,
}

impl gemini_proxy_sdk::KeyStats for Fixed {
    fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }
    fn latency_ewma_ms(&self, i: usize) -> f64 {
        self.latency[i]
    }
    fn headroom(&self, i: usize, _: Option<&str>) -> Option<f64> {
        self.headroom[i]
    }
}

fn pick_with(p: &dyn Plugin, cands: &[gemini_proxy_sdk::Candidate], stats: &Fixed) -> String {
    let cx = testing::request("POST", "/v1beta/models/m:generateContent");
    let mut sel = Selection::new(cands).with_stats(stats);
    p.on_select(&cx, &mut sel).unwrap();
    sel.chosen().unwrap().id.to_string()
}

#[test]
fn wrr_is_within_two_percent_of_the_weights_over_100k_picks_with_exclusions() {
    let p = build("weighted_round_robin", None);
    let cands = testing::candidates(&[("a", 50), ("b", 30), ("c", 15), ("d", 5)]);
    let cx = testing::request("POST", "/v1beta/models/m:generateContent");
    let mut counts = HashMap::new();
    for n in 0..100_000 {
        let mut sel = Selection::new(&cands);
        // d rests every other call: the others keep their proportions.
        if n % 2 == 0 {
            sel.exclude(3);
        }
        p.on_select(&cx, &mut sel).unwrap();
        *counts
            .entry(sel.chosen().unwrap().id.to_string())
            .or_insert(0u32) += 1;
    }
    let share = |k: &str| f64::from(counts[k]) / 100_000.0;
    // a:b:c stay 50:30:15 relative to each other.
    let abc = share("a") + share("b") + share("c");
    for (k, w) in [("a", 50.0), ("b", 30.0), ("c", 15.0)] {
        let want = w / 95.0;
        assert!(
            (share(k) / abc - want).abs() < 0.02 * want,
            "{k}: {counts:?}"
        );
    }
    let mut plain = HashMap::new();
    for _ in 0..100_000 {
        let mut sel = Selection::new(&cands);
        p.on_select(&cx, &mut sel).unwrap();
        *plain
            .entry(sel.chosen().unwrap().id.to_string())
            .or_insert(0u32) += 1;
    }
    for (k, w) in [("a", 50u32), ("b", 30), ("c", 15), ("d", 5)] {
        assert_eq!(plain[k], w * 1000, "exact over whole cycles");
    }
}

#[test]
fn least_in_flight_prefers_the_idle_key_per_weight() {
    let p = build("least_in_flight", None);
    let cands = testing::candidates(&[("a", 1), ("b", 1), ("c", 4)]);
    let stats = Fixed {
        in_flight: vec![3, 1, 7],
        latency: vec![0.0; 3],
        headroom: vec![None; 3],
    };
    // Loads: a 4/1, b 2/1, c 8/4 = 2: b and c tie; both are picked, a never.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        seen.insert(pick_with(&*p, &cands, &stats));
    }
    assert!(!seen.contains("a"));
    assert_eq!(seen.len(), 2);
}

#[test]
fn latency_power_of_two_avoids_the_slow_key() {
    let p = build("latency", None);
    let cands = testing::candidates(&[("fast", 1), ("slow", 1)]);
    let stats = Fixed {
        in_flight: vec![0, 0],
        latency: vec![100.0, 900.0],
        headroom: vec![None; 2],
    };
    for _ in 0..50 {
        assert_eq!(pick_with(&*p, &cands, &stats), "fast");
    }
    // A busy fast key loses to an idle slow one.
    let busy = Fixed {
        in_flight: vec![20, 0],
        latency: vec![100.0, 900.0],
        headroom: vec![None; 2],
    };
    assert_eq!(pick_with(&*p, &cands, &busy), "slow");
}

#[test]
fn quota_headroom_picks_the_most_unused_quota() {
    let p = build("quota_headroom", None);
    let cands = testing::candidates(&[("a", 1), ("b", 1), ("c", 1)]);
    let stats = Fixed {
        in_flight: vec![0; 3],
        latency: vec![0.0; 3],
        headroom: vec![Some(0.2), Some(0.9), Some(0.5)],
    };
    for _ in 0..20 {
        assert_eq!(pick_with(&*p, &cands, &stats), "b");
    }
}

fn check_consistent_hash(n: usize, users: usize) {
    let p = build("consistent_hash", Some("header:x-user"));
    let spec: Vec<(String, u32)> = (0..n).map(|i| (format!("k{i}"), 1)).collect();
    let spec: Vec<(&str, u32)> = spec.iter().map(|(k, w)| (k.as_str(), *w)).collect();
    let cands = testing::candidates(&spec);
    let pick = |user: &str, excluded: Option<usize>| {
        let mut cx = testing::request("POST", "/v1beta/models/m:generateContent");
        cx.request
            .headers
            .insert("x-user", http::HeaderValue::from_str(user).unwrap());
        let mut sel = Selection::new(&cands);
        if let Some(e) = excluded {
            sel.exclude(e);
        }
        p.on_select(&cx, &mut sel).unwrap();
        sel.chosen_index().unwrap()
    };
    let users: Vec<String> = (0..users).map(|i| format!("user-{i}")).collect();
    let home: Vec<usize> = users.iter().map(|u| pick(u, None)).collect();
    for (u, h) in users.iter().zip(&home) {
        assert_eq!(pick(u, None), *h, "sticky");
    }
    // Spread roughly evenly.
    let per_key = users.len() / n;
    for k in 0..n {
        let c = home.iter().filter(|h| **h == k).count();
        assert!(
            c > per_key / 4 && c < per_key * 3,
            "key {k}: {c} of ~{per_key}"
        );
    }
    // Key 0 goes away: only its users move.
    for (u, h) in users.iter().zip(&home) {
        let now = pick(u, Some(0));
        if *h != 0 {
            assert_eq!(now, *h, "{u} moved although its key stayed");
        } else {
            assert_ne!(now, 0);
        }
    }
}

#[test]
fn consistent_hash_keeps_a_user_on_one_key_and_moves_only_them() {
    check_consistent_hash(4, 400);
}

#[test]
fn consistent_hash_ring_on_big_pools_behaves_the_same() {
    check_consistent_hash(100, 10_000);
}

#[test]
fn big_pools_sample_yet_avoid_loaded_keys() {
    let p = build("least_in_flight", None);
    let spec: Vec<(String, u32)> = (0..500).map(|i| (format!("k{i}"), 1)).collect();
    let spec: Vec<(&str, u32)> = spec.iter().map(|(k, w)| (k.as_str(), *w)).collect();
    let cands = testing::candidates(&spec);
    // A quarter of the keys are busy (50 in flight): a pick of 16 random keys all busy has
    // a chance of 0.25^16 (2e-10).
    let stats = Fixed {
        in_flight: (0..500).map(|i| if i % 4 == 0 { 50 } else { 0 }).collect(),
        latency: vec![10.0; 500],
        headroom: vec![None; 500],
    };
    for _ in 0..200 {
        let id = pick_with(&*p, &cands, &stats);
        let i: usize = id[1..].parse().unwrap();
        assert_ne!(i % 4, 0, "picked busy key {id}");
    }
}

#[test]
fn hash_on_is_validated() {
    let reg = crate::builtin_registry();
    let bad = |v: serde_json::Value| {
        reg.build("key_select", v, &BuildEnv::default())
            .err()
            .unwrap()
            .to_string()
    };
    assert!(
        bad(serde_json::json!({"strategy": "consistent_hash", "hash_on": "cookie"}))
            .contains("hash_on")
    );
    assert!(
        bad(serde_json::json!({"strategy": "latency", "hash_on": "identity"}))
            .contains("consistent_hash")
    );
}

#[test]
fn unknown_strategy_is_a_config_error() {
    let reg = crate::builtin_registry();
    let err = reg
        .build(
            "key_select",
            serde_json::json!({"strategy": "random"}),
            &BuildEnv::default(),
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("strategy"), "{err}");
}
