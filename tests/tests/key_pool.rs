//! The key pool against the mock's per-key faults: retries on another key, cooldowns, dead
//! keys, exhaustion, byte-identical resends, SSE failover, counts under concurrency, restarts.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use gemini_proxy_tests::*;
use serde_json::Value;

/// Fast retries for tests.
const FAST: &str = "pool: { backoff: 10ms }\n";

const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

fn keys_of(h: &Harness) -> Vec<String> {
    h.mock
        .requests()
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect()
}

async fn key_report(h: &Harness, id: &str) -> Value {
    let v = h.admin_json("/api/keys").await;
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no key {id} in {v}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn per_minute_429_moves_the_call_and_rests_the_project_for_the_retry_delay() {
    let h = Harness::start_with(
        &[("a", "minute429-a", 1), ("b", "valid-b", 1)],
        FAST,
        |_| {},
    );
    for i in 0..6 {
        let (s, body) = json_of(h.generate(&format!("q{i}")).await).await;
        assert_eq!(s, 200, "{body}");
    }
    let keys = keys_of(&h);
    assert_eq!(
        keys.iter().filter(|k| *k == "minute429-a").count(),
        1,
        "a is tried once, then rests: {keys:?}"
    );
    assert_eq!(keys.iter().filter(|k| *k == "valid-b").count(), 6);
    let a = key_report(&h, "a").await;
    assert_eq!(a["state"], "cooling_down");
    let cd = &a["cooldowns"][0];
    assert_eq!(cd["scope"], "project");
    assert_eq!(cd["model"], "gemini-2.5-flash");
    assert!(cd["quota_id"].as_str().unwrap().contains("PerMinute"));
    // The mock's retryDelay is 26s.
    let left = cd["remaining_s"].as_u64().unwrap();
    assert!((24..=27).contains(&left), "{left}");
    // Another model is not affected: a is asked again for gemini-2.5-pro.
    for _ in 0..2 {
        let (s, _) = h
            .call(
                "POST",
                "/v1beta/models/gemini-2.5-pro:generateContent",
                CLIENT,
                Some(gen_body("pro")),
            )
            .await;
        assert_eq!(s, 200);
    }
    assert!(
        h.mock
            .requests()
            .iter()
            .any(|r| r.path.contains("gemini-2.5-pro") && r.key.as_deref() == Some("minute429-a")),
        "{:?}",
        keys_of(&h)
    );
    let metrics = h.admin_text("/metrics").await;
    assert!(
        metrics.contains("key_retries_total{reason=\"quota_minute\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("api_key_state{key_id=\"a\",state=\"cooling_down\"} 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn per_day_429_rests_the_project_until_midnight_pacific() {
    let h = Harness::start_with(&[("a", "day429-a", 1), ("b", "valid-b", 1)], FAST, |_| {});
    for _ in 0..3 {
        assert_eq!(h.generate("x").await.status(), 200);
    }
    assert_eq!(keys_of(&h).iter().filter(|k| *k == "day429-a").count(), 1);
    let a = key_report(&h, "a").await;
    let until = a["cooldowns"][0]["until"].as_u64().unwrap();
    let want = gemini_proxy_core::util::clock::unix_secs(
        gemini_proxy_core::util::clock::next_pacific_midnight(SystemTime::now()),
    );
    assert!(until.abs_diff(want) <= 2, "until {until}, want {want}");
    assert!(until > unix_now() + 60, "not the misleading 48s retryDelay");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_key_is_disabled_and_never_tried_again() {
    let h = Harness::start_with(
        &[("bad", "invalid-bad", 5), ("good", "valid-good", 1)],
        FAST,
        |_| {},
    );
    for i in 0..8 {
        let (s, body) = json_of(h.generate(&format!("q{i}")).await).await;
        assert_eq!(s, 200, "{body}");
    }
    let keys = keys_of(&h);
    assert_eq!(
        keys.iter().filter(|k| *k == "invalid-bad").count(),
        1,
        "{keys:?}"
    );
    let bad = key_report(&h, "bad").await;
    assert_eq!(bad["state"], "disabled");
    assert_eq!(bad["dead_reason"], "invalid");
    assert!(bad["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let text = h.admin_text("/api/keys").await;
    assert!(
        !text.contains("invalid-bad") && !text.contains("valid-good"),
        "no secrets"
    );
    let metrics = h.admin_text("/metrics").await;
    assert!(metrics.contains("keys_disabled_total{reason=\"invalid\"} 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn overloaded_503_is_retried_and_penalises_no_key() {
    let h = Harness::start_with(&[("a", "valid-a", 1), ("b", "valid-b", 1)], FAST, |_| {});
    let r = h
        .post(
            "/v1beta/models/mock-overloaded:generateContent",
            gen_body("x"),
        )
        .await;
    assert_eq!(r.status(), 503);
    let (_, body) = json_of(r).await;
    assert_eq!(
        body["error"]["status"], "UNAVAILABLE",
        "Google's body passes through"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overloaded")
    );
    assert_eq!(h.mock.requests().len(), 3, "one try and two retries");
    for id in ["a", "b"] {
        let k = key_report(&h, id).await;
        assert_eq!(k["state"], "active", "{k}");
        assert_eq!(k["breaker"], "closed");
        assert!(k["cooldowns"].as_array().unwrap().is_empty());
    }
    // Both keys still serve.
    for _ in 0..2 {
        assert_eq!(h.generate("ok").await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_resting_gives_429_with_the_earliest_recovery() {
    let h = Harness::start_with(
        &[("a", "minute429-a", 1), ("b", "bare429-b", 1)],
        FAST,
        |_| {},
    );
    let r = h.generate("x").await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, body) = json_of(r).await;
    assert_eq!(body["error"]["code"], 429);
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    // b rests ~5s (bare 429, jittered ±25%), a 26s: the earliest is b's.
    assert!((3..=8).contains(&retry_after), "{retry_after}");
    assert_eq!(h.mock.requests().len(), 2);
    // While both rest, calls are refused without touching the upstream.
    let r = h.generate("y").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(h.mock.requests().len(), 2);
    // OpenAI clients get their own error shape.
    let (s, body) = h
        .call(
            "POST",
            "/v1beta/openai/chat/completions",
            BEARER,
            Some(
                r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"x"}]}"#.into(),
            ),
        )
        .await;
    assert_eq!(s, 429);
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_dead_keys_gives_503() {
    let h = Harness::start_with(&[("a", "invalid-a", 1), ("b", "leaked-b", 1)], FAST, |_| {});
    let (s, body) = json_of(h.generate("x").await).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    let (s, _) = json_of(h.generate("y").await).await;
    assert_eq!(s, 503);
    assert_eq!(h.mock.requests().len(), 2, "dead keys are not asked again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_1_mib_body_is_byte_identical_at_the_mock() {
    let h = Harness::start_with(
        &[("a", "minute429-a", 1), ("b", "valid-b", 1)],
        FAST,
        |_| {},
    );
    let text: String = "0123456789abcdef".repeat(65_536);
    let body = gen_body(&text);
    assert!(body.len() > 1024 * 1024);
    let want = sha256_hex(body.as_bytes());
    let r = h
        .client
        .post(h.url(GENERATE))
        .header(CLIENT.0, CLIENT.1)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].key.as_deref(), Some("minute429-a"));
    assert_eq!(reqs[1].key.as_deref(), Some("valid-b"));
    for r in &reqs {
        assert_eq!(r.body_len, body.len());
        assert_eq!(r.body_sha256, want);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_call_fails_over_before_its_first_byte() {
    let h = Harness::start_with(&[("a", "bare429-a", 1), ("b", "valid-b", 1)], FAST, |_| {});
    let r = h
        .post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            gen_body("stream"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut text = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        text.extend_from_slice(&c.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("data: "), "no error event first: {text}");
    assert!(text.contains("\"finishReason\""));
    assert_eq!(keys_of(&h), vec!["bare429-a", "valid-b"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_with_racing_cooldowns_all_succeed_and_lose_no_count() {
    // Two projects with a real limit of 15 calls a minute each, and an unlimited key.
    let h = Harness::start_with(
        &[
            ("a", "rpm-15-a", 1),
            ("b", "rpm-15-b", 1),
            ("c", "valid-c", 1),
        ],
        FAST,
        |_| {},
    );
    h.mock.set_recording(true);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = h.client.clone();
        let url = h.url(GENERATE);
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header(CLIENT.0, CLIENT.1)
                .body(gen_body(&format!("c{i}")))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 200, "every call is served by some key");
    let reqs = h.mock.requests();
    let served = |k: &str| reqs.iter().filter(|r| r.key.as_deref() == Some(k)).count() as u64;
    // A call leaves the in-flight count just after its client got the last byte: wait for the
    // last ones to settle, then every count must add up.
    let mut keys = h.admin_json("/api/keys").await;
    for _ in 0..100 {
        let busy: u64 = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["in_flight"].as_u64().unwrap())
            .sum();
        if busy == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        keys = h.admin_json("/api/keys").await;
    }
    let mut total_requests = 0;
    for k in keys["keys"].as_array().unwrap() {
        total_requests += k["requests"].as_u64().unwrap();
        assert_eq!(k["in_flight"], 0, "{k}");
    }
    assert_eq!(
        total_requests,
        reqs.len() as u64,
        "pool counts every attempt"
    );
    let metrics = h.admin_text("/metrics").await;
    let usage: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("api_key_usage{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        usage,
        reqs.len() as u64,
        "api_key_usage counts every attempt"
    );
    // The limited projects served at most their limit; c took the rest.
    assert!(served("rpm-15-a") >= 15 && served("rpm-15-b") >= 15);
    let successes: u64 = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["successes"].as_u64().unwrap())
        .sum();
    assert_eq!(successes, 200);
    for id in ["a", "b"] {
        let k = key_report(&h, id).await;
        assert_eq!(k["state"], "cooling_down", "{k}");
        assert_eq!(k["successes"], 15, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_dead_keys_dead() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("pool-state.json");
    let extra = format!(
        "pool: {{ backoff: 10ms, state_file: \"{}\" }}\n",
        state.display()
    );
    let keys = [("bad", "invalid-bad", 5), ("good", "valid-good", 1)];
    {
        let h = Harness::start_with(&keys, &extra, |_| {});
        assert_eq!(h.generate("x").await.status(), 200);
        assert_eq!(keys_of(&h), vec!["invalid-bad", "valid-good"]);
    } // gateway stops and saves
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains("\"bad\"") && saved.contains("invalid"),
        "{saved}"
    );
    assert!(
        !saved.contains("invalid-bad"),
        "the state file holds no secret"
    );
    let h = Harness::start_with(&keys, &extra, |_| {});
    assert_eq!(key_report(&h, "bad").await["state"], "disabled");
    for _ in 0..4 {
        assert_eq!(h.generate("after restart").await.status(), 200);
    }
    assert!(keys_of(&h).iter().all(|k| k == "valid-good"));
    // A new secret under the same id is a new key.
    let h2 = Harness::start_with(
        &[("bad", "valid-replaced", 5), ("good", "valid-good", 1)],
        &extra,
        |_| {},
    );
    assert_eq!(key_report(&h2, "bad").await["state"], "active");
    drop(h);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_midstream_error_passes_through_and_counts_against_the_key() {
    let h = Harness::start_with(&[("a", "valid-a", 1)], FAST, |_| {});
    let r = h
        .post(
            "/v1beta/models/mock-midstream-error:streamGenerateContent?alt=sse",
            gen_body("x"),
        )
        .await;
    assert_eq!(r.status(), 200, "the head was already sent");
    let text = r.text().await.unwrap_or_default();
    assert!(text.contains("\"error\""), "{text}");
    let a = key_report(&h, "a").await;
    assert_eq!(a["errors"]["midstream_error"], 1, "{a}");
    assert_eq!(a["successes"], 0);
    assert_eq!(a["state"], "active", "one error does not disable a key");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_timeouts_are_retried_only_on_routes_that_opt_in() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1), ("b", "valid-b", 1)],
        "  timeouts: { read: 300ms }\npool: { backoff: 10ms, state_file: \"\", retry_read_timeouts: [countTokens] }\n",
        |_| {},
    );
    // generateContent did not opt in: one attempt, then 504.
    let (s, body) = h
        .call(
            "POST",
            "/v1beta/models/mock-slow-1000:generateContent",
            CLIENT,
            Some(gen_body("slow")),
        )
        .await;
    assert_eq!(s, 504, "{body}");
    assert_eq!(h.mock.requests().len(), 1);
    // countTokens opted in: retried (1 + max_retries attempts), then 504.
    h.mock.clear();
    let (s, _) = h
        .call(
            "POST",
            "/v1beta/models/mock-slow-1000:countTokens",
            CLIENT,
            Some(gen_body("slow")),
        )
        .await;
    assert_eq!(s, 504);
    assert_eq!(h.mock.requests().len(), 3);
}
