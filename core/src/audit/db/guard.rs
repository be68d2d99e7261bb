//! Decides whether an analyst's SQL is one read-only query, with DuckDB's own parser and binder.
//!
//! A lexical check can be fooled by any string syntax it does not know (`E'\''`, dollar
//! quotes), and the duckdb crate runs every statement but the last of a multi-statement text
//! while preparing it. So the text is split and typed by DuckDB itself, on a private in-memory
//! instance that holds the same tables and views as the audit database and can reach no file:
//! exactly one statement, whose prepared type is `SELECT` (which covers `WITH`, `FROM`,
//! `VALUES`, `DESCRIBE`, `SHOW` and `SUMMARIZE`) or an `EXPLAIN` of one. Nothing is executed
//! here. The query then runs on the audit database inside `BEGIN TRANSACTION READ ONLY`, which
//! DuckDB enforces for every write.

use std::ffi::{CStr, CString};
use std::sync::LazyLock;

use duckdb::ffi;
use parking_lot::Mutex;

use super::DbError;

/// One connection to a private in-memory database with the audit schema.
struct Parser {
    db: ffi::duckdb_database,
    con: ffi::duckdb_connection,
}

// The handles are only used under the mutex below, one thread at a time.
unsafe impl Send for Parser {}

impl Drop for Parser {
    fn drop(&mut self) {
        // SAFETY: both handles were opened by `Parser::open` and are closed once, here.
        unsafe {
            ffi::duckdb_disconnect(&mut self.con);
            ffi::duckdb_close(&mut self.db);
        }
    }
}

fn c_text(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: DuckDB returns NUL-terminated strings that live as long as their owner object,
    // which the callers keep alive across this call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Parser {
    fn open(schema: &str) -> Result<Parser, String> {
        let mut p = Parser {
            db: std::ptr::null_mut(),
            con: std::ptr::null_mut(),
        };
        // SAFETY: plain C API calls with out-pointers owned by `p`; `p` closes them on drop.
        unsafe {
            if ffi::duckdb_open(std::ptr::null(), &mut p.db) != ffi::DuckDBSuccess {
                return Err("cannot open the SQL parser's in-memory database".into());
            }
            if ffi::duckdb_connect(p.db, &mut p.con) != ffi::DuckDBSuccess {
                return Err("cannot connect to the SQL parser's database".into());
            }
        }
        p.run(schema)?;
        p.run("SET enable_external_access = false; SET lock_configuration = true;")?;
        Ok(p)
    }

    fn run(&mut self, sql: &str) -> Result<(), String> {
        let text = CString::new(sql).map_err(|e| e.to_string())?;
        // SAFETY: `self.con` is open; the result is destroyed before returning.
        unsafe {
            let mut out: ffi::duckdb_result = std::mem::zeroed();
            let ok = ffi::duckdb_query(self.con, text.as_ptr(), &mut out) == ffi::DuckDBSuccess;
            let err = if ok {
                String::new()
            } else {
                c_text(ffi::duckdb_result_error(&mut out))
            };
            ffi::duckdb_destroy_result(&mut out);
            if ok { Ok(()) } else { Err(err) }
        }
    }

    /// The DuckDB statement types of the statements in `sql` (parsed and bound, not run).
    fn types(&mut self, sql: &str) -> Result<Vec<ffi::duckdb_statement_type>, DbError> {
        let text = CString::new(sql)
            .map_err(|_| DbError::Refused("the query contains a NUL character".into()))?;
        // SAFETY: `self.con` is open; the extracted statements and each prepared statement are
        // destroyed on every path before returning.
        unsafe {
            let mut extracted: ffi::duckdb_extracted_statements = std::ptr::null_mut();
            let n = ffi::duckdb_extract_statements(self.con, text.as_ptr(), &mut extracted);
            if n == 0 {
                let why = c_text(ffi::duckdb_extract_statements_error(extracted));
                ffi::duckdb_destroy_extracted(&mut extracted);
                return Err(if why.is_empty() {
                    DbError::Refused("empty statement".into())
                } else {
                    DbError::Sql(why)
                });
            }
            let mut types = Vec::new();
            for i in 0..n {
                let mut st: ffi::duckdb_prepared_statement = std::ptr::null_mut();
                let ok = ffi::duckdb_prepare_extracted_statement(self.con, extracted, i, &mut st)
                    == ffi::DuckDBSuccess;
                let result = if ok {
                    Ok(ffi::duckdb_prepared_statement_type(st))
                } else {
                    Err(c_text(ffi::duckdb_prepare_error(st)))
                };
                ffi::duckdb_destroy_prepare(&mut st);
                match result {
                    Ok(t) => types.push(t),
                    // A second statement is refused for being there, whatever it says.
                    Err(_) if i > 0 => {
                        types.push(ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_INVALID)
                    }
                    Err(why) => {
                        ffi::duckdb_destroy_extracted(&mut extracted);
                        return Err(DbError::Sql(why));
                    }
                }
            }
            ffi::duckdb_destroy_extracted(&mut extracted);
            Ok(types)
        }
    }
}

