//! What types cannot check: ids, duplicates, URLs, ports, limits, TLS settings. Each section has
//! its own check; the first problem found is reported with its path in the file.

use std::collections::HashSet;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::load::ConfigError;
use super::model::{ApiKeyConfig, Config};

/// The shortest pooled key: shorter ones could not be masked in answers without garbling them.
pub const MIN_KEY_LEN: usize = 6;

/// A problem: (path in the file, what is wrong).
type Bad = (String, String);

fn bad(path: impl Into<String>, msg: impl Into<String>) -> Result<(), Bad> {
    Err((path.into(), msg.into()))
}

/// 1-64 of A-Z a-z 0-9 - _ . (key ids, projects, preset names).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks what types cannot: ids, duplicates, URLs, ports, TLS settings.
pub fn validate(c: &Config, file: &str) -> Result<(), ConfigError> {
    listeners(c)
        .and_then(|()| client_limits(c))
        .and_then(|()| upstream(c))
        .and_then(|()| keys(c))
        .and_then(|()| auth(c))
        .and_then(|()| presets(c))
        .and_then(|()| tls(c))
        .and_then(|()| cluster(c))
        .and_then(|()| live(c))
        .and_then(|()| audit(c))
        .map_err(|(path, msg)| ConfigError::new(file, path, msg))
}

fn audit(c: &Config) -> Result<(), Bad> {
    let every = c.audit.export_every.0;
    if !every.is_zero() && every < std::time::Duration::from_secs(1) {
        return bad(
            "audit.export_every",
            "at least 1s (or 0 for no scheduled export)",
        );
    }
    Ok(())
}

fn cluster(c: &Config) -> Result<(), Bad> {
    let Some(k) = &c.cluster else { return Ok(()) };
    if let Err(m) = super::model::redis_address(&k.redis) {
        return bad("cluster.redis", m);
    }
    if let Some(id) = &k.instance_id
        && !valid_id(id)
    {
        return bad(
            "cluster.instance_id",
            "1 to 64 characters of A-Z a-z 0-9 . - _",
        );
    }
    if k.key_prefix.is_empty()
        || k.key_prefix.len() > 64
        || k.key_prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad(
            "cluster.key_prefix",
            "1 to 64 characters, no spaces or control characters",
        );
    }
    let t = k.op_timeout.0;
    if t < std::time::Duration::from_millis(1) || t > std::time::Duration::from_secs(10) {
        return bad("cluster.op_timeout", "between 1ms and 10s");
    }
    if k.fallback_instances == 0 || k.fallback_instances > 1000 {
        return bad("cluster.fallback_instances", "between 1 and 1000");
    }
    if k.secret
        .as_deref()
        .is_some_and(|s| s.len() < 32 || guessable(s))
    {
        return bad(
            "cluster.secret",
            "at least 32 random characters (e.g. `openssl rand -hex 32`)",
        );
    }
    Ok(())
}

/// A secret whose characters hold under 100 bits by their frequencies (`aaaa...`, `abab...`):
/// it signs and seals everything the instances share, so it must not be guessable.
fn guessable(s: &str) -> bool {
    let mut counts = std::collections::HashMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0u32) += 1;
    }
    let n = s.chars().count() as f64;
    let bits: f64 = counts
        .values()
        .map(|&k| {
            let p = f64::from(k) / n;
            -p * p.log2() * n
        })
        .sum();
    bits < 100.0
}

fn live(c: &Config) -> Result<(), Bad> {
    let l = &c.live;
    let secs = |d: &crate::config::duration::ConfigDuration, lo: u64, hi: u64| {
        d.0 >= std::time::Duration::from_millis(lo) && d.0 <= std::time::Duration::from_secs(hi)
    };
    if !secs(&l.setup_timeout, 100, 300) {
        return bad("live.setup_timeout", "between 100ms and 5m");
    }
    if !secs(&l.connect_timeout, 100, 300) {
        return bad("live.connect_timeout", "between 100ms and 5m");
    }
    if !secs(&l.idle_timeout, 1000, 86_400) {
        return bad("live.idle_timeout", "between 1s and 24h");
    }
    if !secs(&l.max_session, 1000, 7 * 86_400) {
        return bad("live.max_session", "between 1s and 7 days");
    }
    if !(1024..=64 * 1024 * 1024).contains(&l.max_setup_bytes) {
        return bad("live.max_setup_bytes", "between 1 KiB and 64 MiB");
    }
    if !(1024..=256 * 1024 * 1024).contains(&l.max_message_bytes) {
        return bad("live.max_message_bytes", "between 1 KiB and 256 MiB");
    }
    Ok(())
}

