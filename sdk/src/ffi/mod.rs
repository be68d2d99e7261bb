//! Native plugins: an FFI-safe mirror of the [`Router`](crate::hooks::Router) hooks, through
//! `abi_stable`, for routing code shipped as a shared library (`.so`) and loaded at start-up
//! by the `native` stage (`{native: {path: libmy_router.so}}`).
//!
//! A plugin author writes an ordinary [`Router`](crate::hooks::Router) and exports it with
//! [`export_native_plugin!`](crate::export_native_plugin); the R-types below are the wire
//! format the macro and the gateway use, not something to program against.
//!
//! The loader checks, before running any plugin code: that the library exports a gemini-proxy
//! root module, that it was built with a compatible sdk (the same major version; for 0.x a
//! minor version at least the gateway's), and that every type's layout matches. A mismatch
//! is a clear error at config load and the library is not used.
//!
//! ```ignore
//! // Cargo.toml: crate-type = ["cdylib"], dependencies gemini-proxy-sdk (feature "ffi"), abi_stable = "0.11"
//! use gemini_proxy_sdk::hooks::{HookCandidate, HookError, HookRequest, Router, WeighDecision};
//!
//! struct FewestInFlight;
//! impl Router for FewestInFlight {
//!     fn weigh(&self, _: &HookRequest, keys: &[HookCandidate]) -> Result<WeighDecision, HookError> {
//!         Ok(keys.iter().enumerate().min_by_key(|(_, k)| k.in_flight)
//!             .map_or(WeighDecision::Keep, |(i, _)| WeighDecision::Choose(i)))
//!     }
//! }
//! gemini_proxy_sdk::export_native_plugin!("fewest_in_flight", |_config: serde_json::Value| Ok(FewestInFlight));
//! ```
//!
//! Limits (abi_stable's): a library is never unloaded, so replacing one needs a restart (or a
//! graceful upgrade); hooks are synchronous; panics are caught at the boundary and count as a
//! failed hook.
#![allow(unsafe_code)]
// abi_stable 0.11's `sabi_trait` expands to impls inside a const block (its last release predates the lint).
#![allow(non_local_definitions)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

pub use abi_stable;
use abi_stable::library::{LibraryError, RootModule, lib_header_from_path};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec, Tuple2};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings, sabi_trait};

use crate::hooks::{
    HookCandidate, HookError, HookRequest, RouteChange, RouteDecision, Router, WeighDecision,
};
use crate::{Action, ApiKind, KeyState};

mod load;
pub use load::{LoadError, NativeRouter, load};

/// The request, FFI-safe ([`HookRequest`] on the wire).
///
/// ```
/// let wire = gemini_proxy_sdk::ffi::FfiRequest::from_hook(&Default::default());
/// assert_eq!(wire.attempt, 0);
/// ```
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiRequest {
    /// See [`HookRequest::method`].
    pub method: RString,
    /// See [`HookRequest::path`].
    pub path: RString,
    /// See [`HookRequest::api`].
    pub api: RString,
    /// See [`HookRequest::action`].
    pub action: RString,
    /// See [`HookRequest::model`].
    pub model: ROption<RString>,
    /// See [`HookRequest::stream`].
    pub stream: bool,
    /// See [`HookRequest::subject`].
    pub subject: ROption<RString>,
    /// See [`HookRequest::role`].
    pub role: ROption<RString>,
    /// [`HookRequest::claims`] as JSON text.
    pub claims_json: RString,
    /// See [`HookRequest::client_ip`].
    pub client_ip: ROption<RString>,
    /// See [`HookRequest::headers`].
    pub headers: RVec<Tuple2<RString, RString>>,
    /// See [`HookRequest::body_size`].
    pub body_size: u64,
    /// See [`HookRequest::prompt_tokens_estimate`].
    pub prompt_tokens_estimate: u64,
    /// See [`HookRequest::unix_ms`].
    pub unix_ms: u64,
    /// See [`HookRequest::attempt`].
    pub attempt: u32,
}

