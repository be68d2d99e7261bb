//! Hot reload: on SIGHUP and when the config file changes, load, validate and build the new
//! runtime off the hot path, then swap it atomically. Calls in flight keep their snapshot; an
//! invalid config leaves the running one in place.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};

use crate::config::{load_file, process_env};
use crate::runtime::{Runtime, Shared};

/// Result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied { generation: u64 },
    Unchanged,
    Failed(String),
}

/// Reloads from the config file. `force` reloads even if the file bytes are unchanged.
pub async fn reload(shared: &Arc<Shared>, force: bool) -> ReloadOutcome {
    reload_as(shared, force, "file", None).await
}

/// Like [`reload`], recording the change in the history as made by `source` (and `by`).
pub async fn reload_as(
    shared: &Arc<Shared>,
    force: bool,
    source: &str,
    by: Option<&str>,
) -> ReloadOutcome {
    let Some(path) = shared.config_path.clone() else {
        return ReloadOutcome::Failed("the gateway was started without a config file".into());
    };
    let _guard = shared.reload_lock.lock().await;
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) => return fail(shared, format!("{}: cannot read: {e}", path.display())),
    };
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    if !force && hash == *shared.source_hash.lock() {
        return ReloadOutcome::Unchanged;
    }
    let s = shared.clone();
    let built = tokio::task::spawn_blocking(move || {
        let loaded = load_file(&path, &process_env).map_err(|e| e.to_string())?;
        if let Some(why) = crate::security::production_refusal(&loaded) {
            return Err(format!("production mode refuses this config {why}"));
        }
        s.pool
            .overlay
            .set_file(crate::runtime::keys_file_of(&loaded));
        let current = s.runtime.load_full();
        let rt = Runtime::build(
            &loaded,
            &s.registry,
            Some(&current),
            &s.pool,
            s.shared_limits(),
        )
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((rt, loaded))
    })
    .await;
    match built {
        Ok(Ok((rt, loaded))) => {
            for w in &loaded.warnings {
                tracing::warn!(migration = %w, "config migrated on reload");
            }
            let generation = rt.generation;
            let v = shared.history.record(
                &String::from_utf8_lossy(&bytes),
                &serde_json::to_value(&loaded.config).unwrap_or_default(),
                source,
                by,
            );
            shared.audit(crate::audit::config_event(&v));
            if let Some(a) = &shared.audit {
                a.set_limits(crate::audit::db::limit_rows(&loaded.config.gemini.api_keys));
            }
            shared.runtime.store(Arc::new(rt));
            shared.adopt_pool();
            *shared.source_hash.lock() = loaded.source_hash;
            shared.publish_gauges();
            shared.metrics.reloads.with_label_values(&["applied"]).inc();
            tracing::info!(generation, "config reloaded");
            ReloadOutcome::Applied { generation }
        }
        Ok(Err(msg)) => {
            // Remember the bad file so the watcher does not retry it every second.
            *shared.source_hash.lock() = hash;
            fail(shared, msg)
        }
        Err(e) => fail(shared, format!("reload task failed: {e}")),
    }
}

/// Rebuilds the runtime from the active config (after an admin change to keys or presets).
/// Calls in flight finish on the old runtime: a removed key drains.
pub async fn rebuild(shared: &Arc<Shared>, why: &str) -> Result<u64, String> {
    let _guard = shared.reload_lock.lock().await;
    let s = shared.clone();
    let built = tokio::task::spawn_blocking(move || {
        let current = s.runtime.load_full();
        Runtime::build(
            &current.source,
            &s.registry,
            Some(&current),
            &s.pool,
            s.shared_limits(),
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("rebuild task failed: {e}"))??;
    let generation = built.generation;
    let preset = built.preset.clone();
    shared.runtime.store(Arc::new(built));
    shared.adopt_pool();
    shared.publish_gauges();
    tracing::info!(generation, why, preset = ?preset, "runtime rebuilt");
    Ok(generation)
}

/// Rebuilds when the preset the schedule calls for differs from the one in force.
pub async fn follow_schedule(shared: &Arc<Shared>) {
    let rt = shared.runtime.load_full();
    if rt.config.preset_schedule.is_empty() {
        return;
    }
    let want = crate::runtime::effective_preset(
        &rt.config,
        shared.pool.manual_preset().as_deref(),
        std::time::SystemTime::now(),
    );
    if want != rt.preset
        && let Err(e) = rebuild(shared, "preset schedule").await
    {
        tracing::error!(error = %e, "preset schedule: rebuild failed");
    }
}

fn fail(shared: &Shared, msg: String) -> ReloadOutcome {
    shared
        .metrics
        .reloads
        .with_label_values(&["rejected"])
        .inc();
    tracing::error!(error = %msg, "config reload rejected; the previous config stays active");
    ReloadOutcome::Failed(msg)
}

/// Background service: watches the file (polling, debounced by content hash) and SIGHUP.
pub struct ReloadService {
    pub shared: Arc<Shared>,
    pub poll: Duration,
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(self.poll);
        let mut last_probe = tokio::time::Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    if self.shared.config_path.is_some() {
                        reload(&self.shared, false).await;
                    }
                    follow_schedule(&self.shared).await;
                    self.shared.report_anomalies(self.shared.anomalies.tick(crate::anomaly::now_ms()));
                    let m = &self.shared.metrics;
                    self.shared.stats.sample(crate::stats::Gauges {
                        in_flight: m.in_flight.get(),
                        streams: m.streams_active.get(),
                        live_sessions: m.live_active.get(),
                    });
                    let every = self.shared.runtime.load().config.pool.probe_interval.0;
                    if !every.is_zero() && last_probe.elapsed() >= every {
                        last_probe = tokio::time::Instant::now();
                        let shared = self.shared.clone();
                        tokio::spawn(async move { crate::probe::probe_dead_keys(&shared).await });
                    }
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading config");
                    reload(&self.shared, true).await;
                }
            }
        }
    }
}

/// Background service: resolves the upstream host until it succeeds (every `retry`), then
/// re-resolves every `every` so long-running gateways follow DNS.
pub struct ResolveService {
    pub shared: Arc<Shared>,
    pub every: Duration,
    pub retry: Duration,
}

#[async_trait]
impl BackgroundService for ResolveService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = tokio::time::Instant::now();
        loop {
            let rt = self.shared.runtime.load_full();
            let unresolved = rt.upstream.addr.load().is_none();
            let wait = if unresolved {
                self.retry
            } else {
                self.every.saturating_sub(last.elapsed())
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let rt = self.shared.runtime.load_full();
            let target = rt.upstream.target.clone();
            last = tokio::time::Instant::now();
            match tokio::task::spawn_blocking(move || crate::runtime::resolve(&target)).await {
                Ok(Ok(addr)) => rt.upstream.addr.store(Arc::new(Some(addr))),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "upstream resolution failed; keeping the last address")
                }
                Err(_) => {}
            }
        }
    }
}
