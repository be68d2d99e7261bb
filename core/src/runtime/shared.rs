//! The state that outlives reloads: the active runtime, metrics, stats, the key pool, config
//! history, the audit writer and the served certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use gemini_proxy_sdk::Registry;

use super::{Runtime, keys_file_of};
use crate::config::{ConfigError, LoadedConfig};
use crate::metrics::Metrics;
use crate::stats::Stats;

/// Hash of what should be the same on every instance: the config without what is each
/// instance's own (listeners, admin listener, cluster identity, the files it writes).
fn shared_settings_hash(c: &crate::config::Config) -> String {
    use sha2::Digest;
    // Redacted: the hash travels through Redis and must not be a check value for a secret.
    let mut v = crate::config::redacted(c);
    if let Some(m) = v.as_object_mut() {
        for own in ["server", "metrics", "cluster", "audit"] {
            m.remove(own);
        }
        if let Some(pool) = m.get_mut("pool").and_then(|p| p.as_object_mut()) {
            pool.remove("state_file");
            pool.remove("keys_file");
        }
        if let Some(auth) = m.get_mut("auth").and_then(|p| p.as_object_mut()) {
            auth.remove("revocations_file");
        }
    }
    hex::encode(sha2::Sha256::digest(v.to_string().as_bytes()))
}

/// State that outlives reloads.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub stats: Stats,
    pub anomalies: crate::anomaly::Detector,
    pub started: Instant,
    pub config_path: Option<PathBuf>,
    /// Hash of the config file behind the active runtime.
    pub source_hash: parking_lot::Mutex<[u8; 32]>,
    /// Serialises reloads (file watcher and SIGHUP may race).
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Key health, cooldowns and breakers (survive reloads and, through the state file, restarts).
    pub pool: Arc<crate::pool::KeyPool>,
    /// Every applied config, versioned.
    pub history: crate::config_history::History,
    /// The audit writer (started once; `audit:` changes need a restart).
    pub audit: Option<Arc<crate::audit::AuditSink>>,
    /// The certificate the TLS listeners serve (swapped on renewal), when TLS is on.
    pub tls: Option<Arc<crate::tls::CertStore>>,
    /// The state shared with the other instances (`cluster:`; a change needs a restart).
    pub cluster: Option<crate::cluster::Cluster>,
    /// Set when a shutdown's grace period is about to end: open Live sessions close (1001).
    pub closing_sessions: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    pub fn new(loaded: &LoadedConfig, registry: Registry) -> Result<Arc<Shared>, ConfigError> {
        let pool = Arc::new(crate::pool::KeyPool::default());
        pool.overlay.set_file(keys_file_of(loaded));
        if let Some(state) = (!loaded.config.pool.state_file.is_empty())
            .then(|| loaded.config_dir().join(&loaded.config.pool.state_file))
        {
            // The applied preset lives in the state file: read it before the first build.
            pool.peek_manual_preset(&state);
        }
        let cluster = loaded
            .config
            .cluster
            .as_ref()
            .map(crate::cluster::Cluster::start)
            .transpose()
            .map_err(|e| ConfigError::new(&file_of(loaded), "cluster.redis", e))?;
        let limits = cluster.as_ref().map(crate::cluster::Cluster::limits_handle);
        let runtime = Runtime::build(loaded, &registry, None, &pool, limits)?;
        let audit = crate::audit::AuditSink::start(&loaded.config.audit, &loaded.config_dir())
            .map_err(|e| ConfigError::new(&file_of(loaded), "audit", e.to_string()))?;
        if let Some(a) = &audit {
            a.set_limits(crate::audit::db::limit_rows(&loaded.config.gemini.api_keys));
            if let Some(c) = &cluster {
                a.set_instance(&c.link.instance_id);
            }
        }
        let tls = certificate_store(loaded)?;
        let shared = Shared {
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            metrics: Metrics::new(),
            stats: Stats::default(),
            anomalies: crate::anomaly::Detector::new(loaded.config.anomaly.clone()),
            started: Instant::now(),
            config_path: loaded.path.clone(),
            source_hash: parking_lot::Mutex::new(loaded.source_hash),
            reload_lock: tokio::sync::Mutex::new(()),
            pool,
            audit,
            tls,
            cluster,
            closing_sessions: tokio::sync::watch::Sender::new(false),
            history: crate::config_history::History::new(
                loaded
                    .path
                    .as_deref()
                    .and_then(crate::config_history::History::dir_for),
            ),
        };
        shared.record_startup(loaded);
        shared.adopt_pool();
        shared.pool.spawn_writer(Duration::from_millis(200));
        shared.publish_gauges();
        let shared = Arc::new(shared);
        shared.start_heartbeat();
        Ok(shared)
    }

    /// The cluster's limits for the stages, when the gateway runs as a cluster.
    pub fn shared_limits(&self) -> Option<gemini_proxy_sdk::SharedLimitsHandle> {
        self.cluster
            .as_ref()
            .map(crate::cluster::Cluster::limits_handle)
    }

    /// Tells the other instances this one is alive, and what it runs.
    fn start_heartbeat(self: &Arc<Self>) {
        let Some(c) = &self.cluster else { return };
        let weak = Arc::downgrade(self);
        let started = crate::util::clock::unix_secs(std::time::SystemTime::now())
            .saturating_sub(self.started.elapsed().as_secs());
        // The settings hash changes only with the config: computed once per generation.
        let settings = parking_lot::Mutex::new((0u64, String::new()));
        let secret = c.sealer.as_ref().map(|s| s.fingerprint().to_string());
        crate::cluster::heartbeat::spawn(&c.link, move || {
            let Some(s) = weak.upgrade() else {
                return serde_json::Value::Null;
            };
            let rt = s.runtime.load();
            let mut cached = settings.lock();
            if cached.0 != rt.generation || cached.1.is_empty() {
                *cached = (rt.generation, shared_settings_hash(&rt.config));
            }
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config_sha256": hex::encode(*s.source_hash.lock()),
                "settings_sha256": cached.1,
                "config_generation": rt.generation,
                "started_at": started,
                "in_flight": s.metrics.in_flight.get(),
                "secret_fingerprint": secret,
            })
        });
    }

    /// The startup config into the history and the audit trail, with the security findings.
    fn record_startup(&self, loaded: &LoadedConfig) {
        let text = loaded
            .path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|| crate::config::migrated_yaml(loaded));
        let v = self.history.record(
            &text,
            &serde_json::to_value(&loaded.config).unwrap_or_default(),
            "startup",
            None,
        );
        self.audit(crate::audit::config_event(&v));
        for f in crate::security::assess(loaded).findings {
            let result = if f.severity >= crate::security::Severity::High {
                "Failure"
            } else {
                "Warning"
            };
            self.audit(crate::audit::security_event(
                "startup check",
                result,
                None,
                serde_json::json!({"id": f.id, "severity": f.severity, "cwe": f.cwe, "title": f.title}),
            ));
        }
    }

    /// Logs, audits and counts anomaly transitions.
    pub fn report_anomalies(&self, transitions: Vec<crate::anomaly::Transition>) {
        for t in transitions {
            let signal = t.signal.as_str();
            let model = self.metrics.models.get(&t.model);
            self.metrics
                .anomalies
                .with_label_values(&[signal, t.state])
                .inc();
            self.metrics
                .anomalies_active
                .with_label_values(&[&t.key_id, &model, signal])
                .set(i64::from(t.state == "raised"));
            if t.state == "raised" {
                tracing::warn!(target: "gemini_proxy::anomaly", key_id = %t.key_id, model = %t.model, signal, value = t.value, baseline = t.baseline, "anomaly raised");
            } else {
                tracing::info!(target: "gemini_proxy::anomaly", key_id = %t.key_id, model = %t.model, signal, value = t.value, baseline = t.baseline, "anomaly cleared");
            }
            let e = crate::audit::GenericEvent::new(
                "OpsEvent",
                format!("anomaly {}", t.state),
                if t.state == "raised" {
                    "Warning"
                } else {
                    "Cleared"
                },
            )
            .field("key_id", t.key_id.clone())
            .field("model", t.model.clone())
            .field("signal", signal)
            .field("value", t.value)
            .field("baseline", t.baseline);
            self.audit(crate::audit::AuditEvent::Other(Box::new(e)));
        }
    }

    /// A handle for services that only record audit events.
    pub fn audit_handle(&self) -> crate::audit::AuditHandle {
        crate::audit::AuditHandle(self.audit.clone())
    }

    /// Queues an audit event (never waits).
    pub fn audit(&self, e: crate::audit::AuditEvent) {
        if let Some(a) = &self.audit {
            a.record(e);
        }
    }

    /// Tells the pool about the active runtime's keys and state file.
    pub fn adopt_pool(&self) {
        let rt = self.runtime.load();
        let keys: Vec<crate::pool::PoolKey> = rt
            .keys
            .iter()
            .map(|k| crate::pool::PoolKey {
                id: &k.id,
                project: &k.project,
                fingerprint: k.fingerprint.clone(),
            })
            .collect();
        self.pool.sync_keys(&keys);
        self.pool.set_state_file(rt.pool_state_file.clone());
    }

    pub fn publish_gauges(&self) {
        let rt = self.runtime.load();
        self.metrics.config_generation.set(rt.generation as i64);
        self.metrics.key_enabled.reset();
        for k in &rt.config.gemini.api_keys {
            self.metrics
                .key_enabled
                .with_label_values(&[&k.id])
                .set(i64::from(k.enabled));
        }
    }
}

