//! Resource affinity: which key created a resource (`files/x`, `cachedContents/y`, an upload
//! session), so later calls naming it go to that key's project, where it lives; and who created
//! it, so another tenant cannot reach it. Persisted with the pool's state file.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{KeyPool, now_unix};

/// Google keeps uploaded files 48 hours.
const FILE_TTL: Duration = Duration::from_secs(48 * 3600);
/// Cached contents and batches: a week (their own TTLs are usually shorter).
const RESOURCE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Tuned models, file search stores and corpora last until deleted: their owner is kept a year
/// after the gateway last saw them named.
const LASTING_TTL: Duration = Duration::from_secs(400 * 24 * 3600);
/// Upload sessions: Google's resumable sessions last about a week.
pub const UPLOAD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the pool remembers which key created the resource `name`.
pub fn ttl_for(name: &str) -> Duration {
    if name.starts_with("files/") {
        FILE_TTL
    } else if ["tunedModels/", "fileSearchStores/", "corpora/"]
        .iter()
        .any(|c| name.starts_with(c))
    {
        LASTING_TTL
    } else {
        RESOURCE_TTL
    }
}

/// Most resources remembered; older entries are dropped first when full.
const MAX_AFFINITY: usize = 200_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Affinity {
    key_id: String,
    /// Unix seconds after which the entry is forgotten.
    pub(super) until: u64,
    /// Who created it (`user:SUB` or `tenant:NAME`), when a caller was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// The creator's claims, for a credential the gateway vouches for (an ephemeral token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<serde_json::Value>,
}

impl KeyPool {
    /// Remembers that `key_id` created `resource` for `owner`, for `ttl`, and tells the other
    /// instances.
    pub fn pin(&self, resource: &str, key_id: &str, ttl: Duration, owner: Option<&str>) {
        self.pin_vouched(resource, key_id, ttl, owner, None);
    }

    /// [`KeyPool::pin`] for a credential the gateway vouches for: with its creator's claims.
    pub fn pin_vouched(
        &self,
        resource: &str,
        key_id: &str,
        ttl: Duration,
        owner: Option<&str>,
        claims: Option<serde_json::Value>,
    ) {
        let until = now_unix() + ttl.as_secs();
        if self.remember(resource, key_id, until, owner, claims.as_ref()) {
            self.publish(super::PoolEvent::Pinned {
                resource: resource.to_string(),
                key_id: key_id.to_string(),
                owner: owner.map(str::to_string),
                until,
                claims,
            });
        }
    }

    /// Remembers a pin here only. False when an earlier owner keeps the resource.
    pub(super) fn remember(
        &self,
        resource: &str,
        key_id: &str,
        until: u64,
        owner: Option<&str>,
        claims: Option<&serde_json::Value>,
    ) -> bool {
        let now = now_unix();
        let mut pins = self.affinity.lock();
        if pins.len() >= MAX_AFFINITY {
            pins.retain(|_, a| a.until > now);
            if pins.len() >= MAX_AFFINITY {
                // Still full: drop the entries closest to expiry.
                let mut untils: Vec<u64> = pins.values().map(|a| a.until).collect();
                untils.sort_unstable();
                let cut = untils[untils.len() / 10];
                pins.retain(|_, a| a.until > cut);
            }
        }
        self.any_pins.store(true, Ordering::Relaxed);
        // The first owner stays: reading a resource (which names it again) never takes it over,
        // and another caller creating the same name in another project never re-points it.
        let (owner, claims) = match pins.get(resource).filter(|a| a.until > now) {
            Some(a) if a.owner.is_some() && a.owner.as_deref() != owner && a.key_id != key_id => {
                return false;
            }
            Some(a) => (a.owner.clone(), a.claims.clone().or(claims.cloned())),
            None => (owner.map(str::to_string), claims.cloned()),
        };
        pins.insert(
            resource.to_string(),
            Affinity {
                key_id: key_id.to_string(),
                until,
                owner,
                claims,
            },
        );
        drop(pins);
        self.mark_dirty();
        true
    }

    /// The key that created `resource`, if known and not expired.
    pub fn pinned(&self, resource: &str) -> Option<String> {
        self.affinity
            .lock()
            .get(resource)
            .filter(|a| a.until > now_unix())
            .map(|a| a.key_id.clone())
    }

    /// Who created `resource`: `None` when the gateway never saw it created (or forgot it),
    /// `Some(None)` when it was created without a known caller.
    pub fn owner_of(&self, resource: &str) -> Option<Option<String>> {
        self.affinity
            .lock()
            .get(resource)
            .filter(|a| a.until > now_unix())
            .map(|a| a.owner.clone())
    }

    /// The claims of whoever created the vouched-for credential `resource`, if known.
    pub fn vouched(&self, resource: &str) -> Option<serde_json::Value> {
        self.affinity
            .lock()
            .get(resource)
            .filter(|a| a.until > now_unix())
            .and_then(|a| a.claims.clone())
    }

    /// Whether any resource was ever pinned (lets callers skip scanning bodies).
    pub fn has_pins(&self) -> bool {
        self.any_pins.load(Ordering::Relaxed)
    }
}
