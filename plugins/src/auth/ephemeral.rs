//! Ephemeral tokens and the gateway token that made them: a session on one speaks for its
//! maker no longer than the maker's own token does, and a token made through the gateway is
//! bounded by the maker's (its expiry, its models).

use std::time::{SystemTime, UNIX_EPOCH};

use gemini_proxy_sdk::{Rejection, RequestContext};

use super::{Auth, AuthError, Claims};

impl Auth {
    /// An ephemeral token speaks for the caller that created it through the gateway: its
    /// claims, as the gateway vouches for them, while that caller's token is not revoked. It
    /// never acts as an admin. One the gateway did not see created is refused.
    pub(super) fn vouched(
        &self,
        c: &gemini_proxy_sdk::ClientCredential,
    ) -> Result<Claims, Rejection> {
        let unknown = || {
            Rejection::new(
                401,
                "the ephemeral token was not created through this gateway (or has expired)",
            )
            .reason("ephemeral_unknown")
        };
        let mut claims: Claims = c
            .vouched_claims()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(unknown)?;
        if let Some(jti) = &claims.jti
            && self.verifier.revocations().contains(jti)
        {
            let e = AuthError::Revoked;
            return Err(Rejection::new(401, e.message()).reason(e.reason()));
        }
        // It speaks for its maker no longer than the maker's own token does.
        let now = unix_now();
        let leeway = self.verifier.leeway;
        let e = if claims.exp + leeway <= now {
            Some(AuthError::Expired)
        } else if claims.nbf.is_some_and(|n| n > now + leeway) {
            Some(AuthError::NotYetValid)
        } else {
            None
        };
        if let Some(e) = e {
            let msg = format!("the token that made this ephemeral token: {}", e.message());
            return Err(Rejection::new(401, msg).reason(e.reason()));
        }
        claims.role = None;
        Ok(claims)
    }

    /// An ephemeral token made with a gateway token stays within it: it ends no later than the
    /// maker's token (Google's default lifetime is 30 minutes), and a token that may use only
    /// some models must lock the new token to one of them (`model_allowed` checks which).
    pub(super) fn token_request_allowed(cx: &RequestContext, body: &[u8]) -> Result<(), Rejection> {
        let Some(claims) = cx.identity.as_ref().map(|i| &i.claims) else {
            return Ok(());
        };
        let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) else {
            return Ok(());
        };
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        // Google locks only the fields a `fieldMask` names, when it names any: a restricted
        // token's lock must include the model.
        let restricted = claims
            .get("models")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|m| !m.is_empty());
        if restricted && let Some(mask) = v.get("fieldMask").or_else(|| v.get("field_mask")) {
            let locks_model = mask.as_str().is_some_and(|m| {
                m.split(',').any(|p| {
                    let p = p.trim();
                    matches!(
                        p,
                        "model"
                            | "bidiGenerateContentSetup.model"
                            | "bidi_generate_content_setup.model"
                    )
                })
            });
            if !locks_model {
                return Err(Rejection::new(
                    403,
                    "this token may use only some models: the fieldMask of an ephemeral token made with it must lock the model",
                )
                .reason("model_unknown"));
            }
        }
        let field = |camel: &str, snake: &str| {
            v.get(camel)
                .or_else(|| v.get(snake))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        for (camel, snake, default) in [
            ("expireTime", "expire_time", 30 * 60),
            ("newSessionExpireTime", "new_session_expire_time", 60),
        ] {
            let ends = match field(camel, snake) {
                Some(t) => gemini_proxy_sdk::time::parse_rfc3339(&t)
                    .map_err(|e| Rejection::new(400, format!("{camel}: {e}")))?
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                None => unix_now() + default,
            };
            if ends > exp {
                return Err(Rejection::new(
                    400,
                    format!(
                        "{camel} must not be later than the expiry of the token making it ({exp}, unix seconds)"
                    ),
                )
                .reason("ephemeral_outlives_maker"));
            }
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
