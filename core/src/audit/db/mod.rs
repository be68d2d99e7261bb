//! The DuckDB side of the audit trail: schema, analyst views, batched appends (fed by the audit
//! writer thread), read-only SQL for analysts, Parquet export by day and retention.
//!
//! Safety of analyst SQL rests on four layers: DuckDB's own parser and binder decide it is one
//! read-only statement ([`guard`]), a read-only transaction that is always rolled back, `enable_external_access = false` on the instance (no file functions, `ATTACH`, `COPY`
//! outside the export folder, `INSTALL`/`LOAD`) with `lock_configuration`, and limits on rows
//! and time (the query is interrupted at its deadline).
//!
//! [`schema`] holds the tables and views; [`append`] the batched appends; [`guard`] decides
//! whether analyst SQL is one read-only query; [`query`] runs it within limits; [`format`]
//! turns answers into CSV and tables; [`export`] writes Parquet by day.

mod append;
mod export;
mod format;
pub mod guard;
mod query;
mod schema;

pub use append::{Appenders, LimitRow, limit_rows};
pub use export::{ExportReport, export, export_hours};
pub use format::{to_csv, to_table};
pub use query::{QueryLimits, QueryResult, query};
pub use schema::{RELATIONS, SCHEMA_AND_VIEWS, SCHEMA_VERSION};

use std::path::PathBuf;

use duckdb::{AccessMode, Config, Connection};

use schema::{SCHEMA, VIEWS};

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

pub(super) fn quote_sql_string(s: &str) -> String {
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
    if !o.read_only {
        conn.execute_batch(SCHEMA).map_err(|e| err(e.to_string()))?;
        conn.execute_batch(schema::MIGRATIONS)
            .map_err(|e| err(e.to_string()))?;
        conn.execute_batch(VIEWS).map_err(|e| err(e.to_string()))?;
        conn.execute(
            "INSERT OR REPLACE INTO audit_meta VALUES ('schema_version', ?)",
            [SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| err(e.to_string()))?;
        // The database and its write-ahead log hold the audit trail.
        crate::util::make_private(&o.path);
        let mut wal = o.path.clone().into_os_string();
        wal.push(".wal");
        crate::util::make_private(std::path::Path::new(&wal));
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

#[cfg(test)]
mod tests;
