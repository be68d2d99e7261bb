//! The DuckDB side of the audit trail: schema, analyst views, batched appends (fed by the audit
//! writer thread), read-only SQL for analysts, Parquet export by day and retention.
//!
//! Safety of analyst SQL rests on four layers: a lexical check (one statement, a read-only
//! first keyword, no write/system keyword outside literals), a transaction that is always rolled
//! back, `enable_external_access = false` on the instance (no file functions, `ATTACH`, `COPY`
//! outside the export folder, `INSTALL`/`LOAD`) with `lock_configuration`, and limits on rows
//! and time (the query is interrupted at its deadline).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duckdb::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, StringBuilder,
    TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::types::{TimeUnit, Value as DValue, ValueRef};
use duckdb::{AccessMode, Config, Connection};
use serde_json::{Value, json};

use crate::audit::{AuditEvent, CallAudit, GenericEvent};
use crate::pool::clock;

/// Version of the tables below; stored in `audit_meta`.
pub const SCHEMA_VERSION: i64 = 1;

/// The tables and views, as one script (the SQL guard's private copy is built from it).
pub static SCHEMA_AND_VIEWS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SCHEMA}\n{VIEWS}"));

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS requests (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    quota_day DATE NOT NULL,
    request_id VARCHAR NOT NULL,
    user_id VARCHAR,
    role VARCHAR,
    client_ip VARCHAR,
    method VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    api VARCHAR NOT NULL,
    model VARCHAR,
    stream BOOLEAN NOT NULL,
    key_id VARCHAR,
    project VARCHAR,
    status USMALLINT NOT NULL,
    upstream_status USMALLINT NOT NULL,
    error_class VARCHAR,
    quota_id VARCHAR,
    attempts UINTEGER NOT NULL,
    retries UINTEGER NOT NULL,
    rotations UINTEGER NOT NULL,
    upstream_429s UINTEGER NOT NULL,
    latency_ms DOUBLE NOT NULL,
    upstream_ms DOUBLE,
    ttfb_ms DOUBLE,
    overhead_ms DOUBLE,
    prompt_tokens UBIGINT NOT NULL,
    candidates_tokens UBIGINT NOT NULL,
    thoughts_tokens UBIGINT NOT NULL,
    cached_tokens UBIGINT NOT NULL,
    total_tokens UBIGINT NOT NULL,
    request_bytes UBIGINT NOT NULL,
    response_bytes UBIGINT NOT NULL,
    risk_score UTINYINT,
    truncated BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS request_tags (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    request_id VARCHAR NOT NULL,
    tag VARCHAR NOT NULL,
    value VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS config_changes (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    version UINTEGER,
    changed_by VARCHAR,
    source VARCHAR,
    sha256 VARCHAR,
    summary VARCHAR,
    detail VARCHAR
);
CREATE TABLE IF NOT EXISTS security_events (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    event_type VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    result VARCHAR NOT NULL,
    source_ip VARCHAR,
    detail VARCHAR
);
CREATE TABLE IF NOT EXISTS key_limits (
    project VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    rpm UBIGINT,
    tpm UBIGINT,
    rpd UBIGINT
);
"#;

/// The analysts' ready views (recreated at every start, so a new release can change them).
const VIEWS: &str = r#"
CREATE OR REPLACE VIEW usage_by_user_model_day AS
SELECT day, coalesce(user_id, '(anonymous)') AS user_id, coalesce(model, '(none)') AS model,
       count(*) AS requests,
       count(*) FILTER (WHERE status >= 400 OR error_class IS NOT NULL) AS failed,
       sum(prompt_tokens) AS prompt_tokens, sum(candidates_tokens) AS candidates_tokens,
       sum(thoughts_tokens) AS thoughts_tokens, sum(cached_tokens) AS cached_tokens,
       sum(total_tokens) AS total_tokens
FROM requests GROUP BY ALL;

CREATE OR REPLACE VIEW quota_usage_by_project_day AS
WITH u AS (
    SELECT quota_day, project, coalesce(model, '(none)') AS model,
           count(*) AS requests, sum(attempts) AS attempts, sum(total_tokens) AS total_tokens,
           sum(upstream_429s) AS upstream_429s
    FROM requests WHERE project IS NOT NULL GROUP BY ALL
)
SELECT u.quota_day, u.project, u.model, u.requests, u.attempts, u.total_tokens, u.upstream_429s,
       coalesce(m.rpd, d.rpd) AS rpd_limit, coalesce(m.rpm, d.rpm) AS rpm_limit,
       coalesce(m.tpm, d.tpm) AS tpm_limit,
       round(100.0 * u.attempts / nullif(coalesce(m.rpd, d.rpd), 0), 1) AS rpd_used_pct
FROM u
LEFT JOIN key_limits m ON m.project = u.project AND m.model = u.model
LEFT JOIN key_limits d ON d.project = u.project AND d.model = '*';

CREATE OR REPLACE VIEW rate_limits_by_quota AS
SELECT day, project, coalesce(model, '(none)') AS model, quota_id,
       count(*) AS calls, sum(upstream_429s) AS upstream_429s,
       count(*) FILTER (WHERE status = 429) AS client_429s
FROM requests WHERE upstream_429s > 0 OR status = 429 GROUP BY ALL;

CREATE OR REPLACE VIEW latency_by_key_model AS
SELECT day, key_id, coalesce(model, '(none)') AS model, count(*) AS requests,
       round(quantile_cont(latency_ms, 0.5), 3) AS p50_ms,
       round(quantile_cont(latency_ms, 0.95), 3) AS p95_ms,
       round(quantile_cont(ttfb_ms, 0.5), 3) AS ttfb_p50_ms,
       round(quantile_cont(ttfb_ms, 0.95), 3) AS ttfb_p95_ms,
       round(quantile_cont(overhead_ms, 0.5), 3) AS overhead_p50_ms
FROM requests WHERE key_id IS NOT NULL GROUP BY ALL;

CREATE OR REPLACE VIEW error_rates AS
SELECT day, key_id, coalesce(model, '(none)') AS model, count(*) AS requests,
       count(*) FILTER (WHERE status >= 400 OR error_class IS NOT NULL) AS errors,
       round(count(*) FILTER (WHERE status >= 400 OR error_class IS NOT NULL) / count(*), 4)
           AS error_rate,
       count(*) FILTER (WHERE status = 429) AS rate_limited,
       count(*) FILTER (WHERE status >= 500) AS server_errors,
       count(*) FILTER (WHERE truncated) AS truncated
FROM requests GROUP BY ALL;

CREATE OR REPLACE VIEW top_users AS
SELECT coalesce(user_id, '(anonymous)') AS user_id, count(*) AS requests,
       sum(total_tokens) AS total_tokens, min(ts) AS first_seen, max(ts) AS last_seen,
       count(*) FILTER (WHERE status >= 400) AS failed
FROM requests GROUP BY ALL ORDER BY total_tokens DESC, requests DESC;
"#;

/// Names analysts can rely on (tables and views), in `GET /api/sql/schema` and the README.
pub const RELATIONS: &[&str] = &[
    "requests",
    "request_tags",
    "config_changes",
    "security_events",
    "key_limits",
    "usage_by_user_model_day",
    "quota_usage_by_project_day",
    "rate_limits_by_quota",
    "latency_by_key_model",
    "error_rates",
    "top_users",
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("audit database {path}: {message}")]
    Open { path: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("query stopped after {0} ms (audit.sql_timeout)")]
    Timeout(u64),
    #[error("{0}")]
    Sql(String),
}

impl From<duckdb::Error> for DbError {
    fn from(e: duckdb::Error) -> Self {
        DbError::Sql(e.to_string())
    }
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub path: PathBuf,
    pub threads: u32,
    pub memory_limit: String,
    /// The one folder `COPY ... TO` may write to (the export folder); `None` = no file access.
    pub export_dir: Option<PathBuf>,
    pub read_only: bool,
    /// Refuse file access and lock the configuration (always, except for the offline export).
    pub lock_down: bool,
}

fn quote_sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Opens (creating if needed) the audit database, with the schema and views in place.
/// True when `open` failed because another process holds the file (DuckDB admits one writer
/// process per database).
pub fn is_lock_conflict(e: &DbError) -> bool {
    let m = e.to_string();
    m.contains("Could not set lock") || m.contains("Conflicting lock")
}

pub fn open(o: &DbOptions) -> Result<Connection, DbError> {
    let err = |m: String| DbError::Open {
        path: o.path.display().to_string(),
        message: m,
    };
    if o.read_only && !o.path.exists() {
        return Err(err(
            "no such file (the gateway creates it on first start)".into()
        ));
    }
    if !o.read_only
        && let Some(dir) = o.path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        // 0700: DuckDB creates its WAL with the process umask; the folder keeps it private.
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(|e| err(e.to_string()))?;
    }
    let cfg = Config::default()
        .access_mode(if o.read_only {
            AccessMode::ReadOnly
        } else {
            AccessMode::ReadWrite
        })
        .and_then(|c| c.threads(i64::from(o.threads.max(1))))
        .and_then(|c| c.max_memory(&o.memory_limit))
        .and_then(|c| c.enable_autoload_extension(false))
        .map_err(|e| err(e.to_string()))?;
    let conn = Connection::open_with_flags(&o.path, cfg).map_err(|e| {
        let m = e.to_string();
        if m.contains("lock") {
            err(format!(
                "{m} (the gateway holds it while running: query through its admin API)"
            ))
        } else {
            err(m)
        }
    })?;
    #[cfg(unix)]
    if !o.read_only {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&o.path, std::fs::Permissions::from_mode(0o600));
    }
    if !o.read_only {
        conn.execute_batch(SCHEMA).map_err(|e| err(e.to_string()))?;
        conn.execute_batch(VIEWS).map_err(|e| err(e.to_string()))?;
        conn.execute(
            "INSERT OR REPLACE INTO audit_meta VALUES ('schema_version', ?)",
            [SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| err(e.to_string()))?;
    }
    if o.lock_down {
        let mut sql = String::new();
        if let Some(dir) = &o.export_dir {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let abs = std::fs::canonicalize(dir).map_err(|e| err(e.to_string()))?;
            sql.push_str(&format!(
                "SET allowed_directories = [{}];",
                quote_sql_string(&format!("{}/", abs.display()))
            ));
        }
        sql.push_str("SET enable_external_access = false; SET lock_configuration = true;");
        conn.execute_batch(&sql).map_err(|e| err(e.to_string()))?;
    }
    Ok(conn)
}

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
        })
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
            ])?;
        }
        Ok(())
    }

    fn append_other(&mut self, g: &GenericEvent) -> Result<(), DbError> {
        let at = parse_ts(&g.timestamp);
        let (day, _) = days_of(at);
        let ts = DValue::Timestamp(TimeUnit::Microsecond, micros(at));
        let detail = serde_json::to_string(&g.fields).unwrap_or_default();
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

/// Bounds of one analyst query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_rows: usize,
    pub timeout: Duration,
}

