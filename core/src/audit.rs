//! The audit trail: one record per proxied call, config change and security event, written as
//! JSON lines to `audit.log_path` (the product brief's shape) by a background thread fed through
//! one bounded channel. The proxy never waits on disk: a full queue drops (counted in
//! `audit_dropped_total`) or, with `on_full: block`, waits up to `block_timeout` first. The file
//! is flushed every `flush_interval` (so a crash loses at most that much) and at shutdown, and
//! rotated by size or UTC day. The same writer appends every event to the DuckDB database
//! (`audit.db_path`, see `audit_db`) with DuckDB's Appender and commits at the same interval.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{AuditConfig, AuditFull};

/// One line of the audit log: calls are typed (cheap to build on the hot path; serialized by
/// the writer thread), the rarer config changes and security events carry free fields.
#[derive(Debug, Clone)]
pub enum AuditEvent {
    Call(Box<CallAudit>),
    Other(Box<GenericEvent>),
}

impl AuditEvent {
    fn day(&self) -> String {
        match self {
            AuditEvent::Call(c) => rfc3339_ms(c.at)[..10].to_string(),
            AuditEvent::Other(g) => g.timestamp[..10].to_string(),
        }
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*t))
}

fn skip_zero(n: &u16) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// The `ApiCall` line, field for field.
#[derive(Debug, Clone, Serialize)]
pub struct CallAudit {
    #[serde(rename = "timestamp", serialize_with = "ser_time")]
    pub at: SystemTime,
    pub event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    pub action: String,
    pub result: &'static str,
    pub duration_ms: f64,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    pub api: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub status: u16,
    #[serde(skip_serializing_if = "skip_zero")]
    pub upstream_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub rotations: u32,
    /// Attempts Google answered with 429.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub upstream_429s: u32,
    /// The quota id of the last 429 (`GenerateRequestsPerMinutePerProjectPerModel` ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub candidates_tokens: u64,
    pub thoughts_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<u8>,
    pub truncated: bool,
    /// The call's tags (the `audit` stage and other plugins), capped.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Default for CallAudit {
    /// An empty successful native call at the epoch (for building records field by field).
    fn default() -> Self {
        CallAudit {
            at: SystemTime::UNIX_EPOCH,
            event_type: "ApiCall",
            source_ip: None,
            action: String::new(),
            result: "Success",
            duration_ms: 0.0,
            request_id: String::new(),
            user: None,
            role: None,
            api: "native",
            model: None,
            stream: false,
            key_id: None,
            project: None,
            status: 0,
            upstream_status: 0,
            error_class: None,
            attempts: 0,
            retries: 0,
            rotations: 0,
            upstream_429s: 0,
            quota_id: None,
            upstream_ms: None,
            ttfb_ms: None,
            prompt_tokens: 0,
            candidates_tokens: 0,
            thoughts_tokens: 0,
            cached_tokens: 0,
            total_tokens: 0,
            request_bytes: 0,
            response_bytes: 0,
            risk_score: None,
            truncated: false,
            tags: Default::default(),
        }
    }
}

/// Most tags recorded per call, and the longest tag name and value.
const MAX_TAGS: usize = 16;
const MAX_TAG_NAME: usize = 64;
const MAX_TAG_VALUE: usize = 256;

fn capped_tags(
    tags: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    use gemini_proxy_sdk::prefix_within;
    tags.iter()
        .take(MAX_TAGS)
        .map(|(k, v)| {
            (
                prefix_within(k, MAX_TAG_NAME).to_string(),
                prefix_within(v, MAX_TAG_VALUE).to_string(),
            )
        })
        .collect()
}

/// A config change or security event line.
#[derive(Debug, Clone, Serialize)]
pub struct GenericEvent {
    pub timestamp: String,
    /// `ApiCall`, `ConfigChange`, `SecurityEvent`.
    pub event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    pub action: String,
    /// `Success`, `Failure`, `Blocked`, `Applied` ...
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Everything else, flattened into the line.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

fn rfc3339_ms(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    let s = crate::pool::clock::format_rfc3339(t);
    format!("{}.{ms:03}Z", s.trim_end_matches('Z'))
}

fn now_rfc3339_ms() -> String {
    rfc3339_ms(SystemTime::now())
}

impl GenericEvent {
    pub fn new(event_type: &'static str, action: impl Into<String>, result: &'static str) -> Self {
        GenericEvent {
            timestamp: now_rfc3339_ms(),
            event_type,
            source_ip: None,
            action: action.into(),
            result,
            duration_ms: None,
            fields: serde_json::Map::new(),
        }
    }

