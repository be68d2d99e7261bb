//! What the pool learns that other instances should know at once: a project resting for a model
//! (quota 429s), a key resting for a model (no access, `limit: 0`), a dead key, an open breaker,
//! the key that created a resource. The pool hands
//! each new finding to a publisher (set when the gateway runs as a cluster) and applies what
//! other instances found, without handing that on again. Keys are named by id, with the key's
//! fingerprint so an instance never applies a finding about another secret under the same id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::health::{Breaker, Cooldown};
use super::{DeadReason, KeyPool, now_unix};

/// One finding of the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum PoolEvent {
    ProjectRest {
        project: String,
        model: String,
        cooldown: Cooldown,
    },
    KeyRest {
        key_id: String,
        fingerprint: String,
        model: String,
        cooldown: Cooldown,
    },
    Dead {
        key_id: String,
        fingerprint: String,
        reason: DeadReason,
    },
    BreakerOpen {
        key_id: String,
        fingerprint: String,
        /// Unix milliseconds.
        until_ms: u64,
    },
    /// `key_id` created `resource` for `owner`; remembered until `until` (unix seconds).
    Pinned {
        resource: String,
        key_id: String,
        owner: Option<String>,
        until: u64,
        /// The creator's claims, when the resource is a credential the gateway vouches for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claims: Option<serde_json::Value>,
    },
}

impl PoolEvent {
    /// Until when the finding matters (unix seconds); `None`: until an operator acts.
    pub fn expires(&self) -> Option<u64> {
        match self {
            PoolEvent::ProjectRest { cooldown, .. } | PoolEvent::KeyRest { cooldown, .. } => {
                Some(cooldown.until)
            }
            PoolEvent::Dead { .. } => None,
            PoolEvent::BreakerOpen { until_ms, .. } => Some(until_ms.div_ceil(1000)),
            PoolEvent::Pinned { until, .. } => Some(*until),
        }
    }

    /// The finding without the claims of a pin's maker: what an unsigned event may not say.
    pub fn without_claims(mut self) -> PoolEvent {
        if let PoolEvent::Pinned { claims, .. } = &mut self {
            *claims = None;
        }
        self
    }

    /// A name per subject: a newer finding about the same thing replaces the older.
    pub fn subject(&self) -> String {
        match self {
            PoolEvent::ProjectRest { project, model, .. } => format!("project:{project}:{model}"),
            PoolEvent::KeyRest { key_id, model, .. } => format!("key:{key_id}:{model}"),
            PoolEvent::Dead { key_id, .. } => format!("dead:{key_id}"),
            PoolEvent::BreakerOpen { key_id, .. } => format!("breaker:{key_id}"),
            PoolEvent::Pinned { resource, .. } => pin_subject(resource),
        }
    }
}

/// The subject of a resource's pin: a hash, whatever the resource's name holds.
pub fn pin_subject(resource: &str) -> String {
    use sha2::Digest;
    format!(
        "pin:{}",
        hex::encode(&sha2::Sha256::digest(resource.as_bytes())[..16])
    )
}

pub type PoolPublisher = Box<dyn Fn(PoolEvent) + Send + Sync>;

/// The longest rest another instance may put on a key or project: past any daily reset.
const MAX_REMOTE_REST_S: u64 = 2 * 86_400;
/// The longest an open breaker rests a key (its backoff stops at 10 minutes).
const MAX_REMOTE_BREAKER_MS: u64 = 10 * 60_000;

/// A cooldown from another instance, cut to [`MAX_REMOTE_REST_S`]: a finding read from Redis
/// may say anything, and must not bench a key for a year.
fn bounded(cooldown: &Cooldown, now: u64) -> Cooldown {
    let mut c = cooldown.clone();
    c.until = c.until.min(now + MAX_REMOTE_REST_S);
    c
}

impl KeyPool {
    /// Where new findings go (once, at startup, when running as a cluster).
    pub fn set_publisher(&self, publish: PoolPublisher) {
        let _ = self.publisher.set(publish);
    }

    pub(super) fn publish(&self, event: PoolEvent) {
        if let Some(p) = self.publisher.get() {
            p(event);
        }
    }

    /// Applies another instance's finding. False when it does not apply here (unknown key, other
    /// secret, already past).
    pub fn apply_remote(&self, event: &PoolEvent) -> bool {
        let now = now_unix();
        if event.expires().is_some_and(|t| t <= now) {
            return false;
        }
        if let PoolEvent::Pinned {
            resource,
            key_id,
            owner,
            until,
            claims,
        } = event
        {
            return self.remember(resource, key_id, *until, owner.as_deref(), claims.as_ref());
        }
        let mut guard = self.health.lock();
        let st = &mut *guard;
        let same_key = |id: &str, fp: &str| st.keys.get(id).is_some_and(|h| h.fingerprint == fp);
        let applied = match event {
            PoolEvent::ProjectRest {
                project,
                model,
                cooldown,
            } => st.rest_project(
                (Arc::from(project.as_str()), model.clone()),
                bounded(cooldown, now),
                now,
            ),
            PoolEvent::KeyRest {
                key_id,
                fingerprint,
                model,
                cooldown,
            } if same_key(key_id, fingerprint) => st.rest_key(
                (Arc::from(key_id.as_str()), model.clone()),
                bounded(cooldown, now).until,
                &cooldown.reason,
                now,
            ),
            PoolEvent::Dead {
                key_id,
                fingerprint,
                reason,
            } if same_key(key_id, fingerprint) => {
                let id: Arc<str> = Arc::from(key_id.as_str());
                st.died(&id, *reason, std::time::SystemTime::now())
                    .is_some()
            }
            PoolEvent::BreakerOpen {
                key_id,
                fingerprint,
                until_ms,
            } if same_key(key_id, fingerprint) => {
                let left = until_ms
                    .saturating_sub(crate::util::clock::unix_millis())
                    .min(MAX_REMOTE_BREAKER_MS);
                let id: Arc<str> = Arc::from(key_id.as_str());
                match st.keys.get_mut(key_id.as_str()) {
                    Some(h) if h.breaker == Breaker::Closed && left > 0 => {
                        h.breaker = Breaker::Open {
                            until: Instant::now() + Duration::from_millis(left),
                        };
                        st.troubled.insert(id);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        drop(guard);
        if applied {
            self.mark_dirty();
        }
        applied
    }
}