/// A candidate key, FFI-safe ([`HookCandidate`] on the wire).
///
/// ```
/// let c = gemini_proxy_sdk::hooks::HookCandidate::new("k", 3);
/// assert_eq!(gemini_proxy_sdk::ffi::FfiCandidate::from_hook(&c).weight, 3);
/// ```
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiCandidate {
    /// Key id.
    pub id: RString,
    /// Project.
    pub project: RString,
    /// Current weight.
    pub weight: u32,
    /// 0 active, 1 cooling down, 2 half-open, 3 disabled.
    pub state: u8,
    /// Calls in flight.
    pub in_flight: u32,
    /// Latency EWMA in ms.
    pub latency_ewma_ms: f64,
    /// Requests left this minute.
    pub remaining_rpm: ROption<u64>,
    /// Tokens left this minute.
    pub remaining_tpm: ROption<u64>,
    /// Requests left today.
    pub remaining_rpd: ROption<u64>,
}

/// A route decision, FFI-safe.
///
/// ```
/// let d = gemini_proxy_sdk::ffi::FfiRoute::Reject { status: 403, message: "no".into() };
/// assert!(matches!(d, gemini_proxy_sdk::ffi::FfiRoute::Reject { status: 403, .. }));
/// ```
#[repr(u8)]
#[derive(StableAbi, Debug, Clone)]
pub enum FfiRoute {
    /// [`RouteDecision::Keep`].
    Keep,
    /// [`RouteDecision::Change`].
    Change {
        /// New model.
        model: ROption<RString>,
        /// Project pin.
        project: ROption<RString>,
        /// Tags.
        tags: RVec<Tuple2<RString, RString>>,
    },
    /// [`RouteDecision::Reject`].
    Reject {
        /// Status.
        status: u16,
        /// Message.
        message: RString,
    },
    /// The hook failed ([`HookError`]).
    Error {
        /// A stable cause.
        reason: RString,
        /// Details.
        message: RString,
    },
}

/// A weigh decision, FFI-safe.
///
/// ```
/// let d = gemini_proxy_sdk::ffi::FfiWeigh::Choose(2);
/// assert!(matches!(d, gemini_proxy_sdk::ffi::FfiWeigh::Choose(2)));
/// ```
#[repr(u8)]
#[derive(StableAbi, Debug, Clone)]
pub enum FfiWeigh {
    /// [`WeighDecision::Keep`].
    Keep,
    /// [`WeighDecision::Weights`].
    Weights(RVec<u32>),
    /// [`WeighDecision::Choose`].
    Choose(u32),
    /// The hook failed.
    Error {
        /// A stable cause.
        reason: RString,
        /// Details.
        message: RString,
    },
}

/// The hooks of a loaded plugin instance, as an FFI-safe trait object.
///
/// ```
/// use gemini_proxy_sdk::ffi::{FfiRouter, FfiRequest, RouterAdapter, FfiWeigh};
/// use gemini_proxy_sdk::hooks::{HookRequest, Router};
/// struct Nothing;
/// impl Router for Nothing {}
/// let none = abi_stable::std_types::RSlice::from_slice(&[]);
/// let w = RouterAdapter(Nothing).weigh(&FfiRequest::from_hook(&HookRequest::default()), none);
/// assert!(matches!(w, FfiWeigh::Keep));
/// ```
#[sabi_trait]
pub trait FfiRouter: Send + Sync {
    /// [`Router::route`].
    fn route(&self, req: &FfiRequest) -> FfiRoute;
    /// [`Router::weigh`].
    #[sabi(last_prefix_field)]
    fn weigh(&self, req: &FfiRequest, candidates: RSlice<'_, FfiCandidate>) -> FfiWeigh;
}

/// A boxed plugin instance.
///
/// ```
/// use gemini_proxy_sdk::hooks::Router;
/// struct Nothing;
/// impl Router for Nothing {}
/// let boxed: gemini_proxy_sdk::ffi::FfiRouterBox =
///     gemini_proxy_sdk::ffi::build_router("null".into(), |_c: serde_json::Value| Ok(Nothing)).unwrap();
/// # let _ = boxed;
/// ```
pub type FfiRouterBox = FfiRouter_TO<'static, RBox<()>>;

/// The root module a native plugin library exports (see
/// [`export_native_plugin!`](crate::export_native_plugin)).
///
/// ```
/// use abi_stable::library::RootModule;
/// assert_eq!(gemini_proxy_sdk::ffi::NativePluginRef::BASE_NAME, "gemini_proxy_native");
/// ```
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = NativePluginRef)))]
#[sabi(missing_field(panic))]
pub struct NativePlugin {
    /// The plugin's name, for logs and metrics.
    pub name: extern "C" fn() -> RStr<'static>,
    /// Builds an instance from the stage's `config:` (JSON text); `Err` is a message.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config_json: RStr<'_>) -> RResult<FfiRouterBox, RString>,
}

