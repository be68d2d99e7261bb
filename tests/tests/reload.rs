//! Hot reload: swaps under traffic without a failed call; a bad config keeps the old one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gemini_proxy_core::reload::{ReloadOutcome, reload};
use gemini_proxy_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn reload_under_traffic_loses_no_call() {
    let h = Harness::start(&[("old", "valid-old", 1)]);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (c, url, stop, ok, failed) = (
            h.client.clone(),
            h.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r = c
                    .post(&url)
                    .header("x-goog-api-key", "t")
                    .header("x-mock-event-delay-ms", "20")
                    .body(gen_body(&format!("w{w} {i}")))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(t) if t.contains("finishReason") => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    },
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let base = h.config_text();
    for g in 2..=6u64 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let id = format!("gen{g}");
        h.write_config(&base.replace(
            "{ id: old, key: valid-old, weight: 1 }",
            &format!("{{ id: {id}, key: valid-{id}, weight: 1 }}"),
        ));
        h.wait_generation(g).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "calls failed during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 40,
        "too little traffic to mean anything: {}",
        ok.load(Ordering::Relaxed)
    );
    let used: std::collections::BTreeSet<String> = h
        .mock
        .requests()
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    for g in 2..=6 {
        assert!(
            used.contains(&format!("valid-gen{g}")),
            "generation {g} never served: {used:?}"
        );
    }
    let metrics = h.admin_text("/metrics").await;
    assert!(
        metrics.contains("config_reloads_total{result=\"applied\"} 5"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_reload_keeps_the_running_config() {
    let h = Harness::start(&[("old", "valid-old", 1)]);
    assert_eq!(h.generate("x").await.status(), 200);
    let base = h.config_text();
    for broken in [
        base.replace("weight: 1", "weight: lots"),
        base.replace("gemini:", "gemini: [not: valid"),
        format!("{base}surprise_field: true\n"),
        format!("{base}pipeline:\n  - no_such_stage: {{}}\n"),
    ] {
        h.write_config(&broken);
        let outcome = reload(&h.gateway.shared, true).await;
        let ReloadOutcome::Failed(msg) = outcome else {
            panic!("accepted a broken config: {broken}")
        };
        assert!(msg.contains("proxy.yaml"), "error names the file: {msg}");
        assert_eq!(h.gateway.shared.runtime.load().generation, 1);
        assert_eq!(h.generate("x").await.status(), 200);
        assert_eq!(h.last_key(), "valid-old");
    }
    // SIGHUP-style forced reload of a good file applies it.
    h.write_config(&base.replace("valid-old", "valid-new"));
    assert!(matches!(
        reload(&h.gateway.shared, true).await,
        ReloadOutcome::Applied { generation: 2 }
    ));
    h.generate("x").await;
    assert_eq!(h.last_key(), "valid-new");
    let metrics = h.admin_text("/metrics").await;
    assert!(
        metrics.contains("config_reloads_total{result=\"rejected\"} 4"),
        "{metrics}"
    );
}
