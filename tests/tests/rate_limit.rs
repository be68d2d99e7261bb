//! Rate limits through the whole gateway: exact under concurrency, Google-style 429 with
//! Retry-After, per user from tokens, client IP from trusted proxies only.

use gemini_proxy_tests::*;

const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_calls_against_fifty_let_exactly_fifty_through() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1)],
        "pool: { state_file: \"\" }\npipeline:\n  - rate_limit: { per_ip: { rpm: 50 } }\n  - key_select\n",
        |_| {},
    );
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = h.client.clone();
        let url = h.url(GENERATE);
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header(CLIENT.0, CLIENT.1)
                .body(gen_body(&format!("c{i}")))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let (s, body) = json_of(r).await;
            (s, retry, body)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (s, retry, body) = t.await.unwrap();
        match s {
            200 => ok += 1,
            429 => {
                limited += 1;
                let secs: u64 = retry.expect("Retry-After").parse().unwrap();
                assert!((1..=60).contains(&secs));
                assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, limited), (50, 150));
    assert_eq!(
        h.mock.requests().len(),
        50,
        "refused calls never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let pipeline = "pipeline:\n  - rate_limit: { per_ip: { rpm: 2 } }\n  - key_select\n";
    let call = |h: &Harness, xff: &'static str| {
        let r = h
            .client
            .post(h.url(GENERATE))
            .header(CLIENT.0, CLIENT.1)
            .header("x-forwarded-for", xff)
            .body(gen_body("x"));
        async move { r.send().await.unwrap().status().as_u16() }
    };
    // Behind a trusted proxy (the test client is on 127.0.0.1): each forwarded IP has its quota.
    let trusted = Harness::start_with(&[("a", "valid-a", 1)], pipeline, |t| {
        *t = t.replacen(
            "server: {",
            "server: { trusted_proxies: [\"127.0.0.1/32\"],",
            1,
        )
    });
    for _ in 0..2 {
        assert_eq!(call(&trusted, "203.0.113.1").await, 200);
        assert_eq!(call(&trusted, "203.0.113.2").await, 200);
    }
    assert_eq!(call(&trusted, "203.0.113.1").await, 429);
    // Without trust, the header is ignored: everyone is 127.0.0.1.
    let plain = Harness::start_with(&[("a", "valid-a", 1)], pipeline, |_| {});
    assert_eq!(call(&plain, "203.0.113.1").await, 200);
    assert_eq!(call(&plain, "203.0.113.2").await, 200);
    assert_eq!(call(&plain, "203.0.113.3").await, 429);
}