impl RootModule for NativePluginRef {
    declare_root_module_statics! {NativePluginRef}
    const BASE_NAME: &'static str = "gemini_proxy_native";
    const NAME: &'static str = "gemini-proxy native plugin";
    // The sdk's version (this macro expands here): what the loader compares.
    const VERSION_STRINGS: abi_stable::sabi_types::VersionStrings = package_version_strings!();
}

fn rstring_opt(s: &Option<String>) -> ROption<RString> {
    match s {
        Some(s) => ROption::RSome(RString::from(s.as_str())),
        None => ROption::RNone,
    }
}

fn opt_string(s: &ROption<RString>) -> Option<String> {
    match s {
        ROption::RSome(s) => Some(s.to_string()),
        ROption::RNone => None,
    }
}

fn opt_u64(v: Option<u64>) -> ROption<u64> {
    v.map_or(ROption::RNone, ROption::RSome)
}

fn known(
    s: &str,
    names: impl IntoIterator<Item = &'static str>,
    default: &'static str,
) -> &'static str {
    names.into_iter().find(|n| *n == s).unwrap_or(default)
}

impl FfiRequest {
    /// The wire form of a request.
    ///
    /// ```
    /// let req = gemini_proxy_sdk::hooks::HookRequest::default();
    /// let back = gemini_proxy_sdk::ffi::FfiRequest::from_hook(&req).to_hook();
    /// assert_eq!(back.body_size, 0);
    /// ```
    pub fn from_hook(r: &HookRequest) -> FfiRequest {
        FfiRequest {
            method: r.method.as_str().into(),
            path: r.path.as_str().into(),
            api: r.api.into(),
            action: r.action.into(),
            model: rstring_opt(&r.model),
            stream: r.stream,
            subject: rstring_opt(&r.subject),
            role: rstring_opt(&r.role.map(str::to_string)),
            claims_json: if r.claims.is_null() {
                RString::new()
            } else {
                r.claims.to_string().into()
            },
            client_ip: rstring_opt(&r.client_ip),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| Tuple2(k.as_str().into(), v.as_str().into()))
                .collect(),
            body_size: r.body_size,
            prompt_tokens_estimate: r.prompt_tokens_estimate,
            unix_ms: r.unix_ms,
            attempt: r.attempt,
        }
    }

    /// Back to the idiomatic form.
    ///
    /// ```
    /// let mut req = gemini_proxy_sdk::hooks::HookRequest::default();
    /// req.model = Some("m".into());
    /// assert_eq!(gemini_proxy_sdk::ffi::FfiRequest::from_hook(&req).to_hook().model.as_deref(), Some("m"));
    /// ```
    pub fn to_hook(&self) -> HookRequest {
        HookRequest {
            method: self.method.to_string(),
            path: self.path.to_string(),
            api: known(&self.api, ApiKind::ALL.map(ApiKind::as_str), "native"),
            action: known(&self.action, Action::ALL.map(Action::as_str), "other"),
            model: opt_string(&self.model),
            stream: self.stream,
            subject: opt_string(&self.subject),
            role: opt_string(&self.role).map(|r| known(&r, ["user", "admin"], "user")),
            claims: if self.claims_json.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&self.claims_json).unwrap_or(serde_json::Value::Null)
            },
            client_ip: opt_string(&self.client_ip),
            headers: self
                .headers
                .iter()
                .map(|t| (t.0.to_string(), t.1.to_string()))
                .collect(),
            body_size: self.body_size,
            prompt_tokens_estimate: self.prompt_tokens_estimate,
            unix_ms: self.unix_ms,
            attempt: self.attempt,
        }
    }
}

impl FfiCandidate {
    /// The wire form of a candidate.
    ///
    /// ```
    /// let c = gemini_proxy_sdk::hooks::HookCandidate::new("k", 3);
    /// assert_eq!(gemini_proxy_sdk::ffi::FfiCandidate::from_hook(&c).to_hook(), c);
    /// ```
    pub fn from_hook(c: &HookCandidate) -> FfiCandidate {
        FfiCandidate {
            id: c.id.as_ref().into(),
            project: c.project.as_ref().into(),
            weight: c.weight,
            state: c.state.code(),
            in_flight: c.in_flight,
            latency_ewma_ms: c.latency_ewma_ms,
            remaining_rpm: opt_u64(c.remaining_rpm),
            remaining_tpm: opt_u64(c.remaining_tpm),
            remaining_rpd: opt_u64(c.remaining_rpd),
        }
    }

