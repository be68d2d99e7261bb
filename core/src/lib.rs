//! gemini-proxy core: the only crate that knows Pingora. It wires the proxy listener, the admin
//! listener, configuration (load, validate, migrate, hot reload), the runtime snapshot, storage
//! and the CLI. The mock Gemini upstream is the `gemini-proxy-mock` crate, re-exported as `mock`.

pub mod acme;
pub mod admin;
pub mod anomaly;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod cluster_sync;
pub mod config;
pub mod config_history;
pub mod connections;
pub mod metrics;
/// The mock Gemini upstream (its own crate), for the demo and the tests.
pub use gemini_proxy_mock as mock;
pub mod pipeline;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod scrub;
pub mod security;
pub mod server;
pub mod stats;
pub mod tls;
pub mod util;

/// The plugin registry this binary ships: every built-in stage.
pub fn builtin_registry() -> gemini_proxy_sdk::Registry {
    gemini_proxy_plugins::builtin_registry()
}
