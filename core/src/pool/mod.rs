//! The key pool: what the gateway knows of each pooled key beyond the config. It outlives
//! reloads; each concern has its own file and its own lock, none held across an `.await`:
//!
//! - [`health`]: dead keys, cooldowns, circuit breakers, what an attempt's verdict does;
//! - [`gate`]: which candidates may serve a call now;
//! - [`usage`]: requests and tokens per (project, model) in the current windows;
//! - [`affinity`]: which key (and caller) created a resource;
//! - [`persist`]: the state file, so a restart forgets none of the above;
//! - [`overlay`]: keys added and removed through the admin API;
//! - [`live`] and [`report`]: lock-free figures for selection, and the admin view.

pub mod affinity;
pub mod classify;
pub mod gate;
pub mod health;
pub mod live;
pub mod overlay;
pub mod persist;
pub mod report;
pub mod shared;
pub mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

pub use crate::util::write_private;
pub use classify::{DeadReason, QuotaWindow, Verdict, classify};
pub use gate::{Gate, PoolIndex};
pub use health::Cooldown;
pub use live::KeyLive;
pub use overlay::{AdminOverlay, KeyOverlay};
pub use report::{CooldownReport, KeyReport};
pub use shared::PoolEvent;
pub use usage::UsageWindows;

use crate::util::clock;
use affinity::Affinity;
use health::{HealthState, KeyHealth};

/// A key's fingerprint: enough to tell keys apart in the API and the state file, useless to
/// an attacker (12 hex digits of SHA-256).
pub fn fingerprint(secret: &str) -> String {
    let d = Sha256::digest(secret.trim().as_bytes());
    format!("sha256:{}", &hex::encode(d)[..12])
}

/// Most (project or key, model) entries kept per map. Model names come from clients (a flood of
/// made-up names gets a 404 each): past this, entries that no longer count are dropped, and if
/// none can go, a new name is not remembered.
const MAX_MODEL_STATE: usize = 10_000;

/// Whether `map` may take one more entry, after dropping those `keep` rejects when full. A full
/// map is swept at most once a second (`swept`: when it last was), so a flood costs no more
/// than a lookup per call.
fn has_room<K, V>(map: &mut HashMap<K, V>, swept: &mut u64, keep: impl Fn(&V) -> bool) -> bool {
    if map.len() < MAX_MODEL_STATE {
        return true;
    }
    let now = now_unix();
    if *swept != now {
        *swept = now;
        map.retain(|_, v| keep(v));
    }
    map.len() < MAX_MODEL_STATE
}

/// The key pool's shared state.
pub struct KeyPool {
    health: Mutex<HealthState>,
    /// Requests and tokens per (project, model) in the current windows.
    pub usage: UsageWindows,
    /// Resource (`files/x`, `cachedContents/y`, `batches/z`, `upload:ID`) → who made it.
    affinity: Mutex<HashMap<String, Affinity>>,
    any_pins: AtomicBool,
    /// Keys added and removed through the admin API (persisted to `pool.keys_file`).
    pub overlay: AdminOverlay,
    /// The preset applied through the admin API (persisted in the state file).
    manual_preset: Mutex<Option<String>>,
    live: Mutex<HashMap<Arc<str>, Arc<KeyLive>>>,
    state_file: Mutex<Option<std::path::PathBuf>>,
    dirty: std::sync::mpsc::SyncSender<()>,
    dirty_rx: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Where new health findings go (a cluster's other instances).
    publisher: std::sync::OnceLock<shared::PoolPublisher>,
}

fn now_unix() -> u64 {
    clock::unix_secs(SystemTime::now())
}

fn model_key(model: Option<&str>) -> &str {
    model.unwrap_or("*")
}

impl Default for KeyPool {
    fn default() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        KeyPool {
            health: Mutex::new(HealthState::default()),
            usage: UsageWindows::default(),
            affinity: Mutex::new(HashMap::new()),
            any_pins: AtomicBool::new(false),
            overlay: AdminOverlay::default(),
            manual_preset: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            state_file: Mutex::new(None),
            dirty: tx,
            dirty_rx: Mutex::new(Some(rx)),
            publisher: std::sync::OnceLock::new(),
        }
    }
}

/// One key as the pool is told about it at (re)load.
pub struct PoolKey<'a> {
    pub id: &'a Arc<str>,
    pub project: &'a Arc<str>,
    pub fingerprint: String,
}

impl KeyPool {
    /// Brings the pool in line with the configured keys: new keys start healthy, a key whose
    /// secret changed under the same id starts over, removed keys are forgotten.
    pub fn sync_keys(&self, keys: &[PoolKey<'_>]) {
        let mut st = self.health.lock();
        let mut changed = false;
        st.keys.retain(|id, _| keys.iter().any(|k| k.id == id));
        for k in keys {
            match st.keys.get_mut(k.id) {
                Some(h) if h.fingerprint == k.fingerprint => h.project = k.project.clone(),
                _ => {
                    st.keys.insert(
                        k.id.clone(),
                        KeyHealth::new(k.fingerprint.clone(), k.project.clone()),
                    );
                    changed = true;
                }
            }
        }
        let ids: Vec<Arc<str>> = st.keys.keys().cloned().collect();
        st.key_model.retain(|(id, _), _| ids.contains(id));
        st.troubled.retain(|id| ids.contains(id));
        drop(st);
        self.live.lock().retain(|id, _| ids.contains(id));
        if changed {
            self.mark_dirty();
        }
    }

    /// The live figures of `ids`, in order (created for new ids).
    pub fn live_handles<'a>(&self, ids: impl Iterator<Item = &'a Arc<str>>) -> Vec<Arc<KeyLive>> {
        let mut live = self.live.lock();
        ids.map(|id| live.entry(id.clone()).or_default().clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
