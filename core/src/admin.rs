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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        if method != http::Method::GET && method != http::Method::HEAD {
            return json_response(
                405,
                &json!({"error": {"code": 405, "message": "method not allowed", "status": "INVALID_ARGUMENT"}}),
            );
        }
        match path.as_str() {
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
            "/api/keys" => json_response(200, &json!({"keys": self.shared.pool.report()})),
            _ => json_response(
                404,
                &json!({"error": {"code": 404, "message": format!("no admin route {path}"), "status": "NOT_FOUND"}}),
            ),
        }
    }
}
