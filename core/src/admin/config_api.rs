//! `GET /api/config` (redacted), `PUT /api/config`, `GET /api/config/history`,
//! `POST /api/config/rollback`.
//!
//! The redacted config shows every secret as [`REDACTED`]. A `PUT` that sends that placeholder
//! back keeps the secret the config file holds at the same place (an edit of the redacted
//! document changes nothing it did not touch); a placeholder with nothing to keep is refused.

use http::Response;
use serde_json::json;
use serde_yaml::Value;

use super::{AdminApp, error, json_response};
use crate::config_history::{REDACTED, SECRET_FIELDS, looks_redacted};

impl AdminApp {
    pub(super) fn config(&self) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load_full();
        json_response(
            200,
            &json!({
                "version": self.shared.history.versions().last().map(|v| v.version),
                "file": self.shared.config_path.as_ref().map(|p| p.display().to_string()),
                "config": crate::config_history::redacted(&rt.config),
                // The file's settings (secrets redacted), for editing.
                "yaml": editable_yaml(&rt),
            }),
        )
    }

    pub(super) fn config_history(&self) -> Response<Vec<u8>> {
        json_response(200, &json!({ "versions": self.shared.history.versions() }))
    }

    pub(super) async fn put_config(
        &self,
        body: Vec<u8>,
        caller: Option<&str>,
    ) -> Response<Vec<u8>> {
        let Ok(text) = String::from_utf8(body) else {
            return error(400, "the config must be UTF-8 YAML or JSON");
        };
        self.apply_config_text(&text, "api", caller).await
    }

    pub(super) async fn rollback(&self, body: Vec<u8>, caller: Option<&str>) -> Response<Vec<u8>> {
        #[derive(serde::Deserialize)]
        struct Rollback {
            version: u64,
        }
        let Ok(r) = serde_json::from_slice::<Rollback>(&body) else {
            return error(400, "expected {\"version\": N}");
        };
        let Some(text) = self.shared.history.text_of(r.version) else {
            return error(404, format!("version {} is not kept", r.version));
        };
        self.apply_config_text(&text, "rollback", caller).await
    }

    /// `POST /api/config/validate`: every check `PUT` makes, nothing applied; the field paths
    /// that would change (secrets by name only).
    pub(super) async fn validate_config(&self, body: Vec<u8>) -> Response<Vec<u8>> {
        let Ok(text) = String::from_utf8(body) else {
            return error(400, "the config must be UTF-8 YAML or JSON");
        };
        match self.checked_config(&text).await {
            Ok((_, _, loaded)) => {
                let rt = self.shared.runtime.load_full();
                let changed = crate::config_history::diff_paths(
                    &serde_json::to_value(&rt.config).unwrap_or_default(),
                    &serde_json::to_value(&loaded.config).unwrap_or_default(),
                );
                json_response(200, &json!({"valid": true, "changed": changed}))
            }
            Err(r) => r,
        }
    }

    /// `text` as a whole config that `PUT` would accept: placeholders restored, parsed with
    /// field paths, nothing locked changed, production rules kept, every stage built with the
    /// running registry. Returns the config file's path, the text to write and the config.
    async fn checked_config(
        &self,
        text: &str,
    ) -> Result<(std::path::PathBuf, String, crate::config::LoadedConfig), Response<Vec<u8>>> {
        let Some(path) = self.shared.config_path.clone() else {
            return Err(error(409, "the gateway was started without a config file"));
        };
        if let Some(line) = crate::config::first_alias(text) {
            return Err(error(
                400,
                format!(
                    "line {line}: YAML aliases (*name) are not accepted through the admin API; write the values out"
                ),
            ));
        }
        // Parsing is CPU work: off the listener's async workers.
        let (sent, at) = (text.to_string(), path.clone());
        let parsed = tokio::task::spawn_blocking(move || parse_sent(&sent, &at)).await;
        let (text, loaded) = match parsed {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(error(400, e)),
            Err(e) => return Err(error(500, format!("validation task failed: {e}"))),
        };
        let locked =
            super::config_guard::locked_change(&self.shared.runtime.load().source, &loaded);
        if let Some(why) = locked {
            return Err(error(
                400,
                format!("a config sent to the admin API {why}: edit the config file for that"),
            ));
        }
        if let Some(why) = crate::security::production_refusal(&loaded) {
            return Err(error(
                400,
                format!("production mode refuses this config {why}"),
            ));
        }
        let shared = self.shared.clone();
        let to_build = loaded.clone();
        let check = tokio::task::spawn_blocking(move || {
            // The running registry: a stage an embedding binary registered is valid here.
            crate::runtime::Runtime::build(
                &to_build,
                &shared.registry,
                None,
                &crate::pool::KeyPool::default(),
                None,
            )
            .map(|_| ())
        })
        .await;
        match check {
            Ok(Ok(())) => Ok((path, text, loaded)),
            Ok(Err(e)) => Err(error(400, e)),
            Err(e) => Err(error(500, format!("validation task failed: {e}"))),
        }
    }

    /// Validates `text` as a whole config, writes it over the config file and reloads.
    async fn apply_config_text(
        &self,
        text: &str,
        source: &str,
        caller: Option<&str>,
    ) -> Response<Vec<u8>> {
        // Validate and build before touching the file: a bad config changes nothing.
        let (path, text, _) = match self.checked_config(text).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(e) = crate::util::write_private(&path, text.as_bytes()) {
            return error(500, format!("cannot write {}: {e}", path.display()));
        }
        match crate::reload::reload_as(&self.shared, true, source, caller).await {
            crate::reload::ReloadOutcome::Applied { generation } => json_response(
                200,
                &json!({
                    "applied": true,
                    "config_generation": generation,
                    "version": self.shared.history.versions().last(),
                }),
            ),
            crate::reload::ReloadOutcome::Unchanged => {
                json_response(200, &json!({"applied": false}))
            }
            crate::reload::ReloadOutcome::Failed(m) => error(400, m),
        }
    }
}

