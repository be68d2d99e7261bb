use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Plugin, PluginError};

/// What a factory may know about the gateway when it builds a plugin.
///
/// ```
/// let env = gemini_proxy_sdk::BuildEnv::default();
/// assert_eq!(env.resolve("scripts/x.rhai"), std::path::PathBuf::from("scripts/x.rhai"));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BuildEnv {
    /// Directory of the config file; relative paths in plugin configs resolve against it.
    pub config_dir: PathBuf,
    /// The cluster's shared counters; `None` when the gateway runs as one instance.
    pub shared_limits: Option<crate::SharedLimitsHandle>,
}

impl BuildEnv {
    /// An environment rooted at `config_dir`.
    ///
    /// ```
    /// let env = gemini_proxy_sdk::BuildEnv::new("/etc/gw");
    /// assert_eq!(env.resolve("a.wat"), std::path::PathBuf::from("/etc/gw/a.wat"));
    /// ```
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        BuildEnv {
            config_dir: config_dir.into(),
            shared_limits: None,
        }
    }

    /// Resolves a path from a plugin config against the config directory.
    ///
    /// ```
    /// let env = gemini_proxy_sdk::BuildEnv::new("/etc/gw");
    /// assert_eq!(env.resolve("/abs"), std::path::PathBuf::from("/abs"));
    /// ```
    pub fn resolve(&self, path: impl AsRef<std::path::Path>) -> PathBuf {
        self.config_dir.join(path)
    }
}

/// A typed constructor for one kind of plugin, registered in a [`Registry`].
///
/// `Config` is deserialised from the YAML entry (`- kind: {...}`); use
/// `#[serde(deny_unknown_fields)]` so typos are errors.
///
/// ```
/// use gemini_proxy_sdk::{BuildEnv, Phases, Plugin, PluginError, PluginFactory};
/// use std::sync::Arc;
/// struct Noop;
/// impl Plugin for Noop { fn name(&self) -> &str { "noop" } fn phases(&self) -> Phases { Phases::NONE } }
/// impl PluginFactory for Noop {
///     const KIND: &'static str = "noop";
///     type Config = serde_json::Value;
///     fn build(_: serde_json::Value, _: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> { Ok(Arc::new(Noop)) }
/// }
/// assert_eq!(Noop::KIND, "noop");
/// ```
pub trait PluginFactory: 'static {
    /// The name used in the YAML pipeline.
    const KIND: &'static str;
    /// The typed configuration.
    type Config: DeserializeOwned;
    /// Builds a plugin instance. Called at load and on every reload: compile here, not per call.
    fn build(config: Self::Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError>;
}

/// Why a pipeline entry could not be built.
///
/// ```
/// let reg = gemini_proxy_sdk::Registry::new();
/// let err = reg.build("nope", serde_json::json!({}), &Default::default()).err().unwrap();
/// assert!(matches!(err, gemini_proxy_sdk::BuildError::UnknownKind { .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No factory has this kind.
    #[error("unknown plugin kind `{kind}` (known: {known})")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The kinds registered, comma-separated.
        known: String,
    },
    /// The config did not match the factory's `Config` type.
    #[error("invalid config at `{path}`: {message}")]
    InvalidConfig {
        /// Field path inside the entry's config (`.` for the root).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The factory refused the config.
    #[error("{0}")]
    Factory(#[from] PluginError),
}

type BuildFn =
    Box<dyn Fn(serde_json::Value, &BuildEnv) -> Result<Arc<dyn Plugin>, BuildError> + Send + Sync>;

/// The plugin kinds a gateway knows, by name. Registration is explicit (no link-time magic),
/// so what a binary contains is visible in its `main`.
///
/// ```
/// use gemini_proxy_sdk::Registry;
/// let reg = Registry::new();
/// assert_eq!(reg.kinds().count(), 0);
/// ```
#[derive(Default)]
pub struct Registry {
    factories: BTreeMap<&'static str, BuildFn>,
}

impl Registry {
    /// An empty registry.
    ///
    /// ```
    /// let _ = gemini_proxy_sdk::Registry::new();
    /// ```
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers a factory under its `KIND`, replacing any earlier one of that kind.
    ///
    /// ```
    /// # use gemini_proxy_sdk::{BuildEnv, Phases, Plugin, PluginError, PluginFactory, Registry};
    /// # use std::sync::Arc;
    /// # struct Noop;
    /// # impl Plugin for Noop { fn name(&self) -> &str { "noop" } fn phases(&self) -> Phases { Phases::NONE } }
    /// # impl PluginFactory for Noop { const KIND: &'static str = "noop"; type Config = serde_json::Value;
    /// #   fn build(_: serde_json::Value, _: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> { Ok(Arc::new(Noop)) } }
    /// let mut reg = Registry::new();
    /// reg.register::<Noop>();
    /// assert!(reg.contains("noop"));
    /// ```
    pub fn register<F: PluginFactory>(&mut self) -> &mut Self {
        self.factories.insert(
            F::KIND,
            Box::new(|value, env| {
                let config: F::Config = serde_path_to_error::deserialize(value).map_err(|e| {
                    BuildError::InvalidConfig {
                        path: e.path().to_string(),
                        message: e.inner().to_string(),
                    }
                })?;
                Ok(F::build(config, env)?)
            }),
        );
        self
    }

    /// True if a factory of this kind is registered.
    ///
    /// ```
    /// assert!(!gemini_proxy_sdk::Registry::new().contains("auth"));
    /// ```
    pub fn contains(&self, kind: &str) -> bool {
        self.factories.contains_key(kind)
    }

    /// The registered kinds, sorted.
    ///
    /// ```
    /// assert!(gemini_proxy_sdk::Registry::new().kinds().next().is_none());
    /// ```
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }

    /// Builds a plugin of `kind` from its JSON config.
    ///
    /// ```
    /// let reg = gemini_proxy_sdk::Registry::new();
    /// assert!(reg.build("x", serde_json::Value::Null, &Default::default()).is_err());
    /// ```
    pub fn build(
        &self,
        kind: &str,
        config: serde_json::Value,
        env: &BuildEnv,
    ) -> Result<Arc<dyn Plugin>, BuildError> {
        let f = self
            .factories
            .get(kind)
            .ok_or_else(|| BuildError::UnknownKind {
                kind: kind.to_string(),
                known: self.kinds().collect::<Vec<_>>().join(", "),
            })?;
        f(config, env)
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}
