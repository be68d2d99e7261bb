//! Versioned config history: every applied config (file reload, `PUT /api/config`, rollback)
//! gets a version number; its text is kept (mode 0600: it may hold secrets) with who changed
//! it and a summary of what changed (field paths only, never values).

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One applied config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    pub version: u64,
    /// Unix seconds.
    pub at: u64,
    /// `startup`, `file`, `api`, `rollback`.
    pub source: String,
    /// Who changed it (admin token subject), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub sha256: String,
    /// Field paths that differ from the previous version.
    pub changed: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    versions: Vec<Version>,
}

/// Most versions kept; older ones are pruned.
const KEEP: usize = 50;

/// The history, in a directory next to the config file (or in memory).
pub struct History {
    dir: Option<PathBuf>,
    inner: Mutex<(Index, Option<Value>)>,
}

/// Field paths (dotted, depth-limited) whose values differ; secrets are named, not shown.
pub fn diff_paths(old: &Value, new: &Value) -> Vec<String> {
    fn walk(prefix: &str, a: &Value, b: &Value, depth: usize, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) if depth < 4 => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        depth + 1,
                        out,
                    );
                }
            }
            _ if a != b => out.push(if prefix.is_empty() {
                "(root)".into()
            } else {
                prefix.to_string()
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, 0, &mut out);
    out
}

impl History {
    /// A history kept in `dir` (created on first write); `None` keeps it in memory.
    pub fn new(dir: Option<PathBuf>) -> History {
        let index = dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join("index.json")).ok())
            .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            .unwrap_or_default();
        History {
            dir,
            inner: Mutex::new((index, None)),
        }
    }

    /// The directory for a config file: `<dir>/.gemini-proxy-history/`.
    pub fn dir_for(config: &Path) -> Option<PathBuf> {
        config.parent().map(|p| p.join(".gemini-proxy-history"))
    }

    /// Records an applied config. `parsed` is the effective config (for the diff).
    pub fn record(&self, text: &str, parsed: &Value, source: &str, by: Option<&str>) -> Version {
        use sha2::{Digest, Sha256};
        let mut g = self.inner.lock();
        let (index, last) = &mut *g;
        let changed = match last.as_ref() {
            Some(prev) => diff_paths(prev, parsed),
            None => Vec::new(),
        };
        let v = Version {
            version: index.versions.last().map_or(1, |v| v.version + 1),
            at: crate::util::clock::unix_secs(std::time::SystemTime::now()),
            source: source.to_string(),
            by: by.map(str::to_string),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            changed,
        };
        *last = Some(parsed.clone());
        index.versions.push(v.clone());
        let pruned: Vec<u64> = if index.versions.len() > KEEP {
            let n = index.versions.len() - KEEP;
            index.versions.drain(..n).map(|v| v.version).collect()
        } else {
            Vec::new()
        };
        if let Some(dir) = &self.dir {
            let write = || -> std::io::Result<()> {
                crate::util::write_private(
                    &dir.join(format!("v{}.yaml", v.version)),
                    text.as_bytes(),
                )?;
                let idx = serde_json::to_vec_pretty(&*index).map_err(std::io::Error::other)?;
                crate::util::write_private(&dir.join("index.json"), &idx)?;
                for old in pruned {
                    let _ = std::fs::remove_file(dir.join(format!("v{old}.yaml")));
                }
                Ok(())
            };
            if let Err(e) = write() {
                tracing::warn!(error = %e, "cannot write the config history");
            }
        }
        tracing::info!(target: "gemini_proxy::audit", version = v.version, source, by = ?by, changed = ?v.changed, "config applied");
        v
    }

    pub fn versions(&self) -> Vec<Version> {
        self.inner.lock().0.versions.clone()
    }

    /// The text of a kept version.
    pub fn text_of(&self, version: u64) -> Option<String> {
        let dir = self.dir.as_ref()?;
        if !self
            .inner
            .lock()
            .0
            .versions
            .iter()
            .any(|v| v.version == version)
        {
            return None;
        }
        std::fs::read_to_string(dir.join(format!("v{version}.yaml"))).ok()
    }
}

// The placeholder and the secret fields are the config's own (config never imports this module).
pub use crate::config::{REDACTED, SECRET_FIELDS, looks_redacted, redacted};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffs_name_paths_not_values() {
        let a = json!({"server": {"port": 1, "host": "h"}, "auth": {"jwt_secret": "s1"}});
        let b = json!({"server": {"port": 2, "host": "h"}, "auth": {"jwt_secret": "s2"}, "presets": {}});
        assert_eq!(
            diff_paths(&a, &b),
            vec!["auth.jwt_secret", "presets", "server.port"]
        );
    }

    #[test]
    fn keeps_versions_on_disk_with_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new(Some(dir.path().join("hist")));
        let v1 = h.record("a: 1\n", &json!({"a": 1}), "startup", None);
        let v2 = h.record("a: 2\n", &json!({"a": 2}), "api", Some("ops"));
        assert_eq!((v1.version, v2.version), (1, 2));
        assert_eq!(v2.changed, vec!["a"]);
        assert_eq!(h.text_of(1).as_deref(), Some("a: 1\n"));
        let again = History::new(Some(dir.path().join("hist")));
        assert_eq!(again.versions().len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join("hist/v2.yaml"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
        }
    }
}
