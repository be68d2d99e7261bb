//! How secrets are shown: the placeholder the admin API puts in their place, and which fields
//! hold them.

use serde_json::Value;

/// What the redacted config shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The placeholder, or a near miss of it (` <REDACTED>`, `redacted`, `< redacted >`): never a
/// real secret. Matching loosely keeps a hand-edited copy of the placeholder from becoming the
/// secret that anyone who saw the redacted config could guess.
pub fn looks_redacted(s: &str) -> bool {
    let letters: String = s
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    letters == "redacted"
}

/// Field names whose values are secrets (redacted on the way out, restored on the way in).
pub const SECRET_FIELDS: &[&str] = &[
    "key",
    "jwt_secret",
    "admin_password",
    "admin_password_hash",
    "secret",
    // The Redis URL carries its password.
    "redis",
];

/// The config as JSON with every secret replaced by [`REDACTED`].
pub fn redacted(c: &super::Config) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    fn scrub(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if SECRET_FIELDS.contains(&k.as_str()) && !x.is_null() {
                        *x = Value::String(REDACTED.into());
                    } else {
                        scrub(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut v);
    v
}

/// A config file's own settings (its YAML after migration, so every key, however the file
/// spells it, is under `gemini.api_keys[].key`) as YAML with every secret replaced by
/// [`REDACTED`]: what the operator wrote, for editing; comments are not kept.
pub fn redacted_yaml(migrated: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value as Y;
    fn scrub(v: &mut Y) {
        match v {
            Y::Mapping(m) => {
                for (k, x) in m.iter_mut() {
                    let secret = k.as_str().is_some_and(|k| SECRET_FIELDS.contains(&k));
                    if secret && !x.is_null() {
                        *x = Y::String(REDACTED.into());
                    } else {
                        scrub(x);
                    }
                }
            }
            Y::Sequence(s) => s.iter_mut().for_each(scrub),
            Y::Tagged(t) => scrub(&mut t.value),
            _ => {}
        }
    }
    let mut v = migrated.clone();
    scrub(&mut v);
    serde_yaml::to_string(&v).ok()
}

/// `text` (a config file) migrated to the current shape, as YAML: what [`redacted_yaml`]
/// shows, so a config sent back is matched against the same places. `None` when it does not
/// parse.
pub fn migrated_text(text: &str) -> Option<String> {
    let mut v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    if !v.is_mapping() {
        return None;
    }
    super::migrate(&mut v, "(current)").ok()?;
    serde_yaml::to_string(&v).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_file_redacted_keeps_its_shape_and_loses_its_secrets() {
        let shown = |text: &str| {
            let migrated = super::migrated_text(text).unwrap();
            super::redacted_yaml(&serde_yaml::from_str(&migrated).unwrap()).unwrap()
        };
        let text = "auth: { enabled: true, jwt_secret: \"${JWT_SECRET}\", admin_password: pw-1 }\ngemini:\n  api_keys:\n    - { id: a, key: AKEYSECRET, weight: 2 }\ncluster: { redis: \"redis://:pw@h:6379/0\" }\n";
        let out = shown(text);
        for secret in ["JWT_SECRET", "pw-1", "AKEYSECRET", ":pw@"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("id: a") && out.contains("weight: 2"), "{out}");
        assert_eq!(out.matches(super::REDACTED).count(), 4, "{out}");
        // Every older spelling of the keys is migrated first, so none shows.
        for legacy in [
            "gemini: { api_key: LEGACYSECRET1 }\n",
            "api_keys: [ LEGACYSECRET1, LEGACYSECRET2 ]\n",
            "keys: [ LEGACYSECRET1 ]\n",
            "gemini: { api_keys: [ LEGACYSECRET1, { id: b, key: LEGACYSECRET2 } ] }\n",
        ] {
            let out = shown(legacy);
            assert!(!out.contains("LEGACYSECRET"), "{legacy}: {out}");
            assert!(out.contains(super::REDACTED), "{out}");
        }
        assert_eq!(super::migrated_text("a: [unclosed"), None);
    }
}
