//! A Live session's tokens count against its user's tokens-a-minute limit once it ends: the
//! usage the server reported, summed over the session, replaces the admission's estimate, and
//! the user's next call or session is refused while the minute holds them. Before its setup
//! is read, a client may not make the gateway hold more than the setup limit.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::live::*;
use gemini_proxy_tests::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

const SECRET: &str = "Live-limits-JWT-secret-with-enough-entropy-0123456789!";

#[tokio::test(flavor = "multi_thread")]
async fn a_sessions_tokens_are_charged_to_its_user_when_it_ends() {
    let extra = format!(
        "auth: {{ enabled: true, jwt_secret: \"{SECRET}\", revocations_file: \"\" }}\npipeline:\n  - rate_limit: {{ per_user: {{ tpm: 20 }} }}\n  - key_select\n"
    );
    let h = Harness::start_with(&[("a", "valid-live-a", 1)], &extra, |_| {});
    let token = |sub: &str| {
        let c = new_claims(sub, Role::User, Duration::from_secs(600), vec![]);
        sign(SECRET, "HS256", None, &c).unwrap()
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let mut ws = connect(&h, Some(&alice)).await;
    ws.send(setup("gemini-live-2.5-flash")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), json!({"setupComplete": {}}));
    // Two turns of six words: 6 + 7 tokens each, 26 in all, over the 20 a minute.
    for _ in 0..2 {
        ws.send(turn("one two three four five six")).await.unwrap();
        let (_, usage) = answer(&mut ws).await;
        assert_eq!(usage["totalTokenCount"], 13);
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let generate = |who: String| {
        let h = &h;
        async move {
            let bearer = format!("Bearer {who}");
            h.call(
                "POST",
                "/v1beta/models/gemini-2.5-flash:generateContent",
                ("authorization", &bearer),
                Some(gen_body("hi")),
            )
            .await
        }
    };
    // The session's end is recorded after its close; allow it a moment.
    let mut refused = (0, serde_json::Value::Null);
    for _ in 0..50 {
        refused = generate(alice.clone()).await;
        if refused.0 == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert!(
        refused.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tokens a minute")),
        "{}",
        refused.1
    );
    let again = refused_with(&h, Some(&alice), "gemini-live-2.5-flash").await;
    assert_eq!(u16::from(again.code), 1013, "{again:?}");
    assert!(again.reason.contains("tokens a minute"), "{again:?}");
    // Another user's minute is their own.
    assert_eq!(generate(bob).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn before_its_setup_a_client_cannot_make_the_gateway_buffer_a_large_message() {
    let h = Harness::start_with(
        &[("a", "valid-live-a", 1)],
        "live: { max_setup_bytes: 1024, setup_timeout: 20s }\n",
        |_| {},
    );
    let mut ws = connect(&h, Some(CLIENT.1)).await;
    // One masked binary frame that says 10 MiB (under the 16 MiB message limit), of which
    // only 64 KiB come: a gateway that buffered toward the message limit would wait for more.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(10u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(b'x', 64 << 10));
    let _ = ws.get_mut().write_all(&frame).await;
    let started = std::time::Instant::now();
    let close = tokio::time::timeout(Duration::from_secs(10), next(&mut ws))
        .await
        .expect("answered before the setup timeout")
        .expect_err("closed")
        .expect("with a frame");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(live_calls(&h).is_empty());
}
