//! Small helpers every layer may use; they import nothing else from the crate.

pub mod cidr;
pub mod clock;
pub mod private_dir;

pub use cidr::Cidr;
pub use gemini_proxy_sdk::write_private;

/// Makes an existing file readable by its owner only (a file made by an earlier version, or
/// under a looser umask, keeps its mode otherwise); a missing file is left alone.
pub fn make_private(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Whether a request asks for `100 Continue` before it sends its body.
pub fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}
