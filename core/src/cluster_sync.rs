//! What a cluster's instances tell each other, and what each does with it: key health findings
//! (cooldowns, dead keys, open breakers), which key created a resource, operator actions on keys
//! and presets, and token
//! revocations. Each is applied here exactly as if it had happened here, and is not handed on
//! again. Key secrets never travel in clear: keys are named by id, and a key added through the
//! admin API travels sealed with the cluster's secret.

use std::sync::{Arc, Weak};

use serde_json::Value;

use crate::cluster::events::{ClusterEvent, KeyAction, Outgoing};
use crate::runtime::Shared;

/// Starts telling and listening, once, when the gateway runs as a cluster.
pub fn start(shared: &Arc<Shared>) {
    let Some(c) = &shared.cluster else { return };
    if c.bus.get().is_some() {
        return;
    }
    let weak = Arc::downgrade(shared);
    let bus = crate::cluster::events::start(&c.link, c.sealer.clone(), move |v| apply(&weak, v));
    let publisher = bus.clone();
    shared.pool.set_publisher(Box::new(move |e| {
        publisher.publish(outgoing(&ClusterEvent::Pool(e), None));
    }));
    let _ = c.bus.set(bus);
}

/// Tells the other instances (when there are any) what happened here.
pub fn announce(shared: &Shared, event: ClusterEvent) {
    if let Some(bus) = shared.cluster.as_ref().and_then(|c| c.bus.get()) {
        let revocation_life = shared.runtime.load().config.auth.max_token_ttl.0;
        bus.publish(outgoing(&event, Some(revocation_life)));
    }
}

/// The event with the state it leaves for instances that start later.
fn outgoing(event: &ClusterEvent, revocation_life: Option<std::time::Duration>) -> Outgoing {
    let now = crate::util::clock::unix_secs(std::time::SystemTime::now());
    let (subject, expires) = match event {
        ClusterEvent::Pool(h) => (Some(format!("pool:{}", h.subject())), h.expires()),
        // The same subject as a death: enabling a key replaces the state that it was disabled.
        ClusterEvent::KeyState { key_id, .. } => (Some(format!("pool:dead:{key_id}")), None),
        ClusterEvent::Preset { .. } => (Some("preset".into()), None),
        ClusterEvent::Revoked { jti } => (
            Some(format!("revoked:{}", hex_of(jti))),
            // A revoked token outlives no token the gateway signs.
            Some(now + revocation_life.map_or(31 * 86_400, |d| d.as_secs() + 86_400)),
        ),
        // An added key stays for instances that start later, until it is removed.
        ClusterEvent::KeyAdded { key_id, .. } | ClusterEvent::KeyRemoved { key_id } => {
            (Some(format!("key:{}", hex_of(key_id))), None)
        }
    };
    Outgoing {
        event: serde_json::to_value(event).unwrap_or_default(),
        subject,
        expires,
    }
}

/// A `jti` as a Redis key part: whatever a token carried, a plain name.
fn hex_of(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..16])
}