fn listeners(c: &Config) -> Result<(), Bad> {
    if c.server.port == 0 {
        return bad("server.port", "must be a port number above 0");
    }
    if c.metrics.enabled && c.metrics.prometheus_port == 0 {
        return bad("metrics.prometheus_port", "must be a port number above 0");
    }
    if c.metrics.enabled && c.metrics.prometheus_port == c.server.port {
        return bad(
            "metrics.prometheus_port",
            format!("port {} is already the proxy's server.port", c.server.port),
        );
    }
    if let Some(url) = &c.server.public_url {
        let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            return bad(
                "server.public_url",
                format!("`{url}` is not an http(s) URL"),
            );
        }
    }
    for (i, t) in c.server.trusted_proxies.iter().enumerate() {
        if let Err(m) = crate::util::Cidr::parse(t) {
            return bad(format!("server.trusted_proxies[{i}]"), m);
        }
    }
    Ok(())
}

fn client_limits(c: &Config) -> Result<(), Bad> {
    let cl = &c.server.clients;
    for (name, n) in [
        ("max_connections", cl.max_connections),
        ("max_connections_per_client", cl.max_connections_per_client),
    ] {
        if n == 0 {
            return bad(format!("server.clients.{name}"), "must be above 0");
        }
    }
    for (name, d) in [
        ("head_timeout", cl.head_timeout),
        ("body_timeout", cl.body_timeout),
        ("write_timeout", cl.write_timeout),
    ] {
        if d.0.is_zero() {
            return bad(format!("server.clients.{name}"), "must be above 0");
        }
    }
    if c.server.max_body_bytes == 0 {
        return bad("server.max_body_bytes", "must be above 0");
    }
    Ok(())
}

fn upstream(c: &Config) -> Result<(), Bad> {
    if let Err(m) = super::UpstreamTarget::parse(&c.gemini.base_url) {
        return bad("gemini.base_url", m);
    }
    Ok(())
}

fn keys(c: &Config) -> Result<(), Bad> {
    if c.gemini.api_keys.is_empty() {
        return bad(
            "gemini.api_keys",
            "no upstream key: list keys here or set GEMINI_API_KEY",
        );
    }
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, k) in c.gemini.api_keys.iter().enumerate() {
        let at = format!("gemini.api_keys[{i}]");
        if !ids.insert(k.id.as_str()) {
            return bad(format!("{at}.id"), format!("duplicate key id `{}`", k.id));
        }
        key(k, &at)?;
        let h: [u8; 32] = Sha256::digest(k.key.trim().as_bytes()).into();
        if !hashes.insert(h) {
            return bad(
                format!("{at}.key"),
                format!(
                    "key `{}` repeats an earlier key (same secret listed twice)",
                    k.id
                ),
            );
        }
    }
    if !c.gemini.api_keys.iter().any(|k| k.enabled && k.weight > 0) {
        return bad("gemini.api_keys", "every key is disabled or has weight 0");
    }
    Ok(())
}

/// One key on its own, found at `at`.
fn key(k: &ApiKeyConfig, at: &str) -> Result<(), Bad> {
    if !valid_id(&k.id) {
        return bad(
            format!("{at}.id"),
            format!("`{}` must be 1-64 of A-Z a-z 0-9 - _ .", k.id),
        );
    }
    let secret = k.key.trim();
    if secret.is_empty() {
        return bad(format!("{at}.key"), "is empty");
    }
    if super::looks_redacted(secret) {
        return bad(
            format!("{at}.key"),
            "is the placeholder the admin API shows for a secret: send the key itself",
        );
    }
    // Only what needs no escaping in JSON, headers or URLs: the gateway masks a key wherever an
    // answer spells it, and an escaped spelling would slip past.
    if let Some(c) = secret
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        let what = if c.is_ascii_graphic() {
            format!("`{c}`")
        } else {
            "a space or control character".to_string()
        };
        return bad(
            format!("{at}.key"),
            format!("contains {what}: a key is A-Z a-z 0-9 - _ . only"),
        );
    }
    if secret.len() < MIN_KEY_LEN {
        return bad(
            format!("{at}.key"),
            format!("is shorter than {MIN_KEY_LEN} characters (a Gemini key has 39)"),
        );
    }
    // The id is shown everywhere (metrics, audit, the console); the secret never is.
    if k.id.contains(secret) {
        return bad(
            format!("{at}.id"),
            "contains the key itself: an id is shown everywhere, the key nowhere",
        );
    }
    if k.weight > 1_000_000 {
        return bad(format!("{at}.weight"), "must be at most 1000000");
    }
    if let Some(p) = &k.project
        && !valid_id(p)
    {
        return bad(
            format!("{at}.project"),
            format!("`{p}` must be 1-64 of A-Z a-z 0-9 - _ ."),
        );
    }
    key_window(k, at)?;
    if let Some(m) = k.models.iter().position(|m| m.trim().is_empty()) {
        return bad(format!("{at}.models[{m}]"), "is empty");
    }
    Ok(())
}