    /// Back to the idiomatic form.
    ///
    /// ```
    /// let c = gemini_proxy_sdk::hooks::HookCandidate::new("k", 3);
    /// assert_eq!(&*gemini_proxy_sdk::ffi::FfiCandidate::from_hook(&c).to_hook().id, "k");
    /// ```
    pub fn to_hook(&self) -> HookCandidate {
        HookCandidate {
            id: Arc::from(self.id.as_str()),
            project: Arc::from(self.project.as_str()),
            weight: self.weight,
            state: KeyState::from_code(self.state),
            in_flight: self.in_flight,
            latency_ewma_ms: self.latency_ewma_ms,
            remaining_rpm: self.remaining_rpm.into_option(),
            remaining_tpm: self.remaining_tpm.into_option(),
            remaining_rpd: self.remaining_rpd.into_option(),
        }
    }
}

fn ffi_error(reason: &str, message: &str) -> (RString, RString) {
    (reason.into(), message.into())
}

const REASONS: [&str; 6] = ["runtime", "limit", "timeout", "trap", "invalid", "panic"];

fn hook_error(reason: &RString, message: &RString) -> HookError {
    HookError::new(known(reason, REASONS, "runtime"), message.to_string())
}

/// Wraps a [`Router`] as an FFI-safe trait object (what the export macro does).
///
/// ```
/// use gemini_proxy_sdk::ffi::{RouterAdapter, FfiRouter, FfiRequest};
/// use gemini_proxy_sdk::hooks::{HookRequest, Router};
/// struct Nothing;
/// impl Router for Nothing {}
/// let r = RouterAdapter(Nothing);
/// assert!(matches!(r.route(&FfiRequest::from_hook(&HookRequest::default())), gemini_proxy_sdk::ffi::FfiRoute::Keep));
/// ```
pub struct RouterAdapter<R>(pub R);

impl<R: Router> FfiRouter for RouterAdapter<R> {
    fn route(&self, req: &FfiRequest) -> FfiRoute {
        let req = req.to_hook();
        match catch_unwind(AssertUnwindSafe(|| self.0.route(&req))) {
            Ok(Ok(RouteDecision::Keep)) => FfiRoute::Keep,
            Ok(Ok(RouteDecision::Change(c))) => FfiRoute::Change {
                model: rstring_opt(&c.model),
                project: rstring_opt(&c.project),
                tags: c
                    .tags
                    .iter()
                    .map(|(k, v)| Tuple2(k.as_str().into(), v.as_str().into()))
                    .collect(),
            },
            Ok(Ok(RouteDecision::Reject { status, message })) => FfiRoute::Reject {
                status,
                message: message.into(),
            },
            Ok(Err(e)) => {
                let (reason, message) = ffi_error(e.reason, &e.message);
                FfiRoute::Error { reason, message }
            }
            Err(_) => {
                let (reason, message) = ffi_error("panic", "the plugin panicked in route");
                FfiRoute::Error { reason, message }
            }
        }
    }

    fn weigh(&self, req: &FfiRequest, candidates: RSlice<'_, FfiCandidate>) -> FfiWeigh {
        let req = req.to_hook();
        let cands: Vec<HookCandidate> = candidates.iter().map(FfiCandidate::to_hook).collect();
        match catch_unwind(AssertUnwindSafe(|| self.0.weigh(&req, &cands))) {
            Ok(Ok(WeighDecision::Keep)) => FfiWeigh::Keep,
            Ok(Ok(WeighDecision::Weights(w))) => FfiWeigh::Weights(w.into()),
            Ok(Ok(WeighDecision::Choose(i))) => FfiWeigh::Choose(i.min(u32::MAX as usize) as u32),
            Ok(Err(e)) => {
                let (reason, message) = ffi_error(e.reason, &e.message);
                FfiWeigh::Error { reason, message }
            }
            Err(_) => {
                let (reason, message) = ffi_error("panic", "the plugin panicked in weigh");
                FfiWeigh::Error { reason, message }
            }
        }
    }
}

