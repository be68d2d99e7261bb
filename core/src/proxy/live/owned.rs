//! Tenants in Live sessions: a setup or a client message naming a resource (a file, a cached
//! content, a file search store...) another tenant created is refused, as an HTTP call naming
//! it gets 404. A client may also send one setup only: a second one could switch the model
//! after the first was admitted.

use std::sync::Arc;

use super::Close;
use crate::proxy::call::CallState;
use crate::proxy::tenancy;
use crate::runtime::Shared;

/// The resources a non-admin caller's messages may name: its own.
pub struct OwnedOnly {
    shared: Arc<Shared>,
    owner: Option<String>,
}

impl OwnedOnly {
    /// `None` when the caller may name any resource (an admin, or tenants off).
    pub fn for_call(shared: &Arc<Shared>, ctx: &mut CallState) -> Option<OwnedOnly> {
        let enabled = ctx.runtime.config.auth.tenant_isolation;
        tenancy::isolated(ctx.cx(), enabled).then(|| OwnedOnly {
            shared: shared.clone(),
            owner: ctx.owner.clone(),
        })
    }

    /// `Err` with the close for a message naming a resource the caller does not own.
    pub async fn check(&self, message: &[u8]) -> Result<(), Close> {
        let refs = tenancy::resource_refs("", None, Some(message));
        if refs.is_empty() {
            return Ok(());
        }
        if refs.len() > tenancy::MAX_REFS {
            return Err(Close::new(
                1008,
                format!(
                    "INVALID_ARGUMENT: a message may name at most {} resources",
                    tenancy::MAX_REFS
                ),
            ));
        }
        let keys: Vec<String> = refs
            .iter()
            .filter_map(|r| tenancy::resource_key(r))
            .collect();
        if let Some(c) = &self.shared.cluster {
            crate::cluster::pins::fetch(c, &self.shared.pool, &keys).await;
        }
        for key in keys {
            if self.shared.pool.owner_of(&key).flatten() != self.owner {
                return Err(Close::new(1008, format!("NOT_FOUND: {key} was not found")));
            }
        }
        Ok(())
    }
}

/// A client message that is a second `setup` (a top-level key, however its name is escaped),
/// refused mid-session. Only messages that spell `setup` or hold an escape are parsed.
pub fn is_setup(message: &[u8]) -> bool {
    let may = memchr::memmem::find(message, b"setup").is_some()
        || memchr::memchr(b'\\', message).is_some();
    may && serde_json::from_slice::<std::collections::HashMap<String, serde::de::IgnoredAny>>(
        message,
    )
    .is_ok_and(|m| m.contains_key("setup"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_top_level_setup_is_a_setup() {
        assert!(super::is_setup(br#"{"setup":{"model":"models/x"}}"#));
        assert!(super::is_setup(br#" { "clientContent": {}, "setup": {} }"#));
        assert!(!super::is_setup(
            br#"{"clientContent":{"turns":[{"parts":[{"text":"setup"}]}]}}"#
        ));
        assert!(!super::is_setup(b"setup"));
        assert!(!super::is_setup(br#"{"realtimeInput":{}}"#));
        assert!(super::is_setup(br#"{"\u0073etup":{"model":"models/x"}}"#));
        assert!(super::is_setup(br#"{"s\u0065tup":{}}"#));
        assert!(!super::is_setup(
            br#"{"clientContent":{"turns":[{"parts":[{"text":"a\nb"}]}]}}"#
        ));
    }
}