    pub fn field(mut self, k: &str, v: impl Into<Value>) -> Self {
        let v = v.into();
        if !v.is_null() {
            self.fields.insert(k.to_string(), v);
        }
        self
    }
}

enum Msg {
    Event(AuditEvent),
    Flush(std::sync::mpsc::Sender<()>),
    Limits(Vec<crate::audit_db::LimitRow>),
}

/// The running audit writer.
pub struct AuditSink {
    tx: Mutex<Option<SyncSender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub dropped: AtomicU64,
    pub written: Arc<AtomicU64>,
    /// Events queued so far (with `written` and `dropped`: the queue depth).
    queued: AtomicU64,
    /// Events the database refused (they are still in the JSON-lines file).
    pub db_errors: Arc<AtomicU64>,
    on_full: AuditFull,
    block_timeout: Duration,
    /// A connection for analyst SQL and exports (a clone of the writer's database); empty
    /// while another process (the one being upgraded away) still holds the file.
    db: Arc<Mutex<Option<duckdb::Connection>>>,
    db_configured: bool,
    pub db_path: Option<PathBuf>,
    pub export_dir: PathBuf,
    pub sql_limits: crate::audit_db::QueryLimits,
}

struct Writer {
    path: PathBuf,
    rotate_bytes: u64,
    file: Option<std::io::BufWriter<std::fs::File>>,
    size: u64,
    day: String,
    /// Rotations so far: keeps names unique when several happen within one millisecond.
    rotations: u64,
    /// Reused line buffer.
    line: Vec<u8>,
}

impl Writer {
    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(&self.path)?;
        self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(std::io::BufWriter::with_capacity(256 * 1024, f));
        self.day = now_rfc3339_ms()[..10].to_string();
        Ok(())
    }

    fn rotate_if_due(&mut self, today: &str) -> std::io::Result<()> {
        if self.size < self.rotate_bytes && today == self.day {
            return Ok(());
        }
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        if self.size > 0 {
            let stamp = now_rfc3339_ms().replace(':', "-");
            self.rotations += 1;
            let rotated = self
                .path
                .with_extension(format!("log.{stamp}.{}", self.rotations));
            std::fs::rename(&self.path, rotated)?;
        }
        self.open()
    }

    fn write(&mut self, e: &AuditEvent) -> std::io::Result<()> {
        let today = e.day();
        if self.file.is_none() {
            self.open()?;
        }
        self.rotate_if_due(&today)?;
        self.line.clear();
        match e {
            AuditEvent::Call(c) => serde_json::to_writer(&mut self.line, c),
            AuditEvent::Other(g) => serde_json::to_writer(&mut self.line, g),
        }
        .map_err(std::io::Error::other)?;
        self.line.push(b'\n');
        if let Some(f) = self.file.as_mut() {
            f.write_all(&self.line)?;
        }
        self.size += self.line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut()
            && let Err(e) = f.flush()
        {
            tracing::warn!(error = %e, "audit log flush failed");
        }
    }
}

/// How often the writer looks for queued events. It polls rather than blocking on the channel
/// so that senders never have to wake it (a futex wake per call cost ~15 µs of CPU per call).
const POLL: Duration = Duration::from_millis(10);

/// How often retention runs (also once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// What the writer thread owns besides the JSON-lines file.
struct DbSide {
    conn: duckdb::Connection,
    retention_days: u32,
    errors: Arc<AtomicU64>,
}

/// The writer's side of the database: appenders, their recovery and retention.
struct DbWriter<'c> {
    side: &'c DbSide,
    appenders: Option<crate::audit_db::Appenders<'c>>,
    /// A failed append or commit invalidates DuckDB's appender (its buffered rows are lost and
    /// counted): a new one is made, at most once a second.
    broken_since: Option<std::time::Instant>,
    last_retention: Option<std::time::Instant>,
}

