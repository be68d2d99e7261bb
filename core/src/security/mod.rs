//! Startup security validation: findings with a severity, a CWE id and a fix, and a 0-100 score.
//! Run at `serve` (production mode refuses to start on a critical finding or a low score), by
//! `gemini-proxy check`, and at `GET /api/security`.

use serde::Serialize;

use crate::config::{Config, LoadedConfig, ServerMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    fn penalty(self) -> u32 {
        match self {
            Severity::Low => 5,
            Severity::Medium => 10,
            Severity::High => 20,
            Severity::Critical => 40,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// Stable id, e.g. `jwt-secret-weak`.
    pub id: &'static str,
    pub severity: Severity,
    /// `CWE-521` ...
    pub cwe: &'static str,
    /// What is wrong (never the secret itself).
    pub title: String,
    /// What to do.
    pub fix: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// 100 minus the findings' penalties (critical 40, high 20, medium 10, low 5), at least 0.
    pub score: u32,
    pub findings: Vec<Finding>,
    /// True if `server.mode: production` would refuse to start with this config.
    pub blocks_production: bool,
    pub min_score: u32,
}

/// The lowest score production mode accepts.
pub const MIN_PRODUCTION_SCORE: u32 = 70;

/// Passwords too common to allow (a short list of the most used ones and their patterns).
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password123",
    "123456789012",
    "qwertyuiop",
    "admin",
    "admin123",
    "administrator",
    "letmein",
    "welcome",
    "changeme",
    "iloveyou",
    "123456",
    "12345678",
    "qwerty123",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "adminadmin",
    "rootroot",
    "secret",
    "gemini",
    "gemini-proxy",
    "default",
    "test",
    "example",
];

/// Key values that are examples, not keys.
fn is_placeholder_key(k: &str) -> bool {
    let l = k.trim().to_ascii_lowercase();
    l.is_empty()
        || l.contains("your")
        || l.contains("example")
        || l.contains("placeholder")
        || l.contains("changeme")
        || l.contains("xxxx")
        || l == "..."
        || l.starts_with("<")
        || l == "aizasy..."
}

use crate::config::is_loopback_host as loopback;

fn strong_secret(s: &str) -> bool {
    s.chars().count() >= 32
        && s.chars().any(|c| c.is_ascii_uppercase())
        && s.chars().any(|c| c.is_ascii_lowercase())
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars().any(|c| !c.is_ascii_alphanumeric())
}

fn weak_password(p: &str) -> bool {
    p.chars().count() < 12
        || COMMON_PASSWORDS
            .iter()
            .any(|w| p.to_ascii_lowercase().contains(w) && p.len() < w.len() + 4)
}

/// Whether the file itself (not the environment) holds `path` as a non-empty value.
fn in_file(loaded: &LoadedConfig, path: &[&str]) -> bool {
    let mut v = &loaded.migrated;
    for p in path {
        match v.get(*p) {
            Some(next) => v = next,
            None => return false,
        }
    }
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

/// Runs every check on a loaded config.
/// The files the `rhai`, `wasm` and `native` stages load, resolved like the stages do.
fn program_files(loaded: &LoadedConfig) -> Vec<(&'static str, std::path::PathBuf)> {
    let mut out = Vec::new();
    for entry in loaded.config.pipeline.iter().flatten() {
        let Some(map) = entry.as_mapping() else {
            continue;
        };
        for (kind, field) in [("rhai", "script"), ("wasm", "module"), ("native", "path")] {
            if let Some(p) = map
                .get(kind)
                .and_then(|body| body.get(field))
                .and_then(|v| v.as_str())
            {
                out.push((kind, loaded.config_dir().join(p)));
            }
        }
    }
    out
}

/// Why production mode refuses `loaded` (at start-up, on reload and on `PUT /api/config`), if
/// it does: a critical finding or a score under the minimum (`(...):` then the report).
pub fn production_refusal(loaded: &LoadedConfig) -> Option<String> {
    if loaded.config.server.mode != crate::config::ServerMode::Production {
        return None;
    }
    let r = assess(loaded);
    r.blocks_production.then(|| {
        format!(
            "(critical finding or score under {}):\n{}",
            r.min_score,
            r.text()
        )
    })
}

pub fn assess(loaded: &LoadedConfig) -> Report {
    let mut f = Findings(Vec::new());
    auth_findings(&loaded.config, &mut f);
    key_findings(&loaded.config, &mut f);
    transport_findings(&loaded.config, &mut f);
    cluster::findings(&loaded.config, &mut f);
    file_findings(loaded, &mut f);
    #[cfg(unix)]
    program_findings(loaded, &mut f);
    let mut f = f.0;
    f.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    let penalty: u32 = f.iter().map(|x| x.severity.penalty()).sum();
    let score = 100u32.saturating_sub(penalty);
    let blocks = f.iter().any(|x| x.severity == Severity::Critical) || score < MIN_PRODUCTION_SCORE;
    Report {
        score,
        findings: f,
        blocks_production: blocks,
        min_score: MIN_PRODUCTION_SCORE,
    }
}

/// The findings of one assessment, as they are found.
struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        id: &'static str,
        severity: Severity,
        cwe: &'static str,
        title: String,
        fix: &'static str,
    ) {
        self.0.push(Finding {
            id,
            severity,
            cwe,
            title,
            fix,
        });
    }
}

