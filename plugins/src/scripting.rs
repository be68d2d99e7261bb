//! What the `rhai`, `wasm` and `native` stages share: the pipeline stage that runs a
//! [`Router`]'s two hooks with a fallback, hot reload of the program file, and the counters the
//! gateway exports as metrics.
//!
//! Fallback: a hook that fails (runtime error, exceeded limit, trap, timeout, or an invalid
//! decision such as a model with `/`) changes nothing: `route` keeps the call as it is, `weigh`
//! leaves the weights to the configured strategy. Each fallback is counted
//! (`script_fallbacks_total{engine,script,hook,reason}`) and logged with the script name (at most
//! one line per stage every 10 s, with the count since the last line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use gemini_proxy_sdk::hooks::{
    HookCandidate, HookError, HookRequest, RouteDecision, Router, WeighDecision, apply_route,
    apply_weigh,
};
use gemini_proxy_sdk::{Admission, Phases, Plugin, PluginError, RequestContext, Selection};
use parking_lot::Mutex;

/// Which hooks a program defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks {
    /// `route(request)` is defined.
    pub route: bool,
    /// `weigh(request, candidates)` is defined.
    pub weigh: bool,
}

/// A compiled program of one engine.
pub trait Program: Router + 'static {
    /// The hooks it defines (at least one).
    fn hooks(&self) -> Hooks;

    /// [`Router::route`] given a shared request (engines that keep it, like Rhai, skip a copy).
    fn route_shared(&self, req: &Arc<HookRequest>) -> Result<RouteDecision, HookError> {
        self.route(req)
    }

    /// [`Router::weigh`] given a shared request.
    fn weigh_shared(
        &self,
        req: &Arc<HookRequest>,
        candidates: &[HookCandidate],
    ) -> Result<WeighDecision, HookError> {
        self.weigh(req, candidates)
    }
}

/// Headers that carry credentials: never shown to a program.
pub const REFUSED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
    "x-goog-upload-url",
];

/// Most headers a stage may show its program.
pub const MAX_HEADERS: usize = 16;

/// Checks and lowercases a stage's `headers:` allowlist.
pub fn header_allowlist(headers: &[String]) -> Result<Vec<String>, PluginError> {
    if headers.len() > MAX_HEADERS {
        return Err(PluginError::new(format!(
            "headers: at most {MAX_HEADERS} headers may be shown to a program"
        )));
    }
    let mut out = Vec::with_capacity(headers.len());
    for h in headers {
        let lower = h.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(PluginError::new(format!(
                "headers: `{h}` is not a header name"
            )));
        }
        if REFUSED_HEADERS.contains(&lower.as_str()) {
            return Err(PluginError::new(format!(
                "headers: `{h}` carries credentials and is never shown to a program"
            )));
        }
        out.push(lower);
    }
    Ok(out)
}