/// A config sent to the API with its placeholders restored from the config file at `path`
/// (matched in the migrated shape `GET` shows), and loaded with field paths.
fn parse_sent(
    sent: &str,
    path: &std::path::Path,
) -> Result<(String, crate::config::LoadedConfig), String> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let current = crate::config::migrated_text(&current).unwrap_or(current);
    let text = restore_redacted(sent, &current)?.unwrap_or_else(|| sent.to_string());
    let file = path.display().to_string();
    let mut loaded = crate::config::load_str(&text, &file, &crate::config::process_env)
        .map_err(|e| e.to_string())?;
    loaded.path = Some(path.to_path_buf());
    Ok((text, loaded))
}

/// The config file's settings as YAML with secrets redacted; `None` (never a secret) when a
/// pooled key would still show in it.
fn editable_yaml(rt: &crate::runtime::Runtime) -> Option<String> {
    let text = crate::config::redacted_yaml(&rt.source.migrated)?;
    if rt.scrubber.finds(text.as_bytes()) {
        tracing::warn!("the config's YAML still held a pooled key after redaction; not shown");
        return None;
    }
    Some(text)
}

/// `text` with every secret sent as [`REDACTED`] replaced by what `current` (the config file's
/// text) holds at the same place; `Ok(None)` when there was no placeholder. List items with an
/// `id` (keys) are matched by id, others by position.
pub fn restore_redacted(text: &str, current: &str) -> Result<Option<String>, String> {
    if !text.to_ascii_lowercase().contains("redacted") {
        return Ok(None);
    }
    let mut doc: Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let old: Value = serde_yaml::from_str(current).unwrap_or(Value::Null);
    let mut restored = 0;
    restore(&mut doc, Some(&old), "", &mut restored)?;
    if restored == 0 {
        return Ok(None);
    }
    serde_yaml::to_string(&doc)
        .map(Some)
        .map_err(|e| format!("cannot write the config back: {e}"))
}

