//! Pooled keys never reach a client, whatever the upstream echoes: Google's suspended-consumer
//! 403 names the key in its message and metadata; an upstream may put it in headers, redirects
//! or a streamed body. Relayed bodies and headers, `/errors`, `/performance` and audit rows are
//! all checked.

use gemini_proxy_tests::*;

const SUSPENDED: [&str; 3] = [
    "suspended-AIzaSyLEAK00000000000000000000000000001",
    "suspended-AIzaSyLEAK00000000000000000000000000002",
    "suspended-AIzaSyLEAK00000000000000000000000000003",
];

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains("LEAK0000"),
        "{what} holds a pooled key: {text}"
    );
    assert!(
        !text.contains("ADDEDKEY"),
        "{what} holds an added key: {text}"
    );
}

async fn everything_relayed(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let headers = format!("{:?}", r.headers());
    (status, format!("{headers}\n{}", r.text().await.unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn suspended_keys_are_never_echoed_to_clients_or_operators() {
    let h = Harness::start(&[
        ("s1", SUSPENDED[0], 1),
        ("s2", SUSPENDED[1], 1),
        ("s3", SUSPENDED[2], 1),
    ]);
    // Every key is suspended: rotations run out and the last 403 goes to the client.
    for path in [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1beta/openai/chat/completions",
    ] {
        let r = h
            .client
            .post(h.url(path))
            .header(BEARER.0, BEARER.1)
            .header(CLIENT.0, CLIENT.1)
            .body(r#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"x"}],"contents":[]}"#)
            .send()
            .await
            .unwrap();
        let (status, text) = everything_relayed(r).await;
        assert!(status == 403 || status == 503, "{path}: {status} {text}");
        assert_clean(path, &text);
        if status == 403 {
            assert!(
                text.contains("CONSUMER_SUSPENDED"),
                "the error stays useful: {text}"
            );
            assert!(text.contains("api_key:****"), "{text}");
        }
    }
    // Key health may rest the keys now; reset them and try an upload (never retried).
    for id in ["s1", "s2", "s3"] {
        h.client
            .post(h.admin(&format!("/api/keys/{id}/reset")))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
    }
    let r = h
        .client
        .post(h.url("/upload/v1beta/files"))
        .header(CLIENT.0, CLIENT.1)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, text) = everything_relayed(r).await;
    assert_eq!(status, 403, "{text}");
    assert_clean("upload", &text);
    for p in ["/errors", "/performance", "/metrics", "/api/keys"] {
        assert_clean(p, &h.admin_text(p).await);
    }
    let sql = h
        .client
        .post(h.admin("/api/sql"))
        .json(&serde_json::json!({"sql": "SELECT * FROM requests"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sql.contains("\"rows\""), "{sql}");
    assert_clean("audit rows", &sql);
}

#[tokio::test(flavor = "multi_thread")]
async fn echoed_keys_are_masked_in_headers_redirects_and_streams() {
    let h = Harness::start(&[("v", "valid-AIzaSyLEAK00000000000000000000000000009", 1)]);
    let r = h
        .post("/v1beta/models/mock-leaky:generateContent", gen_body("x"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-mock-key").is_none(),
        "unlisted headers are dropped"
    );
    assert_eq!(
        r.headers()["location"],
        "https://elsewhere.example/next?alt=sse",
        "a redirect loses its key="
    );
    let (_, text) = everything_relayed(r).await;
    assert_clean("generateContent", &text);
    let body: serde_json::Value =
        serde_json::from_str(text.split_once('\n').unwrap().1).expect("still JSON");
    assert!(
        body["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("the key is ****")
    );
    // A stream that cuts the key across 7-byte chunks.
    let r = h
        .post(
            "/v1beta/models/mock-leaky:streamGenerateContent?alt=sse",
            gen_body("x"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let (_, text) = everything_relayed(r).await;
    assert_clean("stream", &text);
    assert!(text.contains("\"finishReason\":\"STOP\""), "{text}");

    // A key added through the admin API is masked too.
    let add = h
        .client
        .post(h.admin("/api/keys"))
        .json(
            &serde_json::json!({"id": "added", "key": "valid-ADDEDKEY-0123456789", "weight": 1000}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), 201, "{}", add.text().await.unwrap());
    for _ in 0..5 {
        let r = h
            .post("/v1beta/models/mock-leaky:generateContent", gen_body("x"))
            .await;
        let (_, text) = everything_relayed(r).await;
        assert_clean("after add", &text);
    }
    assert!(
        h.mock
            .requests()
            .iter()
            .any(|r| r.key.as_deref() == Some("valid-ADDEDKEY-0123456789")),
        "the added key was used"
    );
}