mod cluster;

fn auth_findings(c: &Config, f: &mut Findings) {
    let public = !loopback(&c.server.host);
    if !c.auth.enabled {
        f.add(
            "auth-disabled",
            if public {
                Severity::Critical
            } else {
                Severity::Medium
            },
            "CWE-306",
            format!(
                "authentication is disabled (proxy listener on {})",
                c.server.host
            ),
            "set auth.enabled: true with a strong auth.jwt_secret (JWT_SECRET)",
        );
    }
    if c.auth.enabled {
        match c.auth.jwt_secret.as_deref() {
            Some(s) if !strong_secret(s) => f.add(
                "jwt-secret-weak",
                Severity::Critical,
                "CWE-326",
                "the JWT secret is weak: it needs 32+ characters with upper and lower case letters, digits and special characters".into(),
                "generate one: openssl rand -base64 48 (then add a special character), put it in JWT_SECRET",
            ),
            Some(_) => {}
            None if c.auth.keys.is_empty() => f.add(
                "jwt-secret-missing",
                Severity::Critical,
                "CWE-306",
                "auth is enabled without a JWT secret".into(),
                "set JWT_SECRET",
            ),
            None => {}
        }
        for k in &c.auth.keys {
            if let Some(secret) = k.secret.as_deref()
                && !strong_secret(secret)
            {
                f.add(
                    "jwt-key-weak",
                    Severity::Critical,
                    "CWE-326",
                    format!("the HMAC secret of auth.keys `{}` is weak: it needs 32+ characters with upper and lower case letters, digits and special characters", k.kid),
                    "generate one: openssl rand -base64 48 (then add a special character)",
                );
            }
        }
        if c.auth.leeway.0 > std::time::Duration::from_secs(300) {
            f.add(
                "auth-leeway-long",
                Severity::High,
                "CWE-613",
                format!(
                    "auth.leeway is {} s: expired tokens stay valid that long",
                    c.auth.leeway.0.as_secs()
                ),
                "keep auth.leeway at a few seconds (clock skew), at most 5 minutes",
            );
        }
        if c.auth.admin_password_hash.is_none() {
            match c.auth.admin_password.as_deref() {
                Some(p) if weak_password(p) => f.add(
                    "admin-password-weak",
                    Severity::High,
                    "CWE-521",
                    "the admin password is shorter than 12 characters or a common password".into(),
                    "use a long random password, or store an Argon2 hash in auth.admin_password_hash (gemini-proxy hash-password)",
                ),
                Some(_) => {}
                None => f.add(
                    "admin-login-unconfigured",
                    Severity::Low,
                    "CWE-306",
                    "no admin password: POST /auth/login is unavailable".into(),
                    "set ADMIN_PASSWORD or auth.admin_password_hash to use the admin login",
                ),
            }
        }
    }
}

fn key_findings(c: &Config, f: &mut Findings) {
    for k in &c.gemini.api_keys {
        if is_placeholder_key(&k.key) {
            f.add(
                "api-key-placeholder",
                Severity::Critical,
                "CWE-798",
                format!("key `{}` is an example value, not a Gemini API key", k.id),
                "put the real key in GEMINI_API_KEY or the config, or remove the entry",
            );
        }
    }
}