/// The certificate the TLS listeners start with: the stored ACME certificate (or a self-signed
/// placeholder until the first arrives), or the configured files.
fn certificate_store(
    loaded: &LoadedConfig,
) -> Result<Option<Arc<crate::tls::CertStore>>, ConfigError> {
    let tls_cfg = &loaded.config.server.tls;
    let acme = tls_cfg.acme.as_ref().filter(|a| a.enabled);
    let store = if let (true, Some(a)) = (tls_cfg.enabled, acme) {
        // The stored ACME certificate when there is one; else a self-signed placeholder
        // until the first one arrives.
        let storage = crate::acme::Storage {
            dir: loaded.config_dir().join(&a.storage_dir),
        };
        let (first, source) = match storage.load() {
            Some(c) => (c, "acme"),
            None => (
                crate::acme::placeholder(&a.domains)
                    .map_err(|e| ConfigError::new("(config)", "server.tls.acme", e))?,
                "placeholder",
            ),
        };
        Some(crate::tls::CertStore::new(first, source))
    } else if tls_cfg.enabled {
        let (cert, key) = (
            tls_cfg.cert_path.clone().unwrap_or_default(),
            tls_cfg.key_path.clone().unwrap_or_default(),
        );
        let first = crate::tls::load_files(Path::new(&cert), Path::new(&key))
            .map_err(|e| ConfigError::new(&file_of(loaded), "server.tls", e))?;
        Some(crate::tls::CertStore::new(first, "file"))
    } else {
        None
    };
    Ok(store)
}

/// The config file's name for error messages (empty for an inline config).
fn file_of(loaded: &LoadedConfig) -> String {
    loaded
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