/// A query's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// More rows existed than `max_rows`.
    pub truncated: bool,
    pub elapsed_ms: f64,
}

/// Runs one read-only query (checked by [`crate::sql_guard`]) within limits, in a read-only
/// transaction that is rolled back.
pub fn query(conn: &Connection, sql: &str, limits: QueryLimits) -> Result<QueryResult, DbError> {
    crate::sql_guard::check(sql)?;
    let started = Instant::now();
    // The watchdog interrupts the query at its deadline; dropping `stop` ends it early.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = conn.interrupt_handle();
    let timeout = limits.timeout;
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
            handle.interrupt();
            true
        } else {
            false
        }
    });
    let in_tx = conn.is_autocommit();
    if in_tx {
        conn.execute_batch("BEGIN TRANSACTION READ ONLY")?;
    }
    let result = run_rows(conn, sql, limits.max_rows);
    if in_tx {
        let _ = conn.execute_batch("ROLLBACK");
    }
    drop(stop);
    let timed_out = watchdog.join().unwrap_or(false);
    match result {
        Ok((columns, rows, truncated)) => Ok(QueryResult {
            columns,
            rows,
            truncated,
            elapsed_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        }),
        Err(_) if timed_out => Err(DbError::Timeout(limits.timeout.as_millis() as u64)),
        Err(e) => Err(e),
    }
}

