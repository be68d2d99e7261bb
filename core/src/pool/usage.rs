//! Requests and tokens per (project, model) in the current minute and Pacific day: what
//! quota-aware selection reads as headroom. Its own lock: counting never waits on health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::Mutex;

use super::{has_room, model_key, now_unix};
use crate::util::clock;

/// Requests and tokens of one (project, model) in the current minute and Pacific day.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    minute: u64,
    minute_requests: u64,
    minute_tokens: u64,
    day_end: u64,
    day_requests: u64,
}

impl Usage {
    fn roll(&mut self, now: u64) {
        if self.minute != now / 60 {
            self.minute = now / 60;
            self.minute_requests = 0;
            self.minute_tokens = 0;
        }
        if now >= self.day_end {
            self.day_end = clock::unix_secs(clock::next_pacific_midnight(
                UNIX_EPOCH + Duration::from_secs(now),
            ));
            self.day_requests = 0;
        }
    }
}

#[derive(Default)]
struct UsageMap {
    map: HashMap<(Arc<str>, String), Usage>,
    /// When `map` was last swept while full.
    swept: u64,
}

/// Usage windows of every (project, model) the gateway sent calls for.
#[derive(Default)]
pub struct UsageWindows {
    inner: Mutex<UsageMap>,
}

impl UsageWindows {
    /// Runs `f` on (project, model)'s usage, rolled to the current windows.
    fn with_usage(&self, project: &Arc<str>, model: Option<&str>, f: impl FnOnce(&mut Usage)) {
        let now = now_unix();
        let mut guard = self.inner.lock();
        let key = (project.clone(), model_key(model).to_string());
        let st = &mut *guard;
        if !st.map.contains_key(&key)
            && !has_room(&mut st.map, &mut st.swept, |u| {
                let mut u = *u;
                u.roll(now);
                u.minute_requests > 0 || u.day_requests > 0
            })
        {
            return;
        }
        let u = st.map.entry(key).or_default();
        u.roll(now);
        f(u);
    }

    /// Counts a request for (project, model) in the current windows (before it is sent).
    pub fn count_request(&self, project: &Arc<str>, model: Option<&str>) {
        self.with_usage(project, model, |u| {
            u.minute_requests += 1;
            u.day_requests += 1;
        });
    }

    /// Adds the tokens a finished call used to (project, model)'s minute.
    pub fn count_tokens(&self, project: &Arc<str>, model: Option<&str>, tokens: u64) {
        self.with_usage(project, model, |u| u.minute_tokens += tokens);
    }

    /// Requests and tokens left in the current windows for the configured limits.
    pub fn remaining(
        &self,
        project: &Arc<str>,
        model: Option<&str>,
        limits: &crate::config::ModelLimits,
    ) -> gemini_proxy_sdk::hooks::Remaining {
        if limits.rpm.is_none() && limits.tpm.is_none() && limits.rpd.is_none() {
            return Default::default();
        }
        let u = self.usage_now(project, model);
        gemini_proxy_sdk::hooks::Remaining {
            rpm: limits.rpm.map(|l| l.saturating_sub(u.minute_requests)),
            tpm: limits.tpm.map(|l| l.saturating_sub(u.minute_tokens)),
            rpd: limits.rpd.map(|l| l.saturating_sub(u.day_requests)),
        }
    }

    fn usage_now(&self, project: &Arc<str>, model: Option<&str>) -> Usage {
        let st = self.inner.lock();
        let mut u = st
            .map
            .get(&(project.clone(), model_key(model).to_string()))
            .copied()
            .unwrap_or_default();
        drop(st);
        u.roll(now_unix());
        u
    }

    /// (model, requests this minute, tokens this minute, requests this Pacific day) of every
    /// model `project` has calls for in the current windows, by model name.
    pub fn of_project(&self, project: &str) -> Vec<(String, u64, u64, u64)> {
        let now = now_unix();
        let st = self.inner.lock();
        let mut out: Vec<(String, u64, u64, u64)> = st
            .map
            .iter()
            .filter(|((p, _), _)| &**p == project)
            .filter_map(|((_, m), u)| {
                let mut u = *u;
                u.roll(now);
                (u.minute_requests > 0 || u.day_requests > 0).then(|| {
                    (
                        m.clone(),
                        u.minute_requests,
                        u.minute_tokens,
                        u.day_requests,
                    )
                })
            })
            .collect();
        drop(st);
        out.sort();
        out
    }

    /// Unused share (0.0-1.0) of the tightest of `limits` for (project, model) now.
    pub fn headroom(
        &self,
        project: &Arc<str>,
        model: Option<&str>,
        limits: &crate::config::ModelLimits,
    ) -> Option<f64> {
        if limits.rpm.is_none() && limits.tpm.is_none() && limits.rpd.is_none() {
            return None;
        }
        let u = self.usage_now(project, model);
        let share = |used: u64, limit: Option<u64>| {
            limit.map(|l| {
                if l == 0 {
                    0.0
                } else {
                    (1.0 - used as f64 / l as f64).max(0.0)
                }
            })
        };
        [
            share(u.minute_requests, limits.rpm),
            share(u.minute_tokens, limits.tpm),
            share(u.day_requests, limits.rpd),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min)
    }
}

#[cfg(test)]
impl UsageWindows {
    pub(super) fn len(&self) -> usize {
        self.inner.lock().map.len()
    }
}
