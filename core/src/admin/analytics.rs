//! `POST /api/sql` (read-only SQL over the audit database), `GET /api/sql/schema`,
//! `POST /api/export` (Parquet by day).

use std::sync::Arc;

use http::Response;
use serde_json::json;

use super::{AdminApp, error, json_response};
use crate::audit::AuditSink;
use crate::audit::db::{DbError, QueryLimits};

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

fn auditing_off() -> Response<Vec<u8>> {
    error(404, "auditing is off (audit.enabled: false)")
}

fn db_error(e: DbError) -> Response<Vec<u8>> {
    match e {
        DbError::Timeout(_) => error(504, e),
        DbError::Open { .. } => error(500, e),
        _ => error(400, e),
    }
}

impl AdminApp {
    fn audit_sink(&self) -> Option<Arc<AuditSink>> {
        self.shared.audit.clone()
    }

    pub(super) async fn sql_schema(&self) -> Response<Vec<u8>> {
        let Some(audit) = self.audit_sink() else {
            return auditing_off();
        };
        let r = tokio::task::spawn_blocking(move || {
            audit.with_db(|c| {
                crate::audit::db::query(
                    c,
                    "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'main' ORDER BY table_name, ordinal_position",
                    QueryLimits { max_rows: 10_000, timeout: std::time::Duration::from_secs(10) },
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
                        && crate::audit::db::RELATIONS.contains(&t)
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

    pub(super) async fn sql(
        &self,
        body: &[u8],
        caller: Option<&str>,
        ip: Option<String>,
    ) -> Response<Vec<u8>> {
        let Some(audit) = self.audit_sink() else {
            return auditing_off();
        };
        let req: SqlRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return error(400, format!("bad SQL request: {e}")),
        };
        let csv = match req.format.as_deref() {
            None | Some("json") => false,
            Some("csv") => true,
            Some(other) => return error(400, format!("format `{other}` is not json or csv")),
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
            a2.with_db(|c| crate::audit::db::query(c, &sql, limits))
        })
        .await;
        let (result, resp) = match r {
            Ok(Ok(r)) if csv => {
                let body = crate::audit::db::to_csv(&r).into_bytes();
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
                let refused = matches!(e, DbError::Refused(_));
                (if refused { "Blocked" } else { "Failure" }, db_error(e))
            }
            Err(e) => ("Failure", error(500, format!("query task failed: {e}"))),
        };
        let by = caller.unwrap_or("(unauthenticated loopback)");
        self.shared.audit(crate::audit::admin_event(
            "sql query",
            result,
            ip,
            json!({"by": by, "sql": text}),
        ));
        resp
    }

    pub(super) async fn export(
        &self,
        body: &[u8],
        caller: Option<&str>,
        ip: Option<String>,
    ) -> Response<Vec<u8>> {
        let Some(audit) = self.audit_sink() else {
            return auditing_off();
        };
        let req: ExportRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return error(400, format!("bad export request: {e}")),
        };
        let Some(since) = crate::util::clock::parse_date(&req.since) else {
            return error(
                400,
                format!("since `{}` is not a date (YYYY-MM-DD)", req.since),
            );
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
            return error(400, "out must be a relative folder inside audit.export_dir");
        }
        let out = audit.export_dir.join(relp);
        let a2 = audit.clone();
        let r = tokio::task::spawn_blocking(move || {
            a2.flush();
            a2.with_db(|c| crate::audit::db::export(c, since, &out))
        })
        .await;
        let (result, resp) = match r {
            Ok(Ok(rep)) => ("Success", json_response(200, &json!(rep))),
            Ok(Err(e)) => ("Failure", db_error(e)),
            Err(e) => ("Failure", error(500, format!("export task failed: {e}"))),
        };
        let by = caller.unwrap_or("(unauthenticated loopback)");
        self.shared.audit(crate::audit::admin_event(
            "export",
            result,
            ip,
            json!({"by": by, "since": req.since, "out": rel}),
        ));
        resp
    }
}
