//! A token's `models` and a key's `models` hold whatever the spelling of the call: the model of
//! an OpenAI-style call is read from its body, percent-encoded paths are read as Google reads
//! them, calls whose model cannot be known are refused for restricted tokens, and token limits
//! count the bytes actually sent (chunked bodies declare none) and OpenAI `stream: true`.

use std::time::Duration;

use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::*;
use serde_json::json;

const SECRET: &str = "Model-limits-JWT-secret-0123456789-abcdef!";

fn start(keys: &[(&str, &str, u32)], extra: &str) -> Harness {
    let text = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n{extra}"
    );
    Harness::start_with(keys, &text, |_| {})
}

fn token(sub: &str, models: &[&str]) -> String {
    let c = new_claims(
        sub,
        Role::User,
        Duration::from_secs(300),
        models.iter().map(|m| m.to_string()).collect(),
    );
    sign(SECRET, "HS256", None, &c).unwrap()
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

async fn post(h: &Harness, path: &str, token: &str, body: String) -> (u16, serde_json::Value) {
    json_of(
        h.client
            .post(h.url(path))
            .bearer_auth(token)
            .header("x-goog-api-key", token)
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_limited_to_some_models_reaches_no_other() {
    let h = start(&[("a", "valid-a", 1)], "");
    let flash = token("limited", &["gemini-2.5-flash*"]);
    let chat_path = "/v1beta/openai/chat/completions";
    let (s, _) = post(&h, chat_path, &flash, chat("gemini-2.5-flash", false)).await;
    assert_eq!(s, 200);
    h.mock.clear();
    for (path, body, want) in [
        (chat_path, chat("gemini-2.5-pro", false), 403),
        (chat_path, chat("models/gemini-2.5-pro", true), 403),
        (
            "/v1beta/openai/embeddings",
            json!({"model": "text-embedding-004", "input": "x"}).to_string(),
            403,
        ),
        (chat_path, json!({"messages": []}).to_string(), 400),
        (chat_path, "not json".to_string(), 400),
        (chat_path, chat("gemini-2.5-flash; x", false), 400),
        (
            "/v1beta/%6Dodels/gemini-2.5-pro:generateContent",
            gen_body("x"),
            403,
        ),
        (
            "/v1beta/models/gemini-2.5-pro%3AgenerateContent",
            gen_body("x"),
            403,
        ),
        (
            "/v1beta/models/gemini-2.5-pro%3agenerateContent",
            gen_body("x"),
            403,
        ),
        (
            "/v1beta/tunedModels/mine:generateContent",
            gen_body("x"),
            403,
        ),
        ("/v1beta/models/a%20b:generateContent", gen_body("x"), 400),
        // A cached content is made for the model its body names.
        (
            "/v1beta/cachedContents",
            json!({"model": "models/gemini-2.5-pro", "contents": []}).to_string(),
            403,
        ),
        (
            "/v1beta/cachedContents",
            r#"{"model": "models/gemini\u002d2.5-pro"}"#.to_string(),
            403,
        ),
        (
            "/v1beta/cachedContents",
            r#"{"model": "models/gemini-2.5-flash", "model": "models/gemini-2.5-pro"}"#.to_string(),
            400,
        ),
        // A verb after a model's sub-path is no Gemini path.
        (
            "/v1beta/models/models/gemini-2.5-pro:generateContent",
            gen_body("x"),
            404,
        ),
        (
            "/v1beta/models/gemini-2.5-pro/operations/x:generateContent",
            gen_body("x"),
            404,
        ),
        (
            "/v1beta/models/gemini%2D2.5-pro:generateContent",
            gen_body("x"),
            403,
        ),
        // Media goes to files and file search stores only: a model under /upload/ is no route.
        (
            "/upload/v1beta/models/gemini-2.5-pro:generateContent",
            gen_body("x"),
            404,
        ),
        (
            "/upload/v1beta/%6Dodels/gemini-2.5-pro%3AgenerateContent",
            gen_body("x"),
            404,
        ),
        (
            "/upload/v1beta/tunedModels/mine:generateContent",
            gen_body("x"),
            404,
        ),
    ] {
        let (s, v) = post(&h, path, &flash, body).await;
        assert_eq!(s, want, "{path}: {v}");
    }
    let long = format!("/v1beta/models/{}:generateContent", "m".repeat(200));
    let (s, _) = post(&h, &long, &flash, gen_body("x")).await;
    assert_eq!(s, 400);
    assert!(
        h.mock.requests().is_empty(),
        "nothing refused reached the upstream"
    );
    let cache = json!({"model": "models/gemini-2.5-flash", "contents": []}).to_string();
    let (s, v) = post(&h, "/v1beta/cachedContents", &flash, cache).await;
    assert_eq!(s, 200, "{v}");
    // The same calls with an unrestricted token go through (the model is read the same way).
    let any = token("free", &[]);
    let (s, _) = post(&h, chat_path, &any, chat("gemini-2.5-pro", false)).await;
    assert_eq!(s, 200);
    let (s, _) = post(
        &h,
        "/v1beta/%6Dodels/gemini-2.5-pro:generateContent",
        &any,
        gen_body("x"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.mock.requests().last().unwrap().path,
        "/v1beta/models/gemini-2.5-pro:generateContent",
        "the upstream gets the path as the gateway read it"
    );
    // Calls that name no model stay open to a restricted token.
    let r = h
        .client
        .get(h.url("/v1beta/models"))
        .header("x-goog-api-key", &flash)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // One model's entry is checked however the call spells it.
    for (path, want) in [
        ("/v1beta/models/gemini-2.5-pro", 403),
        ("/v1beta/openai/models/gemini-2.5-pro", 403),
        ("/v1beta/openai/models/models/gemini-2.5-pro", 403),
        ("/v1beta/openai/models/gemini-2.5-flash", 200),
    ] {
        let r = h
            .client
            .get(h.url(path))
            .header("x-goog-api-key", &flash)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_limited_to_some_models_serves_no_other_on_any_path() {
    let h = start(&[("flash-only", "valid-f", 1)], "");
    let any = token("free", &[]);
    // Restrict the key through the config file.
    let text = h.config_text().replace(
        "{ id: flash-only, key: valid-f, weight: 1 }",
        "{ id: flash-only, key: valid-f, weight: 1, models: [\"gemini-2.5-flash*\"] }",
    );
    h.write_config(&text);
    h.wait_generation(2).await;
    h.mock.clear();
    for (path, body) in [
        (
            "/v1beta/openai/chat/completions",
            chat("gemini-2.5-pro", false),
        ),
        (
            "/v1beta/%6Dodels/gemini-2.5-pro:generateContent",
            gen_body("x"),
        ),
        (
            "/v1beta/cachedContents",
            json!({"model": "models/gemini-2.5-pro"}).to_string(),
        ),
    ] {
        let (s, v) = post(&h, path, &any, body).await;
        assert_eq!(s, 503, "{path}: {v}");
    }
    // A tuned model's base model is unknown, so the key serves it to nobody; an admin token
    // is used because tenancy answers 404 to users for tuned models they did not create.
    let admin = sign(
        SECRET,
        "HS256",
        None,
        &new_claims("ops", Role::Admin, Duration::from_secs(300), vec![]),
    )
    .unwrap();
    let path = "/v1beta/tunedModels/mine:generateContent";
    let (s, v) = post(&h, path, &admin, gen_body("x")).await;
    assert_eq!(s, 503, "{path}: {v}");
    assert!(h.mock.requests().is_empty());
    let (s, _) = post(
        &h,
        "/v1beta/openai/chat/completions",
        &any,
        chat("gemini-2.5-flash", false),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_bodies_are_charged_what_they_carry() {
    let h = start(
        &[("a", "valid-a", 1)],
        "pipeline:\n  - rate_limit: { per_user: { tpm: 1000 } }\n  - key_select\n",
    );
    let t = token("chunky", &[]);
    // Ten parallel calls of ~40k tokens each, with no Content-Length.
    let text = "word ".repeat(32_000);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, url, t, body) = (
            h.client.clone(),
            h.url("/v1beta/models/gemini-2.5-flash:generateContent"),
            t.clone(),
            gen_body(&text),
        );
        tasks.push(tokio::spawn(async move {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
                .into_bytes()
                .chunks(16 * 1024)
                .map(|c| Ok(c.to_vec()))
                .collect();
            client
                .post(url)
                .header("x-goog-api-key", t)
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                )))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 429);
    }
    assert!(h.mock.requests().is_empty(), "none reached the upstream");
    // A declared body over max_body_bytes is 413 (never retried), not a rate limit.
    let mut s = tokio::net::TcpStream::connect(h.gateway.proxy_addr)
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(
        format!("POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: x\r\nx-goog-api-key: {t}\r\ncontent-length: 45000000\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (got, _) = until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // The refusals cost nothing: a small call still fits.
    let r = h
        .client
        .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", &t)
        .body(gen_body("small"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_streams_count_as_streams() {
    let h = start(
        &[("a", "valid-a", 1)],
        "pipeline:\n  - rate_limit: { per_user: { concurrent_streams: 1 } }\n  - key_select\n",
    );
    let t = token("streamer", &[]);
    let first = {
        let (client, url, t) = (
            h.client.clone(),
            h.url("/v1beta/openai/chat/completions"),
            t.clone(),
        );
        tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(t)
                .header("x-mock-event-delay-ms", "300")
                .body(chat("gemini-2.5-flash", true))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let _ = r.text().await;
            status
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, v) = post(
        &h,
        "/v1beta/openai/chat/completions",
        &t,
        chat("gemini-2.5-flash", true),
    )
    .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(first.await.unwrap(), 200);
    // Released when the first one ends.
    let (s, _) = post(
        &h,
        "/v1beta/openai/chat/completions",
        &t,
        chat("gemini-2.5-flash", true),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn system_parameters_that_change_the_answer_are_refused() {
    let h = start(&[("a", "valid-a", 1)], "");
    let flash = token("limited", &["gemini-2.5-flash*"]);
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    // A field mask (which can drop usageMetadata, and with it the token count), another
    // method, another wire format: each in its plain, `$` and percent-encoded spelling.
    for query in [
        "fields=candidates",
        "%66ields=candidates",
        "$fields=candidates",
        "%24alt=proto",
        "alt=proto",
        "$httpMethod=DELETE",
        "callback=steal",
        "$ct=application%2Fx-protobuf",
    ] {
        let (s, v) = post(&h, &format!("{path}?{query}"), &flash, gen_body("x")).await;
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{query}: {v}");
    }
    for header in ["x-http-method-override", "x-goog-fieldmask"] {
        let r = h
            .client
            .post(h.url(path))
            .header("x-goog-api-key", &flash)
            .header(header, "GET")
            .body(gen_body("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{header}");
    }
    assert!(
        h.mock.requests().is_empty(),
        "a refused call reached the upstream"
    );
    // The formats the gateway reads still pass.
    let stream = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let (s, _) = post(&h, stream, &flash, gen_body("x")).await;
    assert_eq!(s, 200);
    let (s, _) = post(&h, &format!("{path}?alt=json"), &flash, gen_body("x")).await;
    assert_eq!(s, 200);
}
