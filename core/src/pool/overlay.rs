//! Keys added and removed through the admin API, kept in `pool.keys_file` (mode 0600: it holds
//! the secrets of added keys) and applied over the configured list at every (re)build.

use std::path::PathBuf;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::write_private;

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

#[derive(Default)]
struct OverlayFile {
    overlay: KeyOverlay,
    path: Option<PathBuf>,
}

/// The admin API's key changes and the file they are kept in.
#[derive(Default)]
pub struct AdminOverlay {
    inner: Mutex<OverlayFile>,
}

impl AdminOverlay {
    /// The admin API's key changes.
    pub fn get(&self) -> KeyOverlay {
        self.inner.lock().overlay.clone()
    }

    /// Replaces the overlay (the caller rebuilds the runtime and calls [`AdminOverlay::save`]).
    pub fn set(&self, o: KeyOverlay) {
        self.inner.lock().overlay = o;
    }

    /// Where the overlay lives; loads it if the file exists.
    pub fn set_file(&self, path: Option<PathBuf>) {
        let mut st = self.inner.lock();
        if st.path == path {
            return;
        }
        st.path = path.clone();
        if let Some(p) = path
            && let Ok(bytes) = std::fs::read(&p)
        {
            match serde_json::from_slice::<KeyOverlay>(&bytes) {
                Ok(o) => st.overlay = o,
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "keys file unreadable; ignoring it")
                }
            }
        }
    }

    /// Writes the overlay to `pool.keys_file` (0600).
    pub fn save(&self) -> std::io::Result<()> {
        let (path, bytes) = {
            let st = self.inner.lock();
            let Some(path) = st.path.clone() else {
                return Ok(());
            };
            let bytes = serde_json::to_vec_pretty(&st.overlay).map_err(std::io::Error::other)?;
            (path, bytes)
        };
        write_private(&path, &bytes)
    }
}
