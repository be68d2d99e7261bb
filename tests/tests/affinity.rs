//! Files, cached contents and upload sessions stay on the key (project) that created them.

use gemini_proxy_tests::*;
use serde_json::json;

/// Two keys in two projects: without affinity, round robin alternates and half the calls
/// would reach a project that cannot see the resource (the mock answers 403, like Google).
const KEYS: &[(&str, &str, u32)] = &[("a", "valid-a", 1), ("b", "valid-b", 1)];

fn key_at(h: &Harness, i: usize) -> String {
    h.mock.requests()[i].key.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_and_file_calls_stay_on_their_key() {
    let h = Harness::start(KEYS);
    let c = &h.client;
    // Move the round robin off its start so the upload does not land on `a` by luck alone.
    assert_eq!(h.generate("warm").await.status(), 200);
    let start = c
        .post(h.url("/upload/v1beta/files"))
        .header(CLIENT.0, CLIENT.1)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "1000")
        .body(r#"{"file":{"displayName":"a.txt"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let owner = key_at(&h, 1);
    let url = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    let fin = c
        .post(&url)
        .header(CLIENT.0, CLIENT.1)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    let (s, file) = json_of(fin).await;
    assert_eq!(s, 200, "{file}");
    assert_eq!(key_at(&h, 2), owner, "the upload session stays on its key");
    let name = file["file"]["name"].as_str().unwrap().to_string();
    let uri = file["file"]["uri"].as_str().unwrap().to_string();
    for _ in 0..6 {
        let (s, f) = h
            .call("GET", &format!("/v1beta/{name}"), CLIENT, None)
            .await;
        assert_eq!(s, 200, "{f}");
    }
    let body = json!({"contents": [{"role": "user", "parts": [
        {"text": "what is in this file?"},
        {"fileData": {"mimeType": "text/plain", "fileUri": uri}}]}]});
    for _ in 0..4 {
        let (s, g) = h
            .call(
                "POST",
                "/v1beta/models/gemini-2.5-flash:generateContent",
                CLIENT,
                Some(body.to_string()),
            )
            .await;
        assert_eq!(s, 200, "{g}");
    }
    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 13);
    for r in &reqs[1..] {
        assert_eq!(
            r.key.as_deref(),
            Some(owner.as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
    // Calls about nothing in particular still spread over both keys.
    for _ in 0..4 {
        assert_eq!(h.generate("plain").await.status(), 200);
    }
    let plain: std::collections::HashSet<_> = h.mock.requests()[13..]
        .iter()
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(plain.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_contents_stay_on_their_key() {
    let h = Harness::start(KEYS);
    let (s, cc) = h
        .call(
            "POST",
            "/v1beta/cachedContents",
            CLIENT,
            Some(
                json!({"model": "models/gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"text": "long context"}]}], "ttl": "300s"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(s, 200, "{cc}");
    let owner = key_at(&h, 0);
    let name = cc["name"].as_str().unwrap().to_string();
    for _ in 0..4 {
        let (s, _) = h
            .call("GET", &format!("/v1beta/{name}"), CLIENT, None)
            .await;
        assert_eq!(s, 200);
        let body = json!({"cachedContent": name, "contents": [{"role": "user", "parts": [{"text": "q"}]}]});
        let (s, g) = h
            .call(
                "POST",
                "/v1beta/models/gemini-2.5-flash:generateContent",
                CLIENT,
                Some(body.to_string()),
            )
            .await;
        assert_eq!(s, 200, "{g}");
    }
    assert!(
        h.mock
            .requests()
            .iter()
            .all(|r| r.key.as_deref() == Some(owner.as_str()))
    );
    // The mock really refuses the other project: affinity is what makes the calls above work.
    let other = if owner == "valid-a" {
        "valid-b"
    } else {
        "valid-a"
    };
    let direct = client()
        .get(format!("{}/v1beta/{name}", h.mock.base_url()))
        .header("x-goog-api-key", other)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 403);
}
