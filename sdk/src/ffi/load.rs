//! The gateway's side of the ABI: loading a native plugin library and calling it as a Router.

use super::*;

/// Why a library could not be loaded as a native plugin.
///
/// ```
/// let e = gemini_proxy_sdk::ffi::load("/nonexistent/libx.so", "{}").err().unwrap();
/// assert!(e.to_string().contains("/nonexistent/libx.so"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The library could not be opened or has no gemini-proxy root module.
    #[error("cannot load native plugin {path}: {message}")]
    Open {
        /// The library path.
        path: String,
        /// Details.
        message: String,
    },
    /// Built against an sdk this gateway does not speak.
    #[error(
        "native plugin {path} was built with gemini-proxy-sdk {found}, which is incompatible with this gateway's sdk {expected}; rebuild it against gemini-proxy-sdk {expected}"
    )]
    IncompatibleVersion {
        /// The library path.
        path: String,
        /// The sdk version the library was built with.
        found: String,
        /// This gateway's sdk version.
        expected: String,
    },
    /// The type layouts differ (built against a modified sdk, or not a gemini-proxy plugin).
    #[error("native plugin {path} does not match this gateway's plugin interface: {message}")]
    Layout {
        /// The library path.
        path: String,
        /// Details.
        message: String,
    },
    /// The plugin refused its config.
    #[error("native plugin {path} ({name}) refused its config: {message}")]
    Config {
        /// The library path.
        path: String,
        /// The plugin's name.
        name: String,
        /// Its message.
        message: String,
    },
}

/// A loaded plugin instance, usable as a [`Router`] (see [`load`]).
///
/// ```
/// // Loading needs a plugin library; a missing one is an error, not a panic.
/// assert!(gemini_proxy_sdk::ffi::load("/missing/librouter.so", "{}").is_err());
/// ```
pub struct NativeRouter {
    name: String,
    inner: FfiRouterBox,
}

impl NativeRouter {
    /// The plugin's own name (from its `export_native_plugin!`).
    ///
    /// ```
    /// if let Ok(r) = gemini_proxy_sdk::ffi::load("/missing/librouter.so", "{}") {
    ///     println!("{}", r.name());
    /// }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for NativeRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRouter")
            .field("name", &self.name)
            .finish()
    }
}

/// Loads a plugin library and builds one instance with `config_json`. Checks the sdk version
/// and the type layouts first. Libraries stay loaded for the life of the process.
///
/// ```
/// assert!(gemini_proxy_sdk::ffi::load("/nonexistent.so", "{}").is_err());
/// ```
pub fn load(path: impl AsRef<Path>, config_json: &str) -> Result<NativeRouter, LoadError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let header = lib_header_from_path(path).map_err(|e| LoadError::Open {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let module = header
        .init_root_module::<NativePluginRef>()
        .map_err(|e| match e {
            LibraryError::IncompatibleVersionNumber {
                expected_version,
                actual_version,
                ..
            } => LoadError::IncompatibleVersion {
                path: shown.clone(),
                found: actual_version.to_string(),
                expected: expected_version.to_string(),
            },
            LibraryError::AbiInstability(m) => LoadError::Layout {
                path: shown.clone(),
                message: m.to_string().lines().take(6).collect::<Vec<_>>().join(" "),
            },
            other => LoadError::Open {
                path: shown.clone(),
                message: other.to_string(),
            },
        })?;
    let name = (module.name())().to_string();
    match (module.new())(RStr::from_str(config_json)) {
        RResult::ROk(inner) => Ok(NativeRouter { name, inner }),
        RResult::RErr(message) => Err(LoadError::Config {
            path: shown,
            name,
            message: message.to_string(),
        }),
    }
}

impl Router for NativeRouter {
    fn route(&self, req: &HookRequest) -> Result<RouteDecision, HookError> {
        match self.inner.route(&FfiRequest::from_hook(req)) {
            FfiRoute::Keep => Ok(RouteDecision::Keep),
            FfiRoute::Change {
                model,
                project,
                tags,
            } => Ok(RouteDecision::Change(RouteChange {
                model: opt_string(&model),
                project: opt_string(&project),
                tags: tags
                    .iter()
                    .map(|t| (t.0.to_string(), t.1.to_string()))
                    .collect(),
            })),
            FfiRoute::Reject { status, message } => Ok(RouteDecision::Reject {
                status,
                message: message.to_string(),
            }),
            FfiRoute::Error { reason, message } => Err(hook_error(&reason, &message)),
        }
    }

    fn weigh(
        &self,
        req: &HookRequest,
        candidates: &[HookCandidate],
    ) -> Result<WeighDecision, HookError> {
        let cands: Vec<FfiCandidate> = candidates.iter().map(FfiCandidate::from_hook).collect();
        match self
            .inner
            .weigh(&FfiRequest::from_hook(req), RSlice::from_slice(&cands))
        {
            FfiWeigh::Keep => Ok(WeighDecision::Keep),
            FfiWeigh::Weights(w) => Ok(WeighDecision::Weights(w.into_vec())),
            FfiWeigh::Choose(i) => Ok(WeighDecision::Choose(i as usize)),
            FfiWeigh::Error { reason, message } => Err(hook_error(&reason, &message)),
        }
    }
}
