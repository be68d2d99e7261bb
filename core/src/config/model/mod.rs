//! The config file's schema (version 1). Every field is documented in
//! `config/proxy.yaml.example`; unknown fields are errors.

use serde::{Deserialize, Serialize};

use super::duration::ConfigDuration;

mod cluster;
mod live;
mod server;
pub use cluster::*;
pub use live::*;
pub use server::*;

pub const CURRENT_VERSION: u32 = 1;
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "current_version")]
    pub version: u32,
    #[serde(default)]
    pub server: ServerConfig,
    pub gemini: GeminiConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// Live API sessions (WebSockets).
    #[serde(default)]
    pub live: LiveConfig,
    /// Shared state through Redis; absent: one instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// Named weight presets: preset → key id → weight. Keys a preset does not name keep
    /// their configured weight.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub presets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u32>>,
    /// Time windows in which a preset applies by itself (the first matching window wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preset_schedule: Vec<PresetWindow>,
    /// The preset in force when no window matches and none was applied through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_preset: Option<String>,
    /// Ordered pipeline entries; `None` means the default pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Vec<serde_yaml::Value>>,
}

fn current_version() -> u32 {
    CURRENT_VERSION
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeminiConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Offer HTTP/2 to the upstream (ALPN h2, falling back to HTTP/1.1).
    #[serde(default = "yes")]
    pub http2: bool,
    /// PEM file of CA certificates for the upstream (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}

fn yes() -> bool {
    true
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub id: String,
    pub key: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Google Cloud project (keys of one project share quota); default: the key's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Models this key may serve (globs, e.g. `gemini-2.5-*`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The project's quota as the operator knows it (Google applies limits per project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<KeyLimits>,
    /// Not used before this instant (RFC 3339, e.g. `2026-12-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// Not used from this instant on (rotation: add the new key, let the old one expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Requests/tokens per minute and requests per day; `models` overrides per model.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub models: std::collections::BTreeMap<String, ModelLimits>,
}

/// Limits of one model.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
}

impl KeyLimits {
    /// The limits that apply to `model` (a model entry overrides the defaults field by field).
    pub fn for_model(&self, model: Option<&str>) -> ModelLimits {
        let base = ModelLimits {
            rpm: self.rpm,
            tpm: self.tpm,
            rpd: self.rpd,
        };
        match model.and_then(|m| self.models.get(m)) {
            Some(m) => ModelLimits {
                rpm: m.rpm.or(base.rpm),
                tpm: m.tpm.or(base.tpm),
                rpd: m.rpd.or(base.rpd),
            },
            None => base,
        }
    }
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("weight", &self.weight)
            .field("project", &self.project)
            .field("enabled", &self.enabled)
            .field("models", &self.models)
            .field("limits", &self.limits)
            .field("not_before", &self.not_before)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// TCP + TLS connect.
    pub connect: ConfigDuration,
    /// Longest silence while reading the upstream response (thinking models pause).
    pub read: ConfigDuration,
    /// Longest stall writing the request body upstream.
    pub write: ConfigDuration,
    /// How long an idle pooled upstream connection is kept.
    pub idle: ConfigDuration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: ConfigDuration::secs(10),
            read: ConfigDuration::secs(300),
            write: ConfigDuration::secs(60),
            idle: ConfigDuration::secs(90),
        }
    }
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub enabled: bool,
    /// HMAC secret of gateway tokens (`JWT_SECRET` overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// `HS256` (default), `HS384` or `HS512` for `jwt_secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// More verification keys by `kid` (rotation, RS256/ES256/EdDSA public keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<gemini_proxy_plugins::auth::VerifyKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway: ConfigDuration,
    /// Revoked token ids (next to the config file; mode 0600).
    pub revocations_file: String,
    /// Lifetime of tokens the gateway issues (login, `POST /api/tokens`).
    pub token_ttl: ConfigDuration,
    /// Longest life `POST /api/tokens` gives a user token (an admin token gets `token_ttl` at
    /// most): an admin token cannot mint one that outlives it by years.
    pub max_token_ttl: ConfigDuration,
    /// Admin password for `POST /auth/login` (`ADMIN_PASSWORD` overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
    /// Argon2 hash of the admin password (`gemini-proxy hash-password`); preferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_password_hash: Option<String>,
    /// Allows `enabled: false` on a non-loopback listener (development only).
    pub allow_unauthenticated: bool,
    /// Each caller (a token's `tenant` claim, else its `sub`) sees only the files, caches,
    /// batches and other resources it created through the gateway; admins see all.
    pub tenant_isolation: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            jwt_secret: None,
            algorithm: None,
            keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway: ConfigDuration::secs(30),
            revocations_file: "data/revoked-tokens.json".into(),
            token_ttl: ConfigDuration::secs(3600),
            max_token_ttl: ConfigDuration::secs(30 * 86_400),
            admin_password: None,
            admin_password_hash: None,
            allow_unauthenticated: false,
            tenant_isolation: true,
        }
    }
}