/// `not_before` and `expires_at` are RFC 3339 times, in that order.
fn key_window(k: &ApiKeyConfig, at: &str) -> Result<(), Bad> {
    let mut window = [None, None];
    for (j, (field, value)) in [("not_before", &k.not_before), ("expires_at", &k.expires_at)]
        .into_iter()
        .enumerate()
    {
        if let Some(v) = value {
            match crate::util::clock::parse_rfc3339(v) {
                Ok(t) => window[j] = Some(t),
                Err(m) => return bad(format!("{at}.{field}"), m),
            }
        }
    }
    if let [Some(a), Some(b)] = window
        && b <= a
    {
        return bad(format!("{at}.expires_at"), "is not after not_before");
    }
    Ok(())
}

fn auth(c: &Config) -> Result<(), Bad> {
    if c.auth.enabled && c.auth.jwt_secret.is_none() && c.auth.keys.is_empty() {
        return bad(
            "auth.jwt_secret",
            "required when auth is enabled (set it here or in JWT_SECRET, or list auth.keys)",
        );
    }
    if !c.auth.enabled && !super::is_loopback_host(&c.server.host) && !c.auth.allow_unauthenticated
    {
        return bad(
            "auth.enabled",
            format!(
                "is false while the proxy listens on {} (not loopback): anyone who reaches it spends your keys; enable auth, bind to 127.0.0.1, or set auth.allow_unauthenticated: true for development",
                c.server.host
            ),
        );
    }
    Ok(())
}

fn presets(c: &Config) -> Result<(), Bad> {
    for (name, weights) in &c.presets {
        if !valid_id(name) {
            return bad(
                format!("presets.{name}"),
                "preset names must be 1-64 of A-Z a-z 0-9 - _ .",
            );
        }
        for (id, w) in weights {
            if *w > 1_000_000 {
                return bad(format!("presets.{name}.{id}"), "must be at most 1000000");
            }
        }
    }
    for (i, w) in c.preset_schedule.iter().enumerate() {
        if !c.presets.contains_key(&w.preset) {
            return bad(
                format!("preset_schedule[{i}].preset"),
                format!("no preset named `{}` under presets:", w.preset),
            );
        }
        for (field, t) in [("from", &w.from), ("to", &w.to)] {
            if let Err(m) = super::PresetWindow::minutes(t) {
                return bad(format!("preset_schedule[{i}].{field}"), m);
            }
        }
    }
    if let Some(d) = &c.default_preset
        && !c.presets.contains_key(d)
    {
        return bad(
            "default_preset",
            format!("no preset named `{d}` under presets:"),
        );
    }
    Ok(())
}

fn tls(c: &Config) -> Result<(), Bad> {
    let tls = &c.server.tls;
    if c.metrics.tls && !tls.enabled {
        return bad(
            "metrics.tls",
            "the admin listener uses the proxy's certificate: set server.tls.enabled: true",
        );
    }
    let acme = tls.acme.as_ref().filter(|a| a.enabled);
    if !tls.enabled {
        if acme.is_some() {
            return bad(
                "server.tls.enabled",
                "acme.enabled needs server.tls.enabled: true (the certificate is for the TLS listener)",
            );
        }
        return Ok(());
    }
    if let Some(a) = acme {
        return acme_settings(c, a);
    }
    for (name, v) in [("cert_path", &tls.cert_path), ("key_path", &tls.key_path)] {
        match v {
            None => {
                return bad(
                    format!("server.tls.{name}"),
                    "required when server.tls.enabled is true",
                );
            }
            Some(p) if !Path::new(p).exists() => {
                return bad(
                    format!("server.tls.{name}"),
                    format!("file `{p}` does not exist"),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

fn acme_settings(c: &Config, a: &super::model::AcmeConfig) -> Result<(), Bad> {
    // Two listeners on one address would share one socket (and close it twice).
    let taken = [
        (true, c.server.port, "the proxy's server.port"),
        (
            c.metrics.enabled,
            c.metrics.prometheus_port,
            "metrics.prometheus_port",
        ),
    ];
    if let Some((_, _, what)) = taken.iter().find(|(on, p, _)| *on && *p == a.http_port) {
        return bad(
            "server.tls.acme.http_port",
            format!("port {} is already {what}", a.http_port),
        );
    }
    if a.domains.is_empty() {
        return bad(
            "server.tls.acme.domains",
            "list the domain names the certificate is for",
        );
    }
    if let Some(bad_name) = a.domains.iter().find(|d| {
        d.is_empty()
            || !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'))
    }) {
        return bad(
            "server.tls.acme.domains",
            format!("`{bad_name}` is not a domain name"),
        );
    }
    if let Some(ca) = &a.ca_file
        && !Path::new(ca).exists()
    {
        return bad(
            "server.tls.acme.ca_file",
            format!("file `{ca}` does not exist"),
        );
    }
    Ok(())
}
