//! Small file helpers for plugins that keep state on disk.

use std::path::Path;

/// Writes `bytes` to `path` atomically (a temp file, then a rename), readable by the owner only
/// (mode 0600 on Unix): for state that may hold secrets or must never be half-written.
/// Creates the parent directory if needed.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("gp-sdk-doc-{}", std::process::id()));
/// let file = dir.join("state.json");
/// gemini_proxy_sdk::write_private(&file, b"{}").unwrap();
/// assert_eq!(std::fs::read(&file).unwrap(), b"{}");
/// # std::fs::remove_dir_all(dir).unwrap();
/// ```
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
