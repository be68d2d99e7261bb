//! Loading: read, migrate older shapes, apply environment overrides, type-check with field
//! paths, then validate meaning.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use sha2::{Digest, Sha256};

use super::model::{ApiKeyConfig, CURRENT_VERSION, Config};

/// A config error: the file, the field path and what is wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{file}: {path}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A loaded, validated config with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub path: Option<PathBuf>,
    /// One line per migration applied to the file's shape.
    pub warnings: Vec<String>,
    /// The file after migration, before environment overrides (what `check --migrate` prints).
    pub migrated: Value,
    /// Hash of the file bytes, to notice changes.
    pub source_hash: [u8; 32],
}

impl LoadedConfig {
    pub fn config_dir(&self) -> PathBuf {
        self.path
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// Source of environment variables (the process environment, or a map in tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn load_file(path: &Path, env: EnvLookup<'_>) -> Result<LoadedConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&file, "(file)", format!("cannot read: {e}")))?;
    let mut loaded = load_str(&text, &file, env)?;
    loaded.path = Some(path.to_path_buf());
    Ok(loaded)
}

/// Deepest nesting a config may have (real ones stay under 10); deeper documents cost the
/// YAML parser quadratic time before its own limit.
const MAX_NESTING: usize = 64;

/// The line where `text` nests deeper than [`MAX_NESTING`]: flow brackets, block sequence
/// dashes on one line, or indentation (outside quoted strings and comments).
fn too_deep(text: &str) -> Option<usize> {
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '-', '\t']).len();
        if indent > MAX_NESTING * 8 {
            return Some(n + 1);
        }
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow > MAX_NESTING {
                        return Some(n + 1);
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

/// The line of the first YAML alias (`*name`) in `text`, as the parser reads it. A few aliases
/// of a large anchor make a small text expand into millions of nodes, so configs sent to the
/// admin API may have none (a file may).
pub fn first_alias(text: &str) -> Option<usize> {
    super::yaml_shape::shape(text, MAX_NESTING).and_then(|s| s.first_alias)
}

/// A secret field (anywhere) that holds the redaction placeholder: never a real value.
fn placeholder_secret(v: &Value, at: &str) -> Option<String> {
    use super::{SECRET_FIELDS, looks_redacted};
    match v {
        Value::Mapping(m) => m.iter().find_map(|(k, x)| {
            let name = k.as_str().unwrap_or("");
            let path = if at.is_empty() {
                name.to_string()
            } else {
                format!("{at}.{name}")
            };
            if SECRET_FIELDS.contains(&name) && x.as_str().is_some_and(looks_redacted) {
                Some(path)
            } else {
                placeholder_secret(x, &path)
            }
        }),
        Value::Sequence(s) => s
            .iter()
            .enumerate()
            .find_map(|(i, x)| placeholder_secret(x, &format!("{at}[{i}]"))),
        _ => None,
    }
}

pub fn load_str(text: &str, file: &str, env: EnvLookup<'_>) -> Result<LoadedConfig, ConfigError> {
    let source_hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    if let Some(line) = too_deep(text) {
        return Err(ConfigError::new(
            file,
            format!("line {line}"),
            format!("nested more than {MAX_NESTING} levels deep"),
        ));
    }
    // The same limit on the parser's own events: no spelling hides nesting from them.
    if let Some(line) = super::yaml_shape::shape(text, MAX_NESTING).and_then(|s| s.too_deep) {
        return Err(ConfigError::new(
            file,
            format!("line {line}"),
            format!("nested more than {MAX_NESTING} levels deep"),
        ));
    }
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_else(|| "(syntax)".into());
        ConfigError::new(file, at, format!("not valid YAML: {e}"))
    })?;
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    if let Some(path) = placeholder_secret(&value, "") {
        return Err(ConfigError::new(
            file,
            path,
            format!(
                "holds `{}`, the placeholder the admin API shows for a secret: write the secret itself",
                super::REDACTED
            ),
        ));
    }
    if !value.is_mapping() {
        return Err(ConfigError::new(
            file,
            ".",
            "the config must be a YAML mapping",
        ));
    }
    let warnings = migrate(&mut value, file)?;
    let migrated = value.clone();
    let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::new(
            file,
            if path == "." { "(root)".into() } else { path },
            e.inner().to_string(),
        )
    })?;
    apply_env(&mut config, env);
    super::validate(&config, file)?;
    Ok(LoadedConfig {
        config,
        path: None,
        warnings,
        migrated,
        source_hash,
    })
}

fn key(s: &str) -> Value {
    Value::String(s.to_string())
}

