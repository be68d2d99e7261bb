//! The audit trail: one record per proxied call, config change and security event, written as
//! JSON lines to `audit.log_path` (the product brief's shape) by a background thread fed through
//! one bounded channel. The proxy never waits on disk: a full queue drops (counted in
//! `audit_dropped_total`) or, with `on_full: block`, waits up to `block_timeout` first. The file
//! is flushed every `flush_interval` (so a crash loses at most that much) and at shutdown, and
//! rotated by size or UTC day. The same writer appends every event to the DuckDB database
//! (`audit.db_path`, see [`db`]) with DuckDB's Appender and commits at the same interval.
//!
//! [`event`] holds the lines' types; [`sink`] the bounded queue the proxy writes to; [`jsonl`]
//! the JSON-lines file; [`writer`] the thread that drains the queue into both; [`db`] the
//! DuckDB side (schema, appends, analyst SQL and its guard, export, formatting).

pub mod db;
mod event;
mod jsonl;
mod sink;
mod writer;

pub use event::{
    AuditEvent, CallAudit, CallExtra, GenericEvent, admin_event, call_event, config_event,
    security_event,
};
pub use sink::{AuditHandle, AuditSink, AuditStartError};

#[cfg(test)]
mod tests;

/// The instance that writes this audit trail (`cluster.instance_id`), set once at startup; every
/// JSON line and row carries it.
pub type InstanceName = std::sync::Arc<std::sync::OnceLock<String>>;