/// Builds the boxed instance for a library's `new` (used by the export macro): parses the
/// config, runs `build`, catches a panic.
///
/// ```
/// use gemini_proxy_sdk::hooks::Router;
/// struct Nothing;
/// impl Router for Nothing {}
/// let r = gemini_proxy_sdk::ffi::build_router("{}".into(), |_cfg: serde_json::Value| Ok(Nothing));
/// assert!(r.is_ok());
/// let bad = gemini_proxy_sdk::ffi::build_router("{".into(), |_cfg: serde_json::Value| Ok(Nothing));
/// assert!(bad.is_err());
/// ```
pub fn build_router<R, F>(config_json: RStr<'_>, build: F) -> RResult<FfiRouterBox, RString>
where
    R: Router + 'static,
    F: FnOnce(serde_json::Value) -> Result<R, String>,
{
    let config: serde_json::Value = match serde_json::from_str(config_json.as_str()) {
        Ok(v) => v,
        Err(e) => return RResult::RErr(format!("config is not JSON: {e}").into()),
    };
    match catch_unwind(AssertUnwindSafe(|| build(config))) {
        Ok(Ok(r)) => RResult::ROk(FfiRouter_TO::from_value(RouterAdapter(r), TD_Opaque)),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(_) => RResult::RErr("the plugin panicked while building".into()),
    }
}

/// Exports a [`Router`] from a `cdylib` as a gemini-proxy native plugin.
///
/// `$name` is a string for logs; `$build` is a `FnOnce(serde_json::Value) -> Result<R, String>`
/// given the stage's `config:`. The plugin crate must also depend on `abi_stable` 0.11 (the
/// export attribute names it).
///
/// ```ignore
/// gemini_proxy_sdk::export_native_plugin!("my_router", |config: serde_json::Value| Ok(MyRouter::new(config)));
/// ```
#[macro_export]
macro_rules! export_native_plugin {
    ($name:expr, $build:expr) => {
        extern "C" fn __gemini_proxy_native_name()
        -> $crate::ffi::abi_stable::std_types::RStr<'static> {
            $crate::ffi::abi_stable::std_types::RStr::from_str($name)
        }
        extern "C" fn __gemini_proxy_native_new(
            config: $crate::ffi::abi_stable::std_types::RStr<'_>,
        ) -> $crate::ffi::abi_stable::std_types::RResult<
            $crate::ffi::FfiRouterBox,
            $crate::ffi::abi_stable::std_types::RString,
        > {
            $crate::ffi::build_router(config, $build)
        }
        #[$crate::ffi::abi_stable::export_root_module]
        pub fn __gemini_proxy_native_root() -> $crate::ffi::NativePluginRef {
            use $crate::ffi::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::ffi::NativePlugin {
                name: __gemini_proxy_native_name,
                new: __gemini_proxy_native_new,
            }
            .leak_into_prefix()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Panics;
    impl Router for Panics {
        fn route(&self, _: &HookRequest) -> Result<RouteDecision, HookError> {
            panic!("bug in a plugin")
        }
        fn weigh(&self, _: &HookRequest, _: &[HookCandidate]) -> Result<WeighDecision, HookError> {
            panic!("bug in a plugin")
        }
    }

    #[test]
    fn panics_stop_at_the_boundary() {
        let a = RouterAdapter(Panics);
        let req = FfiRequest::from_hook(&HookRequest::default());
        assert!(
            matches!(a.route(&req), FfiRoute::Error { ref reason, .. } if reason.as_str() == "panic")
        );
        assert!(
            matches!(a.weigh(&req, RSlice::from_slice(&[])), FfiWeigh::Error { ref reason, .. } if reason.as_str() == "panic")
        );
        let built = build_router(
            "{}".into(),
            |_c: serde_json::Value| -> Result<Panics, String> { panic!("bad constructor") },
        );
        assert!(built.is_err());
    }

    #[test]
    fn wire_forms_round_trip() {
        let r = HookRequest {
            api: "openai",
            action: "chat.completions",
            role: Some("admin"),
            claims: serde_json::json!({"team": "x"}),
            headers: vec![("x-a".into(), "1".into())],
            ..Default::default()
        };
        assert_eq!(FfiRequest::from_hook(&r).to_hook(), r);
        let mut c = HookCandidate::new("k", 2);
        c.state = KeyState::HalfOpen;
        c.remaining_tpm = Some(9);
        assert_eq!(FfiCandidate::from_hook(&c).to_hook(), c);
    }
}
