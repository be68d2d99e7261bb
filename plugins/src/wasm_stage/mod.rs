//! `wasm`: routing and weighting in a WebAssembly module (wasmtime, Cranelift).
//!
//! ```yaml
//! pipeline:
//!   - wasm: { module: scripts/weights.wat, fuel: 100000 }
//! ```
//!
//! A core module (`.wasm`, or `.wat` text) with no WASI: the only import a module may use is
//! `gp.log(level: i32, ptr: i32, len: i32)`. Modules are compiled once per load; instances are
//! kept in a pool and reused call after call (a guest's globals may persist between calls; a
//! guest must not rely on that). Every call runs with a fuel budget and an epoch deadline
//! (`timeout`); memory is capped (`max_memory`). A trap, an exhausted budget or an invalid
//! answer falls back to the built-in behaviour, and the instance is thrown away.
//!
//! # ABI version 1
//!
//! All integers little-endian; a "str" is `(ptr: u32, len: u32)` of UTF-8 in guest memory.
//!
//! Exports: `memory`; `gp_abi_version() -> i32` returning 1; `gp_buffer(size: i32) -> i32`
//! returning the address of a buffer of at least `size` bytes the host may write (asked once per
//! instance, again if a call needs more); `route(len: i32) -> i32` and/or
//! `weigh(len: i32, n: i32) -> i32`. The host writes the request (and for `weigh` the
//! candidates) into the buffer and passes the bytes used.
//!
//! Request, at the buffer's start (128 bytes):
//!
//! | off | field |
//! | --- | --- |
//! | 0 | u32 abi version (1) |
//! | 4 | u32 flags: 1 stream, 2 has model, 4 authenticated |
//! | 8 | u64 body size |
//! | 16 | u64 estimated prompt tokens |
//! | 24 | u64 received at, ms since the Unix epoch |
//! | 32 | u32 attempt |
//! | 36 | u32 number of candidates (0 in `route`) |
//! | 40 | str method |
//! | 48 | str path |
//! | 56 | str model |
//! | 64 | str api (`native`, `openai`, `upload`) |
//! | 72 | str action (`generateContent` ...) |
//! | 80 | str subject |
//! | 88 | str role |
//! | 96 | str client ip |
//! | 104 | str claims as JSON |
//! | 112 | u32 number of headers, 116 u32 address of the headers (each: str name, str value) |
//! | 120 | u32 address of the candidates |
//!
//! Candidate (64 bytes each): 0 str id, 8 str project, 16 u32 weight, 20 u32 state (0 active,
//! 1 cooling down, 2 half-open, 3 disabled), 24 u32 in flight, 28 u32 flags (1 has rpm, 2 has
//! tpm, 4 has rpd), 32 f64 latency EWMA ms, 40 u64 remaining rpm, 48 u64 remaining tpm, 56 u64
//! remaining rpd.
//!
//! `route` returns 0 to keep, a negative number for an error, or the address of a result:
//! 0 u32 kind (1 change, 2 reject), 4 u32 status (reject), 8 str model (empty: unchanged),
//! 16 str project (empty: none), 24 str message (reject), 32 u32 number of tags, 36 u32
//! address of the tags (each: str key, str value).
//!
//! `weigh` returns -1 to keep, -2 after writing new weights into the candidates' weight fields,
//! an index `0..n` to choose that candidate; anything else is an error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use gemini_proxy_sdk::hooks::{
    HookCandidate, HookError, HookRequest, RouteChange, RouteDecision, Router, WeighDecision,
};
use gemini_proxy_sdk::{BuildEnv, Plugin, PluginError, PluginFactory};
use parking_lot::Mutex;
use serde::Deserialize;
use wasmtime::{
    Caller, Config, Engine, InstancePre, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc,
};

use crate::scripting::{self, Hooks, Hot, Program, ScriptStage};

mod abi;
use abi::*;

/// The ABI version this gateway speaks.
pub const ABI_VERSION: i32 = 1;
/// Size of the request header record.
pub const REQUEST_SIZE: usize = 128;
/// Size of one candidate record.
pub const CANDIDATE_SIZE: usize = 64;
/// Epoch tick: the granularity of `timeout`.
const TICK: Duration = Duration::from_millis(1);

fn default_fuel() -> u64 {
    1_000_000
}
fn default_timeout_ms() -> u64 {
    20
}
fn default_max_memory() -> u64 {
    16 * 1024 * 1024
}