impl AuthConfig {
    /// The `auth` stage's config as JSON (paths stay relative to the config file).
    pub fn stage_config(&self) -> serde_json::Value {
        serde_json::json!({
            "jwt_secret": self.jwt_secret,
            "algorithm": self.algorithm,
            "keys": self.keys,
            "issuer": self.issuer,
            "audience": self.audience,
            "leeway_seconds": self.leeway.0.as_secs(),
            "revocations_file": (!self.revocations_file.is_empty()).then_some(&self.revocations_file),
        })
    }

    /// Signs a gateway token with `jwt_secret`, adding the configured issuer and audience: the
    /// one way tokens are made (CLI `token`, the CLI's own admin calls, login, `POST /api/tokens`).
    pub fn sign(&self, mut claims: gemini_proxy_plugins::auth::Claims) -> Result<String, String> {
        let secret = self
            .jwt_secret
            .as_deref()
            .ok_or("auth.jwt_secret (or JWT_SECRET) is not set: no token can be signed")?;
        claims.iss = self.issuer.clone();
        claims.aud = self.audience.clone();
        gemini_proxy_plugins::auth::sign(
            secret,
            self.algorithm.as_deref().unwrap_or("HS256"),
            None,
            &claims,
        )
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<redacted>"),
            )
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Host of the admin listener (metrics, health, admin API).
    pub host: String,
    pub prometheus_port: u16,
    /// Serve the admin listener over TLS too, with the proxy's certificate (needs
    /// `server.tls.enabled`).
    pub tls: bool,
    /// DNS names (besides loopback names, the bound address and, on a wildcard bind, address
    /// literals) that the admin listener answers to in `Host`; any other name is refused, which
    /// stops DNS rebinding from a browser.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            host: "127.0.0.1".into(),
            prometheus_port: 9090,
            tls: false,
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is unset.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The key pool: retries, cooldowns, circuit breakers, persisted state.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Where dead keys and cooldowns are kept across restarts (relative paths: next to the
    /// config file). `""` keeps them in memory only.
    pub state_file: String,
    /// Keys added or removed through the admin API (mode 0600: holds secrets). `""` = memory.
    pub keys_file: String,
    /// Key changes per call after key-specific errors (429 quota, dead key).
    pub max_rotations: u32,
    /// Retries per call after transient errors (500/503/504, connection failures).
    pub max_retries: u32,
    /// No new attempt starts after this much time since the call arrived.
    pub retry_deadline: ConfigDuration,
    /// First backoff before a transient retry (doubles, with jitter).
    pub backoff: ConfigDuration,
    /// Rest of (key, model) after a 429 without quota details (jittered ±25%).
    pub rate_limit_backoff: ConfigDuration,
    /// Rest of (project, model) after a per-minute 429 without `retryDelay`.
    pub minute_cooldown: ConfigDuration,
    /// Rest of (key, model) after a 429 with `limit: 0` (no access on this tier).
    pub model_unavailable_for: ConfigDuration,
    /// Consecutive blamed failures that open a key's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker rests the key (doubles on each reopening, up to 10 min).
    pub breaker_open_for: ConfigDuration,
    /// Actions whose calls are retried after an upstream read timeout (the body was sent, so a
    /// retry may cost twice): e.g. `[countTokens, embedContent]`, `["*"]` for all; none by default.
    pub retry_read_timeouts: Vec<String>,
    /// Re-check dead keys (except operator-disabled ones) this often with a models-list call,
    /// which costs no generation quota; `0` (default) = only on `POST /api/keys/{id}/probe`.
    pub probe_interval: ConfigDuration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            state_file: "data/pool-state.json".into(),
            keys_file: "data/keys.json".into(),
            max_rotations: 3,
            max_retries: 2,
            retry_deadline: ConfigDuration::secs(60),
            backoff: ConfigDuration(std::time::Duration::from_millis(200)),
            rate_limit_backoff: ConfigDuration::secs(5),
            minute_cooldown: ConfigDuration::secs(60),
            model_unavailable_for: ConfigDuration::secs(24 * 3600),
            breaker_failures: 5,
            breaker_open_for: ConfigDuration::secs(30),
            retry_read_timeouts: Vec::new(),
            probe_interval: ConfigDuration::secs(0),
        }
    }
}

/// A daily window, `from` inclusive to `to` exclusive (`23:30`-`00:30` spans midnight).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PresetWindow {
    pub preset: String,
    pub from: String,
    pub to: String,
    /// `utc` (default) or `pacific` (America/Los_Angeles, where Google's daily quotas reset).
    #[serde(default)]
    pub tz: WindowTz,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WindowTz {
    #[default]
    Utc,
    Pacific,
}

