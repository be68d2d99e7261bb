//! `rhai`: routing and weighting in a Rhai script.
//!
//! ```yaml
//! pipeline:
//!   - auth
//!   - rhai: { script: scripts/route.rhai, headers: [x-tenant], max_operations: 100000 }
//!   - key_select
//! ```
//!
//! The script defines `route(req)`, `weigh(req, keys)` or both:
//!
//! ```rhai
//! fn route(req) {
//!     if req.prompt_tokens < 2000 && req.model == "gemini-2.5-pro" { return "gemini-2.5-flash"; }
//!     ()                                   // keep
//! }
//! fn weigh(req, keys) {
//!     keys.map(|k| if k.latency_ms > 500.0 { 1 } else { 10 })   // new weights
//! }
//! ```
//!
//! `route` returns `()` (keep), a string (the new model), or a map with any of `model`,
//! `project`, `tags` (a map), or `reject` (a status) with `message`. `weigh` returns `()`
//! (keep), an index or a key id (choose it), an array of weights (one per key), or a map of key
//! id to weight (unlisted keys keep theirs). See the README for every field of `req` and `k`.
//!
//! The script is compiled once per load and run with a fresh scope per call on one shared
//! engine; functions are pure (no top-level code runs). Limits: operations, call depth,
//! expression depth, string, array and map sizes; no `eval`, no `import`. `print` and `debug`
//! go to the log at debug level.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use gemini_proxy_sdk::hooks::{
    HookCandidate, HookError, HookRequest, RouteChange, RouteDecision, Router, WeighDecision,
};
use gemini_proxy_sdk::{Action, ApiKind, BuildEnv, KeyState, Plugin, PluginError, PluginFactory};
use rhai::packages::{Package, StandardPackage};
use rhai::{AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Module, Scope, Shared};
use serde::Deserialize;

use crate::scripting::{self, Hooks, Hot, Program, ScriptStage};

fn default_max_operations() -> u64 {
    100_000
}
fn default_max_call_levels() -> usize {
    32
}
fn default_max_string_size() -> usize {
    64 * 1024
}
fn default_max_array_size() -> usize {
    4096
}
fn default_max_map_size() -> usize {
    1024
}

/// Config of the `rhai` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RhaiConfig {
    /// The script file (relative to the config file's folder).
    pub script: String,
    /// Request headers the script may read (`req.header("x-tenant")`); credentials refused.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Operations one hook call may run before it is stopped (falls back).
    #[serde(default = "default_max_operations")]
    pub max_operations: u64,
    /// Deepest function call nesting.
    #[serde(default = "default_max_call_levels")]
    pub max_call_levels: usize,
    /// Longest string, in bytes.
    #[serde(default = "default_max_string_size")]
    pub max_string_size: usize,
    /// Largest array.
    #[serde(default = "default_max_array_size")]
    pub max_array_size: usize,
    /// Largest object map.
    #[serde(default = "default_max_map_size")]
    pub max_map_size: usize,
    /// Recompile when the file changes.
    #[serde(default = "scripting::default_true")]
    pub watch: bool,
    /// How often the file is checked, in ms.
    #[serde(default = "scripting::default_watch_ms")]
    pub watch_interval_ms: u64,
}

/// The Rhai standard library, built once per process (building it costs ~0.3 ms).
static STD_PACKAGE: LazyLock<Shared<Module>> =
    LazyLock::new(|| StandardPackage::new().as_shared_module());

/// The request as a script sees it (shared: a clone is a reference count).
#[derive(Clone)]
struct Req(Arc<HookRequest>);

/// A candidate key as a script sees it (shared: loops clone their element).
#[derive(Clone)]
struct Key(Arc<HookCandidate>);

/// Names a script reads often, allocated once (a getter returns a reference-counted copy).
static NAMES: LazyLock<std::collections::HashMap<&'static str, rhai::ImmutableString>> =
    LazyLock::new(|| {
        ApiKind::ALL
            .map(ApiKind::as_str)
            .into_iter()
            .chain(Action::ALL.map(Action::as_str))
            .chain(KeyState::ALL.map(KeyState::as_str))
            .map(|n| (n, rhai::ImmutableString::from(n)))
            .collect()
    });

fn name(n: &'static str) -> rhai::ImmutableString {
    NAMES.get(n).cloned().unwrap_or_else(|| n.into())
}

fn opt_str(v: &Option<String>) -> Dynamic {
    v.as_ref().map_or(Dynamic::UNIT, |s| s.clone().into())
}