static PARSER: LazyLock<Mutex<Result<Parser, String>>> =
    LazyLock::new(|| Mutex::new(Parser::open(crate::audit::db::SCHEMA_AND_VIEWS.as_str())));

fn type_name(t: ffi::duckdb_statement_type) -> &'static str {
    match t {
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_INSERT => "INSERT",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_UPDATE => "UPDATE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_DELETE => "DELETE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_MERGE_INTO => "MERGE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_CREATE
        | ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_CREATE_FUNC => "CREATE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_DROP => "DROP",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_ALTER => "ALTER",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_TRANSACTION => "a transaction statement",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_COPY
        | ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_COPY_DATABASE => "COPY",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPORT => "EXPORT",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_ATTACH => "ATTACH",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_DETACH => "DETACH",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_PRAGMA => "PRAGMA",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SET
        | ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_VARIABLE_SET => "SET",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_CALL => "CALL",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_LOAD => "LOAD or INSTALL",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_PREPARE => "PREPARE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXECUTE => "EXECUTE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_VACUUM => "VACUUM",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_ANALYZE => "ANALYZE",
        _ => "this statement",
    }
}

fn skip_space(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        if let Some(r) = t.strip_prefix("--") {
            s = r.split_once('\n').map_or("", |(_, rest)| rest);
        } else if let Some(r) = t.strip_prefix("/*") {
            s = r.split_once("*/").map_or("", |(_, rest)| rest);
        } else {
            return t;
        }
    }
}

/// `s` after the keyword `w` (and the spaces and comments before it), if it starts with it.
fn word<'a>(s: &'a str, w: &str) -> Option<&'a str> {
    let s = skip_space(s);
    let head = s.get(..w.len())?;
    let rest = &s[w.len()..];
    (head.eq_ignore_ascii_case(w) && !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        .then_some(rest)
}

/// `sql` after a leading `EXPLAIN [ANALYZE]` (and comments), if it starts with one.
fn explained(sql: &str) -> Option<&str> {
    let rest = word(sql, "EXPLAIN")?;
    Some(
        word(rest, "ANALYZE")
            .or_else(|| word(rest, "ANALYSE"))
            .unwrap_or(rest),
    )
}

/// Functions a read-only transaction does not stop: they checkpoint the file, switch logging or
/// profiling, manage external resources, run SQL given as a string, or reseed the shared
/// connection's random numbers.
const REFUSED_FUNCTIONS: &[&str] = &[
    "checkpoint",
    "force_checkpoint",
    "create_external_resource",
    "deregister_external_resource",
    "destroy_external_resource",
    "register_external_resource",
    "register_external_resource_type",
    "enable_logging",
    "disable_logging",
    "enable_profiling",
    "disable_profiling",
    "truncate_duckdb_logs",
    "write_log",
    "duckdb_secrets",
    "which_secret",
    "query",
    "query_table",
    "setseed",
];

/// A refused function named in `sql`: as a word followed by `(` (spaces and comments between
/// are skipped), wherever it is, quoted or not. A string that merely reads like a call is
/// refused too; that is the price of never missing one.
fn refused_function(sql: &str) -> Option<&'static str> {
    let lower = sql.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !is_word(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word(bytes[i]) {
            i += 1;
        }
        let name = &lower[start..i];
        let Some(refused) = REFUSED_FUNCTIONS.iter().find(|f| **f == name) else {
            continue;
        };
        // Past a closing quote of a quoted name, then spaces and comments.
        let after = lower[i..].strip_prefix('"').unwrap_or(&lower[i..]);
        if skip_space(after).starts_with('(') {
            return Some(refused);
        }
    }
    None
}

/// `Ok` when `sql` is exactly one read-only query (see the module docs).
pub fn check(sql: &str) -> Result<(), DbError> {
    if let Some(f) = refused_function(sql) {
        return Err(DbError::Refused(format!(
            "the function `{f}` is not accepted: the SQL endpoint is read-only"
        )));
    }
    let mut parser = PARSER.lock();
    let parser = parser
        .as_mut()
        .map_err(|e| DbError::Refused(format!("the SQL parser is not available: {e}")))?;
    let types = parser.types(sql)?;
    if types.len() != 1 {
        return Err(DbError::Refused(format!(
            "one statement per call ({} given)",
            types.len()
        )));
    }
    match types[0] {
        // Table-valued pragmas prepare as queries; they describe the instance, not the audit.
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT
            if word(sql, "PRAGMA").is_some() =>
        {
            Err(DbError::Refused("PRAGMA is not accepted".into()))
        }
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT => Ok(()),
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPLAIN => {
            let inner = explained(sql)
                .ok_or_else(|| DbError::Refused("EXPLAIN is accepted only for a query".into()))?;
            match parser.types(inner)?.as_slice() {
                [ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT] => Ok(()),
                _ => Err(DbError::Refused(
                    "EXPLAIN is accepted only for a query".into(),
                )),
            }
        }
        t => Err(DbError::Refused(format!(
            "{} is not accepted: the SQL endpoint is read-only (one SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN query)",
            type_name(t)
        ))),
    }
}
