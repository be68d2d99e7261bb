//! Several gateways sharing one real `redis-server`: limits hold across instances, the instances
//! see each other, and Redis away (at startup or killed under load) never fails a call.

use std::time::Duration;

use gemini_proxy_tests::*;

const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

/// A gateway in the cluster on `redis_url`, limiting each client IP to `rpm` calls a minute.
fn member(redis_url: &str, id: &str, prefix: &str, rpm: u32) -> Harness {
    member_of(redis_url, id, prefix, rpm, None)
}

/// Exact counts need Redis to answer: on a loaded test machine a call may wait longer for it
/// than the 50 ms default.
const PATIENT: &str = "op_timeout: 1s, ";

/// Like [`member`], sending upstream to `upstream` (so that instances share every setting).
fn member_of(redis_url: &str, id: &str, prefix: &str, rpm: u32, upstream: Option<&str>) -> Harness {
    let extra = format!(
        "pool: {{ state_file: \"\" }}\npipeline:\n  - rate_limit: {{ per_ip: {{ rpm: {rpm} }} }}\n  - key_select\ncluster: {{ redis: \"{redis_url}\", instance_id: {id}, key_prefix: \"{prefix}\", {PATIENT}fallback_instances: 3 }}\n"
    );
    let upstream = upstream.map(str::to_string);
    Harness::start_with(&[("a", "valid-a", 1)], &extra, move |text| {
        if let Some(u) = upstream {
            set_upstream(text, &u);
        }
    })
}

