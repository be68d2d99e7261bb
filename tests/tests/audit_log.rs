//! The JSON-lines audit trail: one line per call, config change and security event; no secrets.

use std::time::Duration;

use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::*;
use serde_json::Value;

const SECRET: &str = "Audit-test-secret-0123456789-abcdefghij!";

fn lines(h: &Harness) -> Vec<Value> {
    let path = h
        .config_path
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .join("logs/audit.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_config_changes_and_security_events_are_on_record() {
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\" }}\naudit: {{ flush_interval: 100ms }}\npool: {{ state_file: \"\", keys_file: \"\" }}\n"
    );
    let h = Harness::start_with(&[("a", "valid-AUDITPOOLKEY-a", 1)], &extra, |_| {});
    let token = sign(
        SECRET,
        "HS256",
        None,
        &new_claims("alice", Role::User, Duration::from_secs(60), vec![]),
    )
    .unwrap();
    let r = h
        .client
        .post(h.url(&format!(
            "/v1beta/models/gemini-2.5-flash:generateContent?key={token}"
        )))
        .header("user-agent", "audit-test")
        .body(gen_body("count my tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = h
        .call(
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("x-goog-api-key", "forged"),
            Some(gen_body("x")),
        )
        .await;
    assert_eq!(s, 401);
    h.write_config(&h.config_text().replace("weight: 1", "weight: 2"));
    h.wait_generation(2).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // > flush_interval, no shutdown

    let all = lines(&h);
    let call = all
        .iter()
        .find(|l| l["event_type"] == "ApiCall" && l["status"] == 200)
        .expect("the successful call");
    assert_eq!(call["result"], "Success");
    assert_eq!(call["user"], "alice");
    assert_eq!(call["role"], "user");
    assert_eq!(call["source_ip"], "127.0.0.1");
    assert_eq!(call["key_id"], "a");
    assert_eq!(call["model"], "gemini-2.5-flash");
    assert_eq!(
        call["action"],
        "POST /v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert!(call["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(call["total_tokens"].as_u64().unwrap() >= call["prompt_tokens"].as_u64().unwrap());
    assert!(call["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(call["request_bytes"].as_u64().unwrap() > 0);
    let refused = all
        .iter()
        .find(|l| l["event_type"] == "SecurityEvent" && l["action"] != "startup check")
        .expect("a security event");
    assert_eq!(refused["result"], "Blocked");
    assert!(
        refused["action"].as_str().unwrap().contains("malformed"),
        "{refused}"
    );
    assert!(
        all.iter()
            .any(|l| l["event_type"] == "ApiCall" && l["status"] == 401)
    );
    let changes: Vec<&Value> = all
        .iter()
        .filter(|l| l["event_type"] == "ConfigChange")
        .collect();
    assert_eq!(changes.len(), 2, "startup and the reload");
    assert_eq!(changes[1]["version"], 2);
    assert!(
        changes[1]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "gemini.api_keys")
    );
    let text = serde_json::to_string(&all).unwrap();
    for secret in [SECRET, token.as_str(), "AUDITPOOLKEY", "forged"] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
    let metrics = h.admin_text("/metrics").await;
    assert!(metrics.contains("audit_dropped_total 0"), "{metrics}");
}
