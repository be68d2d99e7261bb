//! The runtime snapshot (config, compiled pipeline, keys, upstream) swapped atomically on
//! reload, and the process-wide state that outlives reloads.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use gemini_proxy_sdk::{BuildEnv, Candidate, Registry};
use http::HeaderValue;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Config, ConfigError, LoadedConfig, UpstreamTarget};
use crate::pipeline::{Pipeline, Stage, default_pipeline};

mod shared;
pub use shared::Shared;

/// An upstream key with its secret as ready-made header values (marked sensitive).
pub struct UpstreamKey {
    pub id: Arc<str>,
    pub project: Arc<str>,
    /// `sha256:` + 12 hex digits of the secret: safe to show and to persist.
    pub fingerprint: String,
    /// Model globs this key may serve (empty: any).
    pub models: Vec<String>,
    pub not_before: Option<std::time::SystemTime>,
    pub expires_at: Option<std::time::SystemTime>,
    pub limits: Option<crate::config::KeyLimits>,
    pub goog_api_key: HeaderValue,
    pub bearer: HeaderValue,
}

impl UpstreamKey {
    /// Whether the key may serve `model` at `now` (its model list and validity window).
    /// `model_bound`: the call is of a kind a model list applies to (see
    /// [`gemini_proxy_sdk::Action::model_bound`]); one whose model is unknown is then refused.
    pub fn admits(
        &self,
        model: Option<&str>,
        model_bound: bool,
        now: std::time::SystemTime,
    ) -> bool {
        if self.not_before.is_some_and(|t| now < t) || self.expires_at.is_some_and(|t| now >= t) {
            return false;
        }
        if self.models.is_empty() {
            return true;
        }
        match model {
            Some(m) => self
                .models
                .iter()
                .any(|g| crate::pipeline::glob_match(g, m)),
            // Calls without a model (files, model lists) may use any key.
            None => !model_bound,
        }
    }
}

/// Where and how to reach the upstream.
pub struct Upstream {
    pub target: UpstreamTarget,
    /// `None` until the host resolves (the resolver service keeps trying).
    pub addr: ArcSwap<Option<SocketAddr>>,
    pub authority: HeaderValue,
    pub connector: Arc<Connector>,
    pub ca_file: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2: bool,
}