fn opt_int(v: Option<u64>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |n| {
        Dynamic::from_int(n.min(i64::MAX as u64) as i64)
    })
}

fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    match v {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => (*b).into(),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Dynamic::from_int)
            .unwrap_or_else(|| Dynamic::from_float(n.as_f64().unwrap_or(0.0))),
        serde_json::Value::String(s) => s.clone().into(),
        serde_json::Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        serde_json::Value::Object(o) => Dynamic::from_map(
            o.iter()
                .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
                .collect(),
        ),
    }
}

fn int(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// Builds the shared engine with the stage's limits and the `Request`/`Key` types.
fn build_engine(cfg: &RhaiConfig, script: &str) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(STD_PACKAGE.clone());
    engine
        .set_max_operations(cfg.max_operations)
        .set_max_call_levels(cfg.max_call_levels)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(cfg.max_string_size)
        .set_max_array_size(cfg.max_array_size)
        .set_max_map_size(cfg.max_map_size)
        .set_max_modules(0)
        .set_max_strings_interned(0);
    engine.disable_symbol("eval");
    let (p, d) = (script.to_string(), script.to_string());
    engine.on_print(
        move |s| tracing::debug!(target: "gemini_proxy::script", script = %p, "print: {s}"),
    );
    engine.on_debug(move |s, _, pos| tracing::debug!(target: "gemini_proxy::script", script = %d, %pos, "debug: {s}"));

    engine
        .register_type_with_name::<Req>("Request")
        .register_get("method", |r: &mut Req| r.0.method.clone())
        .register_get("path", |r: &mut Req| r.0.path.clone())
        .register_get("api", |r: &mut Req| name(r.0.api))
        .register_get("action", |r: &mut Req| name(r.0.action))
        .register_get("model", |r: &mut Req| opt_str(&r.0.model))
        .register_get("stream", |r: &mut Req| r.0.stream)
        .register_get("subject", |r: &mut Req| opt_str(&r.0.subject))
        .register_get("role", |r: &mut Req| {
            r.0.role.map_or(Dynamic::UNIT, |s| s.to_string().into())
        })
        .register_get("claims", |r: &mut Req| json_to_dynamic(&r.0.claims))
        .register_get("client_ip", |r: &mut Req| opt_str(&r.0.client_ip))
        .register_get("headers", |r: &mut Req| {
            let mut m = Map::new();
            for (k, v) in &r.0.headers {
                m.entry(k.as_str().into())
                    .or_insert_with(|| v.clone().into());
            }
            m
        })
        .register_fn("header", |r: &mut Req, name: &str| {
            r.0.header(name)
                .map_or(Dynamic::UNIT, |v| v.to_string().into())
        })
        .register_get("body_size", |r: &mut Req| int(r.0.body_size))
        .register_get("prompt_tokens", |r: &mut Req| {
            int(r.0.prompt_tokens_estimate)
        })
        .register_get("unix_ms", |r: &mut Req| int(r.0.unix_ms))
        .register_get("hour_utc", |r: &mut Req| {
            ((r.0.unix_ms / 3_600_000) % 24) as i64
        })
        .register_get("weekday_utc", |r: &mut Req| {
            // 1970-01-01 was a Thursday; 0 = Monday .. 6 = Sunday.
            ((r.0.unix_ms / 86_400_000 + 3) % 7) as i64
        })
        .register_get("attempt", |r: &mut Req| i64::from(r.0.attempt));

    engine
        .register_type_with_name::<Key>("Key")
        .register_get("id", |k: &mut Key| k.0.id.to_string())
        .register_get("project", |k: &mut Key| k.0.project.to_string())
        .register_get("weight", |k: &mut Key| i64::from(k.0.weight))
        .register_get("state", |k: &mut Key| name(k.0.state.as_str()))
        .register_get("in_flight", |k: &mut Key| i64::from(k.0.in_flight))
        .register_get("latency_ms", |k: &mut Key| k.0.latency_ewma_ms)
        .register_get("remaining_rpm", |k: &mut Key| opt_int(k.0.remaining_rpm))
        .register_get("remaining_tpm", |k: &mut Key| opt_int(k.0.remaining_tpm))
        .register_get("remaining_rpd", |k: &mut Key| opt_int(k.0.remaining_rpd));
    engine
}

/// A compiled script.
pub struct RhaiProgram {
    engine: Arc<Engine>,
    ast: AST,
    hooks: Hooks,
}