fn restore(v: &mut Value, old: Option<&Value>, at: &str, n: &mut usize) -> Result<(), String> {
    match v {
        Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                let name = k.as_str().unwrap_or("");
                let path = if at.is_empty() {
                    name.to_string()
                } else {
                    format!("{at}.{name}")
                };
                let before = old.and_then(|o| o.get(name));
                if SECRET_FIELDS.contains(&name) && x.as_str().is_some_and(looks_redacted) {
                    match before.filter(|b| !b.as_str().is_some_and(looks_redacted) && !b.is_null())
                    {
                        Some(b) => {
                            *x = b.clone();
                            *n += 1;
                        }
                        None => {
                            return Err(format!(
                                "{path}: `{REDACTED}` stands for a secret the current config does not have here; send the real value"
                            ));
                        }
                    }
                } else {
                    restore(x, before, &path, n)?;
                }
            }
        }
        Value::Sequence(items) => {
            let olds = old.and_then(|o| o.as_sequence());
            for (i, x) in items.iter_mut().enumerate() {
                let id = x.get("id").cloned();
                let before = olds.and_then(|o| match &id {
                    Some(id) => o.iter().find(|e| e.get("id") == Some(id)),
                    None => o.get(i),
                });
                restore(x, before, &format!("{at}[{i}]"), n)?;
            }
        }
        Value::String(s) if looks_redacted(s) => {
            return Err(format!("{at}: `{REDACTED}` is not a value"));
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_the_current_secret_by_place_and_key_id() {
        let current = "auth: { enabled: true, jwt_secret: \"${JWT_SECRET}\", admin_password: pw-1 }\ngemini:\n  api_keys:\n    - { id: a, key: AKEY }\n    - { id: b, key: BKEY }\n";
        let sent = "auth: { enabled: true, jwt_secret: \"<redacted>\", admin_password: \"<redacted>\" }\ngemini:\n  api_keys:\n    - { id: b, key: \"<redacted>\", weight: 3 }\n    - { id: a, key: \"<redacted>\" }\n";
        let out = restore_redacted(sent, current).unwrap().unwrap();
        let v: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(
            v["auth"]["jwt_secret"], "${JWT_SECRET}",
            "the env reference stays"
        );
        assert_eq!(v["auth"]["admin_password"], "pw-1");
        assert_eq!(v["gemini"]["api_keys"][0]["key"], "BKEY");
        assert_eq!(v["gemini"]["api_keys"][1]["key"], "AKEY");
        assert!(!out.contains(REDACTED));
        // A new key with the placeholder has nothing to keep.
        let e = restore_redacted(
            "gemini:\n  api_keys:\n    - { id: c, key: \"<redacted>\" }\n",
            current,
        )
        .unwrap_err();
        assert!(e.contains("gemini.api_keys[0].key"), "{e}");
        // The placeholder in a field that is not a secret.
        let e = restore_redacted("server: { host: \"<redacted>\" }\n", current).unwrap_err();
        assert!(e.contains("server.host"), "{e}");
        assert_eq!(restore_redacted("a: 1\n", current).unwrap(), None);
        // Near misses of the placeholder keep the secret too: they never become it.
        for near in [" <redacted>", "<REDACTED>", "redacted", "< redacted >\t"] {
            let sent = format!("auth: {{ enabled: true, jwt_secret: {near:?} }}\n");
            let out = restore_redacted(&sent, current).unwrap().unwrap();
            let v: Value = serde_yaml::from_str(&out).unwrap();
            assert_eq!(v["auth"]["jwt_secret"], "${JWT_SECRET}", "{near:?}");
        }
        let e = restore_redacted("server: { host: \"<Redacted> \" }\n", current).unwrap_err();
        assert!(e.contains("server.host"), "{e}");
    }
}
