//! Which keys may serve a call now: the pool's health applied to one runtime's candidates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gemini_proxy_sdk::{Candidate, Selection};

use super::health::Breaker;
use super::{KeyPool, model_key, now_unix};
use crate::util::clock;

/// Where each key and project sits in a runtime's candidate list.
#[derive(Debug, Default)]
pub struct PoolIndex {
    by_id: HashMap<Arc<str>, usize>,
    by_project: HashMap<Arc<str>, Vec<usize>>,
}

impl PoolIndex {
    pub fn new(candidates: &[Candidate]) -> PoolIndex {
        let mut ix = PoolIndex::default();
        for (i, c) in candidates.iter().enumerate() {
            ix.by_id.insert(c.id.clone(), i);
            ix.by_project.entry(c.project.clone()).or_default().push(i);
        }
        ix
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub fn of_project(&self, project: &str) -> &[usize] {
        self.by_project.get(project).map_or(&[], |v| v.as_slice())
    }
}

/// Eligibility of the pool for one call, written into a [`Selection`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Gate {
    /// Keys resting (cooldown or open breaker) that will come back.
    pub resting: usize,
    /// Earliest time a resting key comes back.
    pub earliest_recovery: Option<SystemTime>,
}

impl KeyPool {
    /// Excludes from `sel` every candidate that may not serve `model` now, and says when the
    /// first resting one comes back. A key whose breaker is half-open is let through for one
    /// probe at a time. Costs O(troubled keys + cooldowns), not O(keys): a healthy pool of
    /// thousands of keys pays nothing here.
    pub fn gate(&self, index: &PoolIndex, model: Option<&str>, sel: &mut Selection) -> Gate {
        let now = now_unix();
        let now_i = Instant::now();
        let now_sys = SystemTime::now();
        let model = model_key(model);
        // (candidate, unix second it comes back): a key resting for several reasons counts
        // with its latest.
        let mut resting: Vec<(usize, u64)> = Vec::new();
        fn rest(resting: &mut Vec<(usize, u64)>, sel: &mut Selection, i: usize, until: u64) {
            if let Some(r) = resting.iter_mut().find(|(j, _)| *j == i) {
                r.1 = r.1.max(until);
            } else if !sel.is_excluded(i) {
                sel.exclude(i);
                resting.push((i, until));
            }
        }
        let mut st = self.health.lock();
        let st = &mut *st;
        for id in &st.troubled {
            let Some(i) = index.index_of(id) else {
                continue;
            };
            let Some(h) = st.keys.get_mut(id) else {
                continue;
            };
            if h.dead.is_some() {
                sel.exclude(i);
                continue;
            }
            match h.breaker {
                Breaker::Open { until } if until > now_i => {
                    let back = now_sys + (until - now_i) + Duration::from_millis(999);
                    rest(&mut resting, sel, i, clock::unix_secs(back));
                }
                Breaker::Open { .. } => h.breaker = Breaker::HalfOpen { probing: false },
                Breaker::HalfOpen { probing: true } => rest(&mut resting, sel, i, now + 1),
                _ => {}
            }
        }
        if !st.project_model.is_empty() {
            st.project_model.retain(|_, c| c.until > now);
            for ((project, m), cd) in &st.project_model {
                if m == model {
                    for &i in index.of_project(project) {
                        rest(&mut resting, sel, i, cd.until);
                    }
                }
            }
        }
        if !st.key_model.is_empty() {
            st.key_model.retain(|_, c| c.until > now);
            for ((id, m), cd) in &st.key_model {
                if m == model
                    && let Some(i) = index.index_of(id)
                {
                    rest(&mut resting, sel, i, cd.until);
                }
            }
        }
        Gate {
            resting: resting.len(),
            earliest_recovery: resting
                .iter()
                .map(|(_, u)| *u)
                .min()
                .map(|u| UNIX_EPOCH + Duration::from_secs(u)),
        }
    }
}