impl<'c> DbWriter<'c> {
    fn new(side: &'c DbSide) -> DbWriter<'c> {
        let mut d = DbWriter {
            side,
            appenders: None,
            broken_since: None,
            last_retention: None,
        };
        d.reopen();
        d
    }

    fn reopen(&mut self) {
        self.appenders = crate::audit_db::Appenders::new(&self.side.conn)
            .map_err(|e| tracing::error!(error = %e, "audit database: cannot append; JSON lines only until it recovers"))
            .ok();
        self.broken_since = self.appenders.is_none().then(std::time::Instant::now);
    }

    fn broke(&mut self, what: &str, e: crate::audit_db::DbError) {
        tracing::warn!(error = %e, "audit database {what} failed");
        self.side.errors.fetch_add(1, Ordering::Relaxed);
        self.appenders = None;
        self.broken_since = Some(std::time::Instant::now());
    }

    /// Re-creates broken appenders when due, and drops old days every `RETENTION_EVERY`.
    fn maintain(&mut self) {
        if self.appenders.is_none()
            && self
                .broken_since
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.reopen();
        }
        let days = self.side.retention_days;
        if days > 0
            && self
                .last_retention
                .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
            && let Some(a) = self.appenders.as_mut()
        {
            self.last_retention = Some(std::time::Instant::now());
            match a.apply_retention(days, SystemTime::now()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, days, "audit retention dropped old days"),
                Err(e) => tracing::warn!(error = %e, "audit retention failed"),
            }
        }
    }

    fn append(&mut self, e: &AuditEvent) {
        if let Some(a) = self.appenders.as_mut()
            && let Err(err) = a.append(e)
        {
            self.broke("append", err);
        }
    }

    fn commit(&mut self) {
        if let Some(a) = self.appenders.as_mut()
            && let Err(err) = a.flush()
        {
            self.broke("commit", err);
        }
    }

    fn set_limits(&mut self, rows: &[crate::audit_db::LimitRow]) {
        if let Some(a) = self.appenders.as_mut()
            && let Err(e) = a.set_limits(rows)
        {
            tracing::warn!(error = %e, "audit database: cannot store the configured limits");
        }
    }
}

/// Flushes the file and commits the database: after this, a crash loses nothing written.
fn flush_all(w: &mut Writer, db: &mut Option<DbWriter<'_>>) {
    w.flush();
    if let Some(d) = db.as_mut() {
        d.commit();
    }
}

/// The database as the writer starts with it.
enum DbInit {
    None,
    Open(DbSide),
    /// The file is locked by another process (a graceful upgrade: the old process drains and
    /// exits within its grace period): write JSON lines, keep the rows, retry.
    Locked {
        opts: crate::audit_db::DbOptions,
        retention_days: u32,
        errors: Arc<AtomicU64>,
        query: Arc<Mutex<Option<duckdb::Connection>>>,
    },
}

/// Rows kept for the database while it is locked (beyond this they are in the JSON lines only).
const LOCKED_BUFFER: usize = 200_000;

