//! The pool's state machine, driven directly.

use std::sync::Arc;
use std::time::Duration;

use gemini_proxy_sdk::{Candidate, Selection};

use super::*;
use crate::config::PoolConfig;

fn cfg() -> PoolConfig {
    PoolConfig::default()
}

fn pool(keys: &[(&str, &str)]) -> (KeyPool, Vec<Candidate>) {
    let pool = KeyPool::default();
    let cands: Vec<Candidate> = keys
        .iter()
        .map(|(id, p)| Candidate::new(id, 1).in_project(p))
        .collect();
    let pk: Vec<PoolKey> = cands
        .iter()
        .map(|c| PoolKey {
            id: &c.id,
            project: &c.project,
            fingerprint: fingerprint(&format!("secret-{}", c.id)),
        })
        .collect();
    pool.sync_keys(&pk);
    (pool, cands)
}

fn eligible(pool: &KeyPool, cands: &[Candidate], model: &str) -> (Vec<String>, Gate) {
    let mut sel = Selection::new(cands);
    let g = pool.gate(&PoolIndex::new(cands), Some(model), &mut sel);
    (sel.eligible().map(|(_, c)| c.id.to_string()).collect(), g)
}

#[test]
fn made_up_model_names_cannot_grow_the_pool_state() {
    let (p, _) = pool(&[("a", "p1")]);
    let project: Arc<str> = Arc::from("p1");
    for i in 0..(MAX_MODEL_STATE * 3) {
        let m = format!("nosuch-{i}");
        p.usage.count_request(&project, Some(&m));
        p.record(&cfg(), "a", Some(&m), &Verdict::ModelUnavailable, None);
        p.record(
            &cfg(),
            "a",
            Some(&m),
            &Verdict::ProjectQuota {
                window: QuotaWindow::Minute,
                retry_delay: Some(Duration::from_secs(30)),
                quota_id: "q".into(),
            },
            None,
        );
    }
    assert!(p.usage.len() <= MAX_MODEL_STATE, "{}", p.usage.len());
    let st = p.health.lock();
    assert!(st.key_model.len() <= MAX_MODEL_STATE);
    assert!(st.project_model.len() <= MAX_MODEL_STATE);
}

#[test]
fn quota_cooldowns_are_per_project_and_model() {
    let (p, c) = pool(&[("a", "p1"), ("b", "p1"), ("c", "p2")]);
    let v = Verdict::ProjectQuota {
        window: QuotaWindow::Minute,
        retry_delay: Some(Duration::from_secs(30)),
        quota_id: "GenerateRequestsPerMinutePerProjectPerModel".into(),
    };
    p.record(&cfg(), "a", Some("flash"), &v, None);
    let (ids, g) = eligible(&p, &c, "flash");
    assert_eq!(ids, vec!["c"], "a and b share project p1");
    assert_eq!(g.resting, 2);
    let wait = g
        .earliest_recovery
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        wait > Duration::from_secs(28) && wait <= Duration::from_secs(32),
        "{wait:?}"
    );
    assert_eq!(
        eligible(&p, &c, "pro").0.len(),
        3,
        "other models unaffected"
    );
}

#[test]
fn dead_keys_stay_dead_and_reset_revives() {
    let (p, c) = pool(&[("a", "a"), ("b", "b")]);
    assert_eq!(
        p.record(
            &cfg(),
            "a",
            Some("m"),
            &Verdict::KeyDead(DeadReason::Invalid),
            None
        ),
        Some(DeadReason::Invalid)
    );
    assert_eq!(eligible(&p, &c, "m").0, vec!["b"]);
    assert_eq!(
        eligible(&p, &c, "other").0,
        vec!["b"],
        "dead for every model"
    );
    let (_, g) = eligible(&p, &c, "m");
    assert_eq!(g.resting, 0, "dead is not resting");
    assert!(p.reset("a"));
    assert_eq!(eligible(&p, &c, "m").0.len(), 2);
}

#[test]
fn breaker_opens_after_consecutive_blames_and_probes_half_open() {
    let (p, c) = pool(&[("a", "a"), ("b", "b")]);
    let mut conf = cfg();
    conf.breaker_failures = 2;
    conf.breaker_open_for = crate::config::ConfigDuration(Duration::from_millis(50));
    p.blame(&conf, "a");
    assert_eq!(eligible(&p, &c, "m").0.len(), 2);
    p.blame(&conf, "a");
    assert_eq!(eligible(&p, &c, "m").0, vec!["b"], "open");
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        eligible(&p, &c, "m").0.len(),
        2,
        "half-open lets a probe through"
    );
    let live = p.live_handles(c.iter().map(|c| &c.id));
    p.begin("a", &live[0]);
    assert_eq!(live[0].in_flight(), 1);
    assert_eq!(eligible(&p, &c, "m").0, vec!["b"], "one probe at a time");
    p.record(&conf, "a", Some("m"), &Verdict::Success, None);
    p.end("a", &live[0]);
    assert_eq!(live[0].in_flight(), 0);
    assert_eq!(eligible(&p, &c, "m").0.len(), 2);
    assert_eq!(p.report()[0].breaker, "closed");
}

