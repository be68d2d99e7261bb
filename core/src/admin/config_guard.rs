//! What a config sent to the admin API may not change. An admin token is a bearer credential
//! that expires and can be revoked; it must not be able to turn itself into lasting access or
//! into the pooled keys. So who is trusted and how calls are authenticated, the listeners and
//! what they expose, where the pooled keys are sent, every file the gateway reads or writes,
//! and the programs stages load change only by editing the config file (hot reload applies it).

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
    if program_files(before) != program_files(after) {
        return Some(
            "adds or changes a program a stage loads (`rhai` script, `wasm` module, `native` plugin)",
        );
    }
    if before.gemini.base_url != after.gemini.base_url
        || before.gemini.ca_file != after.gemini.ca_file
    {
        return Some(
            "changes `gemini.base_url` or `gemini.ca_file` (where the pooled keys are sent)",
        );
    }
    if before.server != after.server || before.metrics != after.metrics {
        return Some(
            "changes the `server:` or `metrics:` section (listeners, TLS, CORS, public URL, client limits, trusted proxies, the admin listener)",
        );
    }
    if before.audit != after.audit
        || before.pool.state_file != after.pool.state_file
        || before.pool.keys_file != after.pool.keys_file
    {
        return Some(
            "changes a file the gateway writes (`audit:` paths, `pool.state_file`, `pool.keys_file`)",
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

/// The files the pipeline's stages load, by kind: a program decides where calls and keys go
/// (and a native one runs with the gateway's rights).
fn program_files(c: &Config) -> Vec<(String, Value)> {
    effective(c)
        .into_iter()
        .filter_map(|(_, e)| {
            let kind = kind(&e)?.to_string();
            let body = e.as_mapping()?.values().next()?;
            ["script", "module", "path"]
                .iter()
                .find_map(|f| body.get(*f).cloned())
                .map(|file| (kind, file))
        })
        .collect()
}