type Rows = (Vec<String>, Vec<Vec<Value>>, bool);

fn run_rows(conn: &Connection, sql: &str, max_rows: usize) -> Result<Rows, DbError> {
    let mut st = conn.prepare(sql)?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    let mut truncated = false;
    let mut columns: Option<Vec<String>> = None;
    while let Some(row) = rows.next()? {
        let st = row.as_ref();
        let n = st.column_count();
        if columns.is_none() {
            columns = Some(st.column_names());
        }
        if out.len() == max_rows {
            truncated = true;
            break;
        }
        let mut r = Vec::with_capacity(n);
        for i in 0..n {
            r.push(to_json(row.get_ref(i)?));
        }
        out.push(r);
    }
    drop(rows);
    let columns = columns.unwrap_or_else(|| st.column_names());
    Ok((columns, out, truncated))
}

fn format_ts(unit: TimeUnit, v: i64) -> String {
    let micros = match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1_000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v / 1_000,
    };
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let day = clock::format_date(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{day} {:02}:{:02}:{:02}.{frac:06}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn to_json(v: ValueRef<'_>) -> Value {
    let f = |x: f64| {
        serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    };
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Boolean(b) => json!(b),
        ValueRef::TinyInt(i) => json!(i),
        ValueRef::SmallInt(i) => json!(i),
        ValueRef::Int(i) => json!(i),
        ValueRef::BigInt(i) => json!(i),
        ValueRef::UTinyInt(i) => json!(i),
        ValueRef::USmallInt(i) => json!(i),
        ValueRef::UInt(i) => json!(i),
        ValueRef::UBigInt(i) => json!(i),
        ValueRef::HugeInt(i) => match i64::try_from(i) {
            Ok(x) => json!(x),
            Err(_) => json!(i.to_string()),
        },
        ValueRef::UHugeInt(i) => match u64::try_from(i) {
            Ok(x) => json!(x),
            Err(_) => json!(i.to_string()),
        },
        ValueRef::Float(x) => f(f64::from(x)),
        ValueRef::Double(x) => f(x),
        ValueRef::Decimal(d) => {
            let s = d.to_string();
            s.parse::<f64>().map(f).unwrap_or(Value::String(s))
        }
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(hex::encode(b)),
        ValueRef::Date32(d) => Value::String(clock::format_date(i64::from(d))),
        ValueRef::Timestamp(u, v) => Value::String(format_ts(u, v)),
        other => owned_to_json(other.to_owned()),
    }
}

