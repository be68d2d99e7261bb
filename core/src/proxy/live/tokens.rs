//! Ephemeral tokens (`auth_tokens/...`): made through the gateway with `POST auth_tokens`, they
//! are remembered (by a hash, never by name) with the key that made them and the claims of the
//! caller that asked. A Live session presenting one is admitted as that caller and served by a
//! key of that project, the token itself being the upstream credential: Google binds it to the
//! project, and its own constraints apply. A token the gateway did not see made is refused
//! before anything is sent upstream.

use std::time::{Duration, SystemTime};

use gemini_proxy_sdk::{ClientCredential, CredentialSource};

use super::super::GatewayProxy;
use super::super::call::CallState;
use super::Close;
use crate::runtime::UpstreamKey;

/// Google's default lifetime of an ephemeral token, when its answer names none.
const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);
/// The longest a token is remembered, whatever its `expireTime` says.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The name a token is remembered under: a hash, so the token is in no state file or Redis.
pub fn token_pin(name: &str) -> String {
    use sha2::Digest;
    format!(
        "auth-token:{}",
        hex::encode(sha2::Sha256::digest(name.as_bytes()))
    )
}

/// How long to remember a token that expires at `expires` (RFC 3339).
fn ttl(expires: Option<&str>, now: SystemTime) -> Duration {
    match expires.map(crate::util::clock::parse_rfc3339) {
        Some(Ok(t)) => t.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_TTL),
        _ => DEFAULT_TTL,
    }
}

/// An ephemeral token a session presents, and the key of the project it belongs to.
pub struct Ephemeral {
    pub token: String,
    pub key_index: usize,
}

impl GatewayProxy {
    /// Remembers a token this call created with `key`, for the caller that asked.
    pub(in crate::proxy) fn vouch_for(
        &self,
        ctx: &mut CallState,
        key: &UpstreamKey,
        name: &str,
        expires: Option<&str>,
    ) {
        let ttl = ttl(expires, SystemTime::now());
        if ttl.is_zero() {
            return;
        }
        let claims = ctx.cx().identity.as_ref().map(|i| i.claims.clone());
        let owner = ctx.owner.clone();
        self.shared
            .pool
            .pin_vouched(&token_pin(name), &key.id, ttl, owner.as_deref(), claims);
    }

    /// The ephemeral token of a session, vouched for with its creator's claims; `None` when the
    /// session has another credential. A token not made through the gateway, or whose key has
    /// left the pool, is refused.
    pub(super) async fn ephemeral(&self, ctx: &mut CallState) -> Result<Option<Ephemeral>, Close> {
        let Some(cred) = ctx.cx().credential.clone() else {
            return Ok(None);
        };
        if cred.source() != CredentialSource::EphemeralToken {
            return Ok(None);
        }
        let pin = token_pin(cred.value());
        if let Some(c) = &self.shared.cluster {
            crate::cluster::pins::fetch(c, &self.shared.pool, std::slice::from_ref(&pin)).await;
        }
        let rt = ctx.runtime.clone();
        let unknown = || {
            Close::new(
                1008,
                "UNAUTHENTICATED: the ephemeral token was not created through this gateway, or has expired",
            )
        };
        let key_index = super::super::key_choice::creating_key(
            &self.shared.pool,
            &rt,
            std::slice::from_ref(&pin),
        )
        .ok_or_else(unknown)?;
        let mut vouched = ClientCredential::new(CredentialSource::EphemeralToken, cred.value());
        if let Some(claims) = self.shared.pool.vouched(&pin) {
            vouched = vouched.vouched_for(claims);
        }
        ctx.cx().credential = Some(vouched);
        Ok(Some(Ephemeral {
            token: cred.value().to_string(),
            key_index,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_remembered_by_hash_for_their_life_within_bounds() {
        let pin = token_pin("auth_tokens/secret-part");
        assert!(pin.starts_with("auth-token:") && !pin.contains("secret-part"));
        let now = crate::util::clock::parse_rfc3339("2026-12-05T10:00:00Z").unwrap();
        assert_eq!(
            ttl(Some("2026-12-05T10:30:00Z"), now),
            Duration::from_secs(1800)
        );
        assert_eq!(ttl(Some("2026-12-05T09:00:00Z"), now), Duration::ZERO);
        assert_eq!(ttl(Some("2027-12-05T09:00:00Z"), now), MAX_TTL);
        assert_eq!(ttl(Some("tomorrow"), now), DEFAULT_TTL);
        assert_eq!(ttl(None, now), DEFAULT_TTL);
    }
}
