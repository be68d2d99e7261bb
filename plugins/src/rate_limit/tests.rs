use super::*;
use gemini_proxy_sdk::{Identity, Role, testing};

fn stage(v: serde_json::Value) -> Arc<dyn Plugin> {
    crate::builtin_registry()
        .build("rate_limit", v, &BuildEnv::default())
        .unwrap()
}

fn admit(p: &dyn Plugin, cx: &mut RequestContext) -> Admission {
    testing::block_on(p.on_admit(cx)).unwrap()
}

fn call(ip: &str, user: Option<&str>) -> RequestContext {
    let mut cx = testing::request("POST", "/v1beta/models/m:generateContent");
    cx.request.client_ip = Some(ip.parse().unwrap());
    cx.request.body_size = Some(400);
    cx.identity = user.map(|u| Identity::new(u, Role::User));
    cx
}

#[test]
fn counts_requests_per_ip_and_per_user() {
    let p = stage(serde_json::json!({"per_ip": {"rpm": 3}, "per_user": {"rpm": 2}}));
    assert!(matches!(
        admit(&*p, &mut call("10.0.0.1", Some("a"))),
        Admission::Continue
    ));
    assert!(matches!(
        admit(&*p, &mut call("10.0.0.2", Some("a"))),
        Admission::Continue
    ));
    match admit(&*p, &mut call("10.0.0.3", Some("a"))) {
        Admission::Reject(r) => {
            assert_eq!(r.status, 429);
            assert_eq!(r.reason, Some("rpm"));
            let after = r.retry_after.unwrap();
            assert!(
                after > Duration::from_secs(58) && after <= WINDOW,
                "{after:?}"
            );
        }
        _ => panic!("user a is over 2/min"),
    }
    for _ in 0..3 {
        assert!(matches!(
            admit(&*p, &mut call("10.0.0.9", None)),
            Admission::Continue
        ));
    }
    assert!(matches!(
        admit(&*p, &mut call("10.0.0.9", None)),
        Admission::Reject(_)
    ));
}

#[test]
fn token_limits_use_estimates_then_actual_usage_and_claims_override() {
    let p = stage(serde_json::json!({"per_user": {"tpm": 1000}}));
    let mut cx = call("10.0.0.1", Some("a"));
    cx.request.body_size = Some(3600); // ~900 tokens
    assert!(matches!(admit(&*p, &mut cx), Admission::Continue));
    let mut next = call("10.0.0.1", Some("a"));
    assert!(
        matches!(admit(&*p, &mut next), Admission::Reject(_)),
        "estimate counts"
    );
    // The call really used 100 tokens.
    let mut done = CompletedRequest::default();
    done.usage = Some(gemini_proxy_sdk::Usage {
        prompt_tokens: 60,
        candidates_tokens: 40,
        ..Default::default()
    });
    p.on_complete(&cx, &done);
    assert!(matches!(
        admit(&*p, &mut call("10.0.0.1", Some("a"))),
        Admission::Continue
    ));
    // A token's own limits win.
    let mut vip = call("10.0.0.1", Some("vip"));
    vip.identity.as_mut().unwrap().claims = serde_json::json!({"limits": {"tpm": 1_000_000}});
    vip.request.body_size = Some(400_000);
    assert!(matches!(admit(&*p, &mut vip), Admission::Continue));
}

#[test]
fn concurrent_streams_are_capped_and_released() {
    let p = stage(serde_json::json!({"per_user": {"concurrent_streams": 1}}));
    let stream = || {
        let mut cx = testing::request("POST", "/v1beta/models/m:streamGenerateContent?alt=sse");
        cx.identity = Some(Identity::new("s", Role::User));
        cx
    };
    let mut first = stream();
    assert!(matches!(admit(&*p, &mut first), Admission::Continue));
    assert!(matches!(admit(&*p, &mut stream()), Admission::Reject(_)));
    p.on_complete(&first, &CompletedRequest::default());
    assert!(matches!(admit(&*p, &mut stream()), Admission::Continue));
}

