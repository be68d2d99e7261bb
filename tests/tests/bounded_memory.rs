//! A flood of client-chosen names and addresses leaves the gateway's memory flat: every call has
//! a new model name, a new IPv6 address and half of them fail authentication, and the resident
//! size after the flood stays near what it was after a warm-up of the same traffic.
//! (One test in its own binary: the resident size is the process's.)

use std::time::Duration;

use futures_util::StreamExt;
use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::*;

const SECRET: &str = "Bounded-memory-JWT-secret-0123456789-abc!";

fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / 1e6
}

/// Calls `from..to`; the mock's own record of them is dropped as it goes (it is not the
/// gateway's memory).
async fn flood(h: &Harness, token: &str, from: usize, to: usize) {
    for start in (from..to).step_by(1000) {
        flood_batch(h, token, start, (start + 1000).min(to)).await;
        h.mock.clear();
    }
}

async fn flood_batch(h: &Harness, token: &str, from: usize, to: usize) {
    futures_util::stream::iter(from..to)
        .for_each_concurrent(32, |i| {
            let token = token.to_string();
            async move {
                // Names of the longest allowed length, each new.
                let model = format!("m{i:0>127}");
                let cred = if i % 2 == 0 {
                    token
                } else {
                    format!("bad-{i}")
                };
                let r = h
                    .client
                    .post(h.url(&format!("/v1beta/models/{model}:generateContent")))
                    .header("x-goog-api-key", cred)
                    .header(
                        "x-forwarded-for",
                        format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff),
                    )
                    .body(gen_body("x"))
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await;
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_new_names_and_addresses_leaves_memory_flat() {
    let text = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\naudit: {{ enabled: false }}\npipeline:\n  - auth\n  - security_score: {{ max_ips: 1000 }}\n  - rate_limit: {{ per_ip: {{ rpm: 100000 }}, per_user: {{ rpm: 1000000 }}, max_callers: 1000 }}\n  - key_select\n"
    );
    let h = Harness::start_with(&[("a", "valid-a", 1)], &text, |t| {
        *t = t.replacen(
            "server: {",
            "server: { trusted_proxies: [\"127.0.0.1/32\"],",
            1,
        )
    });
    let token = sign(
        SECRET,
        "HS256",
        None,
        &new_claims("flood", Role::User, Duration::from_secs(600), vec![]),
    )
    .unwrap();
    // Warm-up: past every cap (10,000 names per pool map; the plugins' address maps set to
    // 1,000 here, 100,000 by default), so the maps are as full as they get.
    flood(&h, &token, 0, 12_000).await;
    let warm = rss_mb();
    // Two more floods of 24,000 new names each. The allocator settles during the first; one map
    // without a cap would keep ~200 bytes per new name, ~4.8 MB in each.
    flood(&h, &token, 12_000, 36_000).await;
    let settled = rss_mb();
    flood(&h, &token, 36_000, 60_000).await;
    let after = rss_mb();
    eprintln!(
        "rss after warm-up {warm:.1} MB, settled {settled:.1} MB, after the flood {after:.1} MB"
    );
    assert!(
        after - settled < 3.0,
        "24,000 more new names and addresses grew memory by {:.1} MB",
        after - settled
    );
    // The gateway still serves.
    let (s, _) = h
        .call(
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("x-goog-api-key", &token),
            Some(gen_body("x")),
        )
        .await;
    assert_eq!(s, 200);
}
