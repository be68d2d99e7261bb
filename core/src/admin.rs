//! The admin listener (`metrics.prometheus_port`): `/health`, `/metrics`, `/performance`,
//! `/errors`, `/api/keys`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::runtime::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp { shared }
    }

    fn health(&self) -> serde_json::Value {
        let rt = self.shared.runtime.load();
        let keys = &rt.config.gemini.api_keys;
        json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.shared.started.elapsed().as_secs(),
            "config_generation": rt.generation,
            "keys": {"configured": keys.len(), "enabled": keys.iter().filter(|k| k.enabled).count()},
            "upstream": {"host": rt.upstream.target.host, "tls": rt.upstream.target.tls},
            "pipeline": rt.pipeline.stages.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(),
        })
    }
}

fn json_response(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("valid response")
}

fn error(status: u16, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    let code = match status {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        413 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    };
    json_response(
        status,
        &json!({"error": {"code": status, "message": message.to_string(), "status": code}}),
    )
}

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(error(413, "request body too large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(error(400, "could not read the request body")),
        }
    }
}

impl AdminApp {
    /// Key and preset changes. Until JWT admin auth exists (issue 4) they are served only when
    /// the admin listener is bound to loopback.
    async fn mutate(
        &self,
        session: &mut ServerSession,
        method: &http::Method,
        path: &str,
    ) -> Option<Response<Vec<u8>>> {
        let rt = self.shared.runtime.load_full();
        let loopback = rt
            .config
            .metrics
            .host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(rt.config.metrics.host == "localhost");
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let route = match (method.as_str(), segs.as_slice()) {
            ("POST", ["api", "keys"]) => Mutation::Add,
            ("DELETE", ["api", "keys", id]) => Mutation::Remove(id.to_string()),
            ("POST", ["api", "keys", id, action @ ("disable" | "enable" | "reset")]) => {
                Mutation::State(id.to_string(), action.to_string())
            }
            ("POST", ["api", "keys", id, "probe"]) => Mutation::Probe(id.to_string()),
            ("POST", ["api", "weights", "apply"]) => Mutation::Preset,
            _ => return None,
        };
        if !loopback {
            return Some(error(
                403,
                "admin changes are served on a loopback admin listener only until admin authentication is configured",
            ));
        }
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(r) => return Some(r),
        };
        Some(match route {
            Mutation::Add => self.add_key(&body).await,
            Mutation::Remove(id) => self.remove_key(&id).await,
            Mutation::State(id, action) => self.key_state(&id, &action),
            Mutation::Preset => self.apply_preset(&body).await,
            Mutation::Probe(id) => match crate::probe::probe(&self.shared, &id).await {
                Some(r) => json_response(200, &json!({ "probe": r })),
                None => error(404, format!("no key `{id}`")),
            },
        })
    }

    async fn add_key(&self, body: &[u8]) -> Response<Vec<u8>> {
        let key: crate::config::ApiKeyConfig = match serde_json::from_slice(body) {
            Ok(k) => k,
            Err(e) => return error(400, format!("bad key: {e}")),
        };
        let rt = self.shared.runtime.load_full();
        let before = self.shared.pool.overlay();
        let merged = before.apply(&rt.config.gemini.api_keys);
        if merged.iter().any(|k| k.id == key.id) {
            return error(409, format!("a key with id `{}` exists", key.id));
        }
        let mut after = before.clone();
        after.removed.remove(&key.id);
        let id = key.id.clone();
        after.added.push(key);
        self.apply_overlay(before, after, &format!("key {id} added"), 201, &id)
            .await
    }

    async fn remove_key(&self, id: &str) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load_full();
        let before = self.shared.pool.overlay();
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
        self.shared.pool.set_overlay(after);
        match crate::reload::rebuild(&self.shared, why).await {
            Ok(generation) => {
                if let Err(e) = self.shared.pool.save_overlay() {
                    tracing::warn!(error = %e, "cannot write the keys file");
                }
                let key = self.shared.pool.report().into_iter().find(|k| k.id == id);
                json_response(
                    status,
                    &json!({"config_generation": generation, "key": key}),
                )
            }
            Err(e) => {
                self.shared.pool.set_overlay(before);
                error(400, e)
            }
        }
    }

    fn key_state(&self, id: &str, action: &str) -> Response<Vec<u8>> {
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
        let key = pool.report().into_iter().find(|k| k.id == id);
        json_response(200, &json!({ "key": key }))
    }

    async fn apply_preset(&self, body: &[u8]) -> Response<Vec<u8>> {
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
    fn keys(&self) -> serde_json::Value {
        let rt = self.shared.runtime.load_full();
        let keys: Vec<serde_json::Value> = self
            .shared
            .pool
            .report()
            .into_iter()
            .map(|k| {
                let weight = rt.index.index_of(&k.id).map(|i| rt.candidates[i].weight);
                let mut v = serde_json::to_value(&k).unwrap_or_default();
                v["weight"] = json!(weight);
                v
            })
            .collect();
        json!({ "keys": keys, "preset": rt.preset })
    }

    fn presets(&self) -> serde_json::Value {
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

enum Mutation {
    Add,
    Remove(String),
    State(String, String),
    Preset,
    Probe(String),
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        if let Some(r) = self.mutate(session, &method, &path).await {
            return r;
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            return json_response(
                405,
                &json!({"error": {"code": 405, "message": "method not allowed", "status": "INVALID_ARGUMENT"}}),
            );
        }
        match path.as_str() {
            "/api/weights/presets" => json_response(200, &self.presets()),
            "/health" | "/healthz" => json_response(200, &self.health()),
            "/metrics" => {
                self.shared.metrics.publish_pool(&self.shared.pool.report());
                let body = self.shared.metrics.render();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .expect("valid response")
            }
            "/performance" => json_response(200, &self.shared.stats.performance()),
            "/errors" => json_response(200, &self.shared.stats.errors()),
            "/api/keys" => json_response(200, &self.keys()),
            _ => json_response(
                404,
                &json!({"error": {"code": 404, "message": format!("no admin route {path}"), "status": "NOT_FOUND"}}),
            ),
        }
    }
}
