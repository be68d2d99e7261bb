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
    // A temp name of its own per write: two writers never share (and corrupt) one.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn concurrent_writers_never_mix_their_files() {
        let dir = std::env::temp_dir().join(format!("gp-sdk-write-{}", std::process::id()));
        let file = dir.join("state.json");
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || {
                    let body = format!("[{}]", format!("\"{i}\",").repeat(5000) + "\"end\"");
                    for _ in 0..20 {
                        super::write_private(&file, body.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let v: Vec<String> = serde_json::from_str(&text).expect("one writer's whole file");
        assert!(v.windows(2).take(4999).all(|w| w[0] == w[1]), "not mixed");
        let left = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(left, 1, "no temp files left");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
