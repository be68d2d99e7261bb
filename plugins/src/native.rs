//! `native`: routing and weighting in a shared library built against the sdk's FFI mirror
//! ([`gemini_proxy_sdk::ffi`]).
//!
//! ```yaml
//! pipeline:
//!   - native: { path: plugins/libmy_router.so, config: { prefer_key: key-b }, headers: [x-tenant] }
//! ```
//!
//! The library is loaded when the config is loaded; its sdk version and type layouts are checked
//! first and a mismatch refuses the config with a clear error. `config:` is handed to the
//! plugin as JSON. Libraries are never unloaded (abi_stable), so a changed library takes effect
//! after a restart or a graceful upgrade; a config reload builds a new instance from the
//! library already loaded. Failures and panics in a hook fall back like scripts do.

use std::sync::Arc;

use gemini_proxy_sdk::ffi::{self, NativeRouter};
use gemini_proxy_sdk::{BuildEnv, Plugin, PluginError, PluginFactory};
use serde::Deserialize;

use crate::scripting::{self, Hooks, Hot, Program, ScriptStage};

/// Config of the `native` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeConfig {
    /// The shared library, relative to the config file's folder.
    pub path: String,
    /// Handed to the plugin's constructor as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Request headers the plugin may read; credentials refused.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Which hooks to call (a native plugin always has both; default: both).
    #[serde(default)]
    pub hooks: Option<Vec<String>>,
}

/// A loaded native plugin as a program.
pub struct NativeProgram {
    router: NativeRouter,
    hooks: Hooks,
}

impl gemini_proxy_sdk::hooks::Router for NativeProgram {
    fn route(
        &self,
        req: &gemini_proxy_sdk::hooks::HookRequest,
    ) -> Result<gemini_proxy_sdk::hooks::RouteDecision, gemini_proxy_sdk::hooks::HookError> {
        self.router.route(req)
    }

    fn weigh(
        &self,
        req: &gemini_proxy_sdk::hooks::HookRequest,
        candidates: &[gemini_proxy_sdk::hooks::HookCandidate],
    ) -> Result<gemini_proxy_sdk::hooks::WeighDecision, gemini_proxy_sdk::hooks::HookError> {
        self.router.weigh(req, candidates)
    }
}

impl Program for NativeProgram {
    fn hooks(&self) -> Hooks {
        self.hooks
    }
}

/// Loads a native plugin (tests, benchmarks).
pub fn load(path: &std::path::Path, config: &serde_json::Value) -> Result<NativeRouter, String> {
    ffi::load(path, &config.to_string()).map_err(|e| e.to_string())
}

/// The `native` stage factory.
pub struct NativeStage;

impl PluginFactory for NativeStage {
    const KIND: &'static str = "native";
    type Config = NativeConfig;

    fn build(cfg: NativeConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        let path = env.resolve(&cfg.path);
        let headers = scripting::header_allowlist(&cfg.headers)?;
        let hooks = match &cfg.hooks {
            None => Hooks {
                route: true,
                weigh: true,
            },
            Some(list) => {
                let mut h = Hooks::default();
                for name in list {
                    match name.as_str() {
                        "route" => h.route = true,
                        "weigh" => h.weigh = true,
                        other => {
                            return Err(PluginError::new(format!(
                                "hooks: unknown hook `{other}` (route, weigh)"
                            )));
                        }
                    }
                }
                h
            }
        };
        let router = load(&path, &cfg.config).map_err(PluginError::new)?;
        let name = scripting::script_name(&path);
        tracing::info!(target: "gemini_proxy::script", library = %name, plugin = router.name(), "native plugin loaded");
        let hot = Hot::new(NativeProgram { router, hooks });
        Ok(Arc::new(ScriptStage::new("native", name, hot, headers)))
    }
}
