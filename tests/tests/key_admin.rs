//! Key operations on the admin listener: add, remove with draining, disable/enable/reset,
//! weight presets (applied and scheduled), expiry, and persistence across restarts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gemini_proxy_tests::*;
use serde_json::{Value, json};

async fn post(h: &Harness, path: &str, body: Value) -> (u16, Value) {
    json_of(
        h.client
            .post(h.admin(path))
            .json(&body)
            .send()
            .await
            .expect("admin answers"),
    )
    .await
}

fn served_by(h: &Harness) -> Vec<String> {
    h.mock
        .requests()
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_added_and_removed_at_runtime_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let files = format!(
        "pool: {{ state_file: \"{0}/state.json\", keys_file: \"{0}/keys.json\" }}\n",
        dir.path().display()
    );
    let keys = [("a", "valid-a", 1)];
    {
        let h = Harness::start_with(&keys, &files, |_| {});
        let (s, r) = post(
            &h,
            "/api/keys",
            json!({"id": "n", "key": "valid-NEWSECRET", "weight": 3, "project": "p-new"}),
        )
        .await;
        assert_eq!(s, 201, "{r}");
        assert_eq!(r["key"]["id"], "n");
        assert!(
            r["key"]["fingerprint"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
        assert!(
            !r.to_string().contains("NEWSECRET"),
            "the API never shows a key"
        );
        for _ in 0..8 {
            assert_eq!(h.generate("x").await.status(), 200);
        }
        let by = served_by(&h);
        assert_eq!(
            by.iter().filter(|k| *k == "valid-NEWSECRET").count(),
            6,
            "{by:?}"
        );

        // Refusals: same id, same secret, bad body.
        let (s, _) = post(&h, "/api/keys", json!({"id": "n", "key": "valid-other"})).await;
        assert_eq!(s, 409);
        let (s, r) = post(&h, "/api/keys", json!({"id": "m", "key": "valid-a"})).await;
        assert_eq!(s, 400);
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("repeats an earlier key")
        );
        assert!(!r.to_string().contains("valid-a"), "{r}");
        let (s, _) = post(&h, "/api/keys", json!({"id": "m"})).await;
        assert_eq!(s, 400);

        let keys_file = dir.path().join("keys.json");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&keys_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Remove the configured key: only `n` serves from now on.
        let r = h
            .client
            .delete(h.admin("/api/keys/a"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        h.mock.clear();
        for _ in 0..4 {
            assert_eq!(h.generate("y").await.status(), 200);
        }
        assert!(served_by(&h).iter().all(|k| k == "valid-NEWSECRET"));
        let r = h
            .client
            .delete(h.admin("/api/keys/nosuch"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    // A restart keeps the added key and the removal.
    let h = Harness::start_with(&keys, &files, |_| {});
    let ids: Vec<String> = h.admin_json("/api/keys").await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["n"]);
    assert_eq!(h.generate("z").await.status(), 200);
    assert_eq!(h.last_key(), "valid-NEWSECRET");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_key_drains_its_calls_in_flight() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1)],
        "pool: { state_file: \"\", keys_file: \"\" }\n",
        |_| {},
    );
    let (s, _) = post(
        &h,
        "/api/keys",
        json!({"id": "b", "key": "valid-b", "weight": 1}),
    )
    .await;
    assert_eq!(s, 201);
    // A slow call on `a` (round robin starts with it) ...
    let client = h.client.clone();
    let url = h.url("/v1beta/models/mock-slow-800:generateContent");
    let slow = tokio::spawn(async move {
        client
            .post(url)
            .header(CLIENT.0, CLIENT.1)
            .body(gen_body("slow"))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let slow_key = served_by(&h)[0].clone();
    let id = if slow_key == "valid-a" { "a" } else { "b" };
    // ... is not cut when its key is removed.
    let r = h
        .client
        .delete(h.admin(&format!("/api/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, body) = json_of(r).await;
    assert_eq!(body["draining_calls"], 1);
    assert_eq!(slow.await.unwrap(), 200);
    for _ in 0..4 {
        assert_eq!(h.generate("after").await.status(), 200);
        assert_ne!(h.last_key(), slow_key);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_disable_enable_and_reset_keys() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1), ("b", "valid-b", 1)],
        "pool: { state_file: \"\", keys_file: \"\" }\n",
        |_| {},
    );
    let (s, r) = post(&h, "/api/keys/b/disable", json!({})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["key"]["state"], "disabled");
    assert_eq!(r["key"]["dead_reason"], "operator");
    for _ in 0..4 {
        assert_eq!(h.generate("x").await.status(), 200);
    }
    assert!(served_by(&h).iter().all(|k| k == "valid-a"));
    let (s, r) = post(&h, "/api/keys/b/enable", json!({})).await;
    assert_eq!((s, r["key"]["state"].as_str()), (200, Some("active")));
    h.mock.clear();
    for _ in 0..4 {
        assert_eq!(h.generate("x").await.status(), 200);
    }
    assert!(served_by(&h).iter().any(|k| k == "valid-b"));
    let (s, _) = post(&h, "/api/keys/zz/reset", json!({})).await;
    assert_eq!(s, 404);
    let (s, r) = post(&h, "/api/keys/a/reset", json!({})).await;
    assert_eq!((s, r["key"]["state"].as_str()), (200, Some("active")));
}

const PRESETS: &str = "presets:\n  only_a: { a: 10, b: 0 }\n  only_b: { a: 0, b: 10 }\n";

#[tokio::test(flavor = "multi_thread")]
async fn presets_switch_weights_and_stay_applied_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{PRESETS}default_preset: only_a\npool: {{ state_file: \"{}/state.json\", keys_file: \"\" }}\n",
        dir.path().display()
    );
    let keys = [("a", "valid-a", 1), ("b", "valid-b", 1)];
    {
        let h = Harness::start_with(&keys, &extra, |_| {});
        let p = h.admin_json("/api/weights/presets").await;
        assert_eq!(p["in_force"], "only_a");
        assert_eq!(p["source"], "default");
        assert_eq!(p["weights"]["b"], 0);
        for _ in 0..3 {
            assert_eq!(h.generate("x").await.status(), 200);
        }
        assert!(served_by(&h).iter().all(|k| k == "valid-a"));
        let (s, r) = post(&h, "/api/weights/apply", json!({"preset_name": "only_b"})).await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["in_force"], "only_b");
        assert_eq!(r["weights"], json!({"a": 0, "b": 10}));
        h.mock.clear();
        for _ in 0..3 {
            assert_eq!(h.generate("x").await.status(), 200);
        }
        assert!(served_by(&h).iter().all(|k| k == "valid-b"));
        let (s, _) = post(&h, "/api/weights/apply", json!({"preset_name": "nosuch"})).await;
        assert_eq!(s, 404);
        let (s, _) = post(&h, "/api/weights/apply", json!({"name": "only_a"})).await;
        assert_eq!(s, 400);
    }
    let h = Harness::start_with(&keys, &extra, |_| {});
    let p = h.admin_json("/api/weights/presets").await;
    assert_eq!(
        (p["in_force"].as_str(), p["source"].as_str()),
        (Some("only_b"), Some("applied"))
    );
}

fn hhmm(offset_min: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let m = ((now / 60 + offset_min).rem_euclid(1440)) as u32;
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_preset_applies_inside_its_window_only() {
    let inside = format!(
        "{PRESETS}default_preset: only_a\npreset_schedule:\n  - {{ preset: only_b, from: \"{}\", to: \"{}\" }}\npool: {{ state_file: \"\" }}\n",
        hhmm(-2),
        hhmm(3)
    );
    let h = Harness::start_with(&[("a", "valid-a", 1), ("b", "valid-b", 1)], &inside, |_| {});
    let p = h.admin_json("/api/weights/presets").await;
    assert_eq!(
        (p["in_force"].as_str(), p["source"].as_str()),
        (Some("only_b"), Some("schedule"))
    );
    assert_eq!(h.generate("x").await.status(), 200);
    assert_eq!(h.last_key(), "valid-b");
    drop(h);
    let outside = format!(
        "{PRESETS}default_preset: only_a\npreset_schedule:\n  - {{ preset: only_b, from: \"{}\", to: \"{}\" }}\npool: {{ state_file: \"\" }}\n",
        hhmm(5),
        hhmm(10)
    );
    let h = Harness::start_with(
        &[("a", "valid-a", 1), ("b", "valid-b", 1)],
        &outside,
        |_| {},
    );
    let p = h.admin_json("/api/weights/presets").await;
    assert_eq!(p["in_force"], "only_a");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiring_key_stops_serving_at_its_expiry() {
    let soon = SystemTime::now() + Duration::from_secs(2);
    let h = Harness::start_with(
        &[("a", "valid-a", 1)],
        "pool: { state_file: \"\", keys_file: \"\" }\n",
        |_| {},
    );
    let rfc = gemini_proxy_core::util::clock::format_rfc3339(soon);
    let (s, r) = post(
        &h,
        "/api/keys",
        json!({"id": "old", "key": "valid-old", "weight": 1000, "expires_at": rfc}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(h.generate("x").await.status(), 200);
    assert_eq!(h.last_key(), "valid-old");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    for _ in 0..3 {
        assert_eq!(h.generate("y").await.status(), 200);
        assert_eq!(h.last_key(), "valid-a", "expired key still used");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validation_probe_revives_a_key_that_works_again() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1), ("b", "valid-b", 1)],
        "pool: { state_file: \"\", keys_file: \"\" }\n",
        |_| {},
    );
    h.mock.revoke("valid-a");
    for _ in 0..3 {
        assert_eq!(h.generate("x").await.status(), 200);
    }
    let (s, r) = post(&h, "/api/keys/a/probe", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(r["probe"]["verdict"], "key_dead", "{r}");
    assert_eq!(r["probe"]["revived"], false);
    h.mock.restore("valid-a");
    let (s, r) = post(&h, "/api/keys/a/probe", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(r["probe"]["verdict"], "success", "{r}");
    assert_eq!(r["probe"]["revived"], true);
    let probe_call = h.mock.requests().last().cloned().unwrap();
    assert_eq!(probe_call.method, "GET");
    assert!(
        probe_call.path.ends_with("/models"),
        "no generation quota spent"
    );
    h.mock.clear();
    for _ in 0..4 {
        assert_eq!(h.generate("y").await.status(), 200);
    }
    assert!(served_by(&h).iter().any(|k| k == "valid-a"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_keys_are_rechecked_periodically_when_configured() {
    let h = Harness::start_with(
        &[("a", "valid-a", 1), ("b", "valid-b", 1)],
        "pool: { state_file: \"\", keys_file: \"\", probe_interval: 1s }\n",
        |_| {},
    );
    h.mock.revoke("valid-a");
    for _ in 0..2 {
        assert_eq!(h.generate("x").await.status(), 200);
    }
    let state = |h: &Harness| {
        let h = h.admin("/api/keys");
        async move {
            let v: Value = client().get(h).send().await.unwrap().json().await.unwrap();
            v["keys"][0]["state"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(state(&h).await, "disabled");
    h.mock.restore("valid-a");
    let mut revived = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if state(&h).await == "active" {
            revived = true;
            break;
        }
    }
    assert!(revived, "the periodic probe did not revive the key");
}
