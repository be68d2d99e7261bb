//! `key_select`: picks the upstream key for an attempt.
//!
//! Strategy `weighted_round_robin` is nginx's smooth weighted round robin: over any window the
//! picks follow the weights, and keys of one weight are interleaved rather than bunched.

use std::collections::HashMap;
use std::sync::Arc;

use gemini_proxy_sdk::{
    BuildEnv, Phases, Plugin, PluginError, PluginFactory, RequestContext, Selection,
};
use parking_lot::Mutex;
use serde::Deserialize;

/// Key selection strategies.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin over the eligible keys.
    #[default]
    WeightedRoundRobin,
}

/// Config of the `key_select` stage.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeySelectConfig {
    /// Which strategy picks the key.
    #[serde(default)]
    pub strategy: Strategy,
}

/// The `key_select` stage.
pub struct KeySelect {
    strategy: Strategy,
    wrr: SmoothWrr,
}

impl Plugin for KeySelect {
    fn name(&self) -> &str {
        "key_select"
    }

    fn phases(&self) -> Phases {
        Phases::SELECT
    }

    fn on_select(&self, _cx: &RequestContext, sel: &mut Selection<'_>) -> Result<(), PluginError> {
        if sel.chosen().is_some() {
            return Ok(());
        }
        match self.strategy {
            Strategy::WeightedRoundRobin => {
                if let Some(i) = self.wrr.pick(sel) {
                    sel.choose(i);
                }
            }
        }
        Ok(())
    }
}

impl PluginFactory for KeySelect {
    const KIND: &'static str = "key_select";
    type Config = KeySelectConfig;

    fn build(config: KeySelectConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        Ok(Arc::new(KeySelect {
            strategy: config.strategy,
            wrr: SmoothWrr::default(),
        }))
    }
}

/// Smooth weighted round robin state: the "current weight" of each key id.
#[derive(Default)]
pub struct SmoothWrr {
    current: Mutex<HashMap<Arc<str>, i64>>,
}

impl SmoothWrr {
    /// Picks the index of an eligible candidate, or `None` if there is none.
    pub fn pick(&self, sel: &Selection<'_>) -> Option<usize> {
        let mut current = self.current.lock();
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, cand) in sel.eligible() {
            let w = i64::from(sel.weight(i));
            total += w;
            let cur = match current.get_mut(&cand.id) {
                Some(c) => c,
                None => current.entry(cand.id.clone()).or_insert(0),
            };
            *cur += w;
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((i, *cur));
            }
        }
        let (idx, _) = best?;
        if let Some(c) = current.get_mut(&sel.candidates()[idx].id) {
            *c -= total;
        }
        Some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gemini_proxy_sdk::testing;

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
}