/// Config of the `wasm` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// The module (`.wasm` binary or `.wat` text), relative to the config file's folder.
    pub module: String,
    /// Request headers the module may read; credentials refused.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Fuel (roughly, instructions) one hook call may use.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock limit of one hook call, in ms (epoch interruption, 1 ms ticks).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest linear memory, in bytes.
    #[serde(default = "default_max_memory")]
    pub max_memory: u64,
    /// Recompile when the file changes.
    #[serde(default = "scripting::default_true")]
    pub watch: bool,
    /// How often the file is checked, in ms.
    #[serde(default = "scripting::default_watch_ms")]
    pub watch_interval_ms: u64,
}

impl WasmConfig {
    /// A config for `module` with the default limits.
    pub fn for_module(module: &str) -> WasmConfig {
        serde_json::from_value(serde_json::json!({ "module": module })).expect("defaults")
    }
}

/// One engine per process (fuel and epochs on), and the thread that advances its epoch.
static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    let engine = Engine::new(&config).expect("wasmtime engine with fuel and epochs");
    let ticker = engine.weak();
    let _ = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        });
    engine
});

/// Per-instance host state.
struct HostState {
    limits: StoreLimits,
    script: Arc<str>,
}

/// A live instance with its buffer and hooks.
struct Slot {
    store: Store<HostState>,
    memory: Memory,
    buffer: u32,
    capacity: u32,
    gp_buffer: TypedFunc<i32, i32>,
    route: Option<TypedFunc<i32, i32>>,
    weigh: Option<TypedFunc<(i32, i32), i32>>,
}

/// A compiled module and its pool of instances.
pub struct WasmProgram {
    pre: InstancePre<HostState>,
    hooks: Hooks,
    fuel: u64,
    ticks: u64,
    max_memory: usize,
    script: Arc<str>,
    pool: Mutex<Vec<Slot>>,
}

fn link() -> Linker<HostState> {
    let mut linker = Linker::new(&ENGINE);
    linker
        .func_wrap(
            "gp",
            "log",
            |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
                let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                    return;
                };
                let data = mem.data(&caller);
                let (p, l) = (ptr as u32 as usize, (len as u32 as usize).min(1024));
                if let Some(bytes) = data.get(p..p.saturating_add(l)) {
                    let msg = String::from_utf8_lossy(bytes);
                    let script = caller.data().script.clone();
                    match level {
                        0 | 1 => tracing::warn!(target: "gemini_proxy::script", script = %script, "wasm: {msg}"),
                        2 => tracing::info!(target: "gemini_proxy::script", script = %script, "wasm: {msg}"),
                        _ => tracing::debug!(target: "gemini_proxy::script", script = %script, "wasm: {msg}"),
                    }
                }
            },
        )
        .expect("gp.log links");
    linker
}

impl WasmProgram {
    /// Compiles and checks a module (binary or text).
    fn compile(cfg: &WasmConfig, script: &str, bytes: &[u8]) -> Result<WasmProgram, String> {
        let module = Module::new(&ENGINE, bytes).map_err(|e| format!("{e:#}"))?;
        for import in module.imports() {
            if (import.module(), import.name()) != ("gp", "log") {
                return Err(format!(
                    "the module imports {}.{}; only gp.log is provided (no WASI)",
                    import.module(),
                    import.name()
                ));
            }
        }
        let export = |n: &str| module.exports().any(|e| e.name() == n);
        for required in ["memory", "gp_abi_version", "gp_buffer"] {
            if !export(required) {
                return Err(format!(
                    "the module does not export `{required}` (ABI {ABI_VERSION})"
                ));
            }
        }
        let hooks = Hooks {
            route: export("route"),
            weigh: export("weigh"),
        };
        if !hooks.route && !hooks.weigh {
            return Err("the module exports neither `route` nor `weigh`".into());
        }
        let pre = link()
            .instantiate_pre(&module)
            .map_err(|e| format!("{e:#}"))?;
        let program = WasmProgram {
            pre,
            hooks,
            fuel: cfg.fuel.max(1),
            ticks: cfg.timeout_ms.max(1).div_ceil(TICK.as_millis() as u64),
            max_memory: usize::try_from(cfg.max_memory).unwrap_or(usize::MAX),
            script: Arc::from(script),
            pool: Mutex::new(Vec::new()),
        };
        // One instance now: a module that cannot start (memory over the cap, a wrong ABI
        // version, a trapping start) is refused at load, not at the first call.
        let slot = program.instantiate()?;
        program.pool.lock().push(slot);
        Ok(program)
    }

