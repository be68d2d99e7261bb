//! Parquet export by table and day.

use std::path::Path;

use duckdb::Connection;
use duckdb::types::Value as DValue;

use super::DbError;
use super::quote_sql_string;
use crate::util::clock;

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
