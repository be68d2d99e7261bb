//! The key pool's health state: dead keys, quota cooldowns per (project, model), per-key
//! circuit breakers, in-flight counts and latency. Outlives reloads; dead keys and cooldowns are
//! persisted to `pool.state_file` so a restart does not forget them.
//!
//! One mutex guards the state; it is never held across an `.await`.

pub mod affinity;
pub mod classify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gemini_proxy_sdk::{Candidate, KeyState, Selection};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use classify::{DeadReason, QuotaWindow, Verdict, classify};

use crate::config::PoolConfig;
use crate::util::clock;
use affinity::Affinity;

/// A key's fingerprint: enough to tell keys apart in the API and the state file, useless to
/// an attacker (12 hex digits of SHA-256).
pub fn fingerprint(secret: &str) -> String {
    let d = Sha256::digest(secret.trim().as_bytes());
    format!("sha256:{}", &hex::encode(d)[..12])
}

/// Live figures of one key, read without a lock by selection strategies. Shared by every config
/// generation that has the key, so counts survive reloads.
#[derive(Debug, Default)]
pub struct KeyLive {
    in_flight: AtomicU32,
    /// f64 bits of the latency EWMA in ms.
    ewma_ms: AtomicU64,
}

impl KeyLive {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn latency_ewma_ms(&self) -> f64 {
        f64::from_bits(self.ewma_ms.load(Ordering::Relaxed))
    }

    fn observe_latency(&self, ms: f64) {
        // A lost update under a race only skews one sample of a moving average.
        let old = self.latency_ewma_ms();
        let new = if old == 0.0 { ms } else { 0.8 * old + 0.2 * ms };
        self.ewma_ms.store(new.to_bits(), Ordering::Relaxed);
    }
}

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

/// Why a (project, model) or (key, model) pair is resting, and until when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cooldown {
    /// Unix seconds (wall clock, so it survives a restart).
    pub until: u64,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open {
        until: Instant,
    },
    /// One real call may probe the key; `probing` while it runs.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct KeyHealth {
    fingerprint: String,
    project: Arc<str>,
    dead: Option<(DeadReason, u64)>,
    breaker: Breaker,
    consecutive_failures: u32,
    /// How many times the breaker opened in a row (the open period doubles).
    opened: u32,
    requests: u64,
    successes: u64,
    errors: HashMap<&'static str, u64>,
}