    fn budget(&self, store: &mut Store<HostState>) -> Result<(), String> {
        store.set_fuel(self.fuel).map_err(|e| e.to_string())?;
        store.set_epoch_deadline(self.ticks);
        Ok(())
    }

    fn instantiate(&self) -> Result<Slot, String> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory)
            .instances(1)
            .memories(1)
            .tables(4)
            .build();
        let mut store = Store::new(
            &ENGINE,
            HostState {
                limits,
                script: self.script.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        self.budget(&mut store)?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate: {e:#}"))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("`memory` is not a memory")?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "gp_abi_version")
            .map_err(|e| format!("gp_abi_version: {e:#}"))?
            .call(&mut store, ())
            .map_err(|e| format!("gp_abi_version: {e:#}"))?;
        if version != ABI_VERSION {
            return Err(format!(
                "the module speaks ABI version {version}; this gateway speaks {ABI_VERSION}"
            ));
        }
        let gp_buffer = instance
            .get_typed_func::<i32, i32>(&mut store, "gp_buffer")
            .map_err(|e| format!("gp_buffer: {e:#}"))?;
        let route = if self.hooks.route {
            Some(
                instance
                    .get_typed_func::<i32, i32>(&mut store, "route")
                    .map_err(|e| format!("route must be (i32) -> i32: {e:#}"))?,
            )
        } else {
            None
        };
        let weigh = if self.hooks.weigh {
            Some(
                instance
                    .get_typed_func::<(i32, i32), i32>(&mut store, "weigh")
                    .map_err(|e| format!("weigh must be (i32, i32) -> i32: {e:#}"))?,
            )
        } else {
            None
        };
        Ok(Slot {
            store,
            memory,
            buffer: 0,
            capacity: 0,
            gp_buffer,
            route,
            weigh,
        })
    }

    /// Runs `f` on a pooled instance; an instance that failed is dropped, not returned.
    fn with_slot<T>(
        &self,
        f: impl FnOnce(&mut Slot) -> Result<T, HookError>,
    ) -> Result<T, HookError> {
        let slot = self.pool.lock().pop();
        let mut slot = match slot {
            Some(s) => s,
            None => self
                .instantiate()
                .map_err(|e| HookError::new("runtime", e))?,
        };
        self.budget(&mut slot.store)
            .map_err(|e| HookError::new("runtime", e))?;
        let r = f(&mut slot);
        if r.is_ok() {
            self.pool.lock().push(slot);
        }
        r
    }
}

fn trap_error(e: wasmtime::Error) -> HookError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => HookError::new("limit", "fuel exhausted"),
        Some(Trap::Interrupt) => HookError::new("timeout", "deadline passed"),
        Some(t) => HookError::new("trap", t.to_string()),
        None => HookError::new("trap", format!("{e:#}")),
    }
}

impl Slot {
    /// Asks the guest for a buffer of at least `len` bytes.
    fn grow(&mut self, len: usize) -> Result<(), HookError> {
        let want = len.next_power_of_two().max(4096);
        let want32 = i32::try_from(want).map_err(|_| invalid("input too large"))?;
        let addr = self
            .gp_buffer
            .call(&mut self.store, want32)
            .map_err(trap_error)? as u32;
        if (addr as usize).saturating_add(want) > self.memory.data_size(&self.store) {
            return Err(invalid("gp_buffer returned a buffer outside memory"));
        }
        self.buffer = addr;
        self.capacity = want as u32;
        Ok(())
    }

    /// Writes the request (and candidates) into the guest buffer; returns the bytes used and
    /// the offset of the first candidate from the buffer's start.
    fn load_input(
        &mut self,
        req: &HookRequest,
        cands: &[HookCandidate],
    ) -> Result<(usize, usize), HookError> {
        let (mut bytes, mut cand_at) = encode(self.buffer, req, cands);
        if bytes.len() > self.capacity as usize {
            self.grow(bytes.len())?;
            (bytes, cand_at) = encode(self.buffer, req, cands);
        }
        let at = self.buffer as usize;
        self.memory
            .data_mut(&mut self.store)
            .get_mut(at..at + bytes.len())
            .ok_or_else(|| invalid("the buffer left memory"))?
            .copy_from_slice(&bytes);
        Ok((bytes.len(), cand_at))
    }
}

