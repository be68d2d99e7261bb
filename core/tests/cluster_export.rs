//! Two instances export their audit trails, hour by hour, into one shared folder; one DuckDB
//! query over the files answers for the whole cluster (the query the README shows).

use std::time::{Duration, Instant};

use gemini_proxy_tests::{Harness, RedisServer};

fn member(redis: &RedisServer, id: &str, export: &std::path::Path) -> Harness {
    let extra = format!(
        "pool: {{ state_file: \"\" }}\naudit: {{ flush_interval: 50ms, export_every: 1s, export_dir: \"{}\" }}\ncluster: {{ redis: \"{}\", instance_id: {id}, key_prefix: \"export:\" }}\n",
        export.display(),
        redis.url()
    );
    Harness::start_with(&[("a", "valid-a", 1)], &extra, |_| {})
}

#[tokio::test(flavor = "multi_thread")]
async fn one_query_over_the_exports_answers_for_every_instance() {
    let redis = RedisServer::start();
    let shared = tempfile::tempdir().unwrap();
    let (a, b) = (
        member(&redis, "gw-a", shared.path()),
        member(&redis, "gw-b", shared.path()),
    );
    for _ in 0..3 {
        assert_eq!(a.generate("from a").await.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(b.generate("from b").await.status(), 200);
    }
    let glob = format!("{}/requests/*/*/*/*.parquet", shared.path().display());
    let query = format!(
        "SELECT instance, count(*) FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY instance ORDER BY instance"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<(String, i64)> = {
            let db = duckdb::Connection::open_in_memory().unwrap();
            match db.prepare(&query) {
                Ok(mut st) => st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map(|rows| rows.filter_map(Result::ok).collect())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            }
        };
        if got == [("gw-a".to_string(), 3), ("gw-b".to_string(), 2)] {
            break;
        }
        assert!(Instant::now() < deadline, "exports answered {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each row names its instance as its folder does.
    let db = duckdb::Connection::open_in_memory().unwrap();
    let mismatched: i64 = db
        .query_row(
            &format!("SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true) WHERE instance_id <> instance"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mismatched, 0);
}