/// Waits for a locked database while serving the queue; `None` if the queue closed first.
fn wait_for_db(
    rx: &Receiver<Msg>,
    w: &mut Writer,
    written: &AtomicU64,
    init: DbInit,
    buffer: &mut Vec<AuditEvent>,
    limits: &mut Option<Vec<crate::audit_db::LimitRow>>,
) -> Option<DbSide> {
    let DbInit::Locked {
        opts,
        retention_days,
        errors,
        query,
    } = init
    else {
        return None;
    };
    let started = std::time::Instant::now();
    let mut next_try = std::time::Instant::now();
    let mut last_warn = std::time::Instant::now();
    loop {
        if std::time::Instant::now() >= next_try {
            next_try = std::time::Instant::now() + Duration::from_millis(250);
            match crate::audit_db::open(&opts) {
                Ok(conn) => {
                    if let Ok(q) = conn.try_clone() {
                        *query.lock() = Some(q);
                    }
                    tracing::info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        rows = buffer.len(),
                        "audit database opened; writing the rows kept meanwhile"
                    );
                    return Some(DbSide {
                        conn,
                        retention_days,
                        errors,
                    });
                }
                Err(e) if last_warn.elapsed() >= Duration::from_secs(30) => {
                    last_warn = std::time::Instant::now();
                    tracing::warn!(error = %e, "audit database still locked by another process; JSON lines go on");
                }
                Err(_) => {}
            }
        }
        match rx.try_recv() {
            Ok(Msg::Event(e)) => {
                if let Err(err) = w.write(&e) {
                    tracing::warn!(error = %err, "audit log write failed");
                }
                written.fetch_add(1, Ordering::Relaxed);
                if buffer.len() < LOCKED_BUFFER {
                    buffer.push(e);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Msg::Flush(done)) => {
                w.flush();
                let _ = done.send(());
            }
            Ok(Msg::Limits(rows)) => *limits = Some(rows),
            Err(TryRecvError::Empty) => std::thread::sleep(POLL),
            Err(TryRecvError::Disconnected) => {
                w.flush();
                errors.fetch_add(buffer.len() as u64, Ordering::Relaxed);
                return None;
            }
        }
    }
}

fn run(
    rx: Receiver<Msg>,
    mut w: Writer,
    flush_every: Duration,
    written: Arc<AtomicU64>,
    init: DbInit,
) {
    let mut buffer = Vec::new();
    let mut limits = None;
    let db = match init {
        DbInit::None => None,
        DbInit::Open(side) => Some(side),
        locked @ DbInit::Locked { .. } => {
            match wait_for_db(&rx, &mut w, &written, locked, &mut buffer, &mut limits) {
                Some(side) => Some(side),
                None => return,
            }
        }
    };
    let mut dbw = db.as_ref().map(DbWriter::new);
    if let Some(d) = dbw.as_mut() {
        if let Some(rows) = limits.take() {
            d.set_limits(&rows);
        }
        for e in buffer.drain(..) {
            d.append(&e);
        }
    }
    let mut dirty = false;
    let mut last_flush = std::time::Instant::now();
    loop {
        if let Some(d) = dbw.as_mut() {
            d.maintain();
        }
        match rx.try_recv() {
            Ok(Msg::Event(e)) => {
                if let Err(err) = w.write(&e) {
                    tracing::warn!(error = %err, "audit log write failed");
                }
                if let Some(d) = dbw.as_mut() {
                    d.append(&e);
                }
                written.fetch_add(1, Ordering::Relaxed);
                dirty = true;
            }
            Ok(Msg::Flush(done)) => {
                flush_all(&mut w, &mut dbw);
                dirty = false;
                last_flush = std::time::Instant::now();
                let _ = done.send(());
            }
            Ok(Msg::Limits(rows)) => {
                if let Some(d) = dbw.as_mut() {
                    d.set_limits(&rows);
                }
            }
            Err(TryRecvError::Empty) => {
                if dirty && last_flush.elapsed() >= flush_every {
                    flush_all(&mut w, &mut dbw);
                    dirty = false;
                    last_flush = std::time::Instant::now();
                }
                std::thread::sleep(POLL.min(flush_every));
            }
            Err(TryRecvError::Disconnected) => {
                flush_all(&mut w, &mut dbw);
                drop(dbw);
                if let Some(d) = &db
                    && let Err(e) = d.conn.execute_batch("CHECKPOINT")
                {
                    tracing::warn!(error = %e, "audit database checkpoint at shutdown failed");
                }
                return;
            }
        }
    }
}

/// Why the audit trail could not start.
#[derive(Debug, thiserror::Error)]
#[error("audit: {0}")]
pub struct AuditStartError(String);