/// One counter row: (engine, script, hook, reason).
pub type CounterKey = (&'static str, String, &'static str, &'static str);

static FALLBACKS: LazyLock<Mutex<BTreeMap<CounterKey, u64>>> = LazyLock::new(Default::default);
/// One reload counter row: (engine, script, result).
pub type ReloadKey = (&'static str, String, &'static str);

static RELOADS: LazyLock<Mutex<BTreeMap<ReloadKey, u64>>> = LazyLock::new(Default::default);

/// Fallbacks so far, by (engine, script, hook, reason), for the gateway's metrics.
pub fn fallback_counts() -> Vec<(CounterKey, u64)> {
    FALLBACKS
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Program reloads so far, by (engine, script, result `ok`/`error`).
pub fn reload_counts() -> Vec<(ReloadKey, u64)> {
    RELOADS
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn count_reload(engine: &'static str, script: &str, result: &'static str) {
    *RELOADS
        .lock()
        .entry((engine, script.to_string(), result))
        .or_default() += 1;
}

/// A program that can be replaced while calls use it: calls load the current version
/// lock-free; a reload swaps in a new one atomically.
pub struct Hot<P> {
    current: ArcSwap<P>,
}

impl<P: Program> Hot<P> {
    /// Wraps a first version.
    pub fn new(program: P) -> Arc<Hot<P>> {
        Arc::new(Hot {
            current: ArcSwap::from_pointee(program),
        })
    }

    /// The current version.
    pub fn load(&self) -> Arc<P> {
        self.current.load_full()
    }

    /// Replaces the program.
    pub fn store(&self, program: P) {
        self.current.store(Arc::new(program));
    }
}

/// File identity used to notice a change without reading the file every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

fn content_hash(bytes: &[u8]) -> u64 {
    // FNV-1a: only to skip recompiling a touched but unchanged file.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Longest a program watcher sleeps before it checks that its stage still exists.
const NAP: Duration = Duration::from_millis(200);

/// Watches `path` on a background thread and swaps in a recompiled program when the file
/// changes. A program that fails to compile is logged and counted, and the old one stays. The
/// thread ends when the stage is dropped (e.g. replaced by a config reload).
pub fn watch<P, F>(
    hot: &Arc<Hot<P>>,
    engine: &'static str,
    script: String,
    path: PathBuf,
    interval: Duration,
    compile: F,
) where
    P: Program + Send + Sync,
    F: Fn(&[u8]) -> Result<P, String> + Send + 'static,
{
    let weak: Weak<Hot<P>> = Arc::downgrade(hot);
    let mut last = stamp(&path);
    let mut last_hash = std::fs::read(&path).ok().map(|b| content_hash(&b));
    let spawned = std::thread::Builder::new()
        .name(format!("{engine}-watch"))
        .spawn(move || {
            loop {
                // In short naps, so a stage dropped (a reload, a config only validated) ends
                // its watcher within one, whatever the interval.
                let waking = Instant::now() + interval;
                while Instant::now() < waking {
                    if weak.strong_count() == 0 {
                        return;
                    }
                    std::thread::sleep(NAP.min(waking - Instant::now()));
                }
                let Some(hot) = weak.upgrade() else { return };
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                let Ok(bytes) = std::fs::read(&path) else {
                    tracing::warn!(target: "gemini_proxy::script", engine, script = %script, "program file unreadable; keeping the loaded version");
                    count_reload(engine, &script, "error");
                    continue;
                };
                let h = content_hash(&bytes);
                if Some(h) == last_hash {
                    continue;
                }
                last_hash = Some(h);
                let started = Instant::now();
                match compile(&bytes) {
                    Ok(p) => {
                        hot.store(p);
                        count_reload(engine, &script, "ok");
                        tracing::info!(target: "gemini_proxy::script", engine, script = %script, compile_ms = started.elapsed().as_secs_f64() * 1e3, "program reloaded");
                    }
                    Err(e) => {
                        count_reload(engine, &script, "error");
                        tracing::warn!(target: "gemini_proxy::script", engine, script = %script, error = %e, "program change refused; keeping the loaded version");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(target: "gemini_proxy::script", engine, error = %e, "cannot start the program watcher; hot reload is off");
    }
}

/// The pipeline stage around a program: builds the views, calls the hooks, applies the
/// decisions, falls back on failure.
pub struct ScriptStage<P> {
    engine: &'static str,
    script: String,
    hot: Arc<Hot<P>>,
    headers: Vec<String>,
    phases: Phases,
    last_log_ms: AtomicU64,
    unlogged: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<P: Program> ScriptStage<P> {
    /// A stage for `hot`, named `script` in logs and metrics, showing `headers` (already
    /// checked with [`header_allowlist`]).
    pub fn new(
        engine: &'static str,
        script: String,
        hot: Arc<Hot<P>>,
        headers: Vec<String>,
    ) -> ScriptStage<P> {
        // Both phases whatever the first version defines: a reloaded file may add a hook (a
        // missing hook costs one atomic load per call).
        let phases = Phases::ADMIT | Phases::SELECT;
        ScriptStage {
            engine,
            script,
            hot,
            headers,
            phases,
            last_log_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// The program in use now.
    pub fn program(&self) -> Arc<P> {
        self.hot.load()
    }

    fn fallback(&self, cx: &RequestContext, hook: &'static str, e: &HookError) {
        *FALLBACKS
            .lock()
            .entry((self.engine, self.script.clone(), hook, e.reason))
            .or_default() += 1;
        let now = now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(target: "gemini_proxy::script", engine = self.engine, script = %self.script, hook, reason = e.reason, error = %e.message, request_id = %cx.request.request_id, suppressed, "script failed; falling back to the built-in behaviour");
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[gemini_proxy_sdk::async_trait]
impl<P: Program> Plugin for ScriptStage<P> {
    fn name(&self) -> &str {
        self.engine
    }

    fn phases(&self) -> Phases {
        self.phases
    }

    async fn on_admit(&self, cx: &mut RequestContext) -> Result<Admission, PluginError> {
        let program = self.hot.load();
        if !program.hooks().route {
            return Ok(Admission::Continue);
        }
        let req = Arc::new(HookRequest::from_context(cx, &self.headers));
        let decided = program.route_shared(&req).and_then(|d| apply_route(cx, d));
        match decided {
            Ok(a) => Ok(a),
            Err(e) => {
                self.fallback(cx, "route", &e);
                Ok(Admission::Continue)
            }
        }
    }

    fn on_select(&self, cx: &RequestContext, sel: &mut Selection<'_>) -> Result<(), PluginError> {
        let program = self.hot.load();
        if !program.hooks().weigh {
            return Ok(());
        }
        let (views, index): (Vec<HookCandidate>, Vec<usize>) =
            HookCandidate::from_selection(sel, cx.request.model.as_deref());
        if views.is_empty() {
            return Ok(());
        }
        let req = Arc::new(HookRequest::from_context(cx, &self.headers));
        if let Err(e) = program
            .weigh_shared(&req, &views)
            .and_then(|d| apply_weigh(sel, &index, d))
        {
            self.fallback(cx, "weigh", &e);
        }
        Ok(())
    }
}

/// Default interval between checks of a program file for changes.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// serde default of the stages' `watch` field.
pub(crate) fn default_true() -> bool {
    true
}

/// serde default of the stages' `watch_interval_ms` field.
pub(crate) fn default_watch_ms() -> u64 {
    DEFAULT_WATCH_INTERVAL.as_millis() as u64
}

/// Reads a program file for a stage, with the path in the error.
pub fn read_program(path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path)
        .map_err(|e| PluginError::new(format!("cannot read {}: {e}", path.display())))
}

/// The name of a program in logs and metrics: its file name.
pub fn script_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;
    impl Router for Failing {
        fn route(&self, _: &HookRequest) -> Result<RouteDecision, HookError> {
            Err(HookError::new("runtime", "boom"))
        }
        fn weigh(&self, _: &HookRequest, _: &[HookCandidate]) -> Result<WeighDecision, HookError> {
            Ok(WeighDecision::Weights(vec![1]))
        }
    }
    impl Program for Failing {
        fn hooks(&self) -> Hooks {
            Hooks {
                route: true,
                weigh: true,
            }
        }
    }

    #[test]
    fn failures_fall_back_and_count() {
        let stage = ScriptStage::new("test", "failing.x".into(), Hot::new(Failing), vec![]);
        assert_eq!(stage.phases(), Phases::ADMIT | Phases::SELECT);
        let mut cx = gemini_proxy_sdk::testing::request("POST", "/v1beta/models/m:generateContent");
        let a = gemini_proxy_sdk::testing::block_on(stage.on_admit(&mut cx)).unwrap();
        assert!(matches!(a, Admission::Continue));
        // Wrong number of weights: an invalid decision, the selection is left alone.
        let c = gemini_proxy_sdk::testing::candidates(&[("a", 2), ("b", 3)]);
        let mut sel = Selection::new(&c);
        stage.on_select(&cx, &mut sel).unwrap();
        assert!(sel.is_pristine() && sel.chosen().is_none());
        let counts = fallback_counts();
        let get = |hook: &str, reason: &str| {
            counts
                .iter()
                .find(|((e, s, h, r), _)| {
                    *e == "test" && s == "failing.x" && *h == hook && *r == reason
                })
                .map_or(0, |(_, n)| *n)
        };
        assert_eq!(get("route", "runtime"), 1);
        assert_eq!(get("weigh", "invalid"), 1);
    }

    #[test]
    fn allowlist_refuses_credentials() {
        assert!(header_allowlist(&["Authorization".into()]).is_err());
        assert!(header_allowlist(&["bad header".into()]).is_err());
        assert_eq!(
            header_allowlist(&["X-Tenant".into()]).unwrap(),
            ["x-tenant"]
        );
    }
}