/// Nested and rarer types (lists, structs, maps, enums, intervals, times).
fn owned_to_json(v: DValue) -> Value {
    match v {
        DValue::List(items) | DValue::Array(items) => {
            Value::Array(items.into_iter().map(owned_to_json).collect())
        }
        DValue::Struct(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), owned_to_json(v.clone())))
                .collect(),
        ),
        DValue::Map(entries) => Value::Array(
            entries
                .iter()
                .map(|(k, v)| json!({"key": owned_to_json(k.clone()), "value": owned_to_json(v.clone())}))
                .collect(),
        ),
        DValue::Enum(s) | DValue::Text(s) => Value::String(s),
        DValue::Union(inner) => owned_to_json(*inner),
        DValue::Interval {
            months,
            days,
            nanos,
        } => json!({"months": months, "days": days, "micros": nanos / 1000}),
        DValue::Time64(unit, v) => {
            let micros = match unit {
                TimeUnit::Second => v.saturating_mul(1_000_000),
                TimeUnit::Millisecond => v.saturating_mul(1_000),
                TimeUnit::Microsecond => v,
                TimeUnit::Nanosecond => v / 1_000,
            };
            let s = micros / 1_000_000;
            Value::String(format!(
                "{:02}:{:02}:{:02}.{:06}",
                s / 3600,
                s / 60 % 60,
                s % 60,
                micros % 1_000_000
            ))
        }
        DValue::Null => Value::Null,
        DValue::Blob(b) | DValue::Geometry(b) => Value::String(hex::encode(b)),
        // Scalars `to_json` knows; anything else as its debug text (never recursing).
        other => match ValueRef::from(&other) {
            r @ (ValueRef::Boolean(_)
            | ValueRef::TinyInt(_)
            | ValueRef::SmallInt(_)
            | ValueRef::Int(_)
            | ValueRef::BigInt(_)
            | ValueRef::UTinyInt(_)
            | ValueRef::USmallInt(_)
            | ValueRef::UInt(_)
            | ValueRef::UBigInt(_)
            | ValueRef::HugeInt(_)
            | ValueRef::UHugeInt(_)
            | ValueRef::Float(_)
            | ValueRef::Double(_)
            | ValueRef::Decimal(_)
            | ValueRef::Date32(_)
            | ValueRef::Timestamp(..)) => to_json(r),
            _ => Value::String(format!("{other:?}")),
        },
    }
}