fn transport_findings(c: &Config, f: &mut Findings) {
    let public = !loopback(&c.server.host);
    let production = c.server.mode == ServerMode::Production;
    if production && public && !c.server.tls.enabled {
        f.add(
            "tls-required-in-production",
            Severity::Critical,
            "CWE-319",
            "production mode on a non-loopback listener without TLS".into(),
            "enable server.tls (cert files or ACME), or terminate TLS in front and bind to loopback",
        );
    } else if public && !c.server.tls.enabled {
        f.add(
            "public-bind-without-tls",
            Severity::High,
            "CWE-319",
            format!(
                "the proxy listens on {} without TLS: tokens travel in clear text",
                c.server.host
            ),
            "enable server.tls or bind to 127.0.0.1 behind a TLS proxy",
        );
    }
    if c.gemini.base_url.starts_with("http://") {
        let host = crate::config::UpstreamTarget::parse(&c.gemini.base_url)
            .map(|t| t.host)
            .unwrap_or_default();
        if !loopback(&host) {
            f.add(
                "upstream-cleartext",
                Severity::High,
                "CWE-319",
                "the upstream is reached over plain HTTP: API keys travel in clear text".into(),
                "use https:// for gemini.base_url",
            );
        }
    }
    if c.metrics.enabled && !loopback(&c.metrics.host) {
        f.add(
            "admin-listener-public",
            if c.auth.enabled {
                Severity::Medium
            } else {
                Severity::High
            },
            "CWE-668",
            format!(
                "the admin listener (metrics, admin API) listens on {}",
                c.metrics.host
            ),
            "bind metrics.host to 127.0.0.1 and scrape through a private network",
        );
    }
}

/// Secrets written in the config file, and who can read it.
fn file_findings(loaded: &LoadedConfig, f: &mut Findings) {
    let secrets_in_file = in_file(loaded, &["auth", "jwt_secret"])
        || in_file(loaded, &["auth", "admin_password"])
        || loaded
            .migrated
            .get("gemini")
            .and_then(|g| g.get("api_keys"))
            .and_then(|k| k.as_sequence())
            .is_some_and(|ks| {
                ks.iter().any(|k| {
                    k.get("key")
                        .and_then(|v| v.as_str())
                        .is_some_and(|s| !is_placeholder_key(s))
                })
            });
    if secrets_in_file {
        f.add(
            "secrets-in-file",
            Severity::Medium,
            "CWE-312",
            "secrets are written in the config file rather than the environment".into(),
            "move them to JWT_SECRET, ADMIN_PASSWORD and GEMINI_API_KEY",
        );
        #[cfg(unix)]
        if let Some(p) = &loaded.path
            && let Ok(meta) = std::fs::metadata(p)
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                f.add(
                    "config-readable-by-others",
                    Severity::High,
                    "CWE-732",
                    format!(
                        "{} holds secrets and is readable by other users (mode {:o})",
                        p.display(),
                        meta.permissions().mode() & 0o777
                    ),
                    "chmod 600 the config file",
                );
            }
        }
    }
}

/// Routing programs decide where calls and keys go: a file others can rewrite hands them that
/// decision (and a native plugin runs with the gateway's rights).
#[cfg(unix)]
fn program_findings(loaded: &LoadedConfig, f: &mut Findings) {
    for (kind, path) in program_files(loaded) {
        use std::os::unix::fs::PermissionsExt;
        let writable = |p: &std::path::Path| {
            std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o022 != 0)
        };
        let dir = path.parent().map(std::path::Path::to_path_buf);
        if writable(&path) || dir.as_deref().is_some_and(writable) {
            f.add(
                "program-writable-by-others",
                if kind == "native" {
                    Severity::Critical
                } else {
                    Severity::High
                },
                if kind == "native" {
                    "CWE-494"
                } else {
                    "CWE-732"
                },
                format!(
                    "the {kind} stage loads {}, which (or whose folder) other users can write",
                    path.display()
                ),
                "chmod go-w the file and its folder",
            );
        }
    }
}

impl Report {
    /// Human-readable lines for the terminal and the log.
    pub fn text(&self) -> String {
        let mut out = format!("security score {}/100\n", self.score);
        for f in &self.findings {
            out.push_str(&format!(
                "  [{:?}] {} ({}): {}\n      fix: {}\n",
                f.severity, f.id, f.cwe, f.title, f.fix
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
