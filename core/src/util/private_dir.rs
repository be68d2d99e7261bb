//! Where the process keeps files other local users must not reach: the upgrade socket hands
//! over the listening sockets to whoever accepts on it, so its folder must be the gateway's own.

use std::path::{Path, PathBuf};

/// The default upgrade socket: `upgrade.sock` in `gemini-proxy-{uid}` under the temp folder
/// (the same path for the old and the new process of an upgrade).
pub fn default_upgrade_sock() -> PathBuf {
    std::env::temp_dir()
        .join(format!("gemini-proxy-{}", current_uid()))
        .join("upgrade.sock")
}

#[cfg(unix)]
fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(not(unix))]
fn current_uid() -> u32 {
    0
}

/// Makes sure no other user can create, replace or connect to `socket`: its folder is created
/// 0700 when missing and must otherwise be a folder owned by this user or root that nobody else
/// can write to (`/tmp` itself is refused: anyone could bind the name first and receive the
/// listening sockets, or feed the new process sockets of their own).
pub fn ensure_private_parent(socket: &Path) -> Result<(), String> {
    let parent = match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if std::fs::symlink_metadata(parent).is_err() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let meta = std::fs::symlink_metadata(parent)
            .map_err(|e| format!("cannot inspect {}: {e}", parent.display()))?;
        let refuse = |why: &str| {
            Err(format!(
                "the upgrade socket's folder {} {why}; choose a folder only this user can write \
                 to (--upgrade-sock)",
                parent.display()
            ))
        };
        if !meta.is_dir() {
            return refuse("is not a plain folder (a symlink or a file)");
        }
        if meta.uid() != current_uid() && meta.uid() != 0 {
            return refuse("belongs to another user");
        }
        if meta.mode() & 0o022 != 0 {
            return refuse("can be written by other users");
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_folder_is_created_for_this_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a/b/upgrade.sock");
        ensure_private_parent(&sock).unwrap();
        let mode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn folders_others_can_write_or_that_are_links_are_refused() {
        assert!(ensure_private_parent(Path::new("/tmp/gemini-proxy-upgrade.sock")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private_parent(&open.join("s.sock")).unwrap_err();
        assert!(err.contains("written by other users"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let err = ensure_private_parent(&link.join("s.sock")).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
        assert!(ensure_private_parent(&dir.path().join("s.sock")).is_ok());
    }

    #[test]
    fn the_default_socket_is_in_a_folder_of_its_own() {
        let sock = default_upgrade_sock();
        ensure_private_parent(&sock).unwrap();
        assert!(sock.parent().unwrap() != std::env::temp_dir());
    }
}
