//! What a config sent to the admin API may not change. An admin token is a bearer credential
//! that expires and can be revoked; it must not be able to turn itself into lasting access or
//! into the pooled keys. So who is trusted and how calls are authenticated, the listeners and
//! what they expose, where the pooled keys are sent, every file the gateway reads or writes,
//! and the programs stages load change only by editing the config file (hot reload applies it).

use serde_yaml::Value;

use crate::config::{AuthConfig, Config, LoadedConfig};

/// Why the admin API refuses to go from the running config to `after`, if it does.
pub fn locked_change(before: &LoadedConfig, after: &LoadedConfig) -> Option<&'static str> {
    // The file's own `auth:` too: a secret the environment overrides is the same on both sides
    // once loaded, yet a file holding another one would take over when the environment goes.
    let file_auth = |l: &LoadedConfig| match l.migrated.get("auth") {
        None => Some(AuthConfig::default()),
        Some(v) => serde_yaml::from_value::<AuthConfig>(v.clone()).ok(),
    };
    if file_auth(before) != file_auth(after) {
        return Some(AUTH_LOCKED);
    }
    // Likewise `cluster:`, which `REDIS_URL` overrides.
    if before.migrated.get("cluster") != after.migrated.get("cluster") {
        return Some(CLUSTER_LOCKED);
    }
    locked_config_change(&before.config, &after.config)
}

const CLUSTER_LOCKED: &str =
    "changes the `cluster:` section (where the instances share limits, key health and revocations)";

const AUTH_LOCKED: &str = "changes the `auth:` section (who is trusted: signing secrets and keys, leeway, revocations, the admin password, auth on or off)";

fn locked_config_change(before: &Config, after: &Config) -> Option<&'static str> {
    if before.auth != after.auth {
        return Some(AUTH_LOCKED);
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
    if before.cluster != after.cluster {
        return Some(CLUSTER_LOCKED);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> LoadedConfig {
        let env = |k: &str| match k {
            "JWT_SECRET" => Some("Env-Secret-0123456789-abcdefghijklmnop!".to_string()),
            "ADMIN_PASSWORD" => Some("Env-Admin-Password-2026!".to_string()),
            "REDIS_URL" => Some("redis://:env-pw@10.0.0.5:6379/0".to_string()),
            _ => None,
        };
        crate::config::load_str(text, "(test)", &env).expect("config")
    }

    #[test]
    fn a_secret_planted_under_an_environment_override_is_refused() {
        let base = "gemini: { api_keys: [ { id: a, key: valid-key-a } ] }\nauth: { enabled: true, token_ttl: 1h }\n";
        let planted = "gemini: { api_keys: [ { id: a, key: valid-key-a } ] }\nauth: { enabled: true, token_ttl: 1h, jwt_secret: attacker-known-secret-0123456789abcdef, admin_password: attacker-pw-0123456789 }\n";
        let (before, after) = (load(base), load(planted));
        // Loaded, both carry the environment's secrets ...
        assert_eq!(before.config.auth, after.config.auth);
        // ... but the file would hand over once the environment is gone.
        assert!(locked_change(&before, &after).is_some_and(|m| m.contains("`auth:`")));
        // A change elsewhere goes through.
        let weights = base.replace("key: valid-key-a }", "key: valid-key-a, weight: 5 }");
        assert_eq!(locked_change(&before, &load(&weights)), None);
    }

    #[test]
    fn a_redis_planted_under_redis_url_is_refused() {
        let base = "gemini: { api_keys: [ { id: a, key: valid-key-a } ] }\ncluster: { redis: \"redis://10.0.0.5:6379/0\" }\n";
        let planted = base.replace("10.0.0.5", "attacker.example");
        let (before, after) = (load(base), load(&planted));
        assert_eq!(
            before.config.cluster, after.config.cluster,
            "REDIS_URL wins on both"
        );
        assert!(locked_change(&before, &after).is_some_and(|m| m.contains("`cluster:`")));
    }
}
