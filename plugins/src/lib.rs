//! Built-in pipeline stages for gemini-proxy, written against the public sdk only.
//!
//! Each stage is a [`PluginFactory`](gemini_proxy_sdk::PluginFactory); [`register_builtins`]
//! adds them all to a registry.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod key_select;
pub mod native;
pub mod rate_limit;
pub mod request_log;
pub mod rhai_stage;
pub mod scripting;
pub mod security_score;
pub mod wasm_stage;

use gemini_proxy_sdk::Registry;

/// Registers every built-in stage.
pub fn register_builtins(registry: &mut Registry) {
    registry.register::<auth::Auth>();
    registry.register::<key_select::KeySelect>();
    registry.register::<rate_limit::RateLimit>();
    registry.register::<security_score::SecurityScore>();
    registry.register::<request_log::RequestLog>();
    registry.register::<audit::AuditStage>();
    registry.register::<rhai_stage::RhaiStage>();
    registry.register::<wasm_stage::WasmStage>();
    registry.register::<native::NativeStage>();
}

/// A registry holding the built-ins.
pub fn builtin_registry() -> Registry {
    let mut r = Registry::new();
    register_builtins(&mut r);
    r
}