impl Router for WasmProgram {
    fn route(&self, req: &HookRequest) -> Result<RouteDecision, HookError> {
        self.with_slot(|slot| {
            let route = slot
                .route
                .clone()
                .ok_or_else(|| invalid("no route export"))?;
            let (len, _) = slot.load_input(req, &[])?;
            let r = route
                .call(&mut slot.store, len as i32)
                .map_err(trap_error)?;
            if r == 0 {
                return Ok(RouteDecision::Keep);
            }
            if r < 0 {
                return Err(HookError::new(
                    "runtime",
                    format!("route returned error {r}"),
                ));
            }
            let mem = slot.memory.data(&slot.store);
            let at = r as u32 as usize;
            match read_u32(mem, at)? {
                1 => {
                    let mut c = RouteChange::default();
                    let model = read_str(mem, at + 8)?;
                    let project = read_str(mem, at + 16)?;
                    c.model = (!model.is_empty()).then_some(model);
                    c.project = (!project.is_empty()).then_some(project);
                    let n = read_u32(mem, at + 32)? as usize;
                    if n > 16 {
                        return Err(invalid("more than 16 tags"));
                    }
                    let tags = read_u32(mem, at + 36)? as usize;
                    for i in 0..n {
                        let t = tags + i * 16;
                        c.tags.push((read_str(mem, t)?, read_str(mem, t + 8)?));
                    }
                    Ok(RouteDecision::Change(c))
                }
                2 => Ok(RouteDecision::Reject {
                    status: u16::try_from(read_u32(mem, at + 4)?)
                        .map_err(|_| invalid("reject status is not a status"))?,
                    message: read_str(mem, at + 24)?,
                }),
                k => Err(invalid(format!(
                    "route result kind {k} (1 change, 2 reject)"
                ))),
            }
        })
    }

    fn weigh(
        &self,
        req: &HookRequest,
        candidates: &[HookCandidate],
    ) -> Result<WeighDecision, HookError> {
        self.with_slot(|slot| {
            let weigh = slot
                .weigh
                .clone()
                .ok_or_else(|| invalid("no weigh export"))?;
            let (len, cand_at) = slot.load_input(req, candidates)?;
            let base = slot.buffer;
            let n = candidates.len() as i32;
            let r = weigh
                .call(&mut slot.store, (len as i32, n))
                .map_err(trap_error)?;
            match r {
                -1 => Ok(WeighDecision::Keep),
                -2 => {
                    let mem = slot.memory.data(&slot.store);
                    let first = base as usize + cand_at;
                    (0..candidates.len())
                        .map(|i| read_u32(mem, first + i * CANDIDATE_SIZE + 16))
                        .collect::<Result<Vec<_>, _>>()
                        .map(WeighDecision::Weights)
                }
                i if (0..n).contains(&i) => Ok(WeighDecision::Choose(i as usize)),
                other => Err(HookError::new(
                    "runtime",
                    format!("weigh returned {other} (-1 keep, -2 weights, 0..{n} choose)"),
                )),
            }
        })
    }
}

impl Program for WasmProgram {
    fn hooks(&self) -> Hooks {
        self.hooks
    }
}

/// Compiles a module with a stage's limits, without a stage (tests, benchmarks).
pub fn compile(cfg: &WasmConfig, bytes: &[u8]) -> Result<WasmProgram, String> {
    WasmProgram::compile(cfg, &cfg.module, bytes)
}

fn read_module(path: &Path) -> Result<Vec<u8>, PluginError> {
    scripting::read_program(path)
}

/// The `wasm` stage factory.
pub struct WasmStage;

impl PluginFactory for WasmStage {
    const KIND: &'static str = "wasm";
    type Config = WasmConfig;

    fn build(cfg: WasmConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        let path: PathBuf = env.resolve(&cfg.module);
        let headers = scripting::header_allowlist(&cfg.headers)?;
        let name = scripting::script_name(&path);
        let bytes = read_module(&path)?;
        let program = WasmProgram::compile(&cfg, &name, &bytes)
            .map_err(|e| PluginError::new(format!("{}: {e}", path.display())))?;
        let hot = Hot::new(program);
        if cfg.watch {
            let (cfg2, name2) = (cfg.clone(), name.clone());
            scripting::watch(
                &hot,
                "wasm",
                name.clone(),
                path,
                Duration::from_millis(cfg.watch_interval_ms.max(10)),
                move |bytes| WasmProgram::compile(&cfg2, &name2, bytes),
            );
        }
        Ok(Arc::new(ScriptStage::new("wasm", name, hot, headers)))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rust_guest;
