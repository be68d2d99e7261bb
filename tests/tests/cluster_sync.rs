//! What one instance of a cluster learns or is told reaches the others within a second: an
//! exhausted project, a dead key, an operator's disable and preset, a revoked token. A real
//! `redis-server` carries it.

use std::time::Duration;

use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::*;

const SECRET: &str = "Cluster-JWT-secret-with-enough-entropy-0123456789!";

fn member(
    redis: &RedisServer,
    id: &str,
    prefix: &str,
    keys: &[(&str, &str, u32)],
    extra: &str,
) -> Harness {
    let extra = format!(
        "pool: {{ state_file: \"\", keys_file: \"\" }}\ncluster: {{ redis: \"{}\", instance_id: {id}, key_prefix: \"{prefix}\" }}\n{extra}",
        redis.url()
    );
    Harness::start_with(keys, &extra, |_| {})
}

fn calls_with(gws: &[Harness], key: &str) -> usize {
    gws.iter()
        .flat_map(|g| g.mock.requests())
        .filter(|r| r.key.as_deref() == Some(key))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_project_and_a_dead_key_are_tried_once_in_total() {
    let redis = RedisServer::start();
    // The exhausted and the suspended key weigh so much that every instance would try them first.
    let keys = [
        ("daily", "day429-daily", 1000),
        ("gone", "suspended-gone", 1000),
        ("ok", "valid-ok", 1),
    ];
    let gws: Vec<Harness> = (1..=3)
        .map(|i| member(&redis, &format!("h-{i}"), "health:", &keys, ""))
        .collect();
    // Until both bad keys have been met once, on the first instance.
    for _ in 0..10 {
        assert_eq!(gws[0].generate("first").await.status(), 200);
        if calls_with(&gws, "day429-daily") > 0 && calls_with(&gws, "suspended-gone") > 0 {
            break;
        }
    }
    assert_eq!(calls_with(&gws, "day429-daily"), 1);
    assert_eq!(calls_with(&gws, "suspended-gone"), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..30 {
        let g = &gws[1 + i % 2];
        assert_eq!(g.generate("later").await.status(), 200);
    }
    assert_eq!(
        calls_with(&gws, "day429-daily"),
        1,
        "the exhausted key, once in total"
    );
    assert_eq!(
        calls_with(&gws, "suspended-gone"),
        1,
        "the dead key, once in total"
    );
    let keys = gws[2].admin_json("/api/keys").await;
    let gone = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "gone")
        .unwrap()
        .clone();
    assert_eq!(gone["dead_reason"], "suspended", "{gone}");
    // An instance that starts later catches up from what the others left in Redis.
    let late = member(
        &redis,
        "h-late",
        "health:",
        &[("gone", "suspended-gone", 1000), ("ok", "valid-ok", 1)],
        "",
    );
    within(
        Duration::from_secs(3),
        "the late instance knows the dead key",
        || async {
            let k = late.admin_json("/api/keys").await;
            k["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == "gone" && k["dead_reason"] == "suspended")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_changes_reach_every_instance_within_a_second() {
    let redis = RedisServer::start();
    let keys = [("a", "valid-a", 1), ("b", "valid-b", 1)];
    let presets = "presets:\n  only-b: { a: 0, b: 10 }\n";
    let gws: Vec<Harness> = (1..=3)
        .map(|i| member(&redis, &format!("o-{i}"), "ops:", &keys, presets))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let post = |g: &Harness, path: &str, body: &str| {
        g.client
            .post(g.admin(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    assert_eq!(
        post(&gws[0], "/api/keys/a/disable", "")
            .await
            .unwrap()
            .status(),
        200
    );
    for g in &gws[1..] {
        let took = within(
            Duration::from_secs(1),
            "key a disabled everywhere",
            || async {
                let k = g.admin_json("/api/keys").await;
                k["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["id"] == "a" && k["dead_reason"] == "operator")
            },
        )
        .await;
        eprintln!("disable reached an instance in {took:?}");
    }
    assert_eq!(
        post(&gws[1], "/api/keys/a/enable", "")
            .await
            .unwrap()
            .status(),
        200
    );
    within(
        Duration::from_secs(1),
        "key a enabled again on the first",
        || async {
            let k = gws[0].admin_json("/api/keys").await;
            k["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == "a" && k["dead_reason"].is_null())
        },
    )
    .await;
    let r = post(&gws[2], "/api/weights/apply", r#"{"preset_name":"only-b"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for g in &gws[..2] {
        within(
            Duration::from_secs(1),
            "preset in force everywhere",
            || async { g.admin_json("/api/weights/presets").await["in_force"] == "only-b" },
        )
        .await;
    }
    // A key removed through one instance is gone from all.
    let r = gws[0]
        .client
        .delete(gws[0].admin("/api/keys/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for g in &gws[1..] {
        within(
            Duration::from_secs(1),
            "key a removed everywhere",
            || async {
                let k = g.admin_json("/api/keys").await;
                !k["keys"].as_array().unwrap().iter().any(|k| k["id"] == "a")
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_on_one_instance_is_refused_by_all() {
    let redis = RedisServer::start();
    let auth =
        format!("auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\" }}\n");
    let gws: Vec<Harness> = (1..=3)
        .map(|i| {
            member(
                &redis,
                &format!("r-{i}"),
                "rev:",
                &[("a", "valid-a", 1)],
                &auth,
            )
        })
        .collect();
    let claims = new_claims("alice", Role::User, Duration::from_secs(600), vec![]);
    let jti = claims.jti.clone().expect("a jti");
    let token = sign(SECRET, "HS256", None, &claims).unwrap();
    let admin = sign(
        SECRET,
        "HS256",
        None,
        &new_claims("ops", Role::Admin, Duration::from_secs(600), vec![]),
    )
    .unwrap();
    let call = |g: &Harness| {
        g.client
            .post(g.url("/v1beta/models/gemini-2.5-flash:generateContent"))
            .header("x-goog-api-key", token.clone())
            .body(gen_body("hi"))
            .send()
    };
    for g in &gws {
        assert_eq!(call(g).await.unwrap().status(), 200);
    }
    let r = gws[0]
        .client
        .post(gws[0].admin("/api/tokens/revoke"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(format!("{{\"jti\":\"{jti}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for g in &gws {
        within(
            Duration::from_secs(1),
            "the revoked token refused",
            || async { call(g).await.unwrap().status() == 401 },
        )
        .await;
    }
    // Nothing secret went to Redis: no token, no pooled key, no signing secret.
    redis_holds_none_of(
        &redis,
        "r-1",
        &[token.as_str(), admin.as_str(), SECRET, "valid-a"],
    );
}

/// Two instances with auth and the admin password `Right-Password-42`.
fn with_admin_password(redis: &RedisServer, name: &str, prefix: &str) -> Vec<Harness> {
    let auth = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", admin_password: \"Right-Password-42\", revocations_file: \"\" }}\n"
    );
    (1..=2)
        .map(|i| {
            member(
                redis,
                &format!("{name}-{i}"),
                prefix,
                &[("a", "valid-a", 1)],
                &auth,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn login_guesses_count_across_instances() {
    let redis = RedisServer::start();
    let gws = with_admin_password(&redis, "l", "login:");
    // Five wrong guesses spread over both instances use up the client's guesses everywhere.
    for i in 0..5 {
        assert_eq!(gws[i % 2].login("wrong").await.status(), 401, "guess {i}");
    }
    for g in &gws {
        let r = g.login("Right-Password-42").await;
        assert_eq!(r.status(), 429, "locked out on every instance");
        assert!(r.headers().get("retry-after").is_some());
    }
}

/// Like [`member`], all sending upstream to `upstream` (one mock that knows every file).
fn member_to(redis: &RedisServer, id: &str, upstream: &str) -> Harness {
    let extra = format!(
        "pool: {{ state_file: \"\", keys_file: \"\" }}\ncluster: {{ redis: \"{}\", instance_id: {id}, key_prefix: \"pins:\" }}\n",
        redis.url()
    );
    let upstream = upstream.to_string();
    Harness::start_with(
        &[("a", "valid-a", 1), ("b", "valid-b", 1)],
        &extra,
        move |text| set_upstream(text, &upstream),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_made_through_one_instance_is_served_through_all_by_its_key() {
    let redis = RedisServer::start();
    let mock = MockGemini::start().expect("mock");
    let upstream = mock.base_url();
    let gws: Vec<Harness> = (1..=3)
        .map(|i| member_to(&redis, &format!("p-{i}"), &upstream))
        .collect();
    let c = &gws[0].client;
    let start = c
        .post(gws[0].url("/upload/v1beta/files"))
        .header(CLIENT.0, CLIENT.1)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "10")
        .body(r#"{"file":{"displayName":"a.txt"}}"#)
        .send()
        .await
        .unwrap();
    let status = start.status();
    let url = start.headers().get("x-goog-upload-url").cloned();
    assert_eq!(status, 200, "{}", start.text().await.unwrap());
    let url = url.unwrap().to_str().unwrap().to_string();
    let (s, file) = json_of(
        c.post(&url)
            .header(CLIENT.0, CLIENT.1)
            .header("x-goog-upload-command", "upload, finalize")
            .header("x-goog-upload-offset", "0")
            .body(vec![b'x'; 10])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{file}");
    let name = file["file"]["name"].as_str().unwrap().to_string();
    // At once, through the other instances: the key that made it answers every time.
    for i in 0..8 {
        let g = &gws[1 + i % 2];
        let (s, f) = g
            .call("GET", &format!("/v1beta/{name}"), CLIENT, None)
            .await;
        assert_eq!(s, 200, "call {i} through {}: {f}", 1 + i % 2);
    }
    let keys: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| r.key.clone())
        .collect();
    assert_eq!(keys.len(), 10);
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key served the file: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_logins_use_up_no_guess() {
    let redis = RedisServer::start();
    let gws = with_admin_password(&redis, "m", "malformed:");
    for _ in 0..8 {
        let r = gws[0]
            .client
            .post(gws[0].admin("/auth/login"))
            .header("content-type", "application/json")
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(gws[1].login("Right-Password-42").await.status(), 200);
}

const SEAL: &str = "cluster-seal-secret-0123456789abcdef-0123";

/// A member whose `cluster.secret` is `secret` (or none).
fn sealing_member(redis: &RedisServer, id: &str, secret: Option<&str>) -> Harness {
    let secret = secret.map_or(String::new(), |s| format!(", secret: \"{s}\""));
    let extra = format!(
        "pool: {{ state_file: \"\", keys_file: \"\" }}\ncluster: {{ redis: \"{}\", instance_id: {id}, key_prefix: \"seal:\"{secret} }}\n",
        redis.url()
    );
    Harness::start_with(&[("a", "valid-a", 1)], &extra, |_| {})
}

async fn has_key(g: &Harness, id: &str) -> bool {
    let k = g.admin_json("/api/keys").await;
    k["keys"].as_array().unwrap().iter().any(|k| k["id"] == id)
}

async fn admin_post(g: &Harness, path: &str, body: &str) -> (u16, serde_json::Value) {
    let r = g
        .client
        .post(g.admin(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    json_of(r).await
}

/// Every Redis entry's name and value (read by type: a dump would hide a string behind its
/// compression).
fn redis_contents(redis: &RedisServer) -> String {
    let names = redis.cli(&["--scan"]);
    assert!(!names.is_empty());
    let mut all = String::new();
    for name in names.lines() {
        let read: &[&str] = match redis.cli(&["TYPE", name]).trim() {
            "string" => &["GET"],
            "hash" => &["HGETALL"],
            "set" => &["SMEMBERS"],
            "zset" => &["ZRANGE", "0", "-1"],
            "list" => &["LRANGE", "0", "-1"],
            other => panic!("{name} is a {other}"),
        };
        let mut args = vec!["--raw", read[0], name];
        args.extend(&read[1..]);
        all += &format!("{name}\n{}\n", redis.cli(&args));
    }
    all
}

/// Redis holds none of `secrets`, and does hold `known` (so the reading found the entries).
fn redis_holds_none_of(redis: &RedisServer, known: &str, secrets: &[&str]) {
    let all = redis_contents(redis);
    assert!(all.contains(known), "{known} not found in Redis");
    for s in secrets {
        assert!(!all.contains(s), "Redis holds {s}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_added_through_one_instance_serves_calls_on_all_and_redis_holds_it_sealed() {
    let redis = RedisServer::start();
    let gws: Vec<Harness> = (1..=3)
        .map(|i| sealing_member(&redis, &format!("k-{i}"), Some(SEAL)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let added = r#"{"id":"c","key":"valid-added-c","project":"p-c"}"#;
    assert_eq!(admin_post(&gws[0], "/api/keys", added).await.0, 201);
    for g in &gws[1..] {
        let took = within(Duration::from_secs(1), "key c everywhere", || {
            has_key(g, "c")
        })
        .await;
        eprintln!("an added key reached an instance in {took:?}");
    }
    // With `a` disabled (everywhere), the third instance serves calls with the added key.
    assert_eq!(admin_post(&gws[2], "/api/keys/a/disable", "").await.0, 200);
    within(
        Duration::from_secs(1),
        "a disabled on the third",
        || async {
            let k = gws[2].admin_json("/api/keys").await;
            k["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == "a" && k["dead_reason"] == "operator")
        },
    )
    .await;
    assert_eq!(gws[2].generate("hi").await.status(), 200);
    assert_eq!(gws[2].last_key(), "valid-added-c");
    let listed = gws[1].admin_text("/api/keys").await;
    assert!(!listed.contains("valid-added-c"), "{listed}");
    // An instance that starts later takes the key from the state Redis keeps.
    let late = sealing_member(&redis, "k-4", Some(SEAL));
    within(Duration::from_secs(3), "key c on a late instance", || {
        has_key(&late, "c")
    })
    .await;
    redis_holds_none_of(&redis, "key_added", &["valid-added-c", SEAL]);
    // Removed through another instance, it is gone from all, and does not come back to a newcomer.
    let r = gws[1]
        .client
        .delete(gws[1].admin("/api/keys/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for g in [&gws[0], &gws[2], &late] {
        within(
            Duration::from_secs(1),
            "key c removed everywhere",
            || async { !has_key(g, "c").await },
        )
        .await;
    }
    let newcomer = sealing_member(&redis, "k-5", Some(SEAL));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!has_key(&newcomer, "c").await);
    assert!(has_key(&newcomer, "a").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_shared_secret_an_added_key_is_refused_or_not_taken() {
    let redis = RedisServer::start();
    let none = sealing_member(&redis, "s-1", None);
    let (status, body) = admin_post(&none, "/api/keys", r#"{"id":"c","key":"valid-c"}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.to_string().contains("cluster.secret") && !body.to_string().contains("valid-c"),
        "{body}"
    );
    assert!(!has_key(&none, "c").await);
    let other = "another-cluster-secret-0123456789abcdef";
    let (one, two) = (
        sealing_member(&redis, "s-2", Some(SEAL)),
        sealing_member(&redis, "s-3", Some(other)),
    );
    // The operator sees that the instances do not share one secret, and not the secrets.
    within(Duration::from_secs(3), "secret drift seen", || async {
        let c = one.admin_json("/api/cluster").await;
        c["secret_drift"] == true && c["instances"].as_array().unwrap().len() == 3
    })
    .await;
    let c = one.admin_text("/api/cluster").await;
    assert!(!c.contains(SEAL) && !c.contains(other), "{c}");
    // A key added where it would not reach every instance is refused, naming them.
    let (status, body) = admin_post(&one, "/api/keys", r#"{"id":"d","key":"valid-d"}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("s-3"), "{body}");
    assert!(!body.to_string().contains("valid-d"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for g in [&one, &two, &none] {
        assert!(!has_key(g, "d").await);
    }
    redis_holds_none_of(&redis, "s-2", &["valid-d", SEAL, other]);
}
