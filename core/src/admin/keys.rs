//! Keys and weight presets: list, add, remove, disable / enable / reset, probe, presets.

use http::Response;
use serde_json::json;

use super::{AdminApp, error, json_response};

const NO_CLUSTER_SECRET: &str = "this instance runs in a cluster without `cluster.secret` (or CLUSTER_SECRET): a key added here could not reach the other instances. Set the same secret on every instance, or add the key to each instance's config";

/// The live instances that do not share this one's `cluster.secret`, when there are any (a
/// key added here would not reach them). Redis not answering is no reason to refuse.
async fn other_secrets(c: &crate::cluster::Cluster) -> Option<Vec<String>> {
    let mine = c.sealer.as_ref().map(|s| s.fingerprint());
    let list = crate::cluster::heartbeat::instances(&c.link).await.ok()?;
    let ids: Vec<String> = list
        .iter()
        .filter(|i| i["secret_fingerprint"].as_str() != mine)
        .filter_map(|i| i["instance_id"].as_str().map(str::to_string))
        .collect();
    (!ids.is_empty()).then_some(ids)
}

fn secret_drift(ids: &[String]) -> String {
    format!(
        "instances {} do not share this instance's `cluster.secret` (see GET /api/cluster): a key added here would not reach them. Set the same secret on every instance first",
        ids.join(", ")
    )
}

impl AdminApp {
    pub(super) async fn add_key(&self, body: &[u8]) -> Response<Vec<u8>> {
        let key: crate::config::ApiKeyConfig = match serde_json::from_slice(body) {
            Ok(k) => k,
            Err(e) => return error(400, format!("bad key: {e}")),
        };
        let rt = self.shared.runtime.load_full();
        let before = self.shared.pool.overlay.get();
        let merged = before.apply(&rt.config.gemini.api_keys);
        if merged.iter().any(|k| k.id == key.id) {
            return error(409, format!("a key with id `{}` exists", key.id));
        }
        // Sealed before it is added: a key that cannot reach the other instances is not added.
        let sealed = match &self.shared.cluster {
            None => None,
            Some(c) => match crate::cluster_sync::seal_key(&self.shared, &key) {
                Some(_) if let Some(ids) = other_secrets(c).await => {
                    return error(409, secret_drift(&ids));
                }
                Some(s) => Some(s),
                None => return error(409, NO_CLUSTER_SECRET.to_string()),
            },
        };
        let mut after = before.clone();
        after.removed.remove(&key.id);
        let id = key.id.clone();
        after.added.push(key);
        let r = self
            .apply_overlay(before, after, &format!("key {id} added"), 201, &id)
            .await;
        if let (201, Some(sealed)) = (r.status().as_u16(), sealed) {
            crate::cluster_sync::announce(
                &self.shared,
                crate::cluster::events::ClusterEvent::KeyAdded { key_id: id, sealed },
            );
        }
        r
    }

