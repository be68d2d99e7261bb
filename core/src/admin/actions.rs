//! The audit trail of operator actions: every change made through the admin API (keys, presets,
//! tokens) is a `security_events` row (`event_type = 'AdminAction'`) with who made it, from
//! where, on what, and how it ended. SQL queries, exports and config changes have their own
//! events. Secrets never reach the row: a key added is named by id, a token by its `jti`.

use http::Response;
use serde_json::{Value, json};

use super::AdminApp;
use super::routes::{Op, Route};

/// Routes whose outcome this module audits.
pub fn audited_here(op: Op) -> bool {
    matches!(
        op,
        Op::AddKey
            | Op::RemoveKey
            | Op::DisableKey
            | Op::EnableKey
            | Op::ResetKey
            | Op::ProbeKey
            | Op::ApplyPreset
            | Op::IssueToken
            | Op::RevokeToken
    )
}

/// The action's name in the audit trail.
fn action(op: Op) -> &'static str {
    match op {
        Op::AddKey => "key added",
        Op::RemoveKey => "key removed",
        Op::DisableKey => "key disabled",
        Op::EnableKey => "key enabled",
        Op::ResetKey => "key reset",
        Op::ProbeKey => "key probed",
        Op::ApplyPreset => "preset applied",
        Op::IssueToken => "token issued",
        Op::RevokeToken => "token revoked",
        _ => "admin action",
    }
}

/// A string field of a JSON body, if it is one (bounded: ids and names, not free text).
fn text_field(v: &Value, name: &str) -> Option<String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(|s| s.chars().take(128).collect())
}

/// What the row says about the action: only ids, names and the outcome.
fn detail(op: Op, id: &str, body: &[u8], resp: &Response<Vec<u8>>, by: &str) -> Value {
    let sent: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let answer: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
    let mut d = json!({"by": by, "status": resp.status().as_u16()});
    match op {
        Op::AddKey => d["key_id"] = json!(text_field(&sent, "id")),
        Op::ApplyPreset => d["preset"] = json!(text_field(&sent, "preset_name")),
        Op::IssueToken => {
            d["sub"] = json!(text_field(&sent, "sub"));
            d["role"] = json!(text_field(&sent, "role").unwrap_or_else(|| "user".into()));
            d["tenant"] = json!(text_field(&sent, "tenant"));
            d["jti"] = json!(text_field(&answer, "jti"));
            d["expires_in"] = answer.get("expires_in").cloned().unwrap_or(Value::Null);
        }
        Op::RevokeToken => d["jti"] = json!(text_field(&sent, "jti")),
        Op::ProbeKey => {
            d["key_id"] = json!(id);
            d["verdict"] = answer["probe"]["verdict"].clone();
        }
        _ => d["key_id"] = json!(id),
    }
    if !resp.status().is_success() {
        // The gateway's own error message (it never quotes a secret it was sent).
        d["error"] = answer["error"]["message"].clone();
    }
    d
}

impl AdminApp {
    pub(super) fn audit_action(
        &self,
        route: &Route,
        id: &str,
        body: &[u8],
        resp: &Response<Vec<u8>>,
        caller: Option<&str>,
        ip: Option<String>,
    ) {
        let by = caller.unwrap_or("(unauthenticated loopback)");
        let result = if resp.status().is_success() {
            "Success"
        } else {
            "Failure"
        };
        let d = detail(route.op, id, body, resp, by);
        tracing::info!(target: "gemini_proxy::security", action = action(route.op), result, by, "admin action");
        self.shared
            .audit(crate::audit::admin_event(action(route.op), result, ip, d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, v: Value) -> Response<Vec<u8>> {
        Response::builder()
            .status(status)
            .body(serde_json::to_vec(&v).unwrap())
            .unwrap()
    }

    #[test]
    fn rows_name_ids_never_secrets() {
        let add = br#"{"id":"k9","key":"AIzaSECRETSECRETSECRET","project":"p"}"#;
        let d = detail(Op::AddKey, "", add, &answer(201, json!({})), "ops");
        assert_eq!(d["key_id"], "k9");
        assert!(!d.to_string().contains("SECRET"), "{d}");
        let token = answer(
            201,
            json!({"token": "eyJ.SIGNED.TOKEN", "jti": "j-1", "expires_in": 60}),
        );
        let d = detail(
            Op::IssueToken,
            "",
            br#"{"sub":"ann","role":"admin","models":["m"]}"#,
            &token,
            "ops",
        );
        assert_eq!(
            (d["sub"].as_str(), d["jti"].as_str()),
            (Some("ann"), Some("j-1"))
        );
        assert_eq!(d["role"], "admin");
        assert!(!d.to_string().contains("SIGNED"), "{d}");
        let refused = answer(404, json!({"error": {"message": "no key `x`"}}));
        let d = detail(Op::DisableKey, "x", b"", &refused, "ops");
        assert_eq!(
            (d["status"].as_u64(), d["error"].as_str()),
            (Some(404), Some("no key `x`"))
        );
    }
}
