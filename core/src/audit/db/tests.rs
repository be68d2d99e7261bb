use super::*;
use std::time::Duration;

use duckdb::Connection;
use serde_json::{Value, json};

use crate::audit::{AuditEvent, CallAudit};
use crate::util::clock;
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
        "SELECT count(*) AS query FROM requests WHERE path LIKE '%checkpoint%'",
    ] {
        assert!(
            crate::audit::db::guard::check(ok).is_ok(),
            "{ok}: {:?}",
            crate::audit::db::guard::check(ok)
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
        "SELECT * FROM checkpoint()",
        "SELECT * FROM main.\"CheckPoint\" /* x */ ()",
        "SELECT * FROM force_checkpoint()",
        "FROM enable_logging()",
        "SELECT write_log('x')",
        "SELECT * FROM query('SELECT 1')",
        "SELECT * FROM truncate_duckdb_logs()",
        "SELECT setseed(0.5)",
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
        assert!(crate::audit::db::guard::check(bad).is_err(), "{bad}");
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
    // Types the duckdb crate cannot read are a clear refusal, not a panic.
    for odd in [
        "SELECT getvariable('nothing') AS v",
        "SELECT TIME_NS '12:00:00' AS t",
        "SELECT [getvariable('nothing')] AS l",
    ] {
        match query(&conn, odd, limits) {
            Err(DbError::Refused(m)) => assert!(m.contains("cast it"), "{odd}: {m}"),
            other => panic!("{odd}: {other:?}"),
        }
    }
    assert_eq!(
        query(&conn, "SELECT TIME '12:00:00' AS t, [1, 2] AS l", limits)
            .unwrap()
            .rows
            .len(),
        1
    );
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
    // Text a spreadsheet would run as a formula is written as text; numbers as they are.
    let r = QueryResult {
        columns: vec!["user".into(), "n".into()],
        rows: vec![
            vec![json!("=HYPERLINK(\"http://x\",\"y\")"), json!(-5)],
            vec![json!("+1"), json!(2)],
            vec![json!("@sum"), json!(3)],
            vec![json!("-x"), json!(4)],
            vec![json!("ann"), json!(5)],
            vec![json!(" =1+1"), json!(6)],
            vec![json!("＝1"), json!(7)],
        ],
        truncated: false,
        elapsed_ms: 0.0,
    };
    assert_eq!(
        to_csv(&r),
        "user,n\n\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",-5\n'+1,2\n'@sum,3\n'-x,4\nann,5\n' =1+1,6\n'＝1,7\n"
    );
}

/// The database and a write-ahead log left readable by others are made private on open.
#[cfg(unix)]
#[test]
fn an_existing_database_and_its_log_are_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        path: dir.path().join("audit.duckdb"),
        threads: 1,
        memory_limit: "256MB".into(),
        export_dir: None,
        read_only: false,
        lock_down: false,
    };
    {
        // Rows left in the log, as a crash leaves them.
        let conn = open(&opts).unwrap();
        conn.execute_batch(
            "PRAGMA disable_checkpoint_on_shutdown; SET checkpoint_threshold = '1TB';",
        )
        .unwrap();
        let mut app = Appenders::new(&conn).unwrap();
        app.append(&call_at("2026-11-20", "r1")).unwrap();
        app.flush().unwrap();
    }
    let wal = dir.path().join("audit.duckdb.wal");
    assert!(wal.exists(), "no write-ahead log to test with");
    let loose = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(&opts.path, loose.clone()).unwrap();
    std::fs::set_permissions(&wal, loose).unwrap();
    let conn = open(&opts).unwrap();
    for p in [&opts.path, &wal] {
        if p.exists() {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    drop(conn);
}
