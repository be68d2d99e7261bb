//! Choosing the key for one attempt. The built-in rules run first, in this order, each
//! narrowing the candidates: the keys' own rules (validity window, `models`), the project the
//! call is pinned to (the project of a resource it names, else one a routing stage chose), the
//! pool's health gate (cooldowns, breakers, quota), keys this call already tried, then
//! affinity (the key that created the resource). The pipeline's selection stages then choose
//! among what is left (weights, strategies, plugins), and the runtime's fallback when none did.

use std::time::SystemTime;

use gemini_proxy_sdk::{KeyStats, Selection};

use super::GatewayProxy;
use super::call::CallState;
use super::failure::{ErrorClass, Failure};
use crate::pool::{Gate, KeyPool};
use crate::runtime::Runtime;

/// The key chosen for an attempt, or why none could be.
pub enum Choice {
    Key(usize),
    NoneLeft(Gate),
}

/// The key that created a resource the call names (most specific first), when it is still in
/// the pool: its project holds the resource.
pub fn creating_key(pool: &KeyPool, rt: &Runtime, refs: &[String]) -> Option<usize> {
    refs.iter()
        .find_map(|r| pool.pinned(r))
        .and_then(|id| rt.keys.iter().position(|k| *k.id == *id))
}

impl GatewayProxy {
    /// Chooses the key of the next attempt. `after_transient`: the last attempt failed
    /// transiently, so a key already tried may be asked again when no other is left.
    pub(super) fn choose_key(
        &self,
        ctx: &mut CallState,
        rt: &Runtime,
        pinned: Option<usize>,
        after_transient: bool,
    ) -> Result<Choice, Failure> {
        let stats = LiveStats {
            runtime: rt,
            pool: &self.shared.pool,
        };
        let mut sel = Selection::new(&rt.candidates).with_stats(&stats);
        let request_id = ctx.request_id.clone();
        let cx = ctx.cx();
        let model = cx.request.model.clone();
        if rt.keys_have_rules {
            let now = SystemTime::now();
            let bound = cx.request.action.model_bound();
            for (i, k) in rt.keys.iter().enumerate() {
                if !k.admits(model.as_deref(), bound, now) {
                    sel.exclude(i);
                }
            }
        }
        let project = match pinned {
            Some(pi) => Some(&*rt.keys[pi].project),
            None => cx.routing.project.as_deref(),
        };
        if let Some(project) = project {
            if !rt.keys.iter().any(|k| &*k.project == project) {
                return Err(Failure::new(
                    503,
                    ErrorClass::NoKey,
                    format!("the routing stage pinned project `{project}`, which has no key"),
                ));
            }
            for (i, k) in rt.keys.iter().enumerate() {
                if &*k.project != project {
                    sel.exclude(i);
                }
            }
        }
        let gate = self.shared.pool.gate(&rt.index, model.as_deref(), &mut sel);
        // A key that already failed this call is not asked again, unless a transient error
        // left no other key.
        let tried: Vec<usize> = cx
            .tried_keys
            .iter()
            .filter_map(|t| rt.index.index_of(t))
            .collect();
        let untried_left = sel.eligible().any(|(i, _)| !tried.contains(&i));
        if !after_transient || untried_left {
            for &i in &tried {
                sel.exclude(i);
            }
        }
        if let Some(pi) = pinned {
            // The creating key itself when it can serve; else another key of its project.
            sel.choose(pi);
        }
        rt.pipeline
            .select(cx, &mut sel)
            .map_err(|stage| Failure::stage(&request_id, stage))?;
        Ok(
            match sel.chosen_index().or_else(|| rt.fallback.pick(&sel)) {
                Some(i) => Choice::Key(i),
                None => Choice::NoneLeft(gate),
            },
        )
    }
}

/// The live figures strategies read, for one runtime.
pub struct LiveStats<'a> {
    pub runtime: &'a Runtime,
    pub pool: &'a KeyPool,
}

impl KeyStats for LiveStats<'_> {
    fn in_flight(&self, index: usize) -> u32 {
        self.runtime.live.get(index).map_or(0, |l| l.in_flight())
    }

    fn latency_ewma_ms(&self, index: usize) -> f64 {
        self.runtime
            .live
            .get(index)
            .map_or(0.0, |l| l.latency_ewma_ms())
    }

    fn headroom(&self, index: usize, model: Option<&str>) -> Option<f64> {
        let key = self.runtime.keys.get(index)?;
        let limits = key.limits.as_ref()?.for_model(model);
        self.pool.usage.headroom(&key.project, model, &limits)
    }

    fn remaining(&self, index: usize, model: Option<&str>) -> gemini_proxy_sdk::hooks::Remaining {
        let Some(key) = self.runtime.keys.get(index) else {
            return Default::default();
        };
        let Some(limits) = key.limits.as_ref().map(|l| l.for_model(model)) else {
            return Default::default();
        };
        self.pool.usage.remaining(&key.project, model, &limits)
    }
}
