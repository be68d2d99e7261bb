use super::*;

fn load(name: &str) -> RhaiProgram {
    let p = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../scripts")
        .join(name);
    compile(&RhaiConfig::for_script(name), &std::fs::read(p).unwrap()).unwrap()
}

fn req(model: &str) -> HookRequest {
    let mut r = HookRequest::default();
    r.api = "native";
    r.model = Some(model.into());
    r
}

#[test]
fn cost_aware() {
    let p = load("cost_aware.rhai");
    let mut r = req("gemini-2.5-pro");
    r.prompt_tokens_estimate = 300;
    let RouteDecision::Change(c) = p.route(&r).unwrap() else {
        panic!()
    };
    assert_eq!(c.model.as_deref(), Some("gemini-2.5-flash"));
    r.prompt_tokens_estimate = 5000;
    assert_eq!(p.route(&r).unwrap(), RouteDecision::Keep);
    let mut keys = vec![
        HookCandidate::new("a", 3),
        HookCandidate::new("b", 3),
        HookCandidate::new("c", 3),
    ];
    keys[1].remaining_tpm = Some(100); // fewer than the 5000 the prompt needs
    keys[2].remaining_tpm = Some(50_000);
    assert_eq!(
        p.weigh(&r, &keys).unwrap(),
        WeighDecision::Weights(vec![3, 0, 51])
    );
}

#[test]
fn time_of_day() {
    let p = load("time_of_day.rhai");
    let keys = vec![
        HookCandidate::new("i", 5),
        HookCandidate::new("b", 5).clone(),
    ];
    let mut keys = keys;
    keys[1].project = Arc::from("batch-1");
    let mut r = req("m");
    r.unix_ms = 1_764_201_600_000 + 10 * 3_600_000; // Thursday 10:00 UTC
    assert_eq!(
        p.weigh(&r, &keys).unwrap(),
        WeighDecision::Weights(vec![5, 1])
    );
    r.unix_ms = 1_764_201_600_000 + 22 * 3_600_000; // Thursday 22:00 UTC
    assert_eq!(
        p.weigh(&r, &keys).unwrap(),
        WeighDecision::Weights(vec![5, 20])
    );
    r.unix_ms = 1_764_201_600_000 + 2 * 86_400_000 + 10 * 3_600_000; // Saturday 10:00
    assert_eq!(
        p.weigh(&r, &keys).unwrap(),
        WeighDecision::Weights(vec![5, 20])
    );
}

#[test]
fn user_pinning() {
    let p = load("user_pinning.rhai");
    let mut r = req("gemini-2.5-pro");
    r.subject = Some("support-bot".into());
    assert_eq!(
        p.route(&r).unwrap(),
        RouteDecision::Change(RouteChange::model("gemini-2.5-flash"))
    );
    r.claims = serde_json::json!({"model": "gemini-2.0-flash"});
    r.headers.push(("x-tenant".into(), "acme".into()));
    let RouteDecision::Change(c) = p.route(&r).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.model.as_deref(), c.project.as_deref()),
        (Some("gemini-2.0-flash"), Some("tenant-acme"))
    );
    r.subject = Some("someone".into());
    r.claims = serde_json::Value::Null;
    r.headers.clear();
    assert_eq!(p.route(&r).unwrap(), RouteDecision::Keep);
}

#[test]
fn latency_pick() {
    let p = load("latency_pick.rhai");
    let mut keys: Vec<HookCandidate> = ["a", "b", "c"]
        .iter()
        .map(|id| HookCandidate::new(id, 1))
        .collect();
    keys[0].latency_ewma_ms = 300.0;
    keys[1].latency_ewma_ms = 120.0;
    keys[1].in_flight = 20; // 120 + 200
    keys[2].latency_ewma_ms = 250.0;
    assert_eq!(p.weigh(&req("m"), &keys).unwrap(), WeighDecision::Choose(2));
    let mut r = req("gemini-2.5-pro");
    r.prompt_tokens_estimate = 10;
    assert_eq!(
        p.route(&r).unwrap(),
        RouteDecision::Change(RouteChange::model("gemini-2.5-flash"))
    );
}

#[test]
fn canary_is_sticky_and_near_ten_percent() {
    let p = load("canary.rhai");
    let mut canary = 0;
    for i in 0..1000 {
        let mut r = req("gemini-2.5-flash");
        r.subject = Some(format!("user-{i}"));
        let first = p.route(&r).unwrap();
        assert_eq!(p.route(&r).unwrap(), first, "sticky per caller");
        if let RouteDecision::Change(c) = first
            && c.model.is_some()
        {
            canary += 1;
        }
    }
    assert!(
        (50..=150).contains(&canary),
        "{canary} of 1000 in the canary"
    );
    assert_eq!(
        p.route(&req("gemini-2.5-pro")).unwrap(),
        RouteDecision::Keep
    );
}