/// The answer as CSV (RFC 4180 quoting).
pub fn to_csv(r: &QueryResult) -> String {
    fn cell(out: &mut String, s: &str) {
        if s.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&s.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(s);
        }
    }
    let mut out = String::new();
    for (i, c) in r.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        cell(&mut out, c);
    }
    out.push('\n');
    for row in &r.rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match v {
                Value::Null => {}
                Value::String(s) => cell(&mut out, s),
                other => cell(&mut out, &other.to_string()),
            }
        }
        out.push('\n');
    }
    out
}

/// The answer as an aligned text table (the CLI's default).
pub fn to_table(r: &QueryResult) -> String {
    let text = |v: &Value| match v {
        Value::Null => "NULL".to_string(),
        Value::String(s) => s.replace(['\n', '\r'], " "),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| row.iter().map(text).collect())
        .collect();
    let mut widths: Vec<usize> = r.columns.iter().map(|c| c.chars().count()).collect();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |vals: &[String]| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&r.columns);
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out.push_str(&format!(
        "({} row{}{})\n",
        r.rows.len(),
        if r.rows.len() == 1 { "" } else { "s" },
        if r.truncated { ", truncated" } else { "" }
    ));
    out
}

// ---------------------------------------------------------------- export

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub out: String,
    /// Rows per table.
    pub rows: std::collections::BTreeMap<String, u64>,
    /// Day folders written.
    pub days: Vec<String>,
}