    pub(super) async fn remove_key(&self, id: &str) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load_full();
        let before = self.shared.pool.overlay.get();
        if !before
            .apply(&rt.config.gemini.api_keys)
            .iter()
            .any(|k| k.id == id)
        {
            return error(404, format!("no key `{id}`"));
        }
        let mut after = before.clone();
        let was_added = after.added.len();
        after.added.retain(|k| k.id != id);
        if after.added.len() == was_added {
            after.removed.insert(id.to_string());
        }
        let draining = rt.index.index_of(id).map_or(0, |i| rt.live[i].in_flight());
        let r = self
            .apply_overlay(before, after, &format!("key {id} removed"), 202, id)
            .await;
        if r.status() == 202 {
            crate::cluster_sync::announce(
                &self.shared,
                crate::cluster::events::ClusterEvent::KeyRemoved {
                    key_id: id.to_string(),
                },
            );
            return json_response(
                202,
                &json!({"removed": id, "draining_calls": draining,
                        "note": "calls in flight on this key finish; new calls no longer use it"}),
            );
        }
        r
    }

    async fn apply_overlay(
        &self,
        before: crate::pool::KeyOverlay,
        after: crate::pool::KeyOverlay,
        why: &str,
        status: u16,
        id: &str,
    ) -> Response<Vec<u8>> {
        self.shared.pool.overlay.set(after);
        match crate::reload::rebuild(&self.shared, why).await {
            Ok(generation) => {
                if let Err(e) = self.shared.pool.overlay.save() {
                    tracing::warn!(error = %e, "cannot write the keys file");
                }
                let key = self.shared.pool.report().into_iter().find(|k| k.id == id);
                json_response(
                    status,
                    &json!({"config_generation": generation, "key": key}),
                )
            }
            Err(e) => {
                self.shared.pool.overlay.set(before);
                error(400, e)
            }
        }
    }

    pub(super) fn key_state(&self, id: &str, action: &str) -> Response<Vec<u8>> {
        let pool = &self.shared.pool;
        let ok = match action {
            "disable" => pool.set_dead(id, Some(crate::pool::DeadReason::Operator)),
            "enable" => pool.set_dead(id, None),
            _ => pool.reset(id),
        };
        if !ok {
            return error(404, format!("no key `{id}`"));
        }
        tracing::info!(target: "gemini_proxy::security", key_id = id, action, "key state changed by an operator");
        let action = match action {
            "disable" => crate::cluster::events::KeyAction::Disable,
            "enable" => crate::cluster::events::KeyAction::Enable,
            _ => crate::cluster::events::KeyAction::Reset,
        };
        crate::cluster_sync::announce(
            &self.shared,
            crate::cluster::events::ClusterEvent::KeyState {
                key_id: id.to_string(),
                action,
            },
        );
        let key = pool.report().into_iter().find(|k| k.id == id);
        json_response(200, &json!({ "key": key }))
    }

    pub(super) async fn apply_preset(&self, body: &[u8]) -> Response<Vec<u8>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Apply {
            preset_name: Option<String>,
        }
        let req: Apply = match serde_json::from_slice(body) {
            Ok(a) => a,
            Err(e) => return error(400, format!("expected {{\"preset_name\": \"...\"}}: {e}")),
        };
        let rt = self.shared.runtime.load_full();
        let name = req.preset_name.filter(|n| n != "none" && !n.is_empty());
        if let Some(n) = &name
            && !rt.config.presets.contains_key(n)
        {
            return error(404, format!("no preset `{n}`"));
        }
        let before = self.shared.pool.manual_preset();
        self.shared.pool.set_manual_preset(name.clone());
        match crate::reload::rebuild(&self.shared, "preset applied").await {
            Ok(generation) => {
                crate::cluster_sync::announce(
                    &self.shared,
                    crate::cluster::events::ClusterEvent::Preset { name: name.clone() },
                );
                let rt = self.shared.runtime.load_full();
                json_response(
                    200,
                    &json!({"applied": name, "in_force": rt.preset, "config_generation": generation,
                            "weights": weights_of(&rt)}),
                )
            }
            Err(e) => {
                self.shared.pool.set_manual_preset(before);
                error(400, e)
            }
        }
    }

    /// The pool's report with each key's weight in force (after presets).
    pub(super) fn keys(&self) -> serde_json::Value {
        let rt = self.shared.runtime.load_full();
        let keys: Vec<serde_json::Value> = self
            .shared
            .pool
            .report()
            .into_iter()
            .map(|k| {
                let index = rt.index.index_of(&k.id);
                let weight = index.map(|i| rt.candidates[i].weight);
                let mut v = serde_json::to_value(&k).unwrap_or_default();
                v["weight"] = json!(weight);
                v["usage"] = index.map_or(json!([]), |i| self.key_usage(&rt.keys[i]));
                v
            })
            .collect();
        json!({ "keys": keys, "preset": rt.preset })
    }

    /// The key's project's usage in the current windows against the limits configured for the
    /// key: every model with calls, and every model the limits name.
    fn key_usage(&self, key: &crate::runtime::UpstreamKey) -> serde_json::Value {
        let mut seen: std::collections::BTreeMap<String, (u64, u64, u64)> = self
            .shared
            .pool
            .usage
            .of_project(&key.project)
            .into_iter()
            .map(|(m, r, t, d)| (m, (r, t, d)))
            .collect();
        if let Some(l) = &key.limits {
            for m in l.models.keys() {
                seen.entry(m.clone()).or_default();
            }
            if l.rpm.is_some() || l.tpm.is_some() || l.rpd.is_some() {
                seen.entry("*".into()).or_default();
            }
        }
        let window = |used: u64, limit: Option<u64>| json!({"used": used, "limit": limit});
        seen.into_iter()
            .map(|(model, (rpm, tpm, rpd))| {
                let limits = key
                    .limits
                    .as_ref()
                    .map(|l| l.for_model((model != "*").then_some(model.as_str())))
                    .unwrap_or_default();
                json!({
                    "model": model,
                    "rpm": window(rpm, limits.rpm),
                    "tpm": window(tpm, limits.tpm),
                    "rpd": window(rpd, limits.rpd),
                })
            })
            .collect()
    }

    pub(super) fn presets(&self) -> serde_json::Value {
        let rt = self.shared.runtime.load_full();
        let manual = self.shared.pool.manual_preset();
        let source = if rt.preset.is_none() {
            "none"
        } else if rt.config.preset_schedule.iter().any(|w| {
            w.covers(std::time::SystemTime::now()) && Some(&w.preset) == rt.preset.as_ref()
        }) {
            "schedule"
        } else if manual.is_some() && manual == rt.preset {
            "applied"
        } else {
            "default"
        };
        json!({
            "presets": rt.config.presets,
            "schedule": rt.config.preset_schedule,
            "default": rt.config.default_preset,
            "applied": manual,
            "in_force": rt.preset,
            "source": source,
            "weights": weights_of(&rt),
        })
    }
}

fn weights_of(rt: &crate::runtime::Runtime) -> serde_json::Value {
    rt.candidates
        .iter()
        .map(|c| (c.id.to_string(), json!(c.weight)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
