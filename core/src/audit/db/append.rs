//! Batched appends of audit events, through DuckDB's Appender and Arrow batches.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use duckdb::Connection;
use duckdb::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, StringBuilder,
    TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::types::{TimeUnit, Value as DValue};
use serde_json::Value;

use super::DbError;
use crate::audit::{AuditEvent, CallAudit, GenericEvent};
use crate::util::clock;

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn days_of(t: SystemTime) -> (i32, i32) {
    let secs = micros(t).div_euclid(1_000_000);
    (
        secs.div_euclid(86_400) as i32,
        clock::pacific_day(secs) as i32,
    )
}

fn parse_ts(s: &str) -> SystemTime {
    // `2026-11-26T21:53:56.123Z`: whole seconds from the clock parser, then the milliseconds.
    let (head, ms) = match s.rsplit_once('.') {
        Some((h, rest)) => (
            format!("{h}Z"),
            rest.trim_end_matches('Z').parse::<u64>().unwrap_or(0),
        ),
        None => (s.to_string(), 0),
    };
    clock::parse_rfc3339(&head).unwrap_or(UNIX_EPOCH) + Duration::from_millis(ms)
}

/// Appends events in batches; [`Appenders::flush`] commits them (the writer calls it every
/// `flush_interval`, so a crash loses at most that much).
pub struct Appenders<'c> {
    conn: &'c Connection,
    requests: duckdb::Appender<'c>,
    /// `requests` rows not yet handed to DuckDB: one Arrow batch per flush (or per
    /// `BATCH_ROWS`) costs a fraction of 35 value appends per row.
    batch: RequestBatch,
    tags: duckdb::Appender<'c>,
    config: duckdb::Appender<'c>,
    security: duckdb::Appender<'c>,
    pending: usize,
    instance: crate::audit::InstanceName,
}

impl<'c> Appenders<'c> {
    pub fn new(conn: &'c Connection) -> Result<Appenders<'c>, DbError> {
        Ok(Appenders {
            conn,
            requests: conn.appender("requests")?,
            batch: RequestBatch::default(),
            tags: conn.appender("request_tags")?,
            config: conn.appender("config_changes")?,
            security: conn.appender("security_events")?,
            pending: 0,
            instance: Default::default(),
        })
    }

    /// Rows carry this instance's name (once it is set).
    pub fn with_instance(mut self, instance: crate::audit::InstanceName) -> Self {
        self.instance = instance;
        self
    }

    pub fn append(&mut self, e: &AuditEvent) -> Result<(), DbError> {
        match e {
            AuditEvent::Call(c) => self.append_call(c)?,
            AuditEvent::Other(g) => self.append_other(g)?,
        }
        self.pending += 1;
        Ok(())
    }

    fn append_call(&mut self, c: &CallAudit) -> Result<(), DbError> {
        let (day, quota_day) = days_of(c.at);
        let (method, path) = c.action.split_once(' ').unwrap_or(("", &c.action));
        let overhead = c
            .upstream_ms
            .map(|u| ((c.duration_ms - u).max(0.0) * 1e3).round() / 1e3);
        self.batch.push(c, day, quota_day, method, path, overhead);
        let instance = self.instance.clone();
        let instance = instance.get().map(String::as_str);
        self.batch.instance_id.append_option(instance);
        if self.batch.len() >= BATCH_ROWS {
            self.append_batch()?;
        }
        for (tag, value) in &c.tags {
            self.tags.append_row(duckdb::params![
                DValue::Timestamp(TimeUnit::Microsecond, micros(c.at)),
                DValue::Date32(day),
                c.request_id.as_str(),
                tag.as_str(),
                value.as_str(),
                instance,
            ])?;
        }
        Ok(())
    }

    fn append_other(&mut self, g: &GenericEvent) -> Result<(), DbError> {
        let at = parse_ts(&g.timestamp);
        let (day, _) = days_of(at);
        let ts = DValue::Timestamp(TimeUnit::Microsecond, micros(at));
        let detail = serde_json::to_string(&g.fields).unwrap_or_default();
        let instance = self.instance.get().map(String::as_str);
        if g.event_type == "ConfigChange" {
            let summary = g
                .fields
                .get("changed")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let source = g.action.strip_prefix("config ").unwrap_or(&g.action);
            self.config.append_row(duckdb::params![
                ts,
                DValue::Date32(day),
                g.fields
                    .get("version")
                    .and_then(Value::as_u64)
                    .map(|v| v as u32),
                g.fields.get("by").and_then(Value::as_str),
                source,
                g.fields.get("sha256").and_then(Value::as_str),
                summary,
                detail,
                instance,
            ])?;
        } else {
            self.security.append_row(duckdb::params![
                ts,
                DValue::Date32(day),
                g.event_type,
                g.action.as_str(),
                g.result,
                g.source_ip.as_deref(),
                detail,
                instance,
            ])?;
        }
        Ok(())
    }

    fn append_batch(&mut self) -> Result<(), DbError> {
        if self.batch.len() == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch).finish()?;
        self.requests.append_record_batch(batch)?;
        Ok(())
    }

