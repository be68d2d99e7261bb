//! The DuckDB audit database: one row per call with the tokens the client saw, the analysts'
//! SQL endpoint (read-only, limited, JSON or CSV), the views on a seeded data set, exports.

use std::time::Duration;

use gemini_proxy_tests::*;
use serde_json::{Value, json};

/// The last `usageMetadata` (or OpenAI `usage`) in a body as the client received it:
/// (prompt, candidates, total).
fn usage_of(body: &str) -> (u64, u64, u64) {
    let mut last = None;
    let mut take = |v: &Value| {
        if let Some(u) = v.get("usageMetadata") {
            last = Some((
                u["promptTokenCount"].as_u64().unwrap_or(0),
                u["candidatesTokenCount"].as_u64().unwrap_or(0),
                u["totalTokenCount"].as_u64().unwrap_or(0),
            ));
        } else if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            last = Some((
                u["prompt_tokens"].as_u64().unwrap_or(0),
                u["completion_tokens"].as_u64().unwrap_or(0),
                u["total_tokens"].as_u64().unwrap_or(0),
            ));
        }
    };
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        match &v {
            Value::Array(items) => items.iter().for_each(&mut take),
            other => take(other),
        }
    } else {
        for line in body.lines() {
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<Value>(data)
            {
                take(&v);
            }
        }
    }
    last.unwrap_or((0, 0, 0))
}

