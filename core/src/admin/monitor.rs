//! The public monitoring routes: `/health`, `/metrics`, `/performance`, `/errors`. What they
//! show is the gateway's own: key ids, configured names, code words; never a secret, a message
//! or a path a client sent.

use http::Response;
use serde_json::json;

use super::{AdminApp, json_response};

impl AdminApp {
    pub(super) fn health(&self) -> Response<Vec<u8>> {
        json_response(200, &self.health_value())
    }

    fn health_value(&self) -> serde_json::Value {
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
            // Where Redis is and what went wrong with it is for operators (`/api/cluster`).
            "cluster": self.shared.cluster.as_ref().map(|c| json!({
                "degraded": c.link.degraded(),
                "redis_errors": c.link.errors(),
                "instances": c.link.instances(),
            })),
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

    /// `GET /api/cluster`: the live instances as their heartbeats describe them, so an operator
    /// sees drift (versions, config hashes) between them.
    pub(super) async fn cluster(&self) -> Response<Vec<u8>> {
        let Some(c) = &self.shared.cluster else {
            return json_response(200, &json!({"cluster": false, "instances": []}));
        };
        match crate::cluster::heartbeat::instances(&c.link).await {
            Ok(list) => {
                let hashes: std::collections::BTreeSet<&str> = list
                    .iter()
                    .filter_map(|i| i["settings_sha256"].as_str())
                    .collect();
                let secrets: std::collections::BTreeSet<Option<&str>> = list
                    .iter()
                    .map(|i| i["secret_fingerprint"].as_str())
                    .collect();
                json_response(
                    200,
                    &json!({
                        "cluster": true,
                        // Instances that seal added keys with different secrets (or none).
                        "secret_drift": secrets.len() > 1,
                        "this_instance": c.link.instance_id,
                        "redis": c.link.address,
                        "degraded": c.link.degraded(),
                        "redis_errors": c.link.errors(),
                        "last_error": c.link.last_error(),
                        "config_drift": hashes.len() > 1,
                        "instances": list,
                    }),
                )
            }
            Err(e) => super::error(503, format!("the cluster's Redis does not answer: {e}")),
        }
    }

    pub(super) fn metrics(&self) -> Response<Vec<u8>> {
        if let Some(c) = &self.shared.cluster {
            let m = &self.shared.metrics;
            m.cluster_degraded.set(i64::from(c.link.degraded()));
            m.cluster_redis_errors.set(c.link.errors() as i64);
            m.cluster_instances.set(i64::from(c.link.instances()));
            m.cluster_dropped.set(c.limits.dropped() as i64);
            let (redis, grant) = c.limits.admissions();
            m.cluster_admissions
                .with_label_values(&["redis"])
                .set(redis as i64);
            m.cluster_admissions
                .with_label_values(&["grant"])
                .set(grant as i64);
        }
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

    pub(super) fn performance(&self) -> Response<Vec<u8>> {
        self.shared
            .report_anomalies(self.shared.anomalies.tick(crate::anomaly::now_ms()));
        let mut v = self.shared.stats.performance();
        v["anomalies"] = self.shared.anomalies.report();
        json_response(200, &v)
    }

    pub(super) fn errors(&self) -> Response<Vec<u8>> {
        json_response(200, &self.shared.stats.errors())
    }
}