#[test]
fn a_flood_of_addresses_keeps_the_map_bounded() {
    let p = RateLimit {
        config: serde_json::from_value(serde_json::json!({"per_ip": {"rpm": 1000}})).unwrap(),
        logs: Mutex::new(HashMap::new()),
        epoch: Instant::now(),
        shared: None,
        lease_base: 1,
        leases: Default::default(),
    };
    let max = p.config.max_callers;
    for i in 0..(max as u32 * 2 + 10) {
        let mut cx = call(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(), None);
        p.check(&mut cx, 1, true).unwrap();
    }
    assert!(p.logs.lock().len() <= max, "{}", p.logs.lock().len());
    // Fresh IPv6 addresses of one /64 are one caller.
    for i in 0..1000u128 {
        let ip = std::net::Ipv6Addr::from((0x2001_0db8_0000_0001u128 << 64) | i);
        p.check(&mut call(&ip.to_string(), None), 1, true).unwrap();
    }
    assert_eq!(
        p.logs
            .lock()
            .keys()
            .filter(|k| k.starts_with("ip:2001:db8"))
            .count(),
        1
    );
}

#[test]
fn the_body_phase_charges_what_was_read_and_a_refusal_costs_nothing() {
    let p = stage(serde_json::json!({"per_user": {"tpm": 1000}}));
    let mut a = call("10.0.0.1", Some("u"));
    a.request.body_size = None;
    assert!(
        matches!(admit(&*p, &mut a), Admission::Continue),
        "no length: 1 token"
    );
    let big = vec![b'x'; 8000];
    assert!(
        matches!(testing::block_on(p.on_body(&mut a, &big)).unwrap(), Admission::Reject(r) if r.reason == Some("tpm"))
    );
    // Taken back: a call of 900 tokens still fits.
    let mut b = call("10.0.0.1", Some("u"));
    b.request.body_size = None;
    assert!(matches!(admit(&*p, &mut b), Admission::Continue));
    assert!(matches!(
        testing::block_on(p.on_body(&mut b, &vec![b'x'; 3600])).unwrap(),
        Admission::Continue
    ));
    let mut c = call("10.0.0.1", Some("u"));
    c.request.body_size = None;
    assert!(matches!(admit(&*p, &mut c), Admission::Continue));
    assert!(
        matches!(
            testing::block_on(p.on_body(&mut c, &vec![b'x'; 800])).unwrap(),
            Admission::Reject(_)
        ),
        "the first body is charged"
    );
}

#[test]
fn a_call_longer_than_the_window_is_charged_when_it_ends() {
    let p = RateLimit {
        config: serde_json::from_value(serde_json::json!({"per_user": {"tpm": 1000}})).unwrap(),
        logs: Mutex::new(HashMap::new()),
        epoch: Instant::now() - Duration::from_secs(100),
        shared: None,
        lease_base: 1,
        leases: Default::default(),
    };
    let mut long = call("10.0.0.1", Some("u"));
    long.request.body_size = None;
    assert!(matches!(admit(&p, &mut long), Admission::Continue));
    // As if admitted 100 s ago: its second has left the window since.
    long.extensions.get_mut::<Ticket>().unwrap().sec = 0;
    for log in p.logs.lock().values_mut() {
        log.buckets.iter_mut().for_each(|b| b.0 = 0);
    }
    let mut done = CompletedRequest::default();
    done.usage = Some(gemini_proxy_sdk::Usage {
        prompt_tokens: 4000,
        candidates_tokens: 1000,
        ..Default::default()
    });
    p.on_complete(&long, &done);
    let mut next = call("10.0.0.1", Some("u"));
    next.request.body_size = None;
    assert!(
        matches!(admit(&p, &mut next), Admission::Reject(r) if r.reason == Some("tpm")),
        "the 5,000 tokens count in the minute the call ended"
    );
    let mut log = Log::default();
    log.add(5, 10);
    log.correct(5, 70, 10, 4);
    assert_eq!(
        (log.tokens, log.buckets.len()),
        (0, 0),
        "less than estimated"
    );
}

#[test]
fn zero_limits_are_config_errors() {
    let e = crate::builtin_registry()
        .build(
            "rate_limit",
            serde_json::json!({"per_ip": {"rpm": 0}}),
            &BuildEnv::default(),
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("per_ip"), "{e}");
}