fn apply(shared: &Weak<Shared>, v: Value) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let event = match serde_json::from_value::<ClusterEvent>(v) {
        Ok(e) => e,
        Err(_) => {
            tracing::warn!(target: "gemini_proxy::cluster", "unknown cluster event ignored");
            return;
        }
    };
    match event {
        ClusterEvent::Pool(mut h) => {
            // Without the cluster's secret an event is unsigned: it may say where a resource
            // lives, never who its maker is (the caller a credential's sessions run as).
            if shared.cluster.as_ref().is_some_and(|c| c.sealer.is_none()) {
                h = h.without_claims();
            }
            shared.pool.apply_remote(&h);
        }
        ClusterEvent::KeyState { key_id, action } => {
            let pool = &shared.pool;
            match action {
                KeyAction::Disable => {
                    pool.set_dead(&key_id, Some(crate::pool::DeadReason::Operator))
                }
                KeyAction::Enable => pool.set_dead(&key_id, None),
                KeyAction::Reset => pool.reset(&key_id),
            };
        }
        ClusterEvent::Revoked { jti } => {
            if let Some(v) = &shared.runtime.load().auth
                && !v.revocations().contains(&jti)
                && let Err(e) = v.revocations().revoke(&jti)
            {
                tracing::warn!(target: "gemini_proxy::cluster", error = %e, "cannot record a revocation from the cluster");
            }
        }
        ClusterEvent::Preset { name } => {
            if shared.pool.manual_preset() != name {
                shared.pool.set_manual_preset(name);
                rebuild(shared, None, "preset applied on another instance");
            }
        }
        ClusterEvent::KeyAdded { key_id, sealed } => add_key(shared, &key_id, &sealed),
        ClusterEvent::KeyRemoved { key_id } => {
            let rt = shared.runtime.load_full();
            let before = shared.pool.overlay.get();
            if before
                .apply(&rt.config.gemini.api_keys)
                .iter()
                .any(|k| k.id == key_id)
            {
                let mut after = before.clone();
                after.added.retain(|k| k.id != key_id);
                after.removed.insert(key_id);
                shared.pool.overlay.set(after);
                rebuild(shared, Some(before), "key removed on another instance");
            }
        }
    }
}

/// `key` sealed with the cluster's secret for the other instances (`None`: no secret here).
pub fn seal_key(shared: &Shared, key: &crate::config::ApiKeyConfig) -> Option<String> {
    let sealer = shared.cluster.as_ref()?.sealer.as_ref()?;
    let plain = serde_json::to_vec(key).ok()?;
    sealer.seal(&seal_context(&key.id), &plain).ok()
}

fn seal_context(key_id: &str) -> String {
    format!("key:{key_id}")
}

/// A key another instance added: opened with this instance's secret, added unless a key of that
/// id is here already.
fn add_key(shared: Arc<Shared>, key_id: &str, sealed: &str) {
    let opened = shared
        .cluster
        .as_ref()
        .and_then(|c| c.sealer.as_ref())
        .ok_or_else(|| "this instance has no `cluster.secret`".to_string())
        .and_then(|s| {
            s.open(&seal_context(key_id), sealed)
                .map_err(|e| e.to_string())
        })
        .and_then(|plain| {
            serde_json::from_slice::<crate::config::ApiKeyConfig>(&plain)
                .map_err(|_| "the sealed key is not a key's config".to_string())
        });
    let key = match opened {
        Ok(k) if k.id == key_id => k,
        Ok(_) => {
            return tracing::warn!(target: "gemini_proxy::cluster", key_id, "a sealed key names another id: ignored");
        }
        Err(why) => {
            return tracing::warn!(target: "gemini_proxy::cluster", key_id, why, "a key added on another instance cannot be opened here");
        }
    };
    let rt = shared.runtime.load_full();
    let before = shared.pool.overlay.get();
    if before
        .apply(&rt.config.gemini.api_keys)
        .iter()
        .any(|k| k.id == key.id)
    {
        return;
    }
    let mut after = before.clone();
    after.removed.remove(&key.id);
    after.added.push(key);
    shared.pool.overlay.set(after);
    rebuild(shared, Some(before), "key added on another instance");
}

/// Rebuilds; a changed key overlay the config refuses is put back as it was (`before`).
fn rebuild(shared: Arc<Shared>, before: Option<crate::pool::KeyOverlay>, why: &'static str) {
    tokio::spawn(async move {
        if let Err(e) = crate::reload::rebuild(&shared, why).await {
            if let Some(b) = before {
                shared.pool.overlay.set(b);
            }
            tracing::warn!(target: "gemini_proxy::cluster", error = %e, "cannot apply a change from the cluster");
        } else if let Err(e) = shared.pool.overlay.save() {
            tracing::warn!(error = %e, "cannot write the keys file");
        }
    });
}