impl Upstream {
    /// The peer for one attempt, or `None` while the host is unresolved.
    pub fn peer(&self) -> Option<HttpPeer> {
        let addr = (**self.addr.load())?;
        let mut peer = HttpPeer::new(addr, self.target.tls, self.target.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.total_connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        if self.target.tls && self.http2 {
            o.set_http_version(2, 1);
        }
        Some(peer)
    }
}

/// Resolves host:port without panicking (Pingora's `HttpPeer::new` would on failure).
pub fn resolve(target: &UpstreamTarget) -> Result<SocketAddr, String> {
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", target.host))
}

/// One immutable generation of the gateway's behaviour.
pub struct Runtime {
    pub generation: u64,
    pub config: Config,
    pub pipeline: Pipeline,
    pub keys: Vec<UpstreamKey>,
    /// Selection candidates, index-aligned with `keys`.
    pub candidates: Vec<Candidate>,
    /// Live figures (in flight, latency), index-aligned with `keys`.
    pub live: Vec<Arc<crate::pool::KeyLive>>,
    /// True if any key has a model list or a validity window (checked per call then).
    pub keys_have_rules: bool,
    /// Key id and project → candidate indices (for the pool's gate).
    pub index: crate::pool::PoolIndex,
    pub upstream: Upstream,
    /// Built-in fallback when no select stage chose a key.
    pub fallback: gemini_proxy_plugins::key_select::SmoothWrr,
    pub public_url: Option<String>,
    /// `pool.state_file`, resolved against the config file's directory.
    pub pool_state_file: Option<PathBuf>,
    /// The weight preset in force when this runtime was built.
    pub preset: Option<String>,
    /// The config this runtime was built from (admin changes rebuild from it).
    pub source: LoadedConfig,
    /// Token verification (when `auth.enabled`), shared with the admin API.
    pub auth: Option<Arc<gemini_proxy_plugins::auth::Verifier>>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<crate::util::Cidr>,
    /// Masks every pooled key (configured, added or removed through the API) in what is relayed
    /// or stored.
    pub scrubber: Arc<crate::scrub::Scrubber>,
}

/// With `auth.enabled`, the pipeline starts with the `auth` stage (configured from the top-level
/// `auth:` section) unless it already names one; a bare `auth` entry gets that config too.
pub(crate) fn with_auth_stage(
    mut entries: Vec<serde_yaml::Value>,
    c: &Config,
) -> Vec<serde_yaml::Value> {
    use serde_yaml::{Mapping, Value};
    let from_config = || serde_yaml::to_value(c.auth.stage_config()).unwrap_or(Value::Null);
    let kind = |e: &Value| match e {
        Value::String(k) => Some(k.clone()),
        Value::Mapping(m) if m.len() == 1 => m.keys().next()?.as_str().map(str::to_string),
        _ => None,
    };
    match entries
        .iter()
        .position(|e| kind(e).as_deref() == Some("auth"))
    {
        Some(i) => {
            let mut cfg = match from_config() {
                Value::Mapping(m) => m,
                _ => Mapping::new(),
            };
            // Fields written on the entry (when:, failure_mode:, overrides) win.
            if let Value::Mapping(m) = &entries[i]
                && let Some(Value::Mapping(own)) = m.values().next()
            {
                for (k, v) in own {
                    cfg.insert(k.clone(), v.clone());
                }
            }
            let mut entry = Mapping::new();
            entry.insert(Value::String("auth".into()), Value::Mapping(cfg));
            entries[i] = Value::Mapping(entry);
        }
        None if c.auth.enabled => {
            let mut entry = Mapping::new();
            entry.insert(Value::String("auth".into()), from_config());
            entries.insert(0, Value::Mapping(entry));
        }
        None => {}
    }
    entries
}

/// `pool.keys_file` of a config, resolved against its directory.
pub fn keys_file_of(loaded: &LoadedConfig) -> Option<PathBuf> {
    let f = &loaded.config.pool.keys_file;
    (!f.is_empty()).then(|| loaded.config_dir().join(f))
}

/// The preset in force at `now`: a matching schedule window, else the one applied through the
/// API, else `default_preset`.
pub fn effective_preset(c: &Config, manual: Option<&str>, now: SystemTime) -> Option<String> {
    if let Some(w) = c.preset_schedule.iter().find(|w| w.covers(now)) {
        return Some(w.preset.clone());
    }
    manual
        .filter(|m| c.presets.contains_key(*m))
        .map(str::to_string)
        .or_else(|| c.default_preset.clone())
}

fn sensitive(v: &str) -> Result<HeaderValue, String> {
    let mut h = HeaderValue::from_str(v)
        .map_err(|_| "contains characters not allowed in a header".to_string())?;
    h.set_sensitive(true);
    Ok(h)
}

impl Runtime {
    /// Builds a runtime. Blocking (DNS): call from a blocking context.
    pub fn build(
        loaded: &LoadedConfig,
        registry: &Registry,
        previous: Option<&Runtime>,
        pool: &crate::pool::KeyPool,
        shared_limits: Option<gemini_proxy_sdk::SharedLimitsHandle>,
    ) -> Result<Runtime, ConfigError> {
        let file = loaded
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(inline)".into());
        let c = &loaded.config;
        let mut env = BuildEnv::new(loaded.config_dir());
        env.shared_limits = shared_limits;
        let entries = with_auth_stage(c.pipeline.clone().unwrap_or_else(default_pipeline), c);
        // The admin API verifies tokens with the same keys as the `auth` stage.
        let auth = auth_verifier(loaded, &file)?;
        let pipeline = Pipeline::build(&entries, registry, &env, &file)?;
        // Keys from the file, with the admin API's additions and removals.
        let overlay = pool.overlay.get();
        let key_cfgs = overlay.apply(&c.gemini.api_keys);
        if !overlay.added.is_empty() || !overlay.removed.is_empty() {
            let mut merged = c.clone();
            merged.gemini.api_keys = key_cfgs.clone();
            crate::config::validate(&merged, &file)?;
        }
        let preset = effective_preset(c, pool.manual_preset().as_deref(), SystemTime::now());
        let preset_weights = preset.as_ref().and_then(|p| c.presets.get(p));
        if let Some(w) = preset_weights {
            for id in w.keys().filter(|id| !key_cfgs.iter().any(|k| &k.id == *id)) {
                tracing::warn!(preset = ?preset, key_id = %id, "preset names a key that is not configured; ignored");
            }
        }
        let (keys, candidates) = upstream_keys(&key_cfgs, preset_weights, &file)?;
        let upstream = upstream(c, previous, &file)?;
        let live = pool.live_handles(keys.iter().map(|k| &k.id));
        let scrubber = Arc::new(crate::scrub::Scrubber::new(
            c.gemini
                .api_keys
                .iter()
                .chain(overlay.added.iter())
                .map(|k| k.key.as_str()),
        ));
        let keys_have_rules = keys
            .iter()
            .any(|k| !k.models.is_empty() || k.not_before.is_some() || k.expires_at.is_some());
        Ok(Runtime {
            generation: previous.map(|p| p.generation + 1).unwrap_or(1),
            live,
            keys_have_rules,
            index: crate::pool::PoolIndex::new(&candidates),
            config: c.clone(),
            pipeline,
            keys,
            candidates,
            upstream,
            fallback: Default::default(),
            public_url: c
                .server
                .public_url
                .clone()
                .map(|u| u.trim_end_matches('/').to_string()),
            pool_state_file: (!c.pool.state_file.is_empty())
                .then(|| loaded.config_dir().join(&c.pool.state_file)),
            preset,
            source: loaded.clone(),
            auth,
            trusted_proxies: c
                .server
                .trusted_proxies
                .iter()
                .filter_map(|t| crate::util::Cidr::parse(t).ok())
                .collect(),
            scrubber,
        })
    }

