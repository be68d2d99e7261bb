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

const TABLES: [&str; 4] = [
    "requests",
    "request_tags",
    "config_changes",
    "security_events",
];

/// Writes the rows of the UTC hours from `from_hour` to `to_hour` (hours since the epoch) as
/// Parquet, one folder per table, instance, day and hour
/// (`out/requests/instance=gw-1/day=2026-12-04/hour=21/data_0.parquet`), each replaced whole;
/// hours without rows are skipped. Returns the rows written.
pub fn export_hours(
    conn: &Connection,
    out: &Path,
    instance: &str,
    from_hour: i64,
    to_hour: i64,
) -> Result<u64, DbError> {
    let io = |e: std::io::Error| DbError::Sql(format!("{}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(io)?;
    let abs = std::fs::canonicalize(out).map_err(io)?;
    let mut rows = 0u64;
    for hour in from_hour..=to_hour {
        let (start, end) = (hour * 3_600_000_000, (hour + 1) * 3_600_000_000);
        let day = clock::format_date(hour.div_euclid(24));
        for t in TABLES {
            let n: i64 = conn.query_row(
                &format!("SELECT count(*) FROM {t} WHERE epoch_us(ts) >= ? AND epoch_us(ts) < ?"),
                [start, end],
                |r| r.get(0),
            )?;
            if n == 0 {
                continue;
            }
            let dir = abs
                .join(t)
                .join(format!("instance={instance}"))
                .join(format!("day={day}"))
                .join(format!("hour={:02}", hour.rem_euclid(24)));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io)?;
            }
            std::fs::create_dir_all(&dir).map_err(io)?;
            let file = dir.join("data_0.parquet");
            rows += conn.execute(
                &format!(
                    "COPY (SELECT * EXCLUDE (day) FROM {t} WHERE epoch_us(ts) >= ? AND epoch_us(ts) < ? ORDER BY ts) TO {} (FORMAT parquet, COMPRESSION zstd)",
                    quote_sql_string(&file.display().to_string())
                ),
                [start, end],
            )? as u64;
        }
    }
    Ok(rows)
}
