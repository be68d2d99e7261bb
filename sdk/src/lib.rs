//! # gemini-proxy-sdk
//!
//! The one crate a gemini-proxy plugin author reads. It defines the stable [`Plugin`] trait with
//! its phase hooks, the request and response views the gateway shows a plugin, the key
//! [`Candidate`]s a selector chooses from, the [`PluginError`] with its [`FailureMode`], and the
//! [`Registry`] of typed plugin factories. It knows nothing of Pingora or of any HTTP server:
//! a plugin built against it can be tested with plain unit tests (see [`testing`]).
//!
//! ## Phases, in the order the gateway runs them for one call
//!
//! 1. **admit** ([`Plugin::on_admit`], async): authenticate, rate limit, score, reject.
//!    Plugins run in the order of the YAML `pipeline:` list; the first rejection wins.
//! 2. **select** ([`Plugin::on_select`], sync): filter and weigh the candidate upstream keys;
//!    a strategy plugin picks one. Runs again for each retry attempt.
//! 3. **upstream outcome** ([`Plugin::on_upstream_response`], sync): the upstream's status and
//!    parsed error for one attempt.
//! 4. **response observation** ([`Plugin::on_response`], [`Plugin::on_response_chunk`], sync,
//!    observe-only): the response head and body bytes on their way to the client.
//! 5. **complete** ([`Plugin::on_complete`], sync): one summary per call, for audit and metrics.
//!    Must not block: enqueue, never write to disk inline.
//!
//! ## Example: a plugin that rejects calls to one model
//!
//! ```
//! use gemini_proxy_sdk::{Admission, Phases, Plugin, PluginError, PluginFactory, Registry,
//!     RequestContext, BuildEnv, Rejection};
//! use std::sync::Arc;
//!
//! struct DenyModel { model: String }
//!
//! #[async_trait::async_trait]
//! impl Plugin for DenyModel {
//!     fn name(&self) -> &str { "deny_model" }
//!     fn phases(&self) -> Phases { Phases::ADMIT }
//!     async fn on_admit(&self, cx: &mut RequestContext) -> Result<Admission, PluginError> {
//!         if cx.request.model.as_deref() == Some(self.model.as_str()) {
//!             return Ok(Admission::Reject(Rejection::new(403, "model not allowed")));
//!         }
//!         Ok(Admission::Continue)
//!     }
//! }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct DenyModelConfig { model: String }
//!
//! impl PluginFactory for DenyModel {
//!     const KIND: &'static str = "deny_model";
//!     type Config = DenyModelConfig;
//!     fn build(config: DenyModelConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
//!         Ok(Arc::new(DenyModel { model: config.model }))
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.register::<DenyModel>();
//! let plugin = registry
//!     .build("deny_model", serde_json::json!({"model": "gemini-2.5-pro"}), &BuildEnv::default())
//!     .unwrap();
//!
//! let mut cx = gemini_proxy_sdk::testing::request("POST", "/v1beta/models/gemini-2.5-pro:generateContent");
//! let admission = gemini_proxy_sdk::testing::block_on(plugin.on_admit(&mut cx)).unwrap();
//! assert!(matches!(admission, Admission::Reject(r) if r.status == 403));
//! ```
//!
//! ## Routing programs
//!
//! [`hooks`] defines the two decisions a routing program makes (`route`, `weigh`), the views
//! it gets ([`hooks::HookRequest`], [`hooks::HookCandidate`]) and the decisions it returns.
//! The gateway's `rhai`, `wasm` and `native` stages run programs with this meaning; a plain
//! Rust [`hooks::Router`] can be tested directly. With the `ffi` feature, `ffi` holds the
//! FFI-safe mirror (abi_stable) and `export_native_plugin!`, which turn a `Router` into a
//! native plugin library loaded at start-up.
//!
//! ## Registering a plugin
//!
//! A plugin compiled into the gateway is registered with [`Registry::register`] (the gateway's
//! own list is `gemini_proxy_plugins::register_builtins`) and named in the YAML `pipeline:`.
//!
//! ## Semver promises
//!
//! Within a major version: hooks are only added with default bodies, view types and enums are
//! `#[non_exhaustive]` and only grow, and existing fields keep their meaning. A plugin that
//! compiles against 0.1.x compiles against every later 0.1.y. The FFI mirror's prefix types only
//! grow at the end, so a native plugin built with 0.1.x loads in every gateway on 0.1.y, y >= x
//! (the loader checks this, and the type layouts, before running plugin code).
// `ffi` (optional) derives abi_stable layouts, which expands to unsafe impls; nothing else may.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod extensions;
#[cfg(feature = "ffi")]
pub mod ffi;
mod files;
pub mod hooks;
mod plugin;
mod registry;
mod request;
mod response;
mod route;
mod select;
mod shared;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use error::{FailureMode, PluginError, Rejection};
pub use extensions::Extensions;
pub use files::write_private;
pub use plugin::{Admission, Phases, Plugin};
pub use registry::{BuildEnv, BuildError, PluginFactory, Registry};
pub use request::{
    Action, ApiKind, ClientCredential, CredentialSource, Identity, RequestContext, RequestView,
    Role, caller_scope,
};
pub use response::{CompletedRequest, ResponseHead, UpstreamError, UpstreamOutcome, Usage};
pub use route::{CallRoute, classify, glob_match, prefix_within};
pub use select::{Candidate, KeyState, KeyStats, Selection};
pub use shared::{
    LimitAdjust, LimitCall, LimitKind, LimitScope, LimitVerdict, SharedLimits, SharedLimitsHandle,
    SharedUnavailable,
};

/// Re-exported so plugins use the same `async_trait` as the trait definition.
pub use async_trait::async_trait;

/// The version of this sdk, checked by loaders of dynamically built plugins.
///
/// ```
/// assert!(!gemini_proxy_sdk::SDK_VERSION.is_empty());
/// ```
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");
