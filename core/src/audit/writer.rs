//! The writer thread: drains the queue into the JSON lines and the database, commits both every
//! `flush_interval`, waits out a database another process holds, and runs retention.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::event::AuditEvent;
use super::jsonl::Writer;
use super::sink::Msg;

/// How often the writer looks for queued events. It polls rather than blocking on the channel
/// so that senders never have to wake it (a futex wake per call cost ~15 µs of CPU per call).
const POLL: Duration = Duration::from_millis(10);

/// How often retention runs (also once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// What the writer thread owns besides the JSON-lines file.
pub(super) struct DbSide {
    pub(super) conn: duckdb::Connection,
    pub(super) retention_days: u32,
    pub(super) errors: Arc<AtomicU64>,
    pub(super) instance: crate::audit::InstanceName,
    /// Scheduled Parquet export: how often, and where.
    pub(super) export: Option<(Duration, std::path::PathBuf)>,
}

/// The writer's side of the database: appenders, their recovery and retention.
struct DbWriter<'c> {
    side: &'c DbSide,
    appenders: Option<crate::audit::db::Appenders<'c>>,
    /// A failed append or commit invalidates DuckDB's appender (its buffered rows are lost and
    /// counted): a new one is made, at most once a second.
    broken_since: Option<std::time::Instant>,
    last_retention: Option<std::time::Instant>,
    last_export: Option<std::time::Instant>,
}

impl<'c> DbWriter<'c> {
    fn new(side: &'c DbSide) -> DbWriter<'c> {
        let mut d = DbWriter {
            side,
            appenders: None,
            broken_since: None,
            last_retention: None,
            last_export: None,
        };
        d.reopen();
        d
    }

    fn reopen(&mut self) {
        self.appenders = crate::audit::db::Appenders::new(&self.side.conn)
            .map(|a| a.with_instance(self.side.instance.clone()))
            .map_err(|e| tracing::error!(error = %e, "audit database: cannot append; JSON lines only until it recovers"))
            .ok();
        self.broken_since = self.appenders.is_none().then(std::time::Instant::now);
    }

    fn broke(&mut self, what: &str, e: crate::audit::db::DbError) {
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
        self.export_if_due();
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

    /// Writes the hours since the last export (and the one before, which may have gained rows
    /// since) as Parquet, when due.
    fn export_if_due(&mut self) {
        let Some((every, dir)) = &self.side.export else {
            return;
        };
        if self.last_export.is_some_and(|t| t.elapsed() < *every) || self.appenders.is_none() {
            return;
        }
        self.commit();
        self.last_export = Some(std::time::Instant::now());
        let now_h = crate::util::clock::unix_secs(SystemTime::now()) as i64 / 3600;
        let back = every.as_secs().div_ceil(3600).max(1) as i64;
        let instance = self.side.instance.get().map_or("local", String::as_str);
        match crate::audit::db::export_hours(&self.side.conn, dir, instance, now_h - back, now_h) {
            Ok(rows) => tracing::debug!(rows, "audit export written"),
            Err(e) => tracing::warn!(error = %e, "scheduled audit export failed"),
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

    fn set_limits(&mut self, rows: &[crate::audit::db::LimitRow]) {
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
pub(super) enum DbInit {
    None,
    Open(DbSide),
    /// The file is locked by another process (a graceful upgrade: the old process drains and
    /// exits within its grace period): write JSON lines, keep the rows, retry.
    Locked {
        opts: crate::audit::db::DbOptions,
        retention_days: u32,
        errors: Arc<AtomicU64>,
        query: Arc<Mutex<Option<duckdb::Connection>>>,
        export: Option<(Duration, std::path::PathBuf)>,
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
    limits: &mut Option<Vec<crate::audit::db::LimitRow>>,
) -> Option<DbSide> {
    let DbInit::Locked {
        opts,
        retention_days,
        errors,
        query,
        export,
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
            match crate::audit::db::open(&opts) {
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
                        instance: w.instance.clone(),
                        export: export.clone(),
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

pub(super) fn run(
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
