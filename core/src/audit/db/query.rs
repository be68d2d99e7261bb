//! One analyst query, read-only and within limits, its answer as JSON values.

use std::time::{Duration, Instant};

use duckdb::Connection;
use duckdb::arrow::datatypes::DataType;
use duckdb::types::{TimeUnit, Value as DValue, ValueRef};
use serde_json::{Value, json};

use super::DbError;
use crate::util::clock;

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

/// Runs one read-only query (checked by [`crate::audit::db::guard`]) within limits, in a read-only
/// transaction that is rolled back.
pub fn query(conn: &Connection, sql: &str, limits: QueryLimits) -> Result<QueryResult, DbError> {
    crate::audit::db::guard::check(sql)?;
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
            let names = st.column_names();
            if let Some(i) = (0..n).find(|i| !shown(&st.column_type(*i))) {
                return Err(DbError::Refused(format!(
                    "column `{}` is of a type the SQL API cannot show ({:?}): cast it, e.g. `::VARCHAR`",
                    names[i],
                    st.column_type(i)
                )));
            }
            columns = Some(names);
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

/// Whether the duckdb crate can read values of `t` (it panics on the others: `NULL`-typed
/// columns, times other than microseconds, view types).
fn shown(t: &DataType) -> bool {
    use duckdb::arrow::datatypes::TimeUnit as Unit;
    match t {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::FixedSizeBinary(_)
        | DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Timestamp(..)
        | DataType::Date32
        | DataType::Time64(Unit::Microsecond)
        | DataType::Interval(_) => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            shown(f.data_type())
        }
        DataType::Struct(fields) => fields.iter().all(|f| shown(f.data_type())),
        DataType::Map(f, _) => shown(f.data_type()),
        DataType::Dictionary(k, v) => {
            matches!(**k, DataType::UInt8 | DataType::UInt16 | DataType::UInt32) && shown(v)
        }
        DataType::Union(fields, _) => fields.iter().all(|(_, f)| shown(f.data_type())),
        _ => false,
    }
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