impl KeyHealth {
    fn new(fingerprint: String, project: Arc<str>) -> Self {
        KeyHealth {
            fingerprint,
            project,
            dead: None,
            breaker: Breaker::Closed,
            consecutive_failures: 0,
            opened: 0,
            requests: 0,
            successes: 0,
            errors: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct PoolState {
    keys: HashMap<Arc<str>, KeyHealth>,
    /// (project, model) → quota cooldown.
    project_model: HashMap<(Arc<str>, String), Cooldown>,
    /// (key id, model) → backoff or no access.
    key_model: HashMap<(Arc<str>, String), Cooldown>,
    /// (project, model) → usage in the current windows.
    usage: HashMap<(Arc<str>, String), Usage>,
    /// Resource (`files/x`, `cachedContents/y`, `batches/z`, `upload:ID`) → the key that made it.
    affinity: HashMap<String, Affinity>,
    /// Keys that are dead or whose breaker is not closed (the only ones `gate` looks at).
    troubled: std::collections::HashSet<Arc<str>>,
    /// When `usage`, `project_model` and `key_model` were last swept while full.
    swept: [u64; 3],
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

/// What the file keeps.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    #[serde(default)]
    dead: Vec<PersistedDead>,
    #[serde(default)]
    project_cooldowns: Vec<PersistedCooldown>,
    #[serde(default)]
    key_cooldowns: Vec<PersistedCooldown>,
    #[serde(default)]
    affinity: std::collections::BTreeMap<String, Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manual_preset: Option<String>,
}

/// Runtime changes to the configured key list, kept in `pool.keys_file` (mode 0600: it holds
/// the secrets of added keys).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KeyOverlay {
    #[serde(default)]
    pub added: Vec<crate::config::ApiKeyConfig>,
    /// Ids of configured keys removed through the API.
    #[serde(default)]
    pub removed: std::collections::BTreeSet<String>,
}

impl KeyOverlay {
    /// The configured keys with the overlay applied.
    pub fn apply(
        &self,
        configured: &[crate::config::ApiKeyConfig],
    ) -> Vec<crate::config::ApiKeyConfig> {
        configured
            .iter()
            .filter(|k| !self.removed.contains(&k.id))
            .chain(self.added.iter())
            .cloned()
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedDead {
    key_id: String,
    fingerprint: String,
    reason: DeadReason,
    since: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedCooldown {
    /// Project (project cooldowns) or key id (key cooldowns).
    owner: String,
    model: String,
    #[serde(flatten)]
    cooldown: Cooldown,
}

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

/// The key pool's shared state.
pub struct KeyPool {
    /// Keys added and removed through the admin API (persisted to `pool.keys_file`).
    overlay: Mutex<KeyOverlay>,
    keys_file: Mutex<Option<PathBuf>>,
    /// The preset applied through the admin API (persisted in the state file).
    manual_preset: Mutex<Option<String>>,
    state: Mutex<PoolState>,
    any_pins: std::sync::atomic::AtomicBool,
    live: Mutex<HashMap<Arc<str>, Arc<KeyLive>>>,
    state_file: Mutex<Option<PathBuf>>,
    dirty: std::sync::mpsc::SyncSender<()>,
    dirty_rx: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
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
            overlay: Mutex::new(KeyOverlay::default()),
            keys_file: Mutex::new(None),
            manual_preset: Mutex::new(None),
            state: Mutex::new(PoolState::default()),
            any_pins: std::sync::atomic::AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            state_file: Mutex::new(None),
            dirty: tx,
            dirty_rx: Mutex::new(Some(rx)),
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
        let mut st = self.state.lock();
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

    /// Runs `f` on (project, model)'s usage, rolled to the current windows.
    fn with_usage(&self, project: &Arc<str>, model: Option<&str>, f: impl FnOnce(&mut Usage)) {
        let now = now_unix();
        let mut st = self.state.lock();
        let key = (project.clone(), model_key(model).to_string());
        let st = &mut *st;
        if !st.usage.contains_key(&key)
            && !has_room(&mut st.usage, &mut st.swept[0], |u| {
                let mut u = *u;
                u.roll(now);
                u.minute_requests > 0 || u.day_requests > 0
            })
        {
            return;
        }
        let u = st.usage.entry(key).or_default();
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

    /// Unused share (0.0-1.0) of the tightest of `limits` for (project, model) now.
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
        let st = self.state.lock();
        let mut u = st
            .usage
            .get(&(project.clone(), model_key(model).to_string()))
            .copied()
            .unwrap_or_default();
        drop(st);
        u.roll(now_unix());
        u
    }

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

    /// Where the state is kept; loads it if the file exists. Call after [`sync_keys`].
    pub fn set_state_file(&self, path: Option<PathBuf>) {
        let same = *self.state_file.lock() == path;
        *self.state_file.lock() = path.clone();
        if same {
            return;
        }
        if let Some(p) = path {
            match std::fs::read(&p) {
                Ok(bytes) => match serde_json::from_slice::<Persisted>(&bytes) {
                    Ok(saved) => self.restore(saved),
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %e, "pool state file unreadable; starting fresh")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "cannot read pool state file")
                }
            }
        }
    }

    fn restore(&self, saved: Persisted) {
        let now = now_unix();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        for d in saved.dead {
            if let Some((id, h)) = st
                .keys
                .iter_mut()
                .find(|(id, _)| ***id == *d.key_id.as_str())
                && h.fingerprint == d.fingerprint
            {
                h.dead = Some((d.reason, d.since));
                let id = id.clone();
                st.troubled.insert(id);
            }
        }
        for c in saved.project_cooldowns {
            if c.cooldown.until > now {
                st.project_model
                    .insert((Arc::from(c.owner.as_str()), c.model), c.cooldown);
            }
        }
        if saved.manual_preset.is_some() {
            *self.manual_preset.lock() = saved.manual_preset.clone();
        }
        for (name, a) in saved.affinity {
            if a.until > now {
                self.any_pins.store(true, Ordering::Relaxed);
                st.affinity.insert(name, a);
            }
        }
        for c in saved.key_cooldowns {
            if c.cooldown.until > now {
                let id = st.keys.keys().find(|k| ***k == *c.owner).cloned();
                if let Some(id) = id {
                    st.key_model.insert((id, c.model), c.cooldown);
                }
            }
        }
    }

    fn mark_dirty(&self) {
        let _ = self.dirty.try_send(());
    }

    fn snapshot(&self) -> Persisted {
        let now = now_unix();
        let st = self.state.lock();
        let mut p = Persisted::default();
        for (id, h) in &st.keys {
            if let Some((reason, since)) = h.dead {
                p.dead.push(PersistedDead {
                    key_id: id.to_string(),
                    fingerprint: h.fingerprint.clone(),
                    reason,
                    since,
                });
            }
        }
        for ((owner, model), c) in &st.project_model {
            if c.until > now {
                p.project_cooldowns.push(PersistedCooldown {
                    owner: owner.to_string(),
                    model: model.clone(),
                    cooldown: c.clone(),
                });
            }
        }
        for ((owner, model), c) in &st.key_model {
            if c.until > now {
                p.key_cooldowns.push(PersistedCooldown {
                    owner: owner.to_string(),
                    model: model.clone(),
                    cooldown: c.clone(),
                });
            }
        }
        p.manual_preset = self.manual_preset.lock().clone();
        p.affinity = st
            .affinity
            .iter()
            .filter(|(_, a)| a.until > now)
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        p.dead.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        p
    }

    /// The admin API's key changes.
    pub fn overlay(&self) -> KeyOverlay {
        self.overlay.lock().clone()
    }

    /// Replaces the overlay (the caller rebuilds the runtime and calls [`save_overlay`]).
    pub fn set_overlay(&self, o: KeyOverlay) {
        *self.overlay.lock() = o;
    }

    /// Where the overlay lives; loads it if the file exists.
    pub fn set_keys_file(&self, path: Option<PathBuf>) {
        if *self.keys_file.lock() == path {
            return;
        }
        *self.keys_file.lock() = path.clone();
        if let Some(p) = path
            && let Ok(bytes) = std::fs::read(&p)
        {
            match serde_json::from_slice::<KeyOverlay>(&bytes) {
                Ok(o) => *self.overlay.lock() = o,
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "keys file unreadable; ignoring it")
                }
            }
        }
    }

    /// Writes the overlay to `pool.keys_file` (0600).
    pub fn save_overlay(&self) -> std::io::Result<()> {
        let Some(path) = self.keys_file.lock().clone() else {
            return Ok(());
        };
        let bytes =
            serde_json::to_vec_pretty(&*self.overlay.lock()).map_err(std::io::Error::other)?;
        write_private(&path, &bytes)
    }

    /// The preset applied through the API, if any.
    pub fn manual_preset(&self) -> Option<String> {
        self.manual_preset.lock().clone()
    }

    /// Reads only the applied preset from a state file (before keys are known).
    pub fn peek_manual_preset(&self, path: &Path) {
        if let Ok(bytes) = std::fs::read(path)
            && let Ok(saved) = serde_json::from_slice::<Persisted>(&bytes)
        {
            *self.manual_preset.lock() = saved.manual_preset;
        }
    }

    pub fn set_manual_preset(&self, name: Option<String>) {
        *self.manual_preset.lock() = name;
        self.mark_dirty();
    }

    /// Writes the state file now (atomically: temp file, then rename; mode 0600).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = self.state_file.lock().clone() else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&self.snapshot()).map_err(std::io::Error::other)?;
        write_private(&path, &bytes)
    }

