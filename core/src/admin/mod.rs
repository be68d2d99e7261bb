//! The admin listener (`metrics.prometheus_port`): monitoring, login and the admin API.
//!
//! Every request goes the same way: the `Host`/`Origin` check, the route table (default deny,
//! see [`routes`]), the route's access (admin token, or a loopback listener without auth), the
//! body type for changes, then the route's handler.

mod actions;
mod analytics;
mod config_api;
mod config_guard;
mod console;
mod gate;
mod keys;
mod login;
mod login_shared;
mod monitor;
pub mod routes;
mod tokens;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

pub use config_api::restore_redacted;
use routes::{Miss, Op};

use crate::runtime::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
    lockout: login::Lockout,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp {
            shared,
            lockout: login::Lockout::default(),
        }
    }

    async fn serve(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load_full();
        session.set_write_timeout(Some(rt.config.server.clients.write_timeout.0));
        if let Err(r) = gate::same_site(session, &rt, self.shared.tls.as_deref()) {
            return *r;
        }
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let (route, id) = match routes::find(req.method.as_str(), &path) {
            Ok((route, id)) => (route, id.map(str::to_string)),
            Err(Miss::BadPath) => {
                return error(
                    400,
                    "admin paths are plain: no //, dot segments, % escapes, ; or trailing /",
                );
            }
            Err(Miss::Method) => return error(405, "method not allowed"),
            Err(Miss::NotFound) => return error(404, "no such admin route"),
        };
        let caller = match gate::caller(self, session, &rt, route) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        if let Err(r) = gate::body_type(session, route) {
            return *r;
        }
        drop(rt);
        let id = id.unwrap_or_default();
        let ip = client_ip(session).map(|i| i.to_string());
        let caller = caller.as_deref();
        if route.op == Op::Login {
            return self.login(session).await;
        }
        let body = if matches!(route.method, "GET" | "HEAD") {
            Vec::new()
        } else {
            match read_body(session, &self.shared).await {
                Ok(b) => b,
                Err(r) => return r,
            }
        };
        let resp = self
            .run(route, &id, &body, caller, ip.clone(), session)
            .await;
        if actions::audited_here(route.op) {
            self.audit_action(route, &id, &body, &resp, caller, ip);
        }
        resp
    }

    /// The route's handler.
    async fn run(
        &self,
        route: &routes::Route,
        id: &str,
        body: &[u8],
        caller: Option<&str>,
        ip: Option<String>,
        session: &ServerSession,
    ) -> Response<Vec<u8>> {
        let body = body.to_vec();
        match route.op {
            Op::Health => self.health(),
            Op::ConsoleRoot => console::redirect(),
            Op::Console => console::serve(
                id,
                session
                    .req_header()
                    .headers
                    .get("if-none-match")
                    .and_then(|v| v.to_str().ok()),
            ),
            Op::Timeline => json_response(200, &self.shared.stats.timeline()),
            Op::ValidateConfig => self.validate_config(body).await,
            Op::Metrics => self.metrics(),
            Op::Performance => self.performance(),
            Op::Errors => self.errors(),
            Op::Login => unreachable_login(),
            Op::Keys => json_response(200, &self.keys()),
            Op::AddKey => self.add_key(&body).await,
            Op::RemoveKey => self.remove_key(id).await,
            Op::DisableKey => self.key_state(id, "disable"),
            Op::EnableKey => self.key_state(id, "enable"),
            Op::ResetKey => self.key_state(id, "reset"),
            Op::ProbeKey => match crate::probe::probe(&self.shared, id).await {
                Some(r) => json_response(200, &json!({ "probe": r })),
                None => error(404, format!("no key `{id}`")),
            },
            Op::Presets => json_response(200, &self.presets()),
            Op::ApplyPreset => self.apply_preset(&body).await,
            Op::IssueToken => self.issue_token(&body),
            Op::RevokeToken => self.revoke_token(&body),
            Op::Security => {
                let rt = self.shared.runtime.load_full();
                json_response(200, &json!(crate::security::assess(&rt.source)))
            }
            Op::Config => self.config(),
            Op::PutConfig => self.put_config(body, caller).await,
            Op::ConfigHistory => self.config_history(),
            Op::Rollback => self.rollback(body, caller).await,
            Op::Sql => self.sql(&body, caller, ip).await,
            Op::SqlSchema => self.sql_schema().await,
            Op::Export => self.export(&body, caller, ip).await,
            Op::Cluster => self.cluster().await,
        }
    }
}

/// Login is answered before the body is read (its lockout counts the guess first).
fn unreachable_login() -> Response<Vec<u8>> {
    error(500, "login is routed before this point")
}

fn json_response(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header(
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        )
        .body(body)
        .expect("valid response")
}

/// A Google-style error body.
fn error(status: u16, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    let code = match status {
        409 => "ALREADY_EXISTS",
        405 | 415 | 421 => "FAILED_PRECONDITION",
        s => crate::proxy::grpc_status(s),
    };
    json_response(
        status,
        &json!({"error": {"code": status, "message": message.to_string(), "status": code}}),
    )
}

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Reads an admin request body: at most [`MAX_ADMIN_BODY`] bytes (a larger declared length is
/// refused before reading), within `server.clients.body_timeout`.
async fn read_body(
    session: &mut ServerSession,
    shared: &Shared,
) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        session.set_keepalive(None);
        return Err(error(413, "request body too large"));
    }
    let deadline = shared.runtime.load().config.server.clients.body_timeout.0;
    if crate::util::expects_continue(&session.req_header().headers)
        && session.write_continue_response().await.is_err()
    {
        return Err(error(400, "could not read the request body"));
    }
    let mut body = Vec::new();
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let Ok(next) = tokio::time::timeout_at(until, session.read_request_body()).await else {
            return Err(error(408, "the request body arrived too slowly"));
        };
        match next {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    session.set_keepalive(None);
                    return Err(error(413, "request body too large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(error(400, "could not read the request body")),
        }
    }
}

fn client_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.serve(session).await
    }
}
