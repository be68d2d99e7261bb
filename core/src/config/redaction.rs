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
