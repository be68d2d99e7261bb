//! Input hardening on the proxy listener: oversized headers, path tricks, CORS.

use gemini_proxy_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_get_431() {
    let h = Harness::start(&[("a", "valid-a", 1)]);
    let r = h
        .client
        .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header(CLIENT.0, CLIENT.1)
        .header("x-padding", "p".repeat(70 * 1024))
        .body(gen_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(r.headers().contains_key("x-request-id"));
    let (_, body) = json_of(r).await;
    assert_eq!(body["error"]["code"], 431);
    assert!(h.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_never_reach_admin_routes_through_the_proxy() {
    let h = Harness::start(&[("a", "valid-a", 1)]);
    for path in [
        "/api/keys",
        "/..%2fapi/keys",
        "/v1beta/../../api/keys",
        "/%2e%2e/api/keys",
        "/v1beta/%2e%2e/%2e%2e/api/keys",
        "//api/keys",
        "/v1beta/models/..%252f..%252fapi%252fkeys",
        "/metrics",
        "/auth/login",
    ] {
        let r = h
            .client
            .get(h.url(path))
            .header(CLIENT.0, CLIENT.1)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(matches!(status, 400 | 404), "{path}: {status} {text}");
        assert!(
            !text.contains("fingerprint") && !text.contains("http_requests_total"),
            "{path}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_answers_preflights_for_allowed_origins_only() {
    let h = Harness::start_with(&[("a", "valid-a", 1)], "", |t| {
        *t = t.replacen(
            "server: {",
            "server: { cors: { allowed_origins: [\"https://app.example\"] },",
            1,
        )
    });
    let pre = |origin: &'static str| {
        h.client
            .request(
                reqwest::Method::OPTIONS,
                h.url("/v1beta/models/gemini-2.5-flash:generateContent"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-goog-api-key, content-type",
            )
            .send()
    };
    let r = pre("https://app.example").await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("x-goog-api-key") && allowed.contains("content-type"));
    let r = pre("https://evil.example").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // The real call carries the header for the allowed origin only.
    let call = |origin: &'static str| {
        h.client
            .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
            .header(CLIENT.0, CLIENT.1)
            .header("origin", origin)
            .body(gen_body("x"))
            .send()
    };
    let r = call("https://app.example").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = call("https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // Without a CORS config, no CORS headers at all.
    let plain = Harness::start(&[("a", "valid-a", 1)]);
    let r = plain
        .client
        .post(plain.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header(CLIENT.0, CLIENT.1)
        .header("origin", "https://app.example")
        .body(gen_body("x"))
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_the_gemini_api_does_not_speak_get_405() {
    let h = Harness::start(&[("a", "valid-a", 1)]);
    for method in ["TRACE", "CONNECT", "PROPFIND", "FOO"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = h
            .client
            .request(m, h.url("/v1beta/models/gemini-2.5-flash"))
            .header(CLIENT.0, CLIENT.1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
    }
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");
    let r = h
        .client
        .get(h.url("/v1beta/models/gemini-2.5-flash"))
        .header(CLIENT.0, CLIENT.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
