//! The gateway as a transparent proxy: every endpoint family, streaming, credentials, errors.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gemini_proxy_tests::*;
use serde_json::{Value, json};

const KEYS: &[(&str, &str, u32)] = &[("pool-a", "valid-pool-key-a", 1)];

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_family_passes_through() {
    let h = Harness::start(KEYS);
    let c = &h.client;
    for v in ["v1beta", "v1", "v1alpha"] {
        let (s, body) = h.call("GET", &format!("/{v}/models"), CLIENT, None).await;
        assert_eq!(s, 200, "{v} models");
        assert!(body["models"].as_array().unwrap().len() >= 2);
    }
    let (s, m) = h
        .call("GET", "/v1beta/models/gemini-2.5-flash", CLIENT, None)
        .await;
    assert_eq!(
        (s, m["name"].as_str()),
        (200, Some("models/gemini-2.5-flash"))
    );

    let (s, g) = json_of(h.generate("hello").await).await;
    assert_eq!(s, 200);
    assert_eq!(
        g["candidates"][0]["content"]["parts"][0]["text"],
        "Echo: hello"
    );
    // Unknown fields (thought signatures, turnToken) survive.
    assert_eq!(
        g["candidates"][0]["content"]["parts"][0]["thoughtSignature"],
        "c2lnbmF0dXJl"
    );
    assert_eq!(g["turnToken"], "v1:mock");

    let (s, t) = h
        .call(
            "POST",
            "/v1/models/gemini-2.5-flash:countTokens",
            CLIENT,
            Some(gen_body("four")),
        )
        .await;
    assert_eq!((s, t["totalTokens"].as_u64()), (200, Some(1)));
    let embed = json!({"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 4});
    let (s, e) = h
        .call(
            "POST",
            "/v1beta/models/gemini-embedding-001:embedContent",
            CLIENT,
            Some(embed.to_string()),
        )
        .await;
    assert_eq!(
        (s, e["embedding"]["values"].as_array().map(|a| a.len())),
        (200, Some(4))
    );
    let batch = json!({"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}}]});
    let (s, b) = h
        .call(
            "POST",
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            CLIENT,
            Some(batch.to_string()),
        )
        .await;
    assert_eq!(
        (s, b["embeddings"].as_array().map(|a| a.len())),
        (200, Some(2))
    );

    // JSON-array stream.
    let r = c
        .post(h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent"))
        .header(CLIENT.0, CLIENT.1)
        .body(gen_body("array form"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let arr: Value = serde_json::from_str(&r.text().await.unwrap()).expect("a JSON array");
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[2]["candidates"][0]["finishReason"], "STOP");

    // cachedContents and files CRUD.
    let cache_body = r#"{"model":"models/gemini-2.5-flash","ttl":"300s"}"#.to_string();
    let (s, cache) = h
        .call("POST", "/v1beta/cachedContents", CLIENT, Some(cache_body))
        .await;
    assert_eq!(s, 200);
    let name = cache["name"].as_str().unwrap().to_string();
    let (s, got) = h
        .call("GET", &format!("/v1beta/{name}"), CLIENT, None)
        .await;
    assert_eq!((s, got["name"].as_str()), (200, Some(name.as_str())));
    let patch = Some(r#"{"ttl":"600s"}"#.to_string());
    let (s, _) = h
        .call(
            "PATCH",
            &format!("/v1beta/{name}?updateMask=ttl"),
            CLIENT,
            patch,
        )
        .await;
    assert_eq!(s, 200);
    let (s, list) = h.call("GET", "/v1beta/cachedContents", CLIENT, None).await;
    assert_eq!(
        (s, list["cachedContents"].as_array().map(|a| a.len())),
        (200, Some(1))
    );
    let (s, _) = h
        .call("DELETE", &format!("/v1beta/{name}"), CLIENT, None)
        .await;
    assert_eq!(s, 200);

    // Resumable upload: the upload URL comes back pointing at the gateway, without any key.
    let start = c
        .post(h.url("/upload/v1beta/files?key=client-token"))
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "2048")
        .body(r#"{"file":{"displayName":"notes.txt"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let upload_url = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        upload_url.starts_with(&format!(
            "http://{}/upload/v1beta/files?",
            h.gateway.proxy_addr
        )),
        "{upload_url}"
    );
    assert!(!upload_url.contains("key="), "key leaked into {upload_url}");
    let data = vec![b'z'; 2048];
    let fin = c
        .post(&upload_url)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(fin.headers()["x-goog-upload-status"], "final");
    let (s, file) = json_of(fin).await;
    assert_eq!((s, file["file"]["sizeBytes"].as_str()), (200, Some("2048")));
    assert_eq!(
        file["file"]["sha256Hash"].as_str().unwrap(),
        sha256_hex(&data)
    );
    let fname = file["file"]["name"].as_str().unwrap().to_string();
    let (s, _) = h
        .call("GET", &format!("/v1beta/{fname}"), CLIENT, None)
        .await;
    assert_eq!(s, 200);
    let (s, files) = h.call("GET", "/v1beta/files", CLIENT, None).await;
    assert_eq!(
        (s, files["files"].as_array().map(|a| a.len())),
        (200, Some(1))
    );

    // OpenAI-compatible API.
    let chat =
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]});
    let (s, reply) = h
        .call(
            "POST",
            "/v1beta/openai/chat/completions",
            BEARER,
            Some(chat.to_string()),
        )
        .await;
    assert_eq!(
        (s, reply["choices"][0]["message"]["content"].as_str()),
        (200, Some("Echo: hi"))
    );
    let r = c
        .post(h.url("/v1beta/openai/chat/completions"))
        .header(BEARER.0, BEARER.1)
        .body(json!({"model": "gemini-2.5-flash", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let emb = Some(r#"{"model":"gemini-embedding-001","input":"hi"}"#.to_string());
    let (s, emb) = h
        .call("POST", "/v1beta/openai/embeddings", BEARER, emb)
        .await;
    assert_eq!((s, emb["object"].as_str()), (200, Some("list")));
    let (s, models) = h.call("GET", "/v1beta/openai/models", BEARER, None).await;
    assert_eq!((s, models["object"].as_str()), (200, Some("list")));

    // Absolute-form targets, as clients behind an HTTP proxy send them.
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(h.url("")).unwrap())
        .build()
        .unwrap();
    let (s, g) = json_of(
        via_proxy
            .post("http://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent")
            .header(CLIENT.0, CLIENT.1)
            .body(gen_body("absolute"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            s,
            g["candidates"][0]["content"]["parts"][0]["text"].as_str()
        ),
        (200, Some("Echo: absolute"))
    );
    let last = h.mock.requests().pop().unwrap();
    assert_eq!(last.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(last.header("host"), Some(h.mock.addr.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_pass_byte_for_byte() {
    let h = Harness::start(KEYS);
    // Odd formatting and unknown fields must arrive untouched.
    let body = "{\"contents\" :[{\"parts\":[{\"text\":\"byte\\u00e9 for byte\"}]}],  \"someFutureField\": {\"x\": [1,2]}}\n";
    let via = h
        .client
        .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", "t")
        .body(body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let rec = h.mock.requests().pop().unwrap();
    assert_eq!(rec.body_sha256, sha256_hex(body.as_bytes()));
    let direct = h
        .client
        .post(format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent",
            h.mock.base_url()
        ))
        .header("x-goog-api-key", "valid-direct")
        .body(body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(via, direct, "response bytes differ from the upstream's");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_arrive_before_the_upstream_finishes() {
    let h = Harness::start(KEYS);
    let started = Instant::now();
    let r = h
        .client
        .post(h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"))
        .header("x-goog-api-key", "t")
        .header("x-mock-event-delay-ms", "400")
        .header("x-mock-chunks", "4")
        .body(gen_body(
            "a fairly long prompt to split into several events",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        let s = String::from_utf8_lossy(&chunk).to_string();
        for _ in 0..s.matches("data: ").count() {
            arrivals.push(started.elapsed());
        }
        text.push_str(&s);
    }
    assert_eq!(arrivals.len(), 4, "{text}");
    let total = started.elapsed();
    assert!(
        total >= Duration::from_millis(1200),
        "the mock paces 3 gaps of 400ms: {total:?}"
    );
    assert!(
        arrivals[0] < Duration::from_millis(600),
        "first event held back: {arrivals:?}"
    );
    assert!(
        arrivals[1] < arrivals[3] - Duration::from_millis(500),
        "events bunched: {arrivals:?}"
    );
    assert!(text.contains("\r\n\r\n"), "CRLF framing preserved");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_never_reach_the_upstream() {
    let h = Harness::start(KEYS);
    let c = &h.client;
    let secret = "client-secret-token-123";
    let native = h.url("/v1beta/models/gemini-2.5-flash:generateContent");
    c.post(&native)
        .header("x-goog-api-key", secret)
        .body(gen_body("a"))
        .send()
        .await
        .unwrap();
    c.post(format!("{native}?key={secret}&alt=json"))
        .body(gen_body("b"))
        .send()
        .await
        .unwrap();
    c.post(&native)
        .header("authorization", format!("Bearer {secret}"))
        .body(gen_body("c"))
        .send()
        .await
        .unwrap();
    // All three at once.
    c.post(format!("{native}?key={secret}"))
        .header("x-goog-api-key", secret)
        .header("authorization", format!("Bearer {secret}"))
        .body(gen_body("d"))
        .send()
        .await
        .unwrap();
    c.post(h.url("/v1beta/openai/chat/completions"))
        .header("authorization", format!("Bearer {secret}"))
        .header("x-goog-api-key", secret)
        .body(r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"x"}]}"#)
        .send()
        .await
        .unwrap();
    let recs = h.mock.requests();
    assert_eq!(recs.len(), 5);
    for (i, r) in recs.iter().enumerate() {
        let dump = format!("{:?}", r);
        assert!(
            !dump.contains(secret),
            "request {i} carried the client credential: {dump}"
        );
        assert_eq!(r.key.as_deref(), Some("valid-pool-key-a"), "request {i}");
        let openai = r.path.contains("/openai/");
        let creds = [
            r.header("x-goog-api-key").is_some(),
            r.header("authorization").is_some(),
        ];
        assert_eq!(
            creds,
            [!openai, openai],
            "exactly one upstream credential on request {i}"
        );
        assert!(
            !r.query.as_deref().unwrap_or("").contains("key="),
            "query key on request {i}"
        );
    }
    assert_eq!(
        recs[1].query.as_deref(),
        Some("alt=json"),
        "other query parameters are kept"
    );
}

async fn assert_error(resp: reqwest::Response, status: u16, grpc: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert!(
        resp.headers().get("x-request-id").is_some(),
        "x-request-id missing"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], status, "{v}");
    assert_eq!(v["error"]["status"], grpc, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_errors_are_google_shaped() {
    let h = Harness::start_with(KEYS, "  timeouts: { read: 400ms }\n", |t| {
        *t = t.replace(
            "server: { host: 127.0.0.1,",
            "server: { max_body_bytes: 1024, host: 127.0.0.1,",
        )
    });
    let c = &h.client;
    assert_error(
        c.get(h.url("/nowhere")).send().await.unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_error(
        c.post(h.url("/v1beta/models/m:generateContent"))
            .body(vec![b'x'; 4096])
            .send()
            .await
            .unwrap(),
        413,
        "INVALID_ARGUMENT",
    )
    .await;
    // Chunked bodies (no Content-Length) are limited too.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let r = c
        .post(h.url("/v1beta/models/m:generateContent"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "INVALID_ARGUMENT").await;
    // 1 KiB exactly is accepted.
    let ok = c
        .post(h.url("/v1beta/models/gemini-2.5-flash:countTokens"))
        .header("x-goog-api-key", "t")
        .body(vec![b' '; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_error(
        c.post(h.url("/v1beta/models/mock-slow-3000:generateContent"))
            .body(gen_body("slow"))
            .send()
            .await
            .unwrap(),
        504,
        "DEADLINE_EXCEEDED",
    )
    .await;
    // OpenAI dialect on /openai/ paths.
    let r = c
        .get(h.url("/v1beta/openai/nothing-here/at/all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(h.url("/v1beta/openai/chat/completions"))
        .body(r#"{"model":"mock-slow-3000","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    // Upstream errors pass through unchanged.
    let r = c
        .post(h.url("/v1beta/models/mock-overloaded:generateContent"))
        .body(gen_body("x"))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "UNAVAILABLE").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_502() {
    let dead = free_port();
    let mock = MockGemini::start().unwrap();
    let h = Harness::start_against(mock, KEYS, "", |t| {
        let base = t
            .lines()
            .find(|l| l.contains("base_url"))
            .unwrap()
            .to_string();
        *t = t.replace(&base, &format!("  base_url: \"http://127.0.0.1:{dead}\""));
    });
    let r = h
        .client
        .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .body(gen_body("x"))
        .send()
        .await
        .unwrap();
    assert_error(r, 502, "UNAVAILABLE").await;
    let r = h
        .client
        .get(h.url("/v1beta/openai/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_faults_are_recorded_honestly() {
    let h = Harness::start(KEYS);
    let c = &h.client;
    // A stream that ends without finishReason reaches the client and is counted as truncated.
    let r = c
        .post(h.url("/v1beta/models/mock-truncated:streamGenerateContent?alt=sse"))
        .body(gen_body("cut short"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().matches("data: ").count(), 3);
    // A mid-stream error event passes to the client.
    let r = c
        .post(h.url("/v1beta/models/mock-midstream-error:streamGenerateContent?alt=sse"))
        .body(gen_body("err"))
        .send()
        .await
        .unwrap();
    let t = r.text().await.unwrap();
    assert!(t.contains("\"error\""), "{t}");
    // A dropped upstream connection is not turned into a clean end for the client.
    let r = c
        .post(h.url("/v1beta/models/mock-cut:streamGenerateContent?alt=sse"))
        .header("x-mock-chunks", "5")
        .body(gen_body("drop"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "client must see an incomplete body"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let errors = h.admin_json("/errors").await;
    let classes: Vec<&str> = errors["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["class"].as_str().unwrap())
        .collect();
    for want in ["truncated_stream", "midstream_error", "stream_interrupted"] {
        assert!(classes.contains(&want), "{want} missing from {errors}");
    }
    let metrics = h.admin_text("/metrics").await;
    assert!(metrics.contains("streams_truncated_total 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_report_traffic() {
    let h = Harness::start(&[("a", "valid-a", 3), ("b", "valid-b", 1)]);
    for i in 0..8 {
        assert_eq!(h.generate(&format!("n{i}")).await.status(), 200);
    }
    let keys: Vec<String> = h
        .mock
        .requests()
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect();
    assert_eq!(
        keys.iter().filter(|k| *k == "valid-a").count(),
        6,
        "weights 3:1 over 8 calls: {keys:?}"
    );
    let health = h.admin_json("/health").await;
    assert_eq!(health["status"], "ok");
    let metrics = h.admin_text("/metrics").await;
    for name in [
        "http_requests_total",
        "gemini_api_calls_total",
        "api_key_usage{key_id=\"a\"} 6",
        "http_request_duration_seconds_bucket",
        "gemini_tokens_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    let perf = h.admin_json("/performance").await;
    assert_eq!(perf["overall"]["1m"]["requests"], 8, "{perf}");
    assert!(
        perf["by_key"]["a"]["1m"]["latency_ms"]["p50"]
            .as_f64()
            .is_some()
    );
    assert_eq!(perf["by_model"]["gemini-2.5-flash"]["5m"]["requests"], 8);
    let r = h.client.get(h.admin("/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
