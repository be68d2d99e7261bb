//! `POST /api/tokens` (issue) and `POST /api/tokens/revoke`.

use gemini_proxy_sdk::Role;
use http::Response;
use serde_json::json;

use super::{AdminApp, error, json_response};

impl AdminApp {
    pub(super) fn issue_token(&self, body: &[u8]) -> Response<Vec<u8>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Issue {
            sub: String,
            #[serde(default)]
            role: Option<String>,
            #[serde(default)]
            ttl: Option<crate::config::ConfigDuration>,
            #[serde(default)]
            models: Vec<String>,
            #[serde(default)]
            limits: Option<gemini_proxy_plugins::auth::TokenLimits>,
            #[serde(default)]
            tenant: Option<String>,
        }
        let rt = self.shared.runtime.load_full();
        if rt.auth.is_none() || rt.config.auth.jwt_secret.is_none() {
            return error(503, "issuing tokens needs auth.enabled and auth.jwt_secret");
        }
        let req: Issue = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return error(400, format!("bad token request: {e}")),
        };
        let role = match req.role.as_deref() {
            None | Some("user") => Role::User,
            Some("admin") => Role::Admin,
            Some(other) => return error(400, format!("role `{other}` is not user or admin")),
        };
        if let Err(e) = gemini_proxy_plugins::auth::check_subject(&req.sub) {
            return error(400, e);
        }
        if let Some(Err(e)) = req
            .tenant
            .as_deref()
            .map(gemini_proxy_plugins::auth::check_subject)
        {
            return error(400, format!("tenant: {e}"));
        }
        let a = &rt.config.auth;
        let ttl = req.ttl.map_or(a.token_ttl.0, |d| d.0);
        let cap = if role == Role::Admin {
            a.token_ttl.0
        } else {
            a.max_token_ttl.0.max(a.token_ttl.0)
        };
        if ttl.is_zero() || ttl > cap {
            return error(
                400,
                format!(
                    "ttl must be above 0 and at most {} s for a{} token (auth.{})",
                    cap.as_secs(),
                    if role == Role::Admin {
                        "n admin"
                    } else {
                        " user"
                    },
                    if role == Role::Admin {
                        "token_ttl"
                    } else {
                        "max_token_ttl"
                    }
                ),
            );
        }
        if let Some(Err(e)) = req.limits.as_ref().map(|l| l.check()) {
            return error(400, e);
        }
        let mut claims = gemini_proxy_plugins::auth::new_claims(&req.sub, role, ttl, req.models);
        claims.limits = req.limits;
        claims.tenant = req.tenant;
        let jti = claims.jti.clone();
        match rt.config.auth.sign(claims) {
            Ok(token) => {
                tracing::info!(target: "gemini_proxy::security", sub = %req.sub, role = role.as_str(), jti = ?jti, "token issued");
                json_response(
                    201,
                    &json!({"token": token, "token_type": "Bearer", "expires_in": ttl.as_secs(), "jti": jti}),
                )
            }
            Err(e) => error(500, e),
        }
    }

    pub(super) fn revoke_token(&self, body: &[u8]) -> Response<Vec<u8>> {
        #[derive(serde::Deserialize)]
        struct Revoke {
            jti: String,
        }
        let rt = self.shared.runtime.load_full();
        let Some(verifier) = &rt.auth else {
            return error(503, "auth is not enabled");
        };
        let Ok(r) = serde_json::from_slice::<Revoke>(body) else {
            return error(400, "expected {\"jti\": \"...\"}");
        };
        match verifier.revocations().revoke(&r.jti) {
            Ok(()) => {
                tracing::info!(target: "gemini_proxy::security", jti = %r.jti, "token revoked");
                crate::cluster_sync::announce(
                    &self.shared,
                    crate::cluster::events::ClusterEvent::Revoked { jti: r.jti.clone() },
                );
                json_response(200, &json!({"revoked": r.jti}))
            }
            Err(e) => error(500, format!("cannot write the revocation file: {e}")),
        }
    }
}
