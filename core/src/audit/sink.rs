//! The bounded queue between the proxy and the writer thread, and the running audit trail.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use parking_lot::Mutex;

use super::event::AuditEvent;
use super::jsonl::Writer;
use super::writer::{DbInit, DbSide, run};
use crate::config::{AuditConfig, AuditFull};

pub(super) enum Msg {
    Event(AuditEvent),
    Flush(std::sync::mpsc::Sender<()>),
    Limits(Vec<crate::audit::db::LimitRow>),
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
    pub sql_limits: crate::audit::db::QueryLimits,
    instance: crate::audit::InstanceName,
}

/// Where a service that only records events sends them: the audit writer, or nowhere when
/// auditing is off.
#[derive(Clone, Default)]
pub struct AuditHandle(pub Option<Arc<AuditSink>>);

impl AuditHandle {
    pub fn record(&self, e: AuditEvent) {
        if let Some(a) = &self.0 {
            a.record(e);
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
        let instance = crate::audit::InstanceName::default();
        let writer = Writer {
            path: dir.join(&cfg.log_path),
            rotate_bytes: cfg.rotate_bytes.max(1024),
            file: None,
            size: 0,
            day: [0; 10],
            rotations: 0,
            line: Vec::with_capacity(1024),
            instance: instance.clone(),
        };
        let export_dir = dir.join(&cfg.export_dir);
        let db_path = (!cfg.db_path.is_empty()).then(|| dir.join(&cfg.db_path));
        let db_errors = Arc::new(AtomicU64::new(0));
        let scheduled =
            (!cfg.export_every.0.is_zero()).then(|| (cfg.export_every.0, export_dir.clone()));
        let query_slot: Arc<Mutex<Option<duckdb::Connection>>> = Arc::new(Mutex::new(None));
        let init = match &db_path {
            Some(path) => {
                let opts = crate::audit::db::DbOptions {
                    path: path.clone(),
                    threads: cfg.db_threads,
                    memory_limit: cfg.db_memory_limit.clone(),
                    export_dir: Some(export_dir.clone()),
                    read_only: false,
                    lock_down: true,
                };
                match crate::audit::db::open(&opts) {
                    Ok(conn) => {
                        let query = conn
                            .try_clone()
                            .map_err(|e| AuditStartError(format!("audit database: {e}")))?;
                        *query_slot.lock() = Some(query);
                        DbInit::Open(DbSide {
                            conn,
                            retention_days: cfg.retention_days,
                            errors: db_errors.clone(),
                            instance: instance.clone(),
                            export: scheduled.clone(),
                        })
                    }
                    Err(e) if crate::audit::db::is_lock_conflict(&e) => {
                        tracing::warn!(error = %e, "audit database is held by another process (a graceful upgrade?); writing JSON lines and opening it once it is free");
                        DbInit::Locked {
                            opts,
                            retention_days: cfg.retention_days,
                            errors: db_errors.clone(),
                            query: query_slot.clone(),
                            export: scheduled.clone(),
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
            sql_limits: crate::audit::db::QueryLimits {
                max_rows: cfg.sql_max_rows.max(1),
                timeout: cfg.sql_timeout.0.max(Duration::from_millis(10)),
            },
            instance,
        })))
    }

    /// Names the instance in every event from now on (once, at startup, before any event).
    pub fn set_instance(&self, id: &str) {
        let _ = self.instance.set(id.to_string());
    }

    /// Events waiting for the writer.
    pub fn queue_depth(&self) -> u64 {
        let q = self.queued.load(Ordering::Relaxed);
        q.saturating_sub(self.written.load(Ordering::Relaxed))
    }

    /// Tells the database the configured limits (for `quota_usage_by_project_day`).
    pub fn set_limits(&self, rows: Vec<crate::audit::db::LimitRow>) {
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
        f: impl FnOnce(&duckdb::Connection) -> Result<T, crate::audit::db::DbError>,
    ) -> Result<T, crate::audit::db::DbError> {
        if !self.db_configured {
            return Err(crate::audit::db::DbError::Refused(
                "no audit database (audit.db_path is empty)".into(),
            ));
        }
        let conn = match self.db.lock().as_ref() {
            Some(db) => db.try_clone()?,
            None => {
                return Err(crate::audit::db::DbError::Refused(
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
