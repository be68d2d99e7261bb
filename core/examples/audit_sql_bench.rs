//! Benchmark of the audit database (run by `scripts/bench-sql`): appends rows through the
//! audit writer's Appender path, then fills `requests` with N synthetic rows (default 10
//! million: 2,000 users, 6 models, 40 keys, 60 days) and times analyst queries through the
//! same read-only path `POST /api/sql` uses.
//!
//! Usage: audit_sql_bench [ROWS] [DB_PATH]

use std::time::{Duration, Instant, SystemTime};

use gemini_proxy_core::audit::db::{self as audit_db, Appenders, DbOptions, QueryLimits};
use gemini_proxy_core::audit::{AuditEvent, CallAudit};

fn call(i: u64) -> AuditEvent {
    AuditEvent::Call(Box::new(CallAudit {
        at: SystemTime::now(),
        source_ip: Some(std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8])),
        action: "POST /v1beta/models/gemini-2.5-flash:generateContent".into(),
        duration_ms: 12.5,
        request_id: format!("{i:016x}"),
        user: Some(format!("user-{}", i % 2000)),
        role: Some("user"),
        model: Some("gemini-2.5-flash".into()),
        stream: i.is_multiple_of(3),
        key_id: Some(format!("key-{}", i % 40)),
        project: Some(format!("project-{}", i % 20)),
        status: 200,
        upstream_status: 200,
        attempts: 1,
        upstream_ms: Some(11.9),
        ttfb_ms: Some(3.1),
        prompt_tokens: 120,
        candidates_tokens: 300,
        thoughts_tokens: 40,
        total_tokens: 460,
        request_bytes: 600,
        response_bytes: 2400,
        ..Default::default()
    }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile_dir();
    let path = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.join("bench.duckdb"));
    let _ = std::fs::remove_file(&path);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let conn = audit_db::open(&DbOptions {
        path: path.clone(),
        threads,
        memory_limit: "2GB".into(),
        export_dir: None,
        read_only: false,
        lock_down: false,
    })
    .expect("open");

    // 1. The writer's path: Appender rows, committed every 10,000 (a busy flush interval).
    let n_app = 200_000u64;
    let started = Instant::now();
    {
        let mut app = Appenders::new(&conn).expect("appender");
        for i in 0..n_app {
            app.append(&call(i)).expect("append");
            if i % 10_000 == 9_999 {
                app.flush().expect("flush");
            }
        }
        app.flush().expect("flush");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "appender: {n_app} rows in {secs:.2} s = {:.0} rows/s ({:.2} us/row) on the writer thread",
        n_app as f64 / secs,
        secs * 1e6 / n_app as f64
    );

    // 2. Synthetic history, generated inside DuckDB.
    let started = Instant::now();
    conn.execute_batch(&format!(
        "DELETE FROM requests;
         INSERT INTO requests
         SELECT
           TIMESTAMP '2026-09-01 00:00:00' + to_seconds((i * 5184000 // {rows})::BIGINT) AS ts,
           CAST(TIMESTAMP '2026-09-01 00:00:00' + to_seconds((i * 5184000 // {rows})::BIGINT) AS DATE) AS day,
           CAST(TIMESTAMP '2026-09-01 00:00:00' + to_seconds((i * 5184000 // {rows})::BIGINT) - INTERVAL 8 HOUR AS DATE) AS quota_day,
           printf('%016x', i) AS request_id,
           'user-' || (hash(i) % 2000) AS user_id,
           'user' AS role,
           '10.0.' || (i % 250) || '.' || (i % 199) AS client_ip,
           'POST' AS method,
           '/v1beta/models/' || ['gemini-2.5-flash','gemini-2.5-pro','gemini-2.5-flash-lite','gemini-2.0-flash','gemini-embedding-001','gemini-3-pro'][1 + (i % 6)] || ':generateContent' AS path,
           'native' AS api,
           ['gemini-2.5-flash','gemini-2.5-pro','gemini-2.5-flash-lite','gemini-2.0-flash','gemini-embedding-001','gemini-3-pro'][1 + (i % 6)] AS model,
           i % 3 = 0 AS stream,
           'key-' || (i % 40) AS key_id,
           'project-' || (i % 20) AS project,
           CASE WHEN i % 97 = 0 THEN 429 WHEN i % 211 = 0 THEN 500 ELSE 200 END AS status,
           CASE WHEN i % 97 = 0 THEN 429 WHEN i % 211 = 0 THEN 500 ELSE 200 END AS upstream_status,
           CASE WHEN i % 97 = 0 THEN 'rate_limited' WHEN i % 211 = 0 THEN 'upstream_5xx' END AS error_class,
           CASE WHEN i % 97 = 0 THEN 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier' END AS quota_id,
           1 + (i % 97 = 0)::INT AS attempts, 0 AS retries, (i % 97 = 0)::INT AS rotations,
           (i % 97 = 0)::INT AS upstream_429s,
           5 + (hash(i) % 2000) / 10.0 AS latency_ms, 4 + (hash(i) % 2000) / 10.0 AS upstream_ms,
           2 + (hash(i) % 500) / 10.0 AS ttfb_ms, 1.0 AS overhead_ms,
           100 + i % 900 AS prompt_tokens, 50 + i % 1500 AS candidates_tokens, i % 200 AS thoughts_tokens,
           0 AS cached_tokens, 150 + i % 900 + i % 1500 + i % 200 AS total_tokens,
           400 + i % 3600 AS request_bytes, 200 + i % 6000 AS response_bytes,
           NULL AS risk_score, false AS truncated, NULL AS instance_id
         FROM range({rows}) t(i);
         CHECKPOINT;"
    ))
    .expect("seed");
    println!(
        "seeded {rows} rows in {:.1} s ({} MB on disk)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&path)
            .map(|m| m.len() / 1_000_000)
            .unwrap_or(0)
    );
    drop(conn);

    // 3. Queries as an analyst runs them: the file opened read-only, locked down.
    let conn = audit_db::open(&DbOptions {
        path: path.clone(),
        threads,
        memory_limit: "2GB".into(),
        export_dir: None,
        read_only: true,
        lock_down: true,
    })
    .expect("reopen");
    let limits = QueryLimits {
        max_rows: 1_000_000,
        timeout: Duration::from_secs(120),
    };
    let queries = [
        (
            "per-day, per-user token sum (all days, all users)",
            "SELECT day, user_id, sum(total_tokens) AS tokens FROM requests GROUP BY day, user_id",
        ),
        (
            "one user's tokens per day",
            "SELECT day, sum(total_tokens) FROM requests WHERE user_id = 'user-42' GROUP BY day ORDER BY day",
        ),
        (
            "view usage_by_user_model_day, one day",
            "SELECT * FROM usage_by_user_model_day WHERE day = DATE '2026-10-01'",
        ),
        (
            "view latency_by_key_model (p50/p95), one day",
            "SELECT * FROM latency_by_key_model WHERE day = DATE '2026-10-01'",
        ),
        ("view top_users", "SELECT * FROM top_users LIMIT 10"),
    ];
    for (name, sql) in queries {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            let r = audit_db::query(&conn, sql, limits).expect("query");
            n = r.rows.len();
            times.push(r.elapsed_ms);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name}: median {:.0} ms, best {:.0} ms ({n} rows, {threads} threads)",
            times[2], times[0]
        );
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gp-sql-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