/// Writes every table's rows from `since` (UTC day) on as Parquet, one folder per table and
/// day (`out/requests/day=2026-11-26/data_0.parquet`); folders of other days are untouched
/// and a day's folder is replaced as a whole.
pub fn export(conn: &Connection, since: i64, out: &Path) -> Result<ExportReport, DbError> {
    std::fs::create_dir_all(out).map_err(|e| DbError::Sql(format!("{}: {e}", out.display())))?;
    let abs = std::fs::canonicalize(out).map_err(|e| DbError::Sql(e.to_string()))?;
    let since_v = DValue::Date32(since as i32);
    let mut rows = std::collections::BTreeMap::new();
    let mut days = std::collections::BTreeSet::new();
    for t in [
        "requests",
        "request_tags",
        "config_changes",
        "security_events",
    ] {
        let mut st = conn.prepare(&format!(
            "SELECT DISTINCT day FROM {t} WHERE day >= ? ORDER BY day"
        ))?;
        let ds: Vec<String> = st
            .query_map([since_v.clone()], |r| r.get::<_, DValue>(0))?
            .filter_map(Result::ok)
            .filter_map(|v| match v {
                DValue::Date32(d) => Some(clock::format_date(i64::from(d))),
                _ => None,
            })
            .collect();
        let mut n = 0u64;
        for d in &ds {
            let dir = abs.join(t).join(format!("day={d}"));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| DbError::Sql(e.to_string()))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| DbError::Sql(e.to_string()))?;
            let file = dir.join("data_0.parquet");
            let copied = conn.execute(
                &format!(
                    "COPY (SELECT * EXCLUDE (day) FROM {t} WHERE day = CAST(? AS DATE) ORDER BY ts) TO {} (FORMAT parquet, COMPRESSION zstd)",
                    quote_sql_string(&file.display().to_string())
                ),
                [d.as_str()],
            )?;
            n += copied as u64;
            days.insert(d.clone());
        }
        rows.insert(t.to_string(), n);
    }
    Ok(ExportReport {
        out: abs.display().to_string(),
        rows,
        days: days.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_check() {
        for ok in [
            "SELECT 1",
            "  -- comment\n select * from requests where path = 'DELETE x; DROP'",
            "WITH t AS (SELECT 1) SELECT * FROM t;",
            "from requests limit 3",
            "(SELECT 1)",
            "DESCRIBE requests",
            "SUMMARIZE requests",
            "SHOW TABLES",
            "EXPLAIN SELECT * FROM requests",
            "explain analyze select count(*) from requests",
            "VALUES (1), (2)",
            "select \"set\" from (select 1 as \"set\")",
            "SELECT E'it''s', $$dollar; DELETE$$",
        ] {
            assert!(
                crate::sql_guard::check(ok).is_ok(),
                "{ok}: {:?}",
                crate::sql_guard::check(ok)
            );
        }
        for bad in [
            "DELETE FROM requests",
            "insert into requests values (1)",
            "WITH x AS (SELECT 1) DELETE FROM requests",
            "SELECT 1; DROP TABLE requests",
            "SELECT 1; SELECT 2",
            "SELECT E'\\'' ; COMMIT ; DELETE FROM requests ; -- '",
            "SELECT $$x$$; DELETE FROM requests",
            "SELECT $t$;$t$; DELETE FROM requests",
            "EXPLAIN ANALYZE DELETE FROM requests",
            "EXPLAIN DELETE FROM requests",
            "ATTACH 'x.db'",
            "COPY requests TO 'x.csv'",
            "COPY (SELECT 1) TO 'x.csv'",
            "EXPORT DATABASE 'x'",
            "INSTALL httpfs",
            "LOAD httpfs",
            "PRAGMA version",
            "/* x */ pragma database_list",
            "PRAGMA threads = 8",
            "PRAGMA enable_profiling",
            "SET threads = 8",
            "RESET threads",
            "CALL checkpoint()",
            "CHECKPOINT",
            "BEGIN",
            "COMMIT",
            "CREATE TABLE t (a INT)",
            "CREATE MACRO m(a) AS a",
            "UPDATE requests SET status = 0",
            "SELECT 'unterminated",
            "SELECT * FROM read_text('/etc/passwd')",
            "SELECT * FROM nosuch_table",
            "",
            "  -- only a comment",
            "SELECT 1\0; DELETE FROM requests",
        ] {
            assert!(crate::sql_guard::check(bad).is_err(), "{bad}");
        }
    }

    /// The attacks run against a real audit database change nothing in it, and write no file.
    #[test]
    fn attacks_through_query_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let exports = dir.path().join("exports");
        let opts = DbOptions {
            path: dir.path().join("audit.duckdb"),
            threads: 1,
            memory_limit: "256MB".into(),
            export_dir: Some(exports.clone()),
            read_only: false,
            lock_down: true,
        };
        let conn = open(&opts).unwrap();
        {
            let mut app = Appenders::new(&conn).unwrap();
            for i in 0..3 {
                app.append(&call_at("2026-11-20", &format!("r{i}")))
                    .unwrap();
            }
            app.flush().unwrap();
        }
        let limits = QueryLimits {
            max_rows: 100,
            timeout: Duration::from_secs(5),
        };
        let count = |c: &Connection| {
            query(c, "SELECT count(*) FROM requests", limits)
                .unwrap()
                .rows[0][0]
                .clone()
        };
        assert_eq!(count(&conn), json!(3));
        let out = exports.join("stolen.csv").display().to_string();
        for attack in [
            "SELECT E'\\'' ; COMMIT ; DELETE FROM requests ; -- '".to_string(),
            "SELECT 1; COMMIT; DROP TABLE requests".to_string(),
            format!("SELECT 1; COMMIT; COPY requests TO '{out}'"),
            format!("COPY (SELECT * FROM requests) TO '{out}'"),
            "EXPLAIN ANALYZE DELETE FROM requests".to_string(),
            "WITH d AS (DELETE FROM requests RETURNING *) SELECT * FROM d".to_string(),
        ] {
            assert!(query(&conn, &attack, limits).is_err(), "{attack}");
            assert_eq!(count(&conn), json!(3), "{attack}");
        }
        assert!(!std::path::Path::new(&out).exists());
        // Random mutations of queries and attacks (the stable stand-in for a fuzzer on the
        // guard): whatever the guard lets through, the database and the export folder stay as
        // they were.
        let seeds = [
            "SELECT E'\\'' ; COMMIT ; DELETE FROM requests ; -- '".to_string(),
            "SELECT $$;$$; DELETE FROM requests".to_string(),
            format!("SELECT 1 /* ; */; COPY requests TO '{out}'"),
            "WITH t AS (SELECT * FROM requests) SELECT count(*) FROM t".to_string(),
            "EXPLAIN ANALYZE DELETE FROM requests".to_string(),
            "SELECT 'a'';DELETE FROM requests;--'".to_string(),
        ];
        const ALPHABET: &[u8] = b";'\"$E -/*\nDELETEFROMrequests()COMMIT";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..1500 {
            let mut q = seeds[i % seeds.len()].clone().into_bytes();
            for _ in 0..(next() % 5) {
                let r = next();
                let pos = (r as usize >> 8) % (q.len() + 1);
                match r % 3 {
                    0 => q.insert(pos, ALPHABET[(r >> 40) as usize % ALPHABET.len()]),
                    1 if pos < q.len() => {
                        q.remove(pos);
                    }
                    _ => {}
                }
            }
            let q = String::from_utf8_lossy(&q).into_owned();
            let _ = query(&conn, &q, limits);
            assert_eq!(count(&conn), json!(3), "{q}");
        }
        assert!(!std::path::Path::new(&out).exists());
        // Even a statement the guard let through could not write: the transaction is read-only.
        conn.execute_batch("BEGIN TRANSACTION READ ONLY").unwrap();
        assert!(conn.execute_batch("DELETE FROM requests").is_err());
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(count(&conn), json!(3));
    }

    fn call_at(day: &str, id: &str) -> AuditEvent {
        let at = clock::parse_rfc3339(&format!("{day}T10:00:00Z")).unwrap();
        AuditEvent::Call(Box::new(CallAudit {
            at,
            action: "POST /v1beta/models/m:generateContent".into(),
            duration_ms: 1.0,
            request_id: id.into(),
            model: Some("m".into()),
            key_id: Some("k".into()),
            project: Some("p".into()),
            status: 200,
            upstream_status: 200,
            attempts: 1,
            upstream_ms: Some(0.5),
            prompt_tokens: 1,
            candidates_tokens: 1,
            total_tokens: 2,
            request_bytes: 1,
            response_bytes: 1,
            tags: [("tenant".to_string(), "acme".to_string())].into(),
            ..Default::default()
        }))
    }

    #[test]
    fn retention_drops_old_days_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&DbOptions {
            path: dir.path().join("a.duckdb"),
            threads: 1,
            memory_limit: "128MB".into(),
            export_dir: None,
            read_only: false,
            lock_down: true,
        })
        .unwrap();
        let mut app = Appenders::new(&conn).unwrap();
        for (i, day) in [
            "2026-11-20",
            "2026-11-23",
            "2026-11-24",
            "2026-11-25",
            "2026-11-26",
        ]
        .iter()
        .enumerate()
        {
            app.append(&call_at(day, &format!("r{i}"))).unwrap();
        }
        app.flush().unwrap();
        let now = clock::parse_rfc3339("2026-11-26T12:00:00Z").unwrap();
        // Keep 3 days: the 24th, 25th and 26th.
        assert_eq!(
            app.apply_retention(3, now).unwrap(),
            4,
            "2 calls + their 2 tags"
        );
        assert_eq!(
            app.apply_retention(0, now).unwrap(),
            0,
            "0 keeps everything"
        );
        let ids: Vec<String> = conn
            .prepare("SELECT request_id FROM requests ORDER BY request_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids, ["r2", "r3", "r4"]);
        let tags: i64 = conn
            .query_row("SELECT count(*) FROM request_tags", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tags, 3);
        // Appending goes on after retention.
        app.append(&call_at("2026-11-26", "r5")).unwrap();
        assert_eq!(app.flush().unwrap(), 1);
    }

    #[test]
    fn csv_quotes() {
        let r = QueryResult {
            columns: vec!["a".into(), "b".into()],
            rows: vec![
                vec![json!("x,y"), json!(1)],
                vec![Value::Null, json!("q\"")],
            ],
            truncated: false,
            elapsed_ms: 0.0,
        };
        assert_eq!(to_csv(&r), "a,b\n\"x,y\",1\n,\"q\"\"\"\n");
    }
}

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
        ];
        RecordBatch::try_from_iter(cols).map_err(|e| DbError::Refused(format!("audit batch: {e}")))
    }
}