/// Upgrades older or looser shapes to version 1, one warning per change.
pub fn migrate(root: &mut Value, file: &str) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let map = root.as_mapping_mut().expect("checked mapping");
    match map.get(key("version")) {
        None => {
            map.insert(key("version"), Value::Number(CURRENT_VERSION.into()));
        }
        Some(Value::Number(n))
            if n.as_u64()
                .is_some_and(|v| v >= 1 && v <= u64::from(CURRENT_VERSION)) => {}
        Some(Value::Number(n)) => {
            return Err(ConfigError::new(
                file,
                "version",
                format!(
                    "version {n} is not supported by this gateway (supported: 1..={CURRENT_VERSION})"
                ),
            ));
        }
        Some(_) => return Err(ConfigError::new(file, "version", "must be a number")),
    }
    // Top-level key lists, as standalone key pools write them.
    for legacy in ["api_keys", "keys"] {
        if let Some(list) = map.remove(key(legacy)) {
            let gemini = map
                .entry(key("gemini"))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Some(g) = gemini.as_mapping_mut() {
                if g.contains_key(key("api_keys")) {
                    return Err(ConfigError::new(
                        file,
                        legacy,
                        "both top-level keys and gemini.api_keys are set; keep one",
                    ));
                }
                g.insert(key("api_keys"), list);
                warnings.push(format!("moved top-level `{legacy}` to `gemini.api_keys`"));
            }
        }
    }
    if let Some(Value::Mapping(g)) = map.get_mut(key("gemini")) {
        if let Some(single) = g.remove(key("api_key")) {
            if g.contains_key(key("api_keys")) {
                return Err(ConfigError::new(
                    file,
                    "gemini.api_key",
                    "both gemini.api_key and gemini.api_keys are set; keep one",
                ));
            }
            let list = match single {
                Value::Sequence(s) => Value::Sequence(s),
                other => Value::Sequence(vec![other]),
            };
            g.insert(key("api_keys"), list);
            warnings.push("renamed `gemini.api_key` to `gemini.api_keys`".to_string());
        }
        if let Some(Value::Sequence(keys)) = g.get_mut(key("api_keys")) {
            for (i, entry) in keys.iter_mut().enumerate() {
                if let Value::String(secret) = entry {
                    let mut m = Mapping::new();
                    m.insert(key("id"), key(&format!("key-{}", i + 1)));
                    m.insert(key("key"), Value::String(std::mem::take(secret)));
                    m.insert(key("weight"), Value::Number(1.into()));
                    *entry = Value::Mapping(m);
                    warnings.push(format!(
                        "gemini.api_keys[{i}]: bare key string upgraded to {{id: key-{}, key: ..., weight: 1}}",
                        i + 1
                    ));
                }
            }
        }
    }
    if let Some(Value::Mapping(m)) = map.get_mut(key("metrics"))
        && let Some(port) = m.remove(key("port"))
    {
        if m.contains_key(key("prometheus_port")) {
            return Err(ConfigError::new(
                file,
                "metrics.port",
                "both metrics.port and metrics.prometheus_port are set; keep one",
            ));
        }
        m.insert(key("prometheus_port"), port);
        warnings.push("renamed `metrics.port` to `metrics.prometheus_port`".to_string());
    }
    if let Some(Value::Mapping(s)) = map.get_mut(key("server"))
        && let Some(Value::Bool(b)) = s.get(key("tls")).cloned()
    {
        let mut t = Mapping::new();
        t.insert(key("enabled"), Value::Bool(b));
        s.insert(key("tls"), Value::Mapping(t));
        warnings.push(format!(
            "`server.tls: {b}` upgraded to `server.tls: {{enabled: {b}}}`"
        ));
    }
    Ok(warnings)
}

/// `JWT_SECRET`, `ADMIN_PASSWORD` and `GEMINI_API_KEY` (comma-separated) override the file, and
/// `REDIS_URL` the `cluster.redis` of a file that has a `cluster:` section (a `REDIS_URL` meant for
/// another program does not turn a single instance into a cluster), and `CLUSTER_SECRET` its
/// `cluster.secret`.
pub fn apply_env(config: &mut Config, env: EnvLookup<'_>) {
    if let Some(c) = config.cluster.as_mut() {
        if let Some(url) = env("REDIS_URL") {
            c.redis = url;
        }
        if let Some(s) = env("CLUSTER_SECRET") {
            c.secret = Some(s);
        }
    }
    if let Some(s) = env("JWT_SECRET") {
        config.auth.jwt_secret = Some(s);
    }
    if let Some(s) = env("ADMIN_PASSWORD") {
        config.auth.admin_password = Some(s);
    }
    if let Some(list) = env("GEMINI_API_KEY") {
        let secrets: Vec<String> = list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if secrets.is_empty() {
            return;
        }
        let keys = &mut config.gemini.api_keys;
        if keys.len() == secrets.len() {
            // Same count: keep ids, weights and projects from the file, take the secrets.
            for (k, s) in keys.iter_mut().zip(secrets) {
                k.key = s;
            }
        } else {
            *keys = secrets
                .into_iter()
                .enumerate()
                .map(|(i, key)| ApiKeyConfig {
                    id: format!("env-{}", i + 1),
                    key,
                    weight: 100,
                    project: None,
                    enabled: true,
                    models: Vec::new(),
                    limits: None,
                    not_before: None,
                    expires_at: None,
                })
                .collect();
        }
    }
}

/// The file's migrated shape as YAML text (secrets as written in the file).
pub fn migrated_yaml(loaded: &LoadedConfig) -> String {
    serde_yaml::to_string(&loaded.migrated).unwrap_or_default()
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