impl AuditSink {
    /// Starts the writer for `cfg` (paths relative to `dir`); `None` when auditing is off.
    pub fn start(
        cfg: &AuditConfig,
        dir: &std::path::Path,
    ) -> Result<Option<Arc<AuditSink>>, AuditStartError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue.max(1));
        let writer = Writer {
            path: dir.join(&cfg.log_path),
            rotate_bytes: cfg.rotate_bytes.max(1024),
            file: None,
            size: 0,
            day: String::new(),
            rotations: 0,
            line: Vec::with_capacity(1024),
        };
        let export_dir = dir.join(&cfg.export_dir);
        let db_path = (!cfg.db_path.is_empty()).then(|| dir.join(&cfg.db_path));
        let db_errors = Arc::new(AtomicU64::new(0));
        let query_slot: Arc<Mutex<Option<duckdb::Connection>>> = Arc::new(Mutex::new(None));
        let init = match &db_path {
            Some(path) => {
                let opts = crate::audit_db::DbOptions {
                    path: path.clone(),
                    threads: cfg.db_threads,
                    memory_limit: cfg.db_memory_limit.clone(),
                    export_dir: Some(export_dir.clone()),
                    read_only: false,
                    lock_down: true,
                };
                match crate::audit_db::open(&opts) {
                    Ok(conn) => {
                        let query = conn
                            .try_clone()
                            .map_err(|e| AuditStartError(format!("audit database: {e}")))?;
                        *query_slot.lock() = Some(query);
                        DbInit::Open(DbSide {
                            conn,
                            retention_days: cfg.retention_days,
                            errors: db_errors.clone(),
                        })
                    }
                    Err(e) if crate::audit_db::is_lock_conflict(&e) => {
                        tracing::warn!(error = %e, "audit database is held by another process (a graceful upgrade?); writing JSON lines and opening it once it is free");
                        DbInit::Locked {
                            opts,
                            retention_days: cfg.retention_days,
                            errors: db_errors.clone(),
                            query: query_slot.clone(),
                        }
                    }
                    Err(e) => return Err(AuditStartError(e.to_string())),
                }
            }
            None => DbInit::None,
        };
        let written = Arc::new(AtomicU64::new(0));
        let w2 = written.clone();
        let every = cfg.flush_interval.0.max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(rx, writer, every, w2, init))
            .map_err(|e| AuditStartError(format!("cannot start the writer: {e}")))?;
        Ok(Some(Arc::new(AuditSink {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            dropped: AtomicU64::new(0),
            written,
            queued: AtomicU64::new(0),
            db_errors,
            on_full: cfg.on_full,
            block_timeout: cfg.block_timeout.0,
            db: query_slot,
            db_configured: db_path.is_some(),
            db_path,
            export_dir,
            sql_limits: crate::audit_db::QueryLimits {
                max_rows: cfg.sql_max_rows.max(1),
                timeout: cfg.sql_timeout.0.max(Duration::from_millis(10)),
            },
        })))
    }

    /// Events waiting for the writer.
    pub fn queue_depth(&self) -> u64 {
        let q = self.queued.load(Ordering::Relaxed);
        q.saturating_sub(self.written.load(Ordering::Relaxed))
    }

    /// Tells the database the configured limits (for `quota_usage_by_project_day`).
    pub fn set_limits(&self, rows: Vec<crate::audit_db::LimitRow>) {
        if !self.db_configured {
            return;
        }
        if let Some(tx) = self.tx.lock().clone() {
            let _ = tx.try_send(Msg::Limits(rows));
        }
    }

    /// Runs `f` on the analysts' connection (a fresh clone, so a slow query does not hold
    /// others). Blocking: call from a blocking thread.
    pub fn with_db<T>(
        &self,
        f: impl FnOnce(&duckdb::Connection) -> Result<T, crate::audit_db::DbError>,
    ) -> Result<T, crate::audit_db::DbError> {
        if !self.db_configured {
            return Err(crate::audit_db::DbError::Refused(
                "no audit database (audit.db_path is empty)".into(),
            ));
        }
        let conn = match self.db.lock().as_ref() {
            Some(db) => db.try_clone()?,
            None => {
                return Err(crate::audit_db::DbError::Refused(
                    "the audit database is not open yet (the previous process still holds it during an upgrade); retry in a few seconds".into(),
                ));
            }
        };
        f(&conn)
    }

    /// Queues an event without waiting (the `block` policy waits in [`record_async`]).
    pub fn record(&self, e: AuditEvent) {
        let Some(tx) = self.tx.lock().clone() else {
            return;
        };
        match tx.try_send(Msg::Event(e)) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues an event; with `on_full: block`, retries for up to `block_timeout` first.
    pub async fn record_async(&self, e: AuditEvent) {
        let Some(tx) = self.tx.lock().clone() else {
            return;
        };
        let mut msg = Msg::Event(e);
        let deadline = std::time::Instant::now() + self.block_timeout;
        loop {
            match tx.try_send(msg) {
                Ok(()) => {
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(TrySendError::Full(m))
                    if self.on_full == AuditFull::Block && std::time::Instant::now() < deadline =>
                {
                    msg = m;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Writes out everything queued so far (waits for the writer).
    pub fn flush(&self) {
        let Some(tx) = self.tx.lock().clone() else {
            return;
        };
        let (done, wait) = std::sync::mpsc::channel();
        if tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Stops the writer after it has written and flushed everything queued.
    pub fn close(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// What the proxy knows of a call beyond the sdk's `CompletedRequest`.
#[derive(Debug, Clone, Default)]
pub struct CallExtra {
    pub retries: u32,
    pub rotations: u32,
    pub upstream_429s: u32,
    pub quota_id: Option<String>,
}

/// The `ApiCall` line of a finished call.
#[allow(clippy::too_many_arguments)]
pub fn call_event(
    request_id: &str,
    method: &str,
    path: &str,
    cx: Option<&gemini_proxy_sdk::RequestContext>,
    done: &gemini_proxy_sdk::CompletedRequest,
    api: &'static str,
    model: Option<&str>,
    extra: &CallExtra,
) -> AuditEvent {
    let usage = done.usage.unwrap_or_default();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let identity = cx.and_then(|c| c.identity.as_ref());
    let mut action = String::with_capacity(method.len() + 1 + path.len());
    action.push_str(method);
    action.push(' ');
    action.push_str(path);
    AuditEvent::Call(Box::new(CallAudit {
        at: SystemTime::now(),
        event_type: "ApiCall",
        source_ip: cx.and_then(|c| c.request.client_ip),
        action,
        result: if done.status < 400 && done.error_class.is_none() {
            "Success"
        } else {
            "Failure"
        },
        duration_ms: ms(done.total_latency),
        request_id: request_id.to_string(),
        user: identity.map(|i| i.subject.clone()),
        role: identity.map(|i| i.role.as_str()),
        api,
        model: model.map(str::to_string),
        stream: done.streamed,
        key_id: done.key_id.clone(),
        project: done.project.clone(),
        status: done.status,
        upstream_status: done.upstream_status,
        error_class: done.error_class.clone(),
        attempts: done.attempts,
        retries: extra.retries,
        rotations: extra.rotations,
        upstream_429s: extra.upstream_429s,
        quota_id: extra.quota_id.clone(),
        upstream_ms: done.upstream_latency.map(ms),
        ttfb_ms: done.time_to_first_byte.map(ms),
        prompt_tokens: usage.prompt_tokens,
        candidates_tokens: usage.candidates_tokens,
        thoughts_tokens: usage.thoughts_tokens,
        cached_tokens: usage.cached_tokens,
        total_tokens: usage.total_tokens,
        request_bytes: done.request_bytes,
        response_bytes: done.response_bytes,
        risk_score: cx.and_then(|c| c.risk_score),
        truncated: done.truncated,
        tags: cx.map(|c| capped_tags(&c.tags)).unwrap_or_default(),
    }))
}

/// A `SecurityEvent` line.
pub fn security_event(
    action: &str,
    result: &'static str,
    source_ip: Option<String>,
    detail: Value,
) -> AuditEvent {
    let mut e = GenericEvent::new("SecurityEvent", action, result).field("detail", detail);
    e.source_ip = source_ip;
    AuditEvent::Other(Box::new(e))
}

/// An `AdminAction` line (analyst SQL, exports): kept with the security events.
pub fn admin_event(
    action: &str,
    result: &'static str,
    source_ip: Option<String>,
    detail: Value,
) -> AuditEvent {
    let mut e = GenericEvent::new("AdminAction", action, result).field("detail", detail);
    e.source_ip = source_ip;
    AuditEvent::Other(Box::new(e))
}

/// A `ConfigChange` line.
pub fn config_event(v: &crate::config_history::Version) -> AuditEvent {
    AuditEvent::Other(Box::new(
        GenericEvent::new("ConfigChange", format!("config {}", v.source), "Applied")
            .field("version", v.version)
            .field("by", v.by.clone())
            .field("sha256", v.sha256.clone())
            .field("changed", json!(v.changed)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path, rotate: u64) -> (AuditConfig, PathBuf) {
        let c = AuditConfig {
            log_path: "logs/audit.log".into(),
            rotate_bytes: rotate,
            flush_interval: crate::config::ConfigDuration(Duration::from_millis(50)),
            ..AuditConfig::default()
        };
        (c, dir.join("logs/audit.log"))
    }

    #[test]
    fn writes_lines_flushes_within_the_interval_and_closes_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let (c, path) = cfg(dir.path(), 1 << 30);
        let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
        sink.record(AuditEvent::Other(Box::new(
            GenericEvent::new("ApiCall", "GET /v1/models", "Success").field("status", 200),
        )));
        // No shutdown: a crash now would keep what the flush interval wrote.
        std::thread::sleep(Duration::from_millis(300));
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["event_type"], "ApiCall");
        assert_eq!(v["action"], "GET /v1/models");
        assert_eq!(v["result"], "Success");
        assert_eq!(v["status"], 200);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        for _ in 0..100 {
            sink.record(AuditEvent::Other(Box::new(GenericEvent::new(
                "ApiCall", "x", "Success",
            ))));
        }
        sink.close();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 101);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    fn event(i: usize) -> AuditEvent {
        AuditEvent::Other(Box::new(GenericEvent::new(
            "ApiCall",
            format!("call {i}"),
            "Success",
        )))
    }

    #[test]
    fn a_full_queue_drops_and_counts_under_the_drop_policy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, path) = cfg(dir.path(), 1 << 30);
        c.queue = 4;
        c.db_path = String::new();
        let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
        // A burst far faster than the writer's 10 ms poll: most of it cannot be queued.
        for i in 0..2_000 {
            sink.record(event(i));
        }
        sink.close();
        let dropped = sink.dropped.load(Ordering::Relaxed);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert!(dropped > 0, "nothing dropped");
        assert_eq!(lines + dropped, 2_000, "every event is written or counted");
    }

    #[tokio::test]
    async fn a_full_queue_waits_under_the_block_policy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, path) = cfg(dir.path(), 1 << 30);
        c.queue = 2;
        c.db_path = String::new();
        c.on_full = AuditFull::Block;
        c.block_timeout = crate::config::ConfigDuration(Duration::from_secs(5));
        let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
        for i in 0..60 {
            sink.record_async(event(i)).await;
        }
        sink.close();
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 60);
        // With a short wait, the burst drops what did not fit in time.
        let dir = tempfile::tempdir().unwrap();
        c.block_timeout = crate::config::ConfigDuration(Duration::from_millis(1));
        c.queue = 1;
        let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
        for i in 0..500 {
            sink.record_async(event(i)).await;
        }
        sink.close();
        let dropped = sink.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0);
        let lines = std::fs::read_to_string(dir.path().join("logs/audit.log"))
            .unwrap()
            .lines()
            .count() as u64;
        assert_eq!(lines + dropped, 500);
    }

    #[test]
    fn database_rows_are_committed_within_the_flush_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = cfg(dir.path(), 1 << 30);
        let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
        for i in 0..10 {
            sink.record(event(i));
        }
        std::thread::sleep(Duration::from_millis(300));
        // A second connection sees only committed rows.
        let n: i64 = sink
            .with_db(|conn| {
                Ok(conn.query_row("SELECT count(*) FROM security_events", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(n, 10);
        sink.close();
    }

    #[test]
    fn rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let (c, path) = cfg(dir.path(), 2048);
        let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
        for i in 0..100 {
            sink.record(AuditEvent::Other(Box::new(GenericEvent::new(
                "ApiCall",
                format!("call {i}"),
                "Success",
            ))));
        }
        sink.close();
        let logs: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(logs.len() > 1, "{logs:?}");
        let total: usize = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| {
                std::fs::read_to_string(e.unwrap().path())
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        assert_eq!(total, 100, "nothing lost across rotations");
    }
}
