//! The admin listener (`metrics.prometheus_port`): `/health`, `/metrics`, `/performance`,
//! `/errors`, `/api/keys`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gemini_proxy_sdk::Role;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::runtime::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
    /// Failed logins per client IP: (failures, first failure, locked until).
    logins: parking_lot::Mutex<HashMap<IpAddr, LoginFailures>>,
}

#[derive(Clone, Copy)]
struct LoginFailures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Failed logins from one IP within `LOGIN_WINDOW` before it is locked out for `LOCKOUT`.
const MAX_LOGIN_FAILURES: u32 = 5;
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
const LOCKOUT: Duration = Duration::from_secs(15 * 60);

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp {
            shared,
            logins: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// `/api/*` needs a token with `role: admin` when auth is enabled. Returns who called
    /// (`None` without auth).
    fn guard(&self, session: &ServerSession) -> Result<Option<String>, Box<Response<Vec<u8>>>> {
        let rt = self.shared.runtime.load_full();
        let Some(verifier) = rt.auth.as_ref() else {
            return Ok(None);
        };
        let token = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        let fail = |status: u16, reason: &'static str, msg: &str| {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&[reason])
                .inc();
            tracing::info!(target: "gemini_proxy::security", reason, client_ip = ?client_ip(session), "admin API call refused");
            self.shared.audit(crate::audit::security_event(
                &format!("admin API refused: {reason}"),
                "Blocked",
                client_ip(session).map(|ip| ip.to_string()),
                json!({"path": session.req_header().uri.path()}),
            ));
            Err(Box::new(error(status, msg)))
        };
        match verifier.verify(token) {
            Ok(c) if c.role.as_deref() == Some("admin") => Ok(Some(c.sub)),
            Ok(_) => fail(
                403,
                "not_admin",
                "the admin API needs a token with role admin",
            ),
            Err(e) => fail(401, e.reason(), e.message()),
        }
    }

    /// `POST /auth/login {"password": "..."}` → an admin token.
    async fn login(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load_full();
        let ip = client_ip(session).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let now = Instant::now();
        if let Some(f) = self.logins.lock().get(&ip)
            && let Some(until) = f.locked_until
            && until > now
        {
            let wait = (until - now).as_secs().max(1);
            let mut r = error(429, format!("too many failed logins; try again in {wait}s"));
            r.headers_mut().insert(
                "retry-after",
                http::HeaderValue::from_str(&wait.to_string()).expect("digits"),
            );
            return r;
        }
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        #[derive(serde::Deserialize)]
        struct Login {
            password: String,
        }
        let Ok(login) = serde_json::from_slice::<Login>(&body) else {
            return error(400, "expected {\"password\": \"...\"}");
        };
        let a = &rt.config.auth;
        let Some(secret) = a.jwt_secret.as_deref().filter(|_| a.enabled) else {
            return error(503, "admin login needs auth.enabled and auth.jwt_secret");
        };
        let ok = match (&a.admin_password_hash, &a.admin_password) {
            (Some(hash), _) => verify_hash(hash, &login.password),
            (None, Some(pw)) => constant_time_eq(pw, &login.password),
            (None, None) => return error(503, "no admin password is configured"),
        };
        if !ok {
            let count = {
                let mut logins = self.logins.lock();
                let f = logins.entry(ip).or_insert(LoginFailures {
                    count: 0,
                    since: now,
                    locked_until: None,
                });
                if now.duration_since(f.since) > LOGIN_WINDOW {
                    *f = LoginFailures {
                        count: 0,
                        since: now,
                        locked_until: None,
                    };
                }
                f.count += 1;
                if f.count >= MAX_LOGIN_FAILURES {
                    f.locked_until = Some(now + LOCKOUT);
                    tracing::warn!(target: "gemini_proxy::security", client_ip = %ip, "admin login locked out after repeated failures");
                    self.shared.audit(crate::audit::security_event(
                        "admin login lockout",
                        "Blocked",
                        Some(ip.to_string()),
                        json!({"failures": f.count, "lockout_s": LOCKOUT.as_secs()}),
                    ));
                }
                f.count
            };
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&["bad_password"])
                .inc();
            self.shared.audit(crate::audit::security_event(
                "admin login failed",
                "Failure",
                Some(ip.to_string()),
                json!({"failures": count}),
            ));
            // Slow down guessing: 100 ms, doubling, at most 1.6 s.
            tokio::time::sleep(Duration::from_millis(100 << count.min(5).saturating_sub(1))).await;
            return error(401, "wrong password");
        }
        self.logins.lock().remove(&ip);
        let ttl = a.token_ttl.0;
        let claims = gemini_proxy_plugins::auth::new_claims("admin", Role::Admin, ttl, vec![]);
        match sign_claims(&rt, secret, claims) {
            Ok(token) => {
                tracing::info!(target: "gemini_proxy::security", client_ip = %ip, "admin logged in");
                json_response(
                    200,
                    &json!({"token": token, "token_type": "Bearer", "expires_in": ttl.as_secs()}),
                )
            }
            Err(e) => error(500, e),
        }
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
            "tls": self.shared.tls.as_ref().map(|t| {
                let info = t.info();
                json!({
                    "source": info.source,
                    "names": info.names,
                    "not_after": info.not_after,
                    "expires_in_seconds": t.expires_in(),
                    "loaded_at": info.loaded_at,
                    "last_error": info.last_error,
                })
            }),
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