    /// Adds a stage at the end of the pipeline (used by tests and embedders).
    pub fn push_stage(&mut self, stage: Stage) {
        self.pipeline.push(stage);
    }
}

/// The verifier the admin API shares with the `auth` stage, when auth is on.
fn auth_verifier(
    loaded: &LoadedConfig,
    file: &str,
) -> Result<Option<Arc<gemini_proxy_plugins::auth::Verifier>>, ConfigError> {
    let c = &loaded.config;
    if !c.auth.enabled {
        return Ok(None);
    }
    let stage: gemini_proxy_plugins::auth::AuthStageConfig =
        serde_json::from_value(c.auth.stage_config())
            .map_err(|e| ConfigError::new(file, "auth", e.to_string()))?;
    let verifier = gemini_proxy_plugins::auth::Verifier::new(&stage, &loaded.config_dir())
        .map_err(|m| ConfigError::new(file, "auth", m))?;
    Ok(Some(Arc::new(verifier)))
}

/// The enabled keys as the proxy sends them (header values made once) and as the select
/// stages see them (with the preset's weights).
fn upstream_keys(
    key_cfgs: &[crate::config::ApiKeyConfig],
    preset_weights: Option<&std::collections::BTreeMap<String, u32>>,
    file: &str,
) -> Result<(Vec<UpstreamKey>, Vec<Candidate>), ConfigError> {
    let mut keys = Vec::new();
    let mut candidates = Vec::new();
    for (i, k) in key_cfgs.iter().filter(|k| k.enabled).enumerate() {
        let secret = k.key.trim();
        let goog = sensitive(secret)
            .map_err(|m| ConfigError::new(file, format!("gemini.api_keys[{i}].key"), m))?;
        let bearer = sensitive(&format!("Bearer {secret}"))
            .map_err(|m| ConfigError::new(file, format!("gemini.api_keys[{i}].key"), m))?;
        let project: Arc<str> = Arc::from(k.project.as_deref().unwrap_or(&k.id));
        let weight = preset_weights
            .and_then(|w| w.get(&k.id).copied())
            .unwrap_or(k.weight);
        let mut cand = Candidate::new(&k.id, weight);
        cand.project = project.clone();
        keys.push(UpstreamKey {
            id: cand.id.clone(),
            project,
            fingerprint: crate::pool::fingerprint(secret),
            models: k.models.clone(),
            not_before: k
                .not_before
                .as_deref()
                .and_then(|t| crate::util::clock::parse_rfc3339(t).ok()),
            expires_at: k
                .expires_at
                .as_deref()
                .and_then(|t| crate::util::clock::parse_rfc3339(t).ok()),
            limits: k.limits.clone(),
            goog_api_key: goog,
            bearer,
        });
        candidates.push(cand);
    }
    Ok((keys, candidates))
}

/// The upstream: its address (the previous one kept while DNS fails), TLS roots, and the
/// connector (kept across reloads unless the roots changed).
fn upstream(c: &Config, previous: Option<&Runtime>, file: &str) -> Result<Upstream, ConfigError> {
    let target = UpstreamTarget::parse(&c.gemini.base_url)
        .map_err(|m| ConfigError::new(file, "gemini.base_url", m))?;
    let addr = match resolve(&target) {
        Ok(a) => Some(a),
        Err(e) => {
            // Start anyway: calls get 502 until the resolver service succeeds.
            let kept = previous
                .filter(|p| p.upstream.target == target)
                .and_then(|p| **p.upstream.addr.load());
            tracing::warn!(error = %e, kept_previous = kept.is_some(), "upstream host does not resolve yet");
            kept
        }
    };
    let ca_file = c.gemini.ca_file.clone();
    if let Some(ca) = &ca_file
        && !std::path::Path::new(ca).exists()
    {
        return Err(ConfigError::new(
            file,
            "gemini.ca_file",
            format!("file `{ca}` does not exist"),
        ));
    }
    // Keep the pooled connections across reloads unless the TLS roots changed.
    let connector = match previous {
        Some(p) if p.upstream.ca_file == ca_file => p.upstream.connector.clone(),
        _ => {
            let mut opts = ConnectorOptions::new(256);
            opts.ca_file = ca_file.clone();
            Arc::new(Connector::new(Some(opts)))
        }
    };
    let t = &c.gemini.timeouts;
    let authority = HeaderValue::from_str(&target.authority()).map_err(|_| {
        ConfigError::new(file, "gemini.base_url", "host is not a valid header value")
    })?;
    Ok(Upstream {
        authority,
        addr: ArcSwap::from_pointee(addr),
        target,
        connector,
        ca_file,
        connect_timeout: t.connect.0,
        read_timeout: t.read.0,
        write_timeout: t.write.0,
        idle_timeout: t.idle.0,
        http2: c.gemini.http2,
    })
}