/// Sends `n` calls at once, spread round robin over `gateways`; the statuses.
async fn spread(gateways: &[&Harness], n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let h = gateways[i % gateways.len()];
        let (client, url) = (h.client.clone(), h.url(GENERATE));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header(CLIENT.0, CLIENT.1)
                .body(gen_body(&format!("c{i}")))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(statuses: &[u16], s: u16) -> usize {
    statuses.iter().filter(|&&x| x == s).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_one_limit_exactly() {
    let redis = RedisServer::start();
    let gws: Vec<Harness> = (1..=3)
        .map(|i| member(&redis.url(), &format!("gw-{i}"), "exact:", 30))
        .collect();
    let refs: Vec<&Harness> = gws.iter().collect();
    let statuses = spread(&refs, 90).await;
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 60, "{statuses:?}");
    let upstream: usize = gws.iter().map(|g| g.mock.requests().len()).sum();
    assert_eq!(upstream, 30, "refused calls never reach the upstream");
    for g in &gws {
        let h = g.admin_json("/health").await;
        assert_eq!(h["cluster"]["degraded"], false, "{h}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_instances_see_each_other_and_the_password_stays_hidden() {
    let redis = RedisServer::start();
    let first = member(&redis.url(), "gw-1", "live:", 1000);
    let upstream = first.mock.base_url();
    let mut gws = vec![first];
    for i in 2..=3 {
        gws.push(member_of(
            &redis.url(),
            &format!("gw-{i}"),
            "live:",
            1000,
            Some(&upstream),
        ));
    }
    let mut listed = serde_json::Value::Null;
    for _ in 0..50 {
        listed = gws[0].admin_json("/api/cluster").await;
        if listed["instances"].as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<&str> = listed["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["instance_id"].as_str())
        .collect();
    assert_eq!(ids, ["gw-1", "gw-2", "gw-3"], "{listed}");
    // Their files differ (ports, ids), the settings they share do not.
    assert_eq!(listed["config_drift"], false, "{listed}");
    for i in listed["instances"].as_array().unwrap() {
        assert!(
            i["config_sha256"].as_str().is_some_and(|h| h.len() == 64),
            "{i}"
        );
        assert!(
            i["started_at"].as_u64().is_some() && i["in_flight"].is_number(),
            "{i}"
        );
    }
    // The password is nowhere an admin or a monitor can read.
    for path in [
        "/api/config",
        "/health",
        "/api/cluster",
        "/metrics",
        "/api/config/history",
    ] {
        let text = gws[1].admin_text(path).await;
        assert!(
            !text.contains(&redis.password),
            "{path} shows the Redis password"
        );
    }
    assert_eq!(
        gws[1].admin_json("/api/config").await["config"]["cluster"]["redis"],
        "<redacted>"
    );
    // An instance that stops drops out of the list.
    gws.pop();
    for _ in 0..80 {
        let l = gws[0].admin_json("/api/cluster").await;
        if l["instances"].as_array().map_or(0, Vec::len) == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a stopped instance is still listed");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_away_at_startup_means_degraded_not_down() {
    // Nothing listens there: the gateway starts and serves with its share of the limit.
    let url = format!("redis://:pw@127.0.0.1:{}/0", free_port());
    let g = member(&url, "alone", "away:", 30);
    let statuses = spread(&[&g], 20).await;
    assert_eq!(
        count(&statuses, 200),
        10,
        "30 a minute over 3 instances: {statuses:?}"
    );
    assert_eq!(count(&statuses, 429), 10, "{statuses:?}");
    let h = g.admin_json("/health").await;
    assert_eq!(h["cluster"]["degraded"], true, "{h}");
    assert!(h["cluster"]["redis_errors"].as_u64().unwrap() >= 1, "{h}");
    let m = g.admin_text("/metrics").await;
    assert!(m.contains("cluster_degraded 1"), "{m}");
    assert_eq!(
        g.admin_json("/api/cluster").await["error"]["code"],
        503,
        "the list needs Redis"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_under_load_fails_no_call_and_the_count_converges() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    // A limit under 128 per instance: every call is decided in Redis (none from a grant), so
    // what was admitted while it was away is what the instances replay.
    let gws: Vec<Harness> = (1..=2)
        .map(|i| member(&redis.url(), &format!("k-{i}"), "kill:", 250))
        .collect();
    let refs: Vec<&Harness> = gws.iter().collect();
    let load = {
        let refs: Vec<String> = refs.iter().map(|h| h.url(GENERATE)).collect();
        let client = gws[0].client.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..200 {
                let r = client
                    .post(&refs[i % refs.len()])
                    .header(CLIENT.0, CLIENT.1)
                    .body(gen_body("k"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(r);
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.kill();
    let statuses = load.await.unwrap();
    assert_eq!(count(&statuses, 200), 200, "no call fails: {statuses:?}");
    assert_eq!(
        gws[0].admin_json("/health").await["cluster"]["degraded"],
        true
    );
    // Back on the same port: the instances use it again.
    let redis = RedisServer::start_on(port);
    let _ = spread(&refs, 4).await;
    for _ in 0..100 {
        let _ = spread(&refs, 2).await;
        let all_back = {
            let mut back = true;
            for g in &gws {
                back &= g.admin_json("/health").await["cluster"]["degraded"] == false;
            }
            back
        };
        if all_back {
            // What the instances admitted while Redis was away is counted there now.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let fields = redis.cli(&["HGETALL", "kill:rl:ip:127.0.0.1"]);
            let lines: Vec<&str> = fields.lines().collect();
            let replayed: u64 = lines
                .chunks(2)
                .filter(|kv| kv[0].starts_with("r:"))
                .map(|kv| kv[1].parse::<u64>().unwrap_or(0))
                .sum();
            assert!(replayed >= 50, "replayed {replayed}: {fields}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the instances never used Redis again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_redis_costs_a_call_at_most_the_time_budget() {
    let redis = RedisServer::start();
    // The default budget (50 ms), which this test measures.
    let extra = format!(
        "pool: {{ state_file: \"\" }}\npipeline:\n  - rate_limit: {{ per_ip: {{ rpm: 1000 }} }}\n  - key_select\ncluster: {{ redis: \"{}\", instance_id: slow, key_prefix: \"slow:\" }}\n",
        redis.url()
    );
    let g = Harness::start_with(&[("a", "valid-a", 1)], &extra, |_| {});
    assert_eq!(spread(&[&g], 3).await, [200, 200, 200]);
    // What the first calls were granted ahead has run out: the next ones need Redis.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Redis stops answering anyone for 3 s.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "ALL"]), "OK");
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        assert_eq!(g.generate("while slow").await.status(), 200);
        // The 50 ms budget plus the call itself, with room for a loaded machine.
        assert!(
            t.elapsed() < Duration::from_millis(800),
            "{:?}",
            t.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls did not wait for Redis"
    );
    assert_eq!(g.admin_json("/health").await["cluster"]["degraded"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_another_type_in_redis_degrades_instead_of_failing() {
    let redis = RedisServer::start();
    let g = member(&redis.url(), "odd", "odd:", 1000);
    assert_eq!(spread(&[&g], 1).await, [200]);
    // Whatever wrote it, the counter of this caller is now a plain string.
    let keys = redis.cli(&["--scan", "--pattern", "odd:rl:*"]);
    let key = keys.lines().next().expect("a counter").to_string();
    assert_eq!(redis.cli(&["SET", &key, "not-a-hash"]), "OK");
    let statuses = spread(&[&g], 5).await;
    assert_eq!(statuses, [200; 5], "answered from local state");
    let h = g.admin_json("/health").await;
    assert!(h["cluster"]["redis_errors"].as_u64().unwrap() >= 1, "{h}");
    let c = g.admin_json("/api/cluster").await;
    let last = c["last_error"]
        .as_str()
        .expect("the error is shown to operators");
    assert!(last.contains("WRONGTYPE") || last.contains("Script"), "{c}");
    assert!(!last.contains("not-a-hash"), "{c}");
    // The public page says that something is wrong, not where Redis is or what it said.
    assert!(h["cluster"].get("redis").is_none() && h["cluster"].get("last_error").is_none());
}

/// A gateway in the cluster with `limits` for each client IP.
fn limited(redis: &RedisServer, id: &str, prefix: &str, limits: &str) -> Harness {
    let extra = format!(
        "pool: {{ state_file: \"\" }}\npipeline:\n  - rate_limit: {{ per_ip: {limits} }}\n  - key_select\ncluster: {{ redis: \"{}\", instance_id: {id}, key_prefix: \"{prefix}\", op_timeout: 1s }}\n",
        redis.url()
    );
    Harness::start_with(&[("a", "valid-a", 1)], &extra, |_| {})
}

/// `n` calls at once whose bodies arrive chunked (no length known at admission); the statuses.
fn chunked_burst(port: u16, n: usize, body_bytes: usize) -> Vec<u16> {
    use std::io::{Read, Write};
    let mut conns: Vec<std::net::TcpStream> = (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            write!(s, "POST {GENERATE} HTTP/1.1\r\nhost: x\r\nx-goog-api-key: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n", CLIENT.1).unwrap();
            s
        })
        .collect();
    // Every call is admitted on its estimate before any body arrives.
    std::thread::sleep(Duration::from_millis(500));
    let text = "x".repeat(body_bytes);
    let body =
        format!("{{\"contents\":[{{\"role\":\"user\",\"parts\":[{{\"text\":\"{text}\"}}]}}]}}");
    for s in &mut conns {
        write!(s, "{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).unwrap();
    }
    conns
        .iter_mut()
        .map(|s| {
            let mut raw = String::new();
            let _ = s.read_to_string(&mut raw);
            raw.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_bodies_are_charged_in_redis_before_they_go_upstream() {
    let redis = RedisServer::start();
    let g = limited(&redis, "chunk", "chunk:", "{ tpm: 2000 }");
    let port = g.gateway.proxy_addr.port();
    // Eight bodies of about 1,400 tokens each against 2,000 a minute: one fits.
    let statuses = tokio::task::spawn_blocking(move || chunked_burst(port, 8, 5600))
        .await
        .unwrap();
    assert_eq!(count(&statuses, 200), 1, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 7, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_stream_counts_against_concurrent_streams_in_redis() {
    let redis = RedisServer::start();
    let gws: Vec<Harness> = (1..=2)
        .map(|i| {
            limited(
                &redis,
                &format!("s-{i}"),
                "streams:",
                "{ concurrent_streams: 2 }",
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let g = &gws[i % 2];
        let (client, url) = (g.client.clone(), g.url("/v1beta/openai/chat/completions"));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("authorization", format!("Bearer {}", CLIENT.1))
                .header("content-type", "application/json")
                .body(r#"{"model":"mock-slow-1500","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 3, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_counts_each_call_once() {
    let redis = RedisServer::start();
    let gws: Vec<Harness> = (1..=2)
        .map(|i| limited(&redis, &format!("p-{i}"), "once:", "{ rpm: 30 }"))
        .collect();
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2000", "ALL"]), "OK");
    let refs: Vec<&Harness> = gws.iter().collect();
    assert_eq!(spread(&refs, 10).await, [200; 10]);
    // Redis runs what waited, the instances replay what they admitted alone: once each.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let fields = redis.cli(&["HGETALL", "once:rl:ip:127.0.0.1"]);
    let lines: Vec<&str> = fields.lines().collect();
    let counted: u64 = lines
        .chunks(2)
        .filter(|kv| kv[0].starts_with("r:"))
        .map(|kv| kv[1].parse::<u64>().unwrap_or(0))
        .sum();
    assert_eq!(counted, 10, "{fields}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_audit_row_and_line_names_its_instance() {
    let redis = RedisServer::start();
    let extra = format!(
        "pool: {{ state_file: \"\" }}\naudit: {{ flush_interval: 50ms }}\ncluster: {{ redis: \"{}\", instance_id: gw-7, key_prefix: \"audit:\" }}\n",
        redis.url()
    );
    let g = Harness::start_with(&[("a", "valid-a", 1)], &extra, |_| {});
    assert_eq!(g.generate("hello").await.status(), 200);
    let mut rows = serde_json::Value::Null;
    for _ in 0..50 {
        let r = g
            .client
            .post(g.admin("/api/sql"))
            .json(&serde_json::json!({"sql": "SELECT instance_id, count(*) AS n FROM requests GROUP BY 1 UNION ALL SELECT instance_id, count(*) FROM config_changes GROUP BY 1"}))
            .send()
            .await
            .unwrap();
        rows = json_of(r).await.1["rows"].clone();
        if rows.as_array().is_some_and(|r| r.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = rows.as_array().expect("rows").clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r[0], "gw-7", "{rows:?}");
    }
    let dir = g
        .config_path
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let log = std::fs::read_to_string(dir.join("logs/audit.log")).unwrap_or_default();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l["instance_id"] == "gw-7"), "{log}");
}
