//! With `cluster.secret`, whoever can write to the cluster's Redis but does not know the
//! secret cannot act as an operator or a key's finding: forged events on the channel or in the
//! kept state, and replays of real ones, change nothing. A real `redis-server` carries them.

use std::time::Duration;

use gemini_proxy_core::cluster::envelope;
use gemini_proxy_core::cluster::events::ClusterEvent;
use gemini_proxy_core::cluster::seal::Sealer;
use gemini_proxy_core::pool::PoolEvent;
use gemini_proxy_tests::*;

const SEAL: &str = "forgery-test-cluster-secret-5f0c9a1e7b3d2846";

fn member(redis: &RedisServer, id: &str) -> Harness {
    let extra = format!(
        "pool: {{ state_file: \"\", keys_file: \"\" }}\ncluster: {{ redis: \"{}\", instance_id: {id}, key_prefix: \"forge:\", secret: \"{SEAL}\" }}\n",
        redis.url()
    );
    Harness::start_with(&[("a", "valid-a", 1), ("b", "valid-b", 1)], &extra, |_| {})
}

/// Key `id` as `GET /api/keys` lists it (null when not listed).
async fn key(g: &Harness, id: &str) -> serde_json::Value {
    let k = g.admin_json("/api/keys").await;
    let found = k["keys"].as_array().unwrap().iter().find(|k| k["id"] == id);
    found.cloned().unwrap_or_default()
}

async fn untouched(g: &Harness) {
    for id in ["a", "b"] {
        let k = key(g, id).await;
        assert_eq!(k["state"], "active", "{k}");
        assert!(k["dead_reason"].is_null(), "{k}");
        assert_eq!(k["cooldowns"], serde_json::json!([]), "{k}");
    }
    let preset = g.admin_json("/api/keys").await["preset"].clone();
    assert!(preset.is_null(), "{preset}");
}

async fn post(g: &Harness, path: &str) -> u16 {
    let r = g
        .client
        .post(g.admin(path))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_replayed_events_change_nothing() {
    let redis = RedisServer::start();
    let (one, two) = (member(&redis, "f-1"), member(&redis, "f-2"));
    within(Duration::from_secs(3), "both instances seen", || async {
        let c = one.admin_json("/api/cluster").await;
        c["instances"].as_array().is_some_and(|l| l.len() == 2)
    })
    .await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let year = now_ms / 1000 + 365 * 86_400;
    let events = [
        r#"{"kind":"key_state","key_id":"a","action":"disable"}"#.to_string(),
        r#"{"kind":"key_removed","key_id":"b"}"#.to_string(),
        r#"{"kind":"preset","name":"night"}"#.to_string(),
        format!(
            r#"{{"kind":"pool","finding":"project_rest","project":"a","model":"gemini-2.5-flash","cooldown":{{"until":{year},"reason":"forged"}}}}"#
        ),
    ];
    for (i, event) in events.iter().enumerate() {
        let unsigned = format!(r#"{{"from":"intruder","event":{event}}}"#);
        let body = serde_json::to_string(event).unwrap();
        let badly_signed = format!(
            r#"{{"from":"intruder","at":{now_ms},"subject":"x","body":{body},"mac":"{}"}}"#,
            "00".repeat(32)
        );
        for text in [&unsigned, &badly_signed] {
            redis.cli(&["PUBLISH", "forge:events", text]);
            redis.cli(&["SET", &format!("forge:state:forged-{i}"), text]);
        }
        redis.cli(&["SET", "forge:state:pool:dead:a", &unsigned]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    untouched(&one).await;
    untouched(&two).await;
    // A newcomer catching up on the forged state takes none of it.
    let late = member(&redis, "f-3");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    untouched(&late).await;
    assert_eq!(late.generate("hi").await.status(), 200);

    // A real disable, captured from Redis, replayed after the key was enabled again.
    assert_eq!(post(&one, "/api/keys/a/disable").await, 200);
    within(Duration::from_secs(2), "a disabled on two", || async {
        key(&two, "a").await["dead_reason"] == "operator"
    })
    .await;
    let captured = redis.cli(&["--raw", "GET", "forge:state:pool:dead:a"]);
    assert!(captured.contains("\"mac\""), "{captured}");
    assert_eq!(post(&one, "/api/keys/a/enable").await, 200);
    within(Duration::from_secs(2), "a enabled on two", || async {
        key(&two, "a").await["dead_reason"].is_null()
    })
    .await;
    redis.cli(&["PUBLISH", "forge:events", &captured]);
    // Moved to another subject's state, it is not taken either.
    redis.cli(&["SET", "forge:state:pool:dead:b", &captured]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    untouched(&two).await;
    let newcomer = member(&redis, "f-4");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    untouched(&newcomer).await;
}

/// The state entry of a pin of `resource` to key `b`, as an instance would keep it.
fn pin_entry(resource: &str, signer: Option<&Sealer>) -> (String, String) {
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(resource.as_bytes())[..16]);
    let subject = format!("pool:pin:{hash}");
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let event = ClusterEvent::Pool(PoolEvent::Pinned {
        resource: resource.into(),
        key_id: "b".into(),
        owner: None,
        until,
        claims: None,
    });
    let event = serde_json::to_value(event).unwrap();
    let text = envelope::seal("f-0", signer, Some(&subject), &event);
    (format!("forge:state:{subject}"), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_signed_pins_send_a_resource_to_a_key() {
    let redis = RedisServer::start();
    let signer = Sealer::new(SEAL);
    let (good, signed) = pin_entry("files/good", Some(&signer));
    let (bad, unsigned) = pin_entry("files/bad", None);
    redis.cli(&["SET", &good, &signed]);
    redis.cli(&["SET", &bad, &unsigned]);
    let extra = format!(
        "pool: {{ state_file: \"\", keys_file: \"\" }}\ncluster: {{ redis: \"{}\", instance_id: f-9, key_prefix: \"forge:\", secret: \"{SEAL}\" }}\n",
        redis.url()
    );
    let g = Harness::start_with(
        &[("a", "valid-a", 1_000_000), ("b", "valid-b", 1)],
        &extra,
        |_| {},
    );
    let get = |name: &str| {
        g.client
            .get(g.url(&format!("/v1beta/{name}")))
            .header(CLIENT.0, CLIENT.1)
            .send()
    };
    within(Duration::from_secs(3), "the signed pin taken", || async {
        get("files/good").await.unwrap();
        g.last_key() == "valid-b"
    })
    .await;
    // The unsigned one is neither caught up nor looked up on the call's path.
    for _ in 0..3 {
        get("files/bad").await.unwrap();
        assert_eq!(g.last_key(), "valid-a");
    }
}