impl RhaiProgram {
    /// Compiles `source` on `engine`; the script must define `route(req)` and/or
    /// `weigh(req, keys)`.
    fn compile(engine: Arc<Engine>, source: &[u8]) -> Result<RhaiProgram, String> {
        let text =
            std::str::from_utf8(source).map_err(|_| "the script is not UTF-8".to_string())?;
        let ast = engine.compile(text).map_err(|e| e.to_string())?;
        let mut hooks = Hooks::default();
        for f in ast.iter_functions() {
            match (f.name, f.params.len()) {
                ("route", 1) => hooks.route = true,
                ("weigh", 2) => hooks.weigh = true,
                ("route", n) => return Err(format!("route takes 1 parameter (req), not {n}")),
                ("weigh", n) => {
                    return Err(format!("weigh takes 2 parameters (req, keys), not {n}"));
                }
                _ => {}
            }
        }
        if !hooks.route && !hooks.weigh {
            return Err("the script defines neither route(req) nor weigh(req, keys)".into());
        }
        Ok(RhaiProgram { engine, ast, hooks })
    }

    fn call(&self, name: &str, args: impl rhai::FuncArgs) -> Result<Dynamic, HookError> {
        let mut scope = Scope::new();
        let opts = CallFnOptions::new().eval_ast(false).rewind_scope(false);
        self.engine
            .call_fn_with_options::<Dynamic>(opts, &mut scope, &self.ast, name, args)
            .map_err(|e| eval_error(&e))
    }
}

fn eval_error(e: &EvalAltResult) -> HookError {
    let reason = match e {
        EvalAltResult::ErrorTooManyOperations(_)
        | EvalAltResult::ErrorStackOverflow(_)
        | EvalAltResult::ErrorDataTooLarge(..)
        | EvalAltResult::ErrorTooManyModules(_)
        | EvalAltResult::ErrorTooManyVariables(_) => "limit",
        EvalAltResult::ErrorTerminated(..) => "timeout",
        _ => "runtime",
    };
    HookError::new(reason, e.to_string())
}

fn bad(what: impl Into<String>) -> HookError {
    HookError::new("invalid", what)
}

fn as_string(v: Dynamic, field: &str) -> Result<String, HookError> {
    v.into_immutable_string()
        .map(|s| s.to_string())
        .map_err(|t| bad(format!("`{field}` must be a string, not {t}")))
}

fn route_decision(v: Dynamic) -> Result<RouteDecision, HookError> {
    if v.is_unit() {
        return Ok(RouteDecision::Keep);
    }
    if v.is_string() {
        return Ok(RouteDecision::Change(RouteChange::model(as_string(
            v, "model",
        )?)));
    }
    let Some(map) = v.try_cast::<Map>() else {
        return Err(bad("route returns (), a model name or a map"));
    };
    let mut change = RouteChange::default();
    let mut reject: Option<u16> = None;
    let mut message: Option<String> = None;
    for (k, v) in map {
        match k.as_str() {
            "model" => change.model = Some(as_string(v, "model")?),
            "project" => change.project = Some(as_string(v, "project")?),
            "tags" => {
                let tags = v
                    .try_cast::<Map>()
                    .ok_or_else(|| bad("`tags` must be a map"))?;
                for (tk, tv) in tags {
                    change.tags.push((tk.to_string(), tv.to_string()));
                }
            }
            "reject" => {
                let s = v
                    .as_int()
                    .map_err(|_| bad("`reject` must be an HTTP status"))?;
                reject = Some(u16::try_from(s).map_err(|_| bad("`reject` is not a status"))?);
            }
            "message" => message = Some(as_string(v, "message")?),
            other => return Err(bad(format!("route: unknown field `{other}`"))),
        }
    }
    if let Some(status) = reject {
        return Ok(RouteDecision::Reject {
            status,
            message: message.unwrap_or_else(|| "refused by the routing script".into()),
        });
    }
    Ok(RouteDecision::Change(change))
}

fn weight_of(v: &Dynamic) -> Result<u32, HookError> {
    if let Ok(i) = v.as_int() {
        return u32::try_from(i).map_err(|_| bad(format!("weight {i} is not 0..4294967295")));
    }
    if let Ok(f) = v.as_float()
        && f.is_finite()
        && f >= 0.0
    {
        return Ok(f.round().min(u32::MAX as f64) as u32);
    }
    Err(bad("weights are non-negative numbers"))
}

