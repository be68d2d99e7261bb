//! Revoked token ids: one list per file per process, shared by the stages and the admin API.

use super::*;

/// Revoked token ids, shared by every stage and the admin API that use the same file.
#[derive(Default)]
pub struct Revocations {
    ids: RwLock<BTreeSet<String>>,
    file: Option<PathBuf>,
}

pub(super) static REVOCATIONS: LazyLock<parking_lot::Mutex<HashMap<PathBuf, Arc<Revocations>>>> =
    LazyLock::new(Default::default);

/// The list used when no file is configured: one per process, so revocations made through the
/// admin API reach every verifier (the proxy's and the admin API's) even without a file.
pub(super) static IN_MEMORY: LazyLock<Arc<Revocations>> = LazyLock::new(Default::default);

impl Revocations {
    /// The list kept in `file` (one per file per process; loaded on first use). A file that
    /// exists but cannot be read as a list is an error: loading it as empty would make every
    /// revoked token valid again.
    pub fn for_file(file: Option<&Path>) -> Result<Arc<Revocations>, String> {
        let Some(file) = file else {
            return Ok(IN_MEMORY.clone());
        };
        let mut all = REVOCATIONS.lock();
        if let Some(r) = all.get(file) {
            return Ok(r.clone());
        }
        let ids = match std::fs::read(file) {
            Ok(b) => serde_json::from_slice::<BTreeSet<String>>(&b).map_err(|e| {
                format!(
                    "revocations_file {}: not a JSON list of token ids ({e}); fix or restore it (revoked tokens would work again)",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                return Err(format!(
                    "revocations_file {}: cannot read: {e}",
                    file.display()
                ));
            }
        };
        let r = Arc::new(Revocations {
            ids: RwLock::new(ids),
            file: Some(file.to_path_buf()),
        });
        all.insert(file.to_path_buf(), r.clone());
        Ok(r)
    }

    pub fn contains(&self, jti: &str) -> bool {
        self.ids.read().contains(jti)
    }

    /// Revokes `jti` and writes the file (mode 0600). The write happens under the lock, so
    /// the file always ends with the latest list.
    pub fn revoke(&self, jti: &str) -> std::io::Result<()> {
        let mut ids = self.ids.write();
        ids.insert(jti.to_string());
        if let Some(f) = &self.file {
            let bytes = serde_json::to_vec_pretty(&*ids).map_err(std::io::Error::other)?;
            gemini_proxy_sdk::write_private(f, &bytes)?;
        }
        Ok(())
    }
}
