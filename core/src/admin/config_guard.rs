//! What a config sent to the admin API may not change. An admin token is a bearer credential
//! that expires and can be revoked; it must not be able to turn itself into lasting access or
//! into the pooled keys. So who is trusted, how calls are authenticated, where the pooled keys
//! are sent, and native code change only by editing the config file (hot reload applies it).

use serde_yaml::Value;

use crate::config::Config;

/// Why the admin API refuses to go from `before` to `after`, if it does.
pub fn locked_change(before: &Config, after: &Config) -> Option<&'static str> {
    if before.auth != after.auth {
        return Some(
            "changes the `auth:` section (who is trusted: signing secrets and keys, leeway, revocations, the admin password, auth on or off)",
        );
    }
    if auth_entries(before) != auth_entries(after) {
        return Some("changes the pipeline's `auth` stage (its options, its `when:` or its place)");
    }
    if native_entries(before) != native_entries(after) {
        return Some(
            "adds or changes a `native` stage (native code runs with the gateway's rights)",
        );
    }
    if before.gemini.base_url != after.gemini.base_url
        || before.gemini.ca_file != after.gemini.ca_file
    {
        return Some(
            "changes `gemini.base_url` or `gemini.ca_file` (where the pooled keys are sent)",
        );
    }
    if before.server.trusted_proxies != after.server.trusted_proxies {
        return Some(
            "changes `server.trusted_proxies` (which addresses may speak for a client: lockouts and per-client limits)",
        );
    }
    None
}

/// The pipeline as it runs, with the place of each entry.
fn effective(c: &Config) -> Vec<(usize, Value)> {
    let entries = c
        .pipeline
        .clone()
        .unwrap_or_else(crate::pipeline::default_pipeline);
    crate::runtime::with_auth_stage(entries, c)
        .into_iter()
        .enumerate()
        .collect()
}

fn kind(entry: &Value) -> Option<&str> {
    match entry {
        Value::String(k) => Some(k),
        Value::Mapping(m) if m.len() == 1 => m.keys().next()?.as_str(),
        _ => None,
    }
}

fn auth_entries(c: &Config) -> Vec<(usize, Value)> {
    effective(c)
        .into_iter()
        .filter(|(_, e)| kind(e) == Some("auth"))
        .collect()
}

/// Native stages, without their place (moving one is harmless).
fn native_entries(c: &Config) -> Vec<Value> {
    effective(c)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| kind(e) == Some("native"))
        .collect()
}