fn weigh_decision(v: Dynamic, keys: &[HookCandidate]) -> Result<WeighDecision, HookError> {
    if v.is_unit() {
        return Ok(WeighDecision::Keep);
    }
    if let Ok(i) = v.as_int() {
        return usize::try_from(i)
            .map(WeighDecision::Choose)
            .map_err(|_| bad(format!("index {i} is negative")));
    }
    if v.is_string() {
        let id = as_string(v, "key id")?;
        return keys
            .iter()
            .position(|k| *k.id == *id)
            .map(WeighDecision::Choose)
            .ok_or_else(|| bad(format!("no candidate key `{id}`")));
    }
    if v.is_array() {
        let arr = v.cast::<Array>();
        return arr
            .iter()
            .map(weight_of)
            .collect::<Result<Vec<_>, _>>()
            .map(WeighDecision::Weights);
    }
    if let Some(map) = v.try_cast::<Map>() {
        let mut w: Vec<u32> = keys.iter().map(|k| k.weight).collect();
        for (id, weight) in map {
            let i = keys
                .iter()
                .position(|k| *k.id == *id.as_str())
                .ok_or_else(|| bad(format!("no candidate key `{id}`")))?;
            w[i] = weight_of(&weight)?;
        }
        return Ok(WeighDecision::Weights(w));
    }
    Err(bad(
        "weigh returns (), an index, a key id, an array or a map of weights",
    ))
}

impl Router for RhaiProgram {
    fn route(&self, req: &HookRequest) -> Result<RouteDecision, HookError> {
        let r = self.call("route", (Req(Arc::new(req.clone())),))?;
        route_decision(r)
    }

    fn weigh(
        &self,
        req: &HookRequest,
        candidates: &[HookCandidate],
    ) -> Result<WeighDecision, HookError> {
        let keys: Array = candidates
            .iter()
            .map(|c| Dynamic::from(Key(Arc::new(c.clone()))))
            .collect();
        let r = self.call("weigh", (Req(Arc::new(req.clone())), keys))?;
        weigh_decision(r, candidates)
    }
}

impl Program for RhaiProgram {
    fn hooks(&self) -> Hooks {
        self.hooks
    }

    fn route_shared(&self, req: &Arc<HookRequest>) -> Result<RouteDecision, HookError> {
        route_decision(self.call("route", (Req(req.clone()),))?)
    }

    fn weigh_shared(
        &self,
        req: &Arc<HookRequest>,
        candidates: &[HookCandidate],
    ) -> Result<WeighDecision, HookError> {
        let keys: Array = candidates
            .iter()
            .map(|c| Dynamic::from(Key(Arc::new(c.clone()))))
            .collect();
        weigh_decision(self.call("weigh", (Req(req.clone()), keys))?, candidates)
    }
}

/// Compiles a script with a stage's limits, without a stage (tests, benchmarks, `check`).
pub fn compile(cfg: &RhaiConfig, source: &[u8]) -> Result<RhaiProgram, String> {
    let engine = Arc::new(build_engine(cfg, &cfg.script));
    RhaiProgram::compile(engine, source)
}

impl RhaiConfig {
    /// A config for `script` with the default limits.
    pub fn for_script(script: &str) -> RhaiConfig {
        serde_json::from_value(serde_json::json!({ "script": script })).expect("defaults")
    }
}

/// The `rhai` stage factory.
pub struct RhaiStage;

impl PluginFactory for RhaiStage {
    const KIND: &'static str = "rhai";
    type Config = RhaiConfig;

    fn build(cfg: RhaiConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        let path: PathBuf = env.resolve(&cfg.script);
        let headers = scripting::header_allowlist(&cfg.headers)?;
        let name = scripting::script_name(&path);
        let engine = Arc::new(build_engine(&cfg, &name));
        let source = scripting::read_program(&path)?;
        let program = RhaiProgram::compile(engine.clone(), &source)
            .map_err(|e| PluginError::new(format!("{}: {e}", path.display())))?;
        let hot = Hot::new(program);
        if cfg.watch {
            scripting::watch(
                &hot,
                "rhai",
                name.clone(),
                path,
                Duration::from_millis(cfg.watch_interval_ms.max(10)),
                move |bytes| RhaiProgram::compile(engine.clone(), bytes),
            );
        }
        Ok(Arc::new(ScriptStage::new("rhai", name, hot, headers)))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod example_scripts;
