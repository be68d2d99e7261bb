//! The state file (`pool.state_file`): dead keys, cooldowns, resource affinity and the applied
//! preset survive a restart. Written atomically (0600) by a background thread at most once per
//! debounce after a change; a key whose secret changed does not inherit its old state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::affinity::Affinity;
use super::health::Cooldown;
use super::{DeadReason, KeyPool, now_unix, write_private};

/// What the file keeps.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Persisted {
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

impl KeyPool {
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
        let mut guard = self.health.lock();
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
        for c in saved.key_cooldowns {
            if c.cooldown.until > now {
                let id = st.keys.keys().find(|k| ***k == *c.owner).cloned();
                if let Some(id) = id {
                    st.key_model.insert((id, c.model), c.cooldown);
                }
            }
        }
        drop(guard);
        if saved.manual_preset.is_some() {
            *self.manual_preset.lock() = saved.manual_preset.clone();
        }
        let mut pins = self.affinity.lock();
        for (name, a) in saved.affinity {
            if a.until > now {
                self.any_pins.store(true, Ordering::Relaxed);
                pins.insert(name, a);
            }
        }
    }

    pub(super) fn mark_dirty(&self) {
        let _ = self.dirty.try_send(());
    }

    fn snapshot(&self) -> Persisted {
        let now = now_unix();
        let st = self.health.lock();
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
        drop(st);
        p.manual_preset = self.manual_preset.lock().clone();
        p.affinity = self
            .affinity
            .lock()
            .iter()
            .filter(|(_, a)| a.until > now)
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        p.dead.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        p
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
}