#[test]
fn state_survives_a_restart_for_the_same_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.json");
    let (p, _) = pool(&[("a", "a"), ("b", "b")]);
    p.set_state_file(Some(file.clone()));
    p.record(
        &cfg(),
        "a",
        Some("m"),
        &Verdict::KeyDead(DeadReason::Leaked),
        None,
    );
    p.record(
        &cfg(),
        "b",
        Some("m"),
        &Verdict::ProjectQuota {
            window: QuotaWindow::Day,
            retry_delay: None,
            quota_id: "PerDay".into(),
        },
        None,
    );
    p.save().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (q, c) = pool(&[("a", "a"), ("b", "b")]);
    q.set_state_file(Some(file.clone()));
    let (ids, g) = eligible(&q, &c, "m");
    assert!(ids.is_empty());
    assert_eq!(g.resting, 1);
    assert_eq!(q.report()[0].dead_reason, Some("leaked"));
    // Same id, new secret: a new key, not dead.
    let r = KeyPool::default();
    let id: Arc<str> = Arc::from("a");
    r.sync_keys(&[PoolKey {
        id: &id,
        project: &id,
        fingerprint: fingerprint("another secret"),
    }]);
    r.set_state_file(Some(file));
    assert_eq!(r.report()[0].state, "active");
}

#[test]
fn headroom_is_the_tightest_unused_share() {
    let (p, c) = pool(&[("a", "pa")]);
    let limits = crate::config::ModelLimits {
        rpm: Some(10),
        tpm: Some(1000),
        rpd: None,
    };
    assert_eq!(
        p.usage.headroom(&c[0].project, Some("m"), &limits),
        Some(1.0)
    );
    for _ in 0..3 {
        p.usage.count_request(&c[0].project, Some("m"));
    }
    p.usage.count_tokens(&c[0].project, Some("m"), 500);
    let h = p.usage.headroom(&c[0].project, Some("m"), &limits).unwrap();
    assert!((h - 0.5).abs() < 1e-9, "tokens are tighter: {h}");
    assert_eq!(
        p.usage
            .headroom(&c[0].project, Some("m"), &Default::default()),
        None
    );
}

#[test]
fn pins_survive_a_restart_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.json");
    let (p, _) = pool(&[("a", "a")]);
    p.set_state_file(Some(file.clone()));
    assert!(!p.has_pins());
    p.pin("files/abc", "a", Duration::from_secs(3600), Some("user:x"));
    p.pin("upload:old", "a", Duration::from_secs(0), None);
    // Named again by someone else (an admin reading it): the owner stays.
    p.pin(
        "files/abc",
        "a",
        Duration::from_secs(3600),
        Some("user:admin"),
    );
    assert_eq!(p.owner_of("files/abc"), Some(Some("user:x".into())));
    // The same name made by another caller in another project does not re-point it.
    let (p2, _) = pool(&[("a", "a"), ("b", "b")]);
    p2.pin("files/n", "a", Duration::from_secs(3600), Some("user:x"));
    p2.pin("files/n", "b", Duration::from_secs(3600), Some("user:y"));
    assert_eq!(p2.pinned("files/n").as_deref(), Some("a"));
    assert_eq!(p2.owner_of("files/n"), Some(Some("user:x".into())));
    assert_eq!(p.pinned("files/abc").as_deref(), Some("a"));
    assert_eq!(p.pinned("upload:old"), None, "expired");
    p.save().unwrap();
    let (q, _) = pool(&[("a", "a")]);
    q.set_state_file(Some(file));
    assert_eq!(q.pinned("files/abc").as_deref(), Some("a"));
    assert_eq!(q.pinned("files/other"), None);
}

#[test]
fn fingerprints_do_not_reveal_the_key() {
    let f = fingerprint("AIzaSyD-secret-key-value");
    assert!(f.starts_with("sha256:") && f.len() == 19);
    assert!(!f.contains("AIza"));
}

#[test]
fn findings_from_other_instances_rest_a_key_no_longer_than_any_real_finding() {
    let (p, _) = pool(&[("a", "p1")]);
    let year = now_unix() + 365 * 86_400;
    let fingerprint = fingerprint("secret-a");
    let cooldown = Cooldown {
        until: year,
        reason: "remote".into(),
        quota_id: None,
    };
    assert!(p.apply_remote(&PoolEvent::ProjectRest {
        project: "p1".into(),
        model: "flash".into(),
        cooldown: cooldown.clone(),
    }));
    assert!(p.apply_remote(&PoolEvent::KeyRest {
        key_id: "a".into(),
        fingerprint: fingerprint.clone(),
        model: "pro".into(),
        cooldown,
    }));
    assert!(p.apply_remote(&PoolEvent::BreakerOpen {
        key_id: "a".into(),
        fingerprint,
        until_ms: year * 1000,
    }));
    let report = &p.report()[0];
    assert_eq!(report.cooldowns.len(), 2, "{report:?}");
    for c in &report.cooldowns {
        assert!(c.remaining_s <= 2 * 86_400, "{c:?}");
    }
    assert!(
        report.breaker_open_remaining_s.unwrap() <= 600.0,
        "{report:?}"
    );
}