async fn sql(h: &Harness, body: Value) -> (u16, Value) {
    let r = h
        .client
        .post(h.admin("/api/sql"))
        .json(&body)
        .send()
        .await
        .unwrap();
    json_of(r).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_call_is_exactly_one_row_with_its_tokens() {
    // `hot` answers 429 with a per-minute quota: the first call per model moves to `ok`.
    let h = Harness::start_with(
        &[
            ("hot", "minute429-DBSECRET-hot", 100),
            ("ok", "valid-DBSECRET-ok", 1),
        ],
        "pool: { state_file: \"\", keys_file: \"\" }\naudit: { flush_interval: 50ms }\npipeline:\n  - audit: { tag_headers: [x-tenant], tags: { env: test } }\n  - key_select\n",
        |_| {},
    );
    let flash = "/v1beta/models/gemini-2.5-flash";
    let calls: Vec<(&str, String, String)> = vec![
        ("retried", format!("{flash}:generateContent"), gen_body("first one is retried")),
        ("plain", format!("{flash}:generateContent"), gen_body("plain")),
        ("sse", format!("{flash}:streamGenerateContent?alt=sse"), gen_body("stream me")),
        ("array", format!("{flash}:streamGenerateContent"), gen_body("json array stream")),
        (
            "openai",
            "/v1beta/openai/chat/completions".into(),
            json!({"model": "gemini-2.5-flash", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "hi from openai"}]})
            .to_string(),
        ),
        ("failed", "/v1beta/models/mock-internal:generateContent".into(), gen_body("x")),
        ("missing", "/v1beta/models/nosuch-model:generateContent".into(), gen_body("x")),
    ];
    let mut seen = Vec::new();
    for (id, path, body) in &calls {
        let cred = if path.contains("/openai/") {
            BEARER
        } else {
            CLIENT
        };
        let r = h
            .client
            .post(h.url(path))
            .header(cred.0, cred.1)
            .header("x-request-id", *id)
            .header("x-tenant", if *id == "plain" { "acme" } else { "" })
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        seen.push((id.to_string(), status, usage_of(&text)));
    }
    // A call's row is queued as it ends, which may be just after its answer reached us.
    let (mut s, mut v) = (0, Value::Null);
    for _ in 0..40 {
        (s, v) = sql(
            &h,
            json!({"sql": "SELECT request_id, status, stream, prompt_tokens, candidates_tokens, total_tokens, key_id, rotations, retries, upstream_429s, quota_id, api, method, path FROM requests ORDER BY ts"}),
        )
        .await;
        if s != 200 || v["rows"].as_array().is_some_and(|r| r.len() >= calls.len()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(s, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), calls.len(), "exactly one row per call: {v:#}");
    assert_eq!(v["columns"][0], "request_id");
    for (id, status, (prompt, cand, total)) in &seen {
        let row = rows
            .iter()
            .find(|r| r[0] == id.as_str())
            .unwrap_or_else(|| panic!("{id} has no row"));
        assert_eq!(row[1], *status, "{id}: {row}");
        assert_eq!(row[3], *prompt, "{id} prompt tokens: {row}");
        assert_eq!(row[4], *cand, "{id} candidates tokens: {row}");
        assert_eq!(row[5], *total, "{id} total tokens: {row}");
    }
    let row = |id: &str| rows.iter().find(|r| r[0] == id).unwrap().clone();
    assert!(
        seen.iter().filter(|s| s.1 == 200).all(|s| s.2.2 > 0),
        "{seen:?}"
    );
    let retried = row("retried");
    assert_eq!(retried[6], "ok");
    assert_eq!(retried[7], 1, "one rotation: {retried}");
    assert_eq!(retried[9], 1, "one 429 from Google: {retried}");
    assert_eq!(
        retried[10],
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    );
    assert_eq!(row("plain")[7], 0);
    assert_eq!(row("sse")[2], true);
    assert_eq!(row("array")[2], true);
    assert_eq!(row("openai")[11], "openai");
    assert_eq!(row("plain")[12], "POST");
    assert_eq!(row("plain")[13], format!("{flash}:generateContent"));
    assert_eq!(row("failed")[1], 500);
    assert!(row("failed")[8].as_u64().unwrap() >= 1, "retried on 500");
    assert_eq!(row("missing")[1], 404);

    // Tags from the `audit` stage, one row each.
    let (_, v) = sql(
        &h,
        json!({"sql": "SELECT tag, count(*), max(value) FILTER (WHERE request_id = 'plain') FROM request_tags GROUP BY tag ORDER BY tag"}),
    )
    .await;
    assert_eq!(
        v["rows"],
        json!([["env", calls.len(), "test"], ["tenant", 1, "acme"]]),
        "{v}"
    );

    // CSV, row limits.
    let r = h
        .client
        .post(h.admin("/api/sql"))
        .json(&json!({"sql": "SELECT request_id, status FROM requests ORDER BY request_id", "format": "csv", "max_rows": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-truncated"], "true");
    assert_eq!(
        r.text().await.unwrap(),
        "request_id,status\narray,200\nfailed,500\n"
    );

    // Nothing written is secret.
    let (_, all) = sql(&h, json!({"sql": "SELECT * FROM requests"})).await;
    let (_, ev) = sql(&h, json!({"sql": "SELECT * FROM security_events"})).await;
    let text = format!("{all}{ev}");
    assert!(
        !text.contains("DBSECRET"),
        "a pool key reached the database"
    );
    assert!(
        !text.contains("client-token"),
        "a client credential reached the database"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sql_endpoint_is_read_only_and_bounded() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1)],
        "pool: { state_file: \"\", keys_file: \"\" }\naudit: { sql_timeout: 300ms, sql_max_rows: 5 }\n",
        |_| {},
    );
    h.generate("x").await;
    for bad in [
        "DELETE FROM requests",
        "INSERT INTO requests SELECT * FROM requests",
        "UPDATE requests SET status = 200",
        "DROP VIEW top_users",
        "CREATE TABLE x AS SELECT 1",
        "ATTACH '/tmp/other.db' AS o",
        "COPY requests TO '/tmp/stolen.csv'",
        "INSTALL httpfs",
        "LOAD parquet",
        "SET enable_external_access = true",
        "PRAGMA database_list",
        "SELECT 1; DELETE FROM requests",
        "WITH x AS (SELECT 1) DELETE FROM requests",
        "CALL checkpoint()",
        // DuckDB's E'' strings and dollar quotes hide a `;` from a lexical check.
        "SELECT E'\\'' ; COMMIT ; DELETE FROM requests ; -- '",
        "SELECT $$x$$; COMMIT; DELETE FROM requests",
        "EXPLAIN ANALYZE DELETE FROM requests",
    ] {
        let (s, v) = sql(&h, json!({ "sql": bad })).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    }
    // File functions fail inside a SELECT: the instance has no file access.
    for bad in [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
    ] {
        let (s, v) = sql(&h, json!({ "sql": bad })).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (s, v) = sql(&h, json!({"sql": "SELECT count(*) FROM requests"})).await;
    assert_eq!((s, v["rows"][0][0].as_u64()), (200, Some(1)), "{v}");
    // Row limit: at most sql_max_rows, even when more are asked for.
    let (_, v) = sql(
        &h,
        json!({"sql": "SELECT * FROM range(100)", "max_rows": 1000}),
    )
    .await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 5);
    assert_eq!(v["truncated"], true);
    // Time limit: a long query is interrupted.
    let started = std::time::Instant::now();
    let (s, v) = sql(
        &h,
        json!({"sql": "SELECT count(*) FROM range(1000000000000) a WHERE a.range % 7 = 3"}),
    )
    .await;
    assert_eq!(s, 504, "{v}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Bad SQL is a clear 400.
    let (s, v) = sql(&h, json!({"sql": "SELECT nope FROM requests"})).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
    // The data is intact and the refusals are on record.
    let (_, v) = sql(&h, json!({"sql": "SELECT count(*) FROM requests"})).await;
    assert_eq!(v["rows"][0][0], 1);
    let (_, v) = sql(
        &h,
        json!({"sql": "SELECT count(*) FROM security_events WHERE event_type = 'AdminAction' AND result = 'Blocked'"}),
    )
    .await;
    assert!(v["rows"][0][0].as_u64().unwrap() >= 14, "{v}");
    // /performance carries overhead percentiles and the anomaly report.
    let perf = h.admin_json("/performance").await;
    assert!(
        perf["overall"]["1m"]["overhead_ms"]["p50"].is_number(),
        "{perf}"
    );
    assert_eq!(perf["anomalies"]["enabled"], true);
    assert!(perf["anomalies"]["active"].as_array().unwrap().is_empty());
    let metrics = h.admin_text("/metrics").await;
    for name in [
        "gateway_overhead_seconds_bucket",
        "audit_queue_depth",
        "audit_db_errors_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    // The schema lists every table and view.
    let schema = h.admin_json("/api/sql/schema").await;
    for rel in [
        "requests",
        "config_changes",
        "security_events",
        "usage_by_user_model_day",
        "quota_usage_by_project_day",
        "rate_limits_by_quota",
        "latency_by_key_model",
        "error_rates",
        "top_users",
    ] {
        assert!(
            schema["relations"][rel].is_array(),
            "{rel} missing: {schema}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn views_answer_right_on_a_seeded_data_set() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1)],
        "pool: { state_file: \"\", keys_file: \"\" }\n",
        |t| {
            *t = t.replace(
                "    - { id: a, key: valid-a, weight: 1 }\n",
                "    - { id: a, key: valid-a, weight: 1, project: p1, limits: { rpd: 100, models: { gemini-2.5-pro: { rpd: 50 } } } }\n",
            )
        },
    );
    let audit = h.gateway.shared.audit.clone().unwrap();
    // Seed through the same writer the proxy uses.
    let seed = |user: &str,
                model: &str,
                key: &str,
                status: u16,
                tokens: u64,
                ms: f64,
                day: &str,
                quota: Option<&str>| {
        let at =
            gemini_proxy_core::util::clock::parse_rfc3339(&format!("{day}T12:00:00Z")).unwrap();
        gemini_proxy_core::audit::AuditEvent::Call(Box::new(gemini_proxy_core::audit::CallAudit {
            at,
            action: format!("POST /v1beta/models/{model}:generateContent"),
            result: if status < 400 { "Success" } else { "Failure" },
            duration_ms: ms,
            request_id: format!("{user}-{model}-{day}-{ms}"),
            user: Some(user.to_string()),
            role: Some("user"),
            model: Some(model.to_string()),
            key_id: Some(key.to_string()),
            project: Some("p1".to_string()),
            status,
            upstream_status: status,
            error_class: (status >= 400).then(|| "upstream_4xx".to_string()),
            attempts: 1,
            upstream_429s: u32::from(status == 429),
            quota_id: quota.map(str::to_string),
            upstream_ms: Some(ms - 1.0),
            ttfb_ms: Some(ms / 2.0),
            prompt_tokens: tokens / 2,
            candidates_tokens: tokens - tokens / 2,
            total_tokens: tokens,
            request_bytes: 10,
            response_bytes: 20,
            ..Default::default()
        }))
    };
    let q = "GenerateRequestsPerDayPerProjectPerModel-FreeTier";
    for e in [
        seed(
            "alice",
            "gemini-2.5-flash",
            "a",
            200,
            100,
            10.0,
            "2026-11-20",
            None,
        ),
        seed(
            "alice",
            "gemini-2.5-flash",
            "a",
            200,
            300,
            20.0,
            "2026-11-20",
            None,
        ),
        seed(
            "alice",
            "gemini-2.5-pro",
            "a",
            200,
            1000,
            30.0,
            "2026-11-20",
            None,
        ),
        seed(
            "bob",
            "gemini-2.5-flash",
            "a",
            429,
            0,
            40.0,
            "2026-11-20",
            Some(q),
        ),
        seed(
            "bob",
            "gemini-2.5-flash",
            "a",
            200,
            50,
            50.0,
            "2026-11-21",
            None,
        ),
    ] {
        audit.record(e);
    }
    let one = |v: &Value| v["rows"].as_array().unwrap().clone();
    let (_, v) = sql(&h, json!({"sql": "SELECT user_id, model, requests, total_tokens, failed FROM usage_by_user_model_day WHERE day = DATE '2026-11-20' ORDER BY user_id, model"})).await;
    assert_eq!(
        one(&v),
        vec![
            json!(["alice", "gemini-2.5-flash", 2, 400, 0]),
            json!(["alice", "gemini-2.5-pro", 1, 1000, 0]),
            json!(["bob", "gemini-2.5-flash", 1, 0, 1]),
        ],
        "{v}"
    );
    // Quota day is Pacific: noon UTC is the same calendar day there.
    let (_, v) = sql(&h, json!({"sql": "SELECT quota_day, model, requests, rpd_limit, rpd_used_pct, upstream_429s FROM quota_usage_by_project_day WHERE project = 'p1' AND quota_day = DATE '2026-11-20' ORDER BY model"})).await;
    assert_eq!(
        one(&v),
        vec![
            json!(["2026-11-20", "gemini-2.5-flash", 3, 100, 3.0, 1]),
            json!(["2026-11-20", "gemini-2.5-pro", 1, 50, 2.0, 0]),
        ],
        "{v}"
    );
    let (_, v) = sql(
        &h,
        json!({"sql": "SELECT quota_id, calls, upstream_429s FROM rate_limits_by_quota"}),
    )
    .await;
    assert_eq!(one(&v), vec![json!([q, 1, 1])], "{v}");
    let (_, v) = sql(&h, json!({"sql": "SELECT requests, p50_ms, p95_ms FROM latency_by_key_model WHERE day = DATE '2026-11-20' AND model = 'gemini-2.5-flash'"})).await;
    // quantile_cont over 10, 20, 40: p50 = 20, p95 = 20 + 0.9 * 20 = 38.
    assert_eq!(one(&v), vec![json!([3, 20.0, 38.0])], "{v}");
    let (_, v) = sql(&h, json!({"sql": "SELECT requests, errors, error_rate, rate_limited FROM error_rates WHERE day = DATE '2026-11-20' AND model = 'gemini-2.5-flash'"})).await;
    assert_eq!(one(&v), vec![json!([3, 1, 0.3333, 1])], "{v}");
    let (_, v) = sql(&h, json!({"sql": "SELECT user_id, requests, total_tokens FROM top_users WHERE user_id IN ('alice', 'bob') ORDER BY total_tokens DESC"})).await;
    assert_eq!(
        one(&v),
        vec![json!(["alice", 3, 1400]), json!(["bob", 2, 50])],
        "{v}"
    );
    // An export through the admin API lands inside audit.export_dir only.
    let r = h
        .client
        .post(h.admin("/api/export"))
        .json(&json!({"since": "2026-11-21", "out": "nightly"}))
        .send()
        .await
        .unwrap();
    let (s, rep) = json_of(r).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(rep["rows"]["requests"].as_u64(), Some(1), "{rep}");
    let dir = h
        .config_path
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .join("data/export/nightly");
    assert!(dir.join("requests/day=2026-11-21/data_0.parquet").exists());
    assert!(!dir.join("requests/day=2026-11-20").exists());
    for out in ["../escape", "/tmp/abs"] {
        let r = h
            .client
            .post(h.admin("/api/export"))
            .json(&json!({"since": "2026-11-21", "out": out}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{out}");
    }
}
