use super::*;

fn prog(src: &str) -> RhaiProgram {
    compile(&RhaiConfig::for_script("t.rhai"), src.as_bytes()).unwrap()
}

fn req(model: &str, tokens: u64) -> HookRequest {
    let mut r = HookRequest::default();
    r.model = Some(model.into());
    r.prompt_tokens_estimate = tokens;
    r.headers.push(("x-tenant".into(), "acme".into()));
    r
}

#[test]
fn route_forms() {
    let p = prog(
        r#"
        fn route(req) {
            if req.model == "old" { return #{ reject: 410, message: "gone" }; }
            if req.prompt_tokens < 100 { return "gemini-2.5-flash"; }
            if req.header("x-tenant") == "acme" { return #{ project: "p-acme", tags: #{ tenant: "acme" } }; }
            ()
        }"#,
    );
    assert_eq!(
        p.route(&req("old", 5)).unwrap(),
        RouteDecision::Reject {
            status: 410,
            message: "gone".into()
        }
    );
    assert_eq!(
        p.route(&req("pro", 5)).unwrap(),
        RouteDecision::Change(RouteChange::model("gemini-2.5-flash"))
    );
    assert_eq!(
        p.route(&req("pro", 500)).unwrap(),
        RouteDecision::Change(RouteChange::project("p-acme").with_tag("tenant", "acme"))
    );
    assert!(p.hooks().route && !p.hooks().weigh);
}

#[test]
fn weigh_forms() {
    let keys = [HookCandidate::new("a", 1), HookCandidate::new("b", 5)];
    let p = prog("fn weigh(req, keys) { keys.map(|k| k.weight * 2) }");
    assert_eq!(
        p.weigh(&req("m", 1), &keys).unwrap(),
        WeighDecision::Weights(vec![2, 10])
    );
    let p = prog(r#"fn weigh(req, keys) { "b" }"#);
    assert_eq!(
        p.weigh(&req("m", 1), &keys).unwrap(),
        WeighDecision::Choose(1)
    );
    let p = prog(r#"fn weigh(req, keys) { #{ a: 7 } }"#);
    assert_eq!(
        p.weigh(&req("m", 1), &keys).unwrap(),
        WeighDecision::Weights(vec![7, 5])
    );
    let p = prog(r#"fn weigh(req, keys) { "zzz" }"#);
    assert_eq!(p.weigh(&req("m", 1), &keys).unwrap_err().reason, "invalid");
}

#[test]
fn limits_stop_runaway_scripts() {
    let p = prog("fn route(req) { loop { } }");
    assert_eq!(p.route(&req("m", 1)).unwrap_err().reason, "limit");
    let p = prog("fn f(n) { f(n + 1) } fn route(req) { f(0) }");
    assert_eq!(p.route(&req("m", 1)).unwrap_err().reason, "limit");
    let p = prog(r#"fn route(req) { let s = "x"; loop { s += s; } }"#);
    assert_eq!(p.route(&req("m", 1)).unwrap_err().reason, "limit");
    let p = prog(r#"fn route(req) { let x = 1 / 0; x }"#);
    assert_eq!(p.route(&req("m", 1)).unwrap_err().reason, "runtime");
}

#[test]
fn compile_errors_are_clear() {
    let cfg = RhaiConfig::for_script("t.rhai");
    assert!(compile(&cfg, b"fn route(req) {").is_err());
    let e = compile(&cfg, b"fn helper() { 1 }").err().unwrap();
    assert!(e.contains("neither"), "{e}");
    let e = compile(&cfg, b"fn route(a, b) { 1 }").err().unwrap();
    assert!(e.contains("1 parameter"), "{e}");
    assert!(compile(&cfg, b"fn route(req) { eval(\"1\") }").is_err());
}

#[test]
fn request_fields() {
    let p = prog(
        r#"fn route(req) { #{ tags: #{ w: req.weekday_utc, h: req.hour_utc, sub: req.subject, c: req.claims.team } } }"#,
    );
    let mut r = req("m", 1);
    r.unix_ms = 1_764_201_600_000 + 5 * 3_600_000; // 2025-11-27 05:00 UTC, a Thursday
    r.subject = Some("alice".into());
    r.claims = serde_json::json!({"team": "search"});
    let RouteDecision::Change(c) = p.route(&r).unwrap() else {
        panic!()
    };
    let tags: std::collections::BTreeMap<_, _> = c.tags.into_iter().collect();
    assert_eq!(tags["w"], "3");
    assert_eq!(tags["h"], "5");
    assert_eq!(tags["sub"], "alice");
    assert_eq!(tags["c"], "search");
}