impl PresetWindow {
    /// Minutes after midnight of `HH:MM`.
    pub fn minutes(t: &str) -> Result<u32, String> {
        let (h, m) = t
            .split_once(':')
            .ok_or_else(|| format!("`{t}` is not HH:MM"))?;
        let h: u32 = h.parse().map_err(|_| format!("`{t}` is not HH:MM"))?;
        let m: u32 = m.parse().map_err(|_| format!("`{t}` is not HH:MM"))?;
        if h > 23 || m > 59 {
            return Err(format!("`{t}` is not a time of day"));
        }
        Ok(h * 60 + m)
    }

    /// Whether the window covers `now`.
    pub fn covers(&self, now: std::time::SystemTime) -> bool {
        let (Ok(from), Ok(to)) = (Self::minutes(&self.from), Self::minutes(&self.to)) else {
            return false;
        };
        let unix = crate::util::clock::unix_secs(now) as i64;
        let local = match self.tz {
            WindowTz::Utc => unix,
            WindowTz::Pacific => unix + crate::util::clock::pacific_offset(unix),
        };
        let minute = (local.rem_euclid(86_400) / 60) as u32;
        if from <= to {
            minute >= from && minute < to
        } else {
            minute >= from || minute < to
        }
    }
}

/// The audit trail (README "Audit log").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// JSON-lines file (relative paths: next to the config file).
    pub log_path: String,
    /// Rotate when the file passes this size (it is also rotated each UTC day).
    pub rotate_bytes: u64,
    /// Events waiting for the writer at most.
    pub queue: usize,
    /// When the queue is full: `drop` (count in audit_dropped_total) or `block` (wait up to
    /// `block_timeout`, then drop).
    pub on_full: AuditFull,
    pub block_timeout: ConfigDuration,
    /// The writer flushes (JSON lines) and commits (DuckDB) at least this often: the most a
    /// crash can lose.
    pub flush_interval: ConfigDuration,
    /// DuckDB database for analysts (relative: next to the config file); empty = no database.
    pub db_path: String,
    /// Days of audit rows kept in the database (0 = forever); older days are dropped hourly.
    pub retention_days: u32,
    /// Threads DuckDB may use for analyst queries (the proxy keeps the rest).
    pub db_threads: u32,
    /// DuckDB memory limit, e.g. `256MB`.
    pub db_memory_limit: String,
    /// The only folder `POST /api/export` may write Parquet files to.
    pub export_dir: String,
    /// Most rows one `POST /api/sql` answer returns (the rest are cut, `truncated: true`).
    pub sql_max_rows: usize,
    /// Longest an analyst query may run before it is interrupted.
    pub sql_timeout: ConfigDuration,
    /// Every so often (0: never), the last hours are written as Parquet into `export_dir`, one
    /// folder per table, instance, day and hour (`requests/instance=gw-1/day=2026-12-04/hour=21`):
    /// a cluster's instances exporting into one shared folder can be queried as one.
    pub export_every: ConfigDuration,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuditFull {
    #[default]
    Drop,
    Block,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            log_path: "logs/audit.log".into(),
            rotate_bytes: 100 * 1024 * 1024,
            queue: 65_536,
            on_full: AuditFull::Drop,
            block_timeout: ConfigDuration(std::time::Duration::from_millis(50)),
            flush_interval: ConfigDuration::secs(1),
            db_path: "data/audit.duckdb".into(),
            retention_days: 0,
            db_threads: 1,
            db_memory_limit: "256MB".into(),
            export_dir: "data/export".into(),
            sql_max_rows: 10_000,
            sql_timeout: ConfigDuration::secs(10),
            export_every: ConfigDuration::secs(0),
        }
    }
}

/// Anomaly detection per key and model (README "Anomaly detection").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    pub enabled: bool,
    /// Length of one bucket; signals are compared bucket by bucket.
    pub bucket: ConfigDuration,
    /// Calls a bucket needs to count.
    pub min_samples: u32,
    /// Deviating buckets in a row that raise an anomaly.
    pub sustain: u32,
    /// Normal buckets in a row that clear it.
    pub clear_after: u32,
    /// Normal buckets learned before anything can be raised.
    pub warmup_buckets: u32,
    /// Weight of a new bucket in the baseline (EWMA).
    pub alpha: f64,
    /// An error or 429 rate deviates when above baseline + max(this, 3 standard deviations).
    pub rate_delta: f64,
    /// Mean latency deviates when above baseline x this (and 3 standard deviations) ...
    pub latency_factor: f64,
    /// ... and at least this many milliseconds above the baseline.
    pub latency_floor_ms: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            bucket: ConfigDuration::secs(10),
            min_samples: 5,
            sustain: 3,
            clear_after: 3,
            warmup_buckets: 6,
            alpha: 0.1,
            rate_delta: 0.2,
            latency_factor: 2.0,
            latency_floor_ms: 25.0,
        }
    }
}