    /// Commits what was appended. Returns the rows committed.
    pub fn flush(&mut self) -> Result<usize, DbError> {
        if self.pending == 0 {
            return Ok(0);
        }
        let n = self.pending;
        self.pending = 0;
        self.append_batch()?;
        self.requests.flush()?;
        self.tags.flush()?;
        self.config.flush()?;
        self.security.flush()?;
        Ok(n)
    }

    /// Replaces the configured limits the quota view compares against.
    pub fn set_limits(&mut self, rows: &[LimitRow]) -> Result<(), DbError> {
        self.flush()?;
        self.conn
            .execute_batch("BEGIN TRANSACTION; DELETE FROM key_limits;")?;
        let r = (|| -> Result<(), DbError> {
            let mut st = self
                .conn
                .prepare("INSERT INTO key_limits VALUES (?, ?, ?, ?, ?)")?;
            for l in rows {
                st.execute(duckdb::params![l.project, l.model, l.rpm, l.tpm, l.rpd])?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(self.conn.execute_batch("COMMIT")?),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Drops days older than `days` (by UTC day) from every table. DuckDB marks the rows
    /// deleted; nothing else is rewritten. Returns the rows dropped.
    pub fn apply_retention(&mut self, days: u32, now: SystemTime) -> Result<usize, DbError> {
        if days == 0 {
            return Ok(0);
        }
        self.flush()?;
        let cutoff = days_of(now).0 - days as i32 + 1;
        let mut n = 0;
        for t in [
            "requests",
            "request_tags",
            "config_changes",
            "security_events",
        ] {
            n += self.conn.execute(
                &format!("DELETE FROM {t} WHERE day < ?"),
                [DValue::Date32(cutoff)],
            )?;
        }
        if n > 0 {
            self.conn.execute_batch("CHECKPOINT")?;
        }
        Ok(n)
    }
}

/// One configured limit (the largest any key of the project states), for the quota view.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRow {
    pub project: String,
    /// A model name or `*` (the key's defaults).
    pub model: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub rpd: Option<u64>,
}

/// The limit rows of a config.
pub fn limit_rows(keys: &[crate::config::ApiKeyConfig]) -> Vec<LimitRow> {
    let mut out: std::collections::BTreeMap<(String, String), LimitRow> = Default::default();
    let max = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    for k in keys {
        let Some(l) = &k.limits else { continue };
        let project = k.project.clone().unwrap_or_else(|| k.id.clone());
        let mut put = |model: &str, rpm, tpm, rpd| {
            let e = out
                .entry((project.clone(), model.to_string()))
                .or_insert_with(|| LimitRow {
                    project: project.clone(),
                    model: model.to_string(),
                    rpm: None,
                    tpm: None,
                    rpd: None,
                });
            e.rpm = max(e.rpm, rpm);
            e.tpm = max(e.tpm, tpm);
            e.rpd = max(e.rpd, rpd);
        };
        if l.rpm.is_some() || l.tpm.is_some() || l.rpd.is_some() {
            put("*", l.rpm, l.tpm, l.rpd);
        }
        for (model, m) in &l.models {
            let eff = l.for_model(Some(model));
            let _ = m;
            put(model, eff.rpm, eff.tpm, eff.rpd);
        }
    }
    out.into_values().collect()
}

// ---------------------------------------------------------------- analyst SQL

/// Rows per Arrow batch (DuckDB's vector size).
const BATCH_ROWS: usize = 2048;

/// Column builders for the `requests` table, in its column order.
#[derive(Default)]
struct RequestBatch {
    rows: usize,
    ts: TimestampMicrosecondBuilder,
    day: Date32Builder,
    quota_day: Date32Builder,
    request_id: StringBuilder,
    user_id: StringBuilder,
    role: StringBuilder,
    client_ip: StringBuilder,
    method: StringBuilder,
    path: StringBuilder,
    api: StringBuilder,
    model: StringBuilder,
    stream: BooleanBuilder,
    key_id: StringBuilder,
    project: StringBuilder,
    status: UInt16Builder,
    upstream_status: UInt16Builder,
    error_class: StringBuilder,
    quota_id: StringBuilder,
    attempts: UInt32Builder,
    retries: UInt32Builder,
    rotations: UInt32Builder,
    upstream_429s: UInt32Builder,
    latency_ms: Float64Builder,
    upstream_ms: Float64Builder,
    ttfb_ms: Float64Builder,
    overhead_ms: Float64Builder,
    prompt_tokens: UInt64Builder,
    candidates_tokens: UInt64Builder,
    thoughts_tokens: UInt64Builder,
    cached_tokens: UInt64Builder,
    total_tokens: UInt64Builder,
    request_bytes: UInt64Builder,
    response_bytes: UInt64Builder,
    risk_score: UInt8Builder,
    truncated: BooleanBuilder,
    /// Appended by the caller, after `push`.
    instance_id: StringBuilder,
}

impl RequestBatch {
    fn len(&self) -> usize {
        self.rows
    }

    fn push(
        &mut self,
        c: &CallAudit,
        day: i32,
        quota_day: i32,
        method: &str,
        path: &str,
        overhead: Option<f64>,
    ) {
        self.rows += 1;
        self.ts.append_value(micros(c.at));
        self.day.append_value(day);
        self.quota_day.append_value(quota_day);
        self.request_id.append_value(&c.request_id);
        self.user_id.append_option(c.user.as_deref());
        self.role.append_option(c.role);
        self.client_ip
            .append_option(c.source_ip.map(|ip| ip.to_string()));
        self.method.append_value(method);
        self.path.append_value(path);
        self.api.append_value(c.api);
        self.model.append_option(c.model.as_deref());
        self.stream.append_value(c.stream);
        self.key_id.append_option(c.key_id.as_deref());
        self.project.append_option(c.project.as_deref());
        self.status.append_value(c.status);
        self.upstream_status.append_value(c.upstream_status);
        self.error_class.append_option(c.error_class.as_deref());
        self.quota_id.append_option(c.quota_id.as_deref());
        self.attempts.append_value(c.attempts);
        self.retries.append_value(c.retries);
        self.rotations.append_value(c.rotations);
        self.upstream_429s.append_value(c.upstream_429s);
        self.latency_ms.append_value(c.duration_ms);
        self.upstream_ms.append_option(c.upstream_ms);
        self.ttfb_ms.append_option(c.ttfb_ms);
        self.overhead_ms.append_option(overhead);
        self.prompt_tokens.append_value(c.prompt_tokens);
        self.candidates_tokens.append_value(c.candidates_tokens);
        self.thoughts_tokens.append_value(c.thoughts_tokens);
        self.cached_tokens.append_value(c.cached_tokens);
        self.total_tokens.append_value(c.total_tokens);
        self.request_bytes.append_value(c.request_bytes);
        self.response_bytes.append_value(c.response_bytes);
        self.risk_score.append_option(c.risk_score);
        self.truncated.append_value(c.truncated);
    }

    fn finish(mut self) -> Result<RecordBatch, DbError> {
        use std::sync::Arc as A;
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("ts", A::new(self.ts.finish())),
            ("day", A::new(self.day.finish())),
            ("quota_day", A::new(self.quota_day.finish())),
            ("request_id", A::new(self.request_id.finish())),
            ("user_id", A::new(self.user_id.finish())),
            ("role", A::new(self.role.finish())),
            ("client_ip", A::new(self.client_ip.finish())),
            ("method", A::new(self.method.finish())),
            ("path", A::new(self.path.finish())),
            ("api", A::new(self.api.finish())),
            ("model", A::new(self.model.finish())),
            ("stream", A::new(self.stream.finish())),
            ("key_id", A::new(self.key_id.finish())),
            ("project", A::new(self.project.finish())),
            ("status", A::new(self.status.finish())),
            ("upstream_status", A::new(self.upstream_status.finish())),
            ("error_class", A::new(self.error_class.finish())),
            ("quota_id", A::new(self.quota_id.finish())),
            ("attempts", A::new(self.attempts.finish())),
            ("retries", A::new(self.retries.finish())),
            ("rotations", A::new(self.rotations.finish())),
            ("upstream_429s", A::new(self.upstream_429s.finish())),
            ("latency_ms", A::new(self.latency_ms.finish())),
            ("upstream_ms", A::new(self.upstream_ms.finish())),
            ("ttfb_ms", A::new(self.ttfb_ms.finish())),
            ("overhead_ms", A::new(self.overhead_ms.finish())),
            ("prompt_tokens", A::new(self.prompt_tokens.finish())),
            ("candidates_tokens", A::new(self.candidates_tokens.finish())),
            ("thoughts_tokens", A::new(self.thoughts_tokens.finish())),
            ("cached_tokens", A::new(self.cached_tokens.finish())),
            ("total_tokens", A::new(self.total_tokens.finish())),
            ("request_bytes", A::new(self.request_bytes.finish())),
            ("response_bytes", A::new(self.response_bytes.finish())),
            ("risk_score", A::new(self.risk_score.finish())),
            ("truncated", A::new(self.truncated.finish())),
            ("instance_id", A::new(self.instance_id.finish())),
        ];
        RecordBatch::try_from_iter(cols).map_err(|e| DbError::Refused(format!("audit batch: {e}")))
    }
}
