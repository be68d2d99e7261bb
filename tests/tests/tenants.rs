//! Tenants: what a caller creates through the gateway is its own. Another user gets 404 for it
//! on every path that names it (path, body, JSON-escaped body, upload session), listings show
//! only the caller's own, a `tenant` claim shares between users, admins see everything.

use std::time::Duration;

use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::*;
use serde_json::{Value, json};

const SECRET: &str = "Tenants-JWT-secret-0123456789-abcdefghij!";
const KEYS: &[(&str, &str, u32)] = &[("a", "valid-a", 1), ("b", "valid-b", 1)];

fn start(extra: &str) -> Harness {
    let text = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\" }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n{extra}"
    );
    Harness::start_with(KEYS, &text, |_| {})
}

fn token(sub: &str, role: Role, tenant: Option<&str>) -> String {
    let mut c = new_claims(sub, role, Duration::from_secs(300), vec![]);
    c.tenant = tenant.map(str::to_string);
    sign(SECRET, "HS256", None, &c).unwrap()
}

async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    tok: &str,
    body: Option<Value>,
) -> (u16, Value) {
    h.call(
        method,
        path,
        ("x-goog-api-key", tok),
        body.map(|b| b.to_string()),
    )
    .await
}

async fn create_cache(h: &Harness, tok: &str) -> String {
    let (s, v) = call(
        h,
        "POST",
        "/v1beta/cachedContents",
        tok,
        Some(json!({"model": "models/gemini-2.5-flash", "contents": []})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["name"].as_str().unwrap().to_string()
}

fn names(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_resources_do_not_exist_for_a_user() {
    let h = start("");
    let alice = token("alice", Role::User, None);
    let mallory = token("mallory", Role::User, None);
    let admin = token("ops", Role::Admin, None);
    let cache = create_cache(&h, &alice).await;
    let mine = create_cache(&h, &mallory).await;
    h.mock.clear();

    // Named in the path, with every method and a suffix.
    for (method, path) in [
        ("GET", format!("/v1beta/{cache}")),
        ("DELETE", format!("/v1beta/{cache}")),
        ("PATCH", format!("/v1beta/{cache}")),
        (
            "GET",
            format!(
                "/v1beta/{}",
                cache.replace("cachedContents", "%63achedContents")
            ),
        ),
    ] {
        let body = (method == "PATCH").then(|| json!({"ttl": "60s"}));
        let (s, v) = call(&h, method, &path, &mallory, body).await;
        assert_eq!(s, 404, "{method} {path}: {v}");
        assert_eq!(v["error"]["status"], "NOT_FOUND", "{v}");
    }
    // Named in a body: plainly, JSON-escaped, after many of its own references.
    let generate = "/v1beta/models/gemini-2.5-flash:generateContent";
    let escaped = format!(
        r#"{{"cachedContent":"{}","contents":[{{"parts":[{{"text":"hi"}}]}}]}}"#,
        cache.replace('/', "\\/").replacen('c', "\\u0063", 1)
    );
    // Twenty references the caller owns before the one it does not.
    let mut crowded = Vec::new();
    for _ in 0..20 {
        let own = create_cache(&h, &mallory).await;
        crowded.push(json!({"text": format!("see {own}")}));
    }
    h.mock.clear();
    crowded.push(json!({"text": cache}));
    for body in [
        json!({"cachedContent": cache, "contents": [{"parts": [{"text": "hi"}]}]}).to_string(),
        escaped,
        json!({"contents": [{"parts": crowded}]}).to_string(),
        json!({"model": "models/gemini-2.5-flash", "contents": [], "name": cache}).to_string(),
    ] {
        let (s, v) = h
            .call(
                "POST",
                generate,
                ("x-goog-api-key", &mallory),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 404, "{body}: {v}");
    }
    assert!(
        h.mock.requests().is_empty(),
        "nothing refused reached the upstream"
    );
    // Too many references at once are refused, not cut short.
    let many: Vec<Value> = (0..300)
        .map(|i| json!({"text": format!("files/f{i}")}))
        .collect();
    let (s, _) = call(
        &h,
        "POST",
        generate,
        &mallory,
        Some(json!({"contents": [{"parts": many}]})),
    )
    .await;
    assert_eq!(s, 400);

    // The owner still reaches it, and a prompt that merely mentions a word ending in "files"
    // is no reference.
    let (s, v) = call(&h, "GET", &format!("/v1beta/{cache}"), &alice, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = call(
        &h,
        "POST",
        generate,
        &mallory,
        Some(json!({"contents": [{"parts": [{"text": "my profiles/x and smallfiles/y"}]}]})),
    )
    .await;
    assert_eq!(s, 200);

    // Listings show each caller its own; an admin sees all. A listing lands on one project
    // (round robin over two keys), so each caller lists four times.
    let listed_at = |tok: String, path: &'static str| {
        let h = &h;
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..4 {
                let (s, v) = call(h, "GET", path, &tok, None).await;
                assert_eq!(s, 200, "{v}");
                seen.extend(names(&v, "cachedContents"));
            }
            seen
        }
    };
    let listed = |tok: String| listed_at(tok, "/v1beta/cachedContents");
    let of_alice = listed(alice.clone()).await;
    assert_eq!(
        of_alice.into_iter().collect::<Vec<_>>(),
        vec![cache.clone()]
    );
    let of_mallory = listed(mallory.clone()).await;
    assert!(
        of_mallory.contains(&mine) && !of_mallory.contains(&cache),
        "{of_mallory:?}"
    );
    assert_eq!(of_mallory.len(), 21);
    // A trailing slash lists as well upstream; it is filtered the same.
    let slashed = listed_at(alice.clone(), "/v1beta/cachedContents/").await;
    assert_eq!(slashed.into_iter().collect::<Vec<_>>(), vec![cache.clone()]);
    let all = listed(admin.clone()).await;
    assert!(all.contains(&cache) && all.contains(&mine), "{all:?}");
    // An admin reaching a user's resource does not take it over.
    let (s, _) = call(&h, "GET", &format!("/v1beta/{cache}"), &admin, None).await;
    assert_eq!(s, 200);
    let (s, _) = call(&h, "GET", &format!("/v1beta/{cache}"), &alice, None).await;
    assert_eq!(s, 200);
    // A resource the gateway never saw created is the admins' only.
    let (s, _) = call(&h, "GET", "/v1beta/files/unseen", &alice, None).await;
    assert_eq!(s, 404);

    // The owner deletes it; nobody else could.
    let (s, _) = call(&h, "DELETE", &format!("/v1beta/{cache}"), &alice, None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_session_is_its_creators() {
    let h = start("");
    let alice = token("alice", Role::User, None);
    let mallory = token("mallory", Role::User, None);
    let start = h
        .client
        .post(h.url("/upload/v1beta/files"))
        .header("x-goog-api-key", &alice)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "10")
        .body(r#"{"file":{"displayName":"a.txt"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let url = start.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    let finish = |tok: String| {
        h.client
            .post(&url)
            .header("x-goog-api-key", tok)
            .header("x-goog-upload-command", "upload, finalize")
            .header("x-goog-upload-offset", "0")
            .body(vec![b'x'; 10])
            .send()
    };
    let r = finish(mallory.clone()).await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "another user cannot write into the session"
    );
    let (s, file) = json_of(finish(alice.clone()).await.unwrap()).await;
    assert_eq!(s, 200, "{file}");
    let name = file["file"]["name"].as_str().unwrap().to_string();
    let (s, _) = call(&h, "GET", &format!("/v1beta/{name}"), &mallory, None).await;
    assert_eq!(s, 404);
    let (s, _) = call(&h, "GET", &format!("/v1beta/{name}"), &alice, None).await;
    assert_eq!(s, 200);
    let (_, v) = call(&h, "GET", "/v1beta/files", &mallory, None).await;
    assert!(names(&v, "files").is_empty(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_claim_shares_and_isolation_can_be_turned_off() {
    let h = start("");
    let ann = token("ann", Role::User, Some("acme"));
    let bob = token("bob", Role::User, Some("acme"));
    let eve = token("eve", Role::User, Some("evil"));
    let cache = create_cache(&h, &ann).await;
    let (s, _) = call(&h, "GET", &format!("/v1beta/{cache}"), &bob, None).await;
    assert_eq!(s, 200, "same tenant");
    let (s, _) = call(&h, "GET", &format!("/v1beta/{cache}"), &eve, None).await;
    assert_eq!(s, 404, "other tenant");
    // A user without a tenant whose `sub` spells the tenant's owner name is someone else.
    let spoof = token("tenant:acme", Role::User, None);
    let (s, _) = call(&h, "GET", &format!("/v1beta/{cache}"), &spoof, None).await;
    assert_eq!(s, 404);

    // With isolation off every user reaches every resource (the single-team setup).
    let text = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", tenant_isolation: false }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n"
    );
    let open = Harness::start_with(KEYS, &text, |_| {});
    let cache = create_cache(&open, &ann).await;
    let (s, _) = call(&open, "GET", &format!("/v1beta/{cache}"), &eve, None).await;
    assert_eq!(s, 200);
}