/// `POST /api/sql` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    max_rows: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /api/export` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    since: String,
    /// A folder inside `audit.export_dir` (default: the folder itself).
    #[serde(default)]
    out: Option<String>,
}

fn db_error(e: crate::audit_db::DbError) -> Response<Vec<u8>> {
    match e {
        crate::audit_db::DbError::Timeout(_) => json_response(
            504,
            &json!({"error": {"code": 504, "message": e.to_string(), "status": "DEADLINE_EXCEEDED"}}),
        ),
        crate::audit_db::DbError::Open { .. } => error(500, e),
        _ => error(400, e),
    }
}

impl AdminApp {
    /// `POST /api/sql`, `GET /api/sql/schema`, `POST /api/export`.
    async fn analytics_api(
        &self,
        session: &mut ServerSession,
        method: &http::Method,
        path: &str,
        caller: Option<&str>,
    ) -> Option<Response<Vec<u8>>> {
        let route = (method.as_str(), path);
        if !matches!(
            route,
            ("POST", "/api/sql") | ("GET", "/api/sql/schema") | ("POST", "/api/export")
        ) {
            return None;
        }
        let Some(audit) = self.shared.audit.clone() else {
            return Some(error(404, "auditing is off (audit.enabled: false)"));
        };
        let ip = client_ip(session).map(|i| i.to_string());
        let body = if method == http::Method::POST {
            match read_body(session).await {
                Ok(b) => b,
                Err(r) => return Some(r),
            }
        } else {
            Vec::new()
        };
        let by = caller.unwrap_or("(unauthenticated loopback)").to_string();
        Some(match route.1 {
            "/api/sql/schema" => {
                let r = tokio::task::spawn_blocking(move || {
                    audit.with_db(|c| {
                        crate::audit_db::query(
                            c,
                            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'main' ORDER BY table_name, ordinal_position",
                            crate::audit_db::QueryLimits { max_rows: 10_000, timeout: std::time::Duration::from_secs(10) },
                        )
                    })
                })
                .await;
                match r {
                    Ok(Ok(r)) => {
                        let mut rel: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
                            Default::default();
                        for row in r.rows {
                            if let Some(t) = row[0].as_str()
                                && crate::audit_db::RELATIONS.contains(&t)
                            {
                                rel.entry(t.to_string())
                                    .or_default()
                                    .push(json!({"name": row[1], "type": row[2]}));
                            }
                        }
                        json_response(200, &json!({ "relations": rel }))
                    }
                    Ok(Err(e)) => db_error(e),
                    Err(e) => error(500, format!("query task failed: {e}")),
                }
            }
            "/api/sql" => {
                let req: SqlRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return Some(error(400, format!("bad SQL request: {e}"))),
                };
                let csv = match req.format.as_deref() {
                    None | Some("json") => false,
                    Some("csv") => true,
                    Some(other) => {
                        return Some(error(400, format!("format `{other}` is not json or csv")));
                    }
                };
                let mut limits = audit.sql_limits;
                if let Some(n) = req.max_rows {
                    limits.max_rows = n.clamp(1, limits.max_rows);
                }
                if let Some(ms) = req.timeout_ms {
                    limits.timeout = limits
                        .timeout
                        .min(std::time::Duration::from_millis(ms.max(1)));
                }
                let sql = req.sql;
                let text: String = sql.chars().take(500).collect();
                let a2 = audit.clone();
                let r = tokio::task::spawn_blocking(move || {
                    // What was audited so far is visible to the query.
                    a2.flush();
                    a2.with_db(|c| crate::audit_db::query(c, &sql, limits))
                })
                .await;
                let (result, resp) = match r {
                    Ok(Ok(r)) if csv => {
                        let body = crate::audit_db::to_csv(&r).into_bytes();
                        (
                            "Success",
                            Response::builder()
                                .status(200)
                                .header("content-type", "text/csv; charset=utf-8")
                                .header("content-length", body.len())
                                .header("x-rows", r.rows.len())
                                .header("x-truncated", if r.truncated { "true" } else { "false" })
                                .header("cache-control", "no-store")
                                .body(body)
                                .expect("valid response"),
                        )
                    }
                    Ok(Ok(r)) => {
                        let mut v = serde_json::to_value(&r).unwrap_or_default();
                        v["row_count"] = json!(r.rows.len());
                        ("Success", json_response(200, &v))
                    }
                    Ok(Err(e)) => {
                        let refused = matches!(e, crate::audit_db::DbError::Refused(_));
                        (if refused { "Blocked" } else { "Failure" }, db_error(e))
                    }
                    Err(e) => ("Failure", error(500, format!("query task failed: {e}"))),
                };
                self.shared.audit(crate::audit::admin_event(
                    "sql query",
                    result,
                    ip,
                    json!({"by": by, "sql": text}),
                ));
                resp
            }
            _ => {
                let req: ExportRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return Some(error(400, format!("bad export request: {e}"))),
                };
                let Some(since) = crate::pool::clock::parse_date(&req.since) else {
                    return Some(error(
                        400,
                        format!("since `{}` is not a date (YYYY-MM-DD)", req.since),
                    ));
                };
                let rel = req.out.unwrap_or_default();
                let relp = std::path::Path::new(&rel);
                if relp.is_absolute()
                    || relp.components().any(|c| {
                        !matches!(
                            c,
                            std::path::Component::Normal(_) | std::path::Component::CurDir
                        )
                    })
                {
                    return Some(error(
                        400,
                        "out must be a relative folder inside audit.export_dir",
                    ));
                }
                let out = audit.export_dir.join(relp);
                let a2 = audit.clone();
                let r = tokio::task::spawn_blocking(move || {
                    a2.flush();
                    a2.with_db(|c| crate::audit_db::export(c, since, &out))
                })
                .await;
                let (result, resp) = match r {
                    Ok(Ok(rep)) => ("Success", json_response(200, &json!(rep))),
                    Ok(Err(e)) => ("Failure", db_error(e)),
                    Err(e) => ("Failure", error(500, format!("export task failed: {e}"))),
                };
                self.shared.audit(crate::audit::admin_event(
                    "export",
                    result,
                    ip,
                    json!({"by": by, "since": req.since, "out": rel}),
                ));
                resp
            }
        })
    }

    /// `GET /api/config`, `PUT /api/config`, `GET /api/config/history`,
    /// `POST /api/config/rollback`.
    async fn config_api(
        &self,
        session: &mut ServerSession,
        method: &http::Method,
        path: &str,
        caller: Option<&str>,
    ) -> Option<Response<Vec<u8>>> {
        let rt = self.shared.runtime.load_full();
        match (method.as_str(), path) {
            ("GET", "/api/config") => Some(json_response(
                200,
                &json!({
                    "version": self.shared.history.versions().last().map(|v| v.version),
                    "file": self.shared.config_path.as_ref().map(|p| p.display().to_string()),
                    "config": crate::config_history::redacted(&rt.config),
                }),
            )),
            ("GET", "/api/config/history") => Some(json_response(
                200,
                &json!({ "versions": self.shared.history.versions() }),
            )),
            ("PUT", "/api/config") => {
                let body = match self.change_body(session, &rt).await {
                    Ok(b) => b,
                    Err(r) => return Some(r),
                };
                let Ok(text) = String::from_utf8(body) else {
                    return Some(error(400, "the config must be UTF-8 YAML or JSON"));
                };
                Some(self.apply_config_text(&text, "api", caller).await)
            }
            ("POST", "/api/config/rollback") => {
                let body = match self.change_body(session, &rt).await {
                    Ok(b) => b,
                    Err(r) => return Some(r),
                };
                #[derive(serde::Deserialize)]
                struct Rollback {
                    version: u64,
                }
                let Ok(r) = serde_json::from_slice::<Rollback>(&body) else {
                    return Some(error(400, "expected {\"version\": N}"));
                };
                let Some(text) = self.shared.history.text_of(r.version) else {
                    return Some(error(404, format!("version {} is not kept", r.version)));
                };
                Some(self.apply_config_text(&text, "rollback", caller).await)
            }
            _ => None,
        }
    }

    /// The body of a config change, if the caller may make one (admin auth, or without auth a
    /// loopback admin listener).
    async fn change_body(
        &self,
        session: &mut ServerSession,
        rt: &crate::runtime::Runtime,
    ) -> Result<Vec<u8>, Response<Vec<u8>>> {
        if rt.auth.is_none() && !self.loopback(rt) {
            return Err(error(
                403,
                "config changes need admin auth or a loopback admin listener",
            ));
        }
        read_body(session).await
    }

    fn loopback(&self, rt: &crate::runtime::Runtime) -> bool {
        crate::config::is_loopback_host(&rt.config.metrics.host)
    }

    /// Validates `text` as a whole config, writes it over the config file and reloads.
    async fn apply_config_text(
        &self,
        text: &str,
        source: &str,
        caller: Option<&str>,
    ) -> Response<Vec<u8>> {
        let Some(path) = self.shared.config_path.clone() else {
            return error(409, "the gateway was started without a config file");
        };
        // Validate and build before touching the file: a bad config changes nothing.
        let file = path.display().to_string();
        let loaded = match crate::config::load_str(text, &file, &crate::config::process_env) {
            Ok(mut l) => {
                l.path = Some(path.clone());
                l
            }
            Err(e) => return error(400, e),
        };
        let check = {
            let loaded = loaded.clone();
            tokio::task::spawn_blocking(move || {
                crate::runtime::Runtime::build(
                    &loaded,
                    &crate::builtin_registry(),
                    None,
                    &crate::pool::KeyPool::default(),
                )
                .map(|_| ())
            })
            .await
        };
        match check {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return error(400, e),
            Err(e) => return error(500, format!("validation task failed: {e}")),
        }
        if let Err(e) = crate::pool::write_private(&path, text.as_bytes()) {
            return error(500, format!("cannot write {}: {e}", path.display()));
        }
        match crate::reload::reload_as(&self.shared, true, source, caller).await {
            crate::reload::ReloadOutcome::Applied { generation } => json_response(
                200,
                &json!({
                    "applied": true,
                    "config_generation": generation,
                    "version": self.shared.history.versions().last(),
                }),
            ),
            crate::reload::ReloadOutcome::Unchanged => {
                json_response(200, &json!({"applied": false}))
            }
            crate::reload::ReloadOutcome::Failed(m) => error(400, m),
        }
    }

    /// Key and preset changes. Until JWT admin auth exists (issue 4) they are served only when
    /// the admin listener is bound to loopback.
    async fn mutate(
        &self,
        session: &mut ServerSession,
        method: &http::Method,
        path: &str,
    ) -> Option<Response<Vec<u8>>> {
        let rt = self.shared.runtime.load_full();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let route = match (method.as_str(), segs.as_slice()) {
            ("POST", ["api", "keys"]) => Mutation::Add,
            ("DELETE", ["api", "keys", id]) => Mutation::Remove(id.to_string()),
            ("POST", ["api", "keys", id, action @ ("disable" | "enable" | "reset")]) => {
                Mutation::State(id.to_string(), action.to_string())
            }
            ("POST", ["api", "keys", id, "probe"]) => Mutation::Probe(id.to_string()),
            ("POST", ["api", "weights", "apply"]) => Mutation::Preset,
            ("POST", ["api", "tokens"]) => Mutation::IssueToken,
            ("POST", ["api", "tokens", "revoke"]) => Mutation::RevokeToken,
            _ => return None,
        };
        if rt.auth.is_none() && !self.loopback(&rt) {
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
            Mutation::IssueToken => self.issue_token(&body),
            Mutation::RevokeToken => self.revoke_token(&body),
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

    fn issue_token(&self, body: &[u8]) -> Response<Vec<u8>> {
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
        }
        let rt = self.shared.runtime.load_full();
        let Some(secret) = rt
            .config
            .auth
            .jwt_secret
            .as_deref()
            .filter(|_| rt.auth.is_some())
        else {
            return error(503, "issuing tokens needs auth.enabled and auth.jwt_secret");
        };
        let req: Issue = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return error(400, format!("bad token request: {e}")),
        };
        let role = match req.role.as_deref() {
            None | Some("user") => Role::User,
            Some("admin") => Role::Admin,
            Some(other) => return error(400, format!("role `{other}` is not user or admin")),
        };
        if req.sub.trim().is_empty() {
            return error(400, "sub is empty");
        }
        let ttl = req.ttl.map_or(rt.config.auth.token_ttl.0, |d| d.0);
        let mut claims = gemini_proxy_plugins::auth::new_claims(&req.sub, role, ttl, req.models);
        claims.limits = req.limits;
        let jti = claims.jti.clone();
        match sign_claims(&rt, secret, claims) {
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

    fn revoke_token(&self, body: &[u8]) -> Response<Vec<u8>> {
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
                json_response(200, &json!({"revoked": r.jti}))
            }
            Err(e) => error(500, format!("cannot write the revocation file: {e}")),
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

fn client_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    // Comparing digests keeps the time independent of where the strings differ and of length.
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.ct_eq(&y).into()
}

fn verify_hash(hash: &str, password: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Signs with the gateway's HMAC secret, adding the configured issuer and audience.
fn sign_claims(
    rt: &crate::runtime::Runtime,
    secret: &str,
    mut claims: gemini_proxy_plugins::auth::Claims,
) -> Result<String, String> {
    let a = &rt.config.auth;
    claims.iss = a.issuer.clone();
    claims.aud = a.audience.clone();
    gemini_proxy_plugins::auth::sign(
        secret,
        a.algorithm.as_deref().unwrap_or("HS256"),
        None,
        &claims,
    )
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
    IssueToken,
    RevokeToken,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        if method == http::Method::POST && path == "/auth/login" {
            return self.login(session).await;
        }
        let caller = if path.starts_with("/api/") {
            match self.guard(session) {
                Ok(c) => c,
                Err(r) => return *r,
            }
        } else {
            None
        };
        if let Some(r) = self
            .config_api(session, &method, &path, caller.as_deref())
            .await
        {
            return r;
        }
        if let Some(r) = self.mutate(session, &method, &path).await {
            return r;
        }
        if let Some(r) = self
            .analytics_api(session, &method, &path, caller.as_deref())
            .await
        {
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
            "/api/security" => {
                let rt = self.shared.runtime.load_full();
                json_response(200, &json!(crate::security::assess(&rt.source)))
            }
            "/health" | "/healthz" => json_response(200, &self.health()),
            "/metrics" => {
                self.shared.metrics.publish_pool(&self.shared.pool.report());
                self.shared.metrics.publish_scripts();
                if let Some(t) = &self.shared.tls {
                    self.shared.metrics.certificate_expiry.set(t.expires_in());
                }
                if let Some(a) = &self.shared.audit {
                    self.shared
                        .metrics
                        .audit_dropped
                        .set(a.dropped.load(std::sync::atomic::Ordering::Relaxed) as i64);
                    self.shared
                        .metrics
                        .audit_written
                        .set(a.written.load(std::sync::atomic::Ordering::Relaxed) as i64);
                    self.shared
                        .metrics
                        .audit_queue_depth
                        .set(a.queue_depth() as i64);
                    self.shared
                        .metrics
                        .audit_db_errors
                        .set(a.db_errors.load(std::sync::atomic::Ordering::Relaxed) as i64);
                }
                let body = self.shared.metrics.render();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .expect("valid response")
            }
            "/performance" => {
                self.shared
                    .report_anomalies(self.shared.anomalies.tick(crate::anomaly::now_ms()));
                let mut v = self.shared.stats.performance();
                v["anomalies"] = self.shared.anomalies.report();
                json_response(200, &v)
            }
            "/errors" => json_response(200, &self.shared.stats.errors()),
            "/api/keys" => json_response(200, &self.keys()),
            _ => json_response(
                404,
                &json!({"error": {"code": 404, "message": format!("no admin route {path}"), "status": "NOT_FOUND"}}),
            ),
        }
    }
}