    /// Starts the background writer: saves at most once a `debounce` after a change.
    pub fn spawn_writer(self: &Arc<Self>, debounce: Duration) {
        let Some(rx) = self.dirty_rx.lock().take() else {
            return;
        };
        let pool = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("pool-state".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    std::thread::sleep(debounce);
                    let Some(pool) = pool.upgrade() else { return };
                    if let Err(e) = pool.save() {
                        tracing::warn!(error = %e, "cannot write the pool state file");
                    }
                }
            });
    }

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
        let mut st = self.state.lock();
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

    /// A call starts on `key_id`: counts it in flight and claims a half-open probe.
    pub fn begin(&self, key_id: &str, live: &KeyLive) {
        live.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        if let Some(h) = st.keys.get_mut(key_id) {
            h.requests += 1;
            if h.breaker == (Breaker::HalfOpen { probing: false }) {
                h.breaker = Breaker::HalfOpen { probing: true };
            }
        }
    }

    /// A call on `key_id` ended (whatever the outcome).
    pub fn end(&self, key_id: &str, live: &KeyLive) {
        live.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        // The probe's verdict (if any) already moved the breaker; otherwise let the next call
        // probe.
        if let Some(h) = st.keys.get_mut(key_id)
            && h.breaker == (Breaker::HalfOpen { probing: true })
        {
            h.breaker = Breaker::HalfOpen { probing: false };
        }
    }

    /// Records what one attempt on `key_id` (in `project`) for `model` got. Returns a note for
    /// the security log when the key just died.
    pub fn record(
        &self,
        cfg: &PoolConfig,
        key_id: &str,
        model: Option<&str>,
        verdict: &Verdict,
        latency: Option<Duration>,
    ) -> Option<DeadReason> {
        let model = model_key(model).to_string();
        let now = SystemTime::now();
        let mut st = self.state.lock();
        let st = &mut *st;
        let id = st.keys.get_key_value(key_id).map(|(k, _)| k.clone())?;
        let h = st.keys.get_mut(key_id)?;
        if let Some(l) = latency
            && let Some(live) = self.live.lock().get(key_id)
        {
            live.observe_latency(l.as_secs_f64() * 1000.0);
        }
        if *verdict != Verdict::Success {
            *h.errors.entry(verdict.class()).or_default() += 1;
        }
        let mut died = None;
        let mut dirty = false;
        match verdict {
            Verdict::Success => {
                h.successes += 1;
                h.consecutive_failures = 0;
                if matches!(h.breaker, Breaker::HalfOpen { .. }) {
                    h.breaker = Breaker::Closed;
                    h.opened = 0;
                    if h.dead.is_none() {
                        st.troubled.remove(key_id);
                    }
                }
            }
            Verdict::KeyDead(reason) => {
                if h.dead.is_none() {
                    h.dead = Some((*reason, clock::unix_secs(now)));
                    died = Some(*reason);
                    dirty = true;
                    st.troubled.insert(id.clone());
                }
            }
            Verdict::ProjectQuota {
                window,
                retry_delay,
                quota_id,
            } => {
                let until = match window {
                    QuotaWindow::Day => clock::next_pacific_midnight(now),
                    QuotaWindow::Minute => {
                        now + retry_delay
                            .unwrap_or(cfg.minute_cooldown.0)
                            .max(Duration::from_secs(1))
                    }
                };
                let until = clock::unix_secs(until) + 1;
                let key = (h.project.clone(), model);
                let open = clock::unix_secs(now);
                if !st.project_model.contains_key(&key)
                    && !has_room(&mut st.project_model, &mut st.swept[1], |c| c.until > open)
                {
                    return None;
                }
                let entry = st.project_model.entry(key).or_insert(Cooldown {
                    until: 0,
                    reason: String::new(),
                    quota_id: None,
                });
                if until > entry.until {
                    *entry = Cooldown {
                        until,
                        reason: verdict.class().to_string(),
                        quota_id: Some(quota_id.clone()),
                    };
                    dirty = true;
                }
            }
            Verdict::ModelUnavailable | Verdict::BareRateLimit
                if !st.key_model.contains_key(&(id.clone(), model.clone()))
                    && !has_room(&mut st.key_model, &mut st.swept[2], |c| {
                        c.until > clock::unix_secs(now)
                    }) => {}
            Verdict::ModelUnavailable => {
                st.key_model.insert(
                    (id, model),
                    Cooldown {
                        until: clock::unix_secs(now + cfg.model_unavailable_for.0),
                        reason: verdict.class().to_string(),
                        quota_id: None,
                    },
                );
                dirty = true;
            }
            Verdict::BareRateLimit => {
                // Jitter so that keys resting together do not all come back together.
                let base = cfg.rate_limit_backoff.0.as_secs_f64();
                let secs = base * (0.75 + 0.5 * rand::random::<f64>());
                st.key_model.insert(
                    (id, model),
                    Cooldown {
                        until: clock::unix_secs(now + Duration::from_secs_f64(secs)) + 1,
                        reason: verdict.class().to_string(),
                        quota_id: None,
                    },
                );
            }
            Verdict::Transient
            | Verdict::GatewayBug
            | Verdict::AffinityMiss
            | Verdict::ClientError => {}
        }
        if dirty {
            self.mark_dirty();
        }
        died
    }

    /// Counts an error that surfaced after the response started (no retry possible).
    pub fn note_error(&self, key_id: &str, class: &'static str) {
        let mut st = self.state.lock();
        if let Some(h) = st.keys.get_mut(key_id) {
            *h.errors.entry(class).or_default() += 1;
            // The head said success; the stream did not deliver it.
            h.successes = h.successes.saturating_sub(1);
        }
    }

    /// Blames `key_id` for a failure another key did not repeat (circuit breaker).
    pub fn blame(&self, cfg: &PoolConfig, key_id: &str) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some((id, h)) = st.keys.iter_mut().find(|(id, _)| &***id == key_id) else {
            return;
        };
        h.consecutive_failures += 1;
        let half_open = matches!(h.breaker, Breaker::HalfOpen { .. });
        if half_open || h.consecutive_failures >= cfg.breaker_failures.max(1) {
            let factor = 1u32 << h.opened.min(4);
            let open_for = (cfg.breaker_open_for.0 * factor).min(Duration::from_secs(600));
            h.breaker = Breaker::Open {
                until: Instant::now() + open_for,
            };
            h.opened += 1;
            h.consecutive_failures = 0;
            st.troubled.insert(id.clone());
            tracing::warn!(target: "gemini_proxy::pool", key_id, open_for_s = open_for.as_secs(), "circuit breaker opened");
        }
    }

    /// Why `key_id` is dead, if it is.
    pub fn dead_reason(&self, key_id: &str) -> Option<DeadReason> {
        self.state
            .lock()
            .keys
            .get(key_id)
            .and_then(|h| h.dead.map(|(r, _)| r))
    }

    /// Operator actions.
    pub fn set_dead(&self, key_id: &str, dead: Option<DeadReason>) -> bool {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some((id, h)) = st.keys.iter_mut().find(|(id, _)| &***id == key_id) else {
            return false;
        };
        h.dead = dead.map(|r| (r, now_unix()));
        if dead.is_some() || h.breaker != Breaker::Closed {
            st.troubled.insert(id.clone());
        } else {
            st.troubled.remove(key_id);
        }
        drop(guard);
        self.mark_dirty();
        true
    }

    /// Clears a key's cooldowns, breaker and death.
    pub fn reset(&self, key_id: &str) -> bool {
        let mut st = self.state.lock();
        let Some(h) = st.keys.get_mut(key_id) else {
            return false;
        };
        h.dead = None;
        h.breaker = Breaker::Closed;
        h.consecutive_failures = 0;
        h.opened = 0;
        let project = h.project.clone();
        st.key_model.retain(|(id, _), _| &**id != key_id);
        st.project_model.retain(|(p, _), _| *p != project);
        st.troubled.remove(key_id);
        drop(st);
        self.mark_dirty();
        true
    }

    /// The state of every key, for `GET /api/keys` and metrics (no secrets: fingerprints).
    pub fn report(&self) -> Vec<KeyReport> {
        let now = now_unix();
        let now_i = Instant::now();
        let live = self.live.lock().clone();
        let st = self.state.lock();
        let mut out: Vec<KeyReport> = st
            .keys
            .iter()
            .map(|(id, h)| {
                let mut cooldowns: Vec<CooldownReport> = st
                    .project_model
                    .iter()
                    .filter(|((p, _), c)| *p == h.project && c.until > now)
                    .map(|((_, m), c)| CooldownReport {
                        scope: "project",
                        model: m.clone(),
                        until: c.until,
                        remaining_s: c.until - now,
                        reason: c.reason.clone(),
                        quota_id: c.quota_id.clone(),
                    })
                    .chain(
                        st.key_model
                            .iter()
                            .filter(|((k, _), c)| k == id && c.until > now)
                            .map(|((_, m), c)| CooldownReport {
                                scope: "key",
                                model: m.clone(),
                                until: c.until,
                                remaining_s: c.until - now,
                                reason: c.reason.clone(),
                                quota_id: c.quota_id.clone(),
                            }),
                    )
                    .collect();
                cooldowns.sort_by(|a, b| a.model.cmp(&b.model));
                let (breaker, open_remaining) = match h.breaker {
                    Breaker::Closed => ("closed", None),
                    Breaker::Open { until } if until > now_i => {
                        ("open", Some((until - now_i).as_secs_f64()))
                    }
                    Breaker::Open { .. } | Breaker::HalfOpen { .. } => ("half_open", None),
                };
                let state = if h.dead.is_some() {
                    KeyState::Disabled
                } else if breaker == "open" {
                    KeyState::CoolingDown
                } else if breaker == "half_open" {
                    KeyState::HalfOpen
                } else if !cooldowns.is_empty() {
                    KeyState::CoolingDown
                } else {
                    KeyState::Active
                };
                let mut errors: Vec<(String, u64)> =
                    h.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                errors.sort();
                KeyReport {
                    id: id.to_string(),
                    project: h.project.to_string(),
                    fingerprint: h.fingerprint.clone(),
                    state: state.as_str(),
                    dead_reason: h.dead.map(|(r, _)| r.as_str()),
                    breaker,
                    breaker_open_remaining_s: open_remaining,
                    in_flight: live.get(id).map_or(0, |l| l.in_flight()),
                    requests: h.requests,
                    successes: h.successes,
                    errors: errors.into_iter().collect(),
                    latency_ewma_ms: live
                        .get(id)
                        .map_or(0.0, |l| (l.latency_ewma_ms() * 10.0).round() / 10.0),
                    cooldowns,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// One key in `GET /api/keys`.
#[derive(Debug, Serialize)]
pub struct KeyReport {
    pub id: String,
    pub project: String,
    pub fingerprint: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<&'static str>,
    pub breaker: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_open_remaining_s: Option<f64>,
    pub in_flight: u32,
    pub requests: u64,
    pub successes: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub latency_ewma_ms: f64,
    pub cooldowns: Vec<CooldownReport>,
}

#[derive(Debug, Serialize)]
pub struct CooldownReport {
    pub scope: &'static str,
    pub model: String,
    pub until: u64,
    pub remaining_s: u64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
}

pub use crate::util::write_private;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PoolConfig {
        PoolConfig::default()
    }

    fn pool(keys: &[(&str, &str)]) -> (KeyPool, Vec<Candidate>) {
        let pool = KeyPool::default();
        let cands: Vec<Candidate> = keys
            .iter()
            .map(|(id, p)| Candidate::new(id, 1).in_project(p))
            .collect();
        let pk: Vec<PoolKey> = cands
            .iter()
            .map(|c| PoolKey {
                id: &c.id,
                project: &c.project,
                fingerprint: fingerprint(&format!("secret-{}", c.id)),
            })
            .collect();
        pool.sync_keys(&pk);
        (pool, cands)
    }

    fn eligible(pool: &KeyPool, cands: &[Candidate], model: &str) -> (Vec<String>, Gate) {
        let mut sel = Selection::new(cands);
        let g = pool.gate(&PoolIndex::new(cands), Some(model), &mut sel);
        (sel.eligible().map(|(_, c)| c.id.to_string()).collect(), g)
    }

    #[test]
    fn made_up_model_names_cannot_grow_the_pool_state() {
        let (p, _) = pool(&[("a", "p1")]);
        let project: Arc<str> = Arc::from("p1");
        for i in 0..(MAX_MODEL_STATE * 3) {
            let m = format!("nosuch-{i}");
            p.count_request(&project, Some(&m));
            p.record(&cfg(), "a", Some(&m), &Verdict::ModelUnavailable, None);
            p.record(
                &cfg(),
                "a",
                Some(&m),
                &Verdict::ProjectQuota {
                    window: QuotaWindow::Minute,
                    retry_delay: Some(Duration::from_secs(30)),
                    quota_id: "q".into(),
                },
                None,
            );
        }
        let st = p.state.lock();
        assert!(st.usage.len() <= MAX_MODEL_STATE, "{}", st.usage.len());
        assert!(st.key_model.len() <= MAX_MODEL_STATE);
        assert!(st.project_model.len() <= MAX_MODEL_STATE);
    }

    #[test]
    fn quota_cooldowns_are_per_project_and_model() {
        let (p, c) = pool(&[("a", "p1"), ("b", "p1"), ("c", "p2")]);
        let v = Verdict::ProjectQuota {
            window: QuotaWindow::Minute,
            retry_delay: Some(Duration::from_secs(30)),
            quota_id: "GenerateRequestsPerMinutePerProjectPerModel".into(),
        };
        p.record(&cfg(), "a", Some("flash"), &v, None);
        let (ids, g) = eligible(&p, &c, "flash");
        assert_eq!(ids, vec!["c"], "a and b share project p1");
        assert_eq!(g.resting, 2);
        let wait = g
            .earliest_recovery
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(32),
            "{wait:?}"
        );
        assert_eq!(
            eligible(&p, &c, "pro").0.len(),
            3,
            "other models unaffected"
        );
    }

    #[test]
    fn dead_keys_stay_dead_and_reset_revives() {
        let (p, c) = pool(&[("a", "a"), ("b", "b")]);
        assert_eq!(
            p.record(
                &cfg(),
                "a",
                Some("m"),
                &Verdict::KeyDead(DeadReason::Invalid),
                None
            ),
            Some(DeadReason::Invalid)
        );
        assert_eq!(eligible(&p, &c, "m").0, vec!["b"]);
        assert_eq!(
            eligible(&p, &c, "other").0,
            vec!["b"],
            "dead for every model"
        );
        let (_, g) = eligible(&p, &c, "m");
        assert_eq!(g.resting, 0, "dead is not resting");
        assert!(p.reset("a"));
        assert_eq!(eligible(&p, &c, "m").0.len(), 2);
    }

    #[test]
    fn breaker_opens_after_consecutive_blames_and_probes_half_open() {
        let (p, c) = pool(&[("a", "a"), ("b", "b")]);
        let mut conf = cfg();
        conf.breaker_failures = 2;
        conf.breaker_open_for = crate::config::ConfigDuration(Duration::from_millis(50));
        p.blame(&conf, "a");
        assert_eq!(eligible(&p, &c, "m").0.len(), 2);
        p.blame(&conf, "a");
        assert_eq!(eligible(&p, &c, "m").0, vec!["b"], "open");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            eligible(&p, &c, "m").0.len(),
            2,
            "half-open lets a probe through"
        );
        let live = p.live_handles(c.iter().map(|c| &c.id));
        p.begin("a", &live[0]);
        assert_eq!(live[0].in_flight(), 1);
        assert_eq!(eligible(&p, &c, "m").0, vec!["b"], "one probe at a time");
        p.record(&conf, "a", Some("m"), &Verdict::Success, None);
        p.end("a", &live[0]);
        assert_eq!(live[0].in_flight(), 0);
        assert_eq!(eligible(&p, &c, "m").0.len(), 2);
        assert_eq!(p.report()[0].breaker, "closed");
    }

    #[test]
    fn state_survives_a_restart_for_the_same_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pool.json");
        let (p, _) = pool(&[("a", "a"), ("b", "b")]);
        p.set_state_file(Some(file.clone()));
        p.record(
            &cfg(),
            "a",
            Some("m"),
            &Verdict::KeyDead(DeadReason::Leaked),
            None,
        );
        p.record(
            &cfg(),
            "b",
            Some("m"),
            &Verdict::ProjectQuota {
                window: QuotaWindow::Day,
                retry_delay: None,
                quota_id: "PerDay".into(),
            },
            None,
        );
        p.save().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (q, c) = pool(&[("a", "a"), ("b", "b")]);
        q.set_state_file(Some(file.clone()));
        let (ids, g) = eligible(&q, &c, "m");
        assert!(ids.is_empty());
        assert_eq!(g.resting, 1);
        assert_eq!(q.report()[0].dead_reason, Some("leaked"));
        // Same id, new secret: a new key, not dead.
        let r = KeyPool::default();
        let id: Arc<str> = Arc::from("a");
        r.sync_keys(&[PoolKey {
            id: &id,
            project: &id,
            fingerprint: fingerprint("another secret"),
        }]);
        r.set_state_file(Some(file));
        assert_eq!(r.report()[0].state, "active");
    }

    #[test]
    fn headroom_is_the_tightest_unused_share() {
        let (p, c) = pool(&[("a", "pa")]);
        let limits = crate::config::ModelLimits {
            rpm: Some(10),
            tpm: Some(1000),
            rpd: None,
        };
        assert_eq!(p.headroom(&c[0].project, Some("m"), &limits), Some(1.0));
        for _ in 0..3 {
            p.count_request(&c[0].project, Some("m"));
        }
        p.count_tokens(&c[0].project, Some("m"), 500);
        let h = p.headroom(&c[0].project, Some("m"), &limits).unwrap();
        assert!((h - 0.5).abs() < 1e-9, "tokens are tighter: {h}");
        assert_eq!(
            p.headroom(&c[0].project, Some("m"), &Default::default()),
            None
        );
    }

    #[test]
    fn pins_survive_a_restart_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pool.json");
        let (p, _) = pool(&[("a", "a")]);
        p.set_state_file(Some(file.clone()));
        assert!(!p.has_pins());
        p.pin("files/abc", "a", Duration::from_secs(3600), Some("user:x"));
        p.pin("upload:old", "a", Duration::from_secs(0), None);
        // Named again by someone else (an admin reading it): the owner stays.
        p.pin(
            "files/abc",
            "a",
            Duration::from_secs(3600),
            Some("user:admin"),
        );
        assert_eq!(p.owner_of("files/abc"), Some(Some("user:x".into())));
        // The same name made by another caller in another project does not re-point it.
        let (p2, _) = pool(&[("a", "a"), ("b", "b")]);
        p2.pin("files/n", "a", Duration::from_secs(3600), Some("user:x"));
        p2.pin("files/n", "b", Duration::from_secs(3600), Some("user:y"));
        assert_eq!(p2.pinned("files/n").as_deref(), Some("a"));
        assert_eq!(p2.owner_of("files/n"), Some(Some("user:x".into())));
        assert_eq!(p.pinned("files/abc").as_deref(), Some("a"));
        assert_eq!(p.pinned("upload:old"), None, "expired");
        p.save().unwrap();
        let (q, _) = pool(&[("a", "a")]);
        q.set_state_file(Some(file));
        assert_eq!(q.pinned("files/abc").as_deref(), Some("a"));
        assert_eq!(q.pinned("files/other"), None);
    }

    #[test]
    fn fingerprints_do_not_reveal_the_key() {
        let f = fingerprint("AIzaSyD-secret-key-value");
        assert!(f.starts_with("sha256:") && f.len() == 19);
        assert!(!f.contains("AIza"));
    }
}
