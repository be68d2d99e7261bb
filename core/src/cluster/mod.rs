//! Running as one of several instances: the link to Redis that they share. Every operation has a
//! time budget; past it, or with Redis away, the caller goes on with local state and the link
//! counts the failure and reports itself degraded until an operation succeeds again. The
//! connection reconnects by itself with backoff; Redis being away at startup only means the
//! instance starts degraded.
//!
//! Nothing secret goes to Redis in clear: keys by id, tokens by `jti`, callers by scope name; a
//! key added through the admin API travels sealed with the cluster's secret ([`seal`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ClusterConfig;

pub mod envelope;
pub mod events;
pub mod grants;
pub mod heartbeat;
mod limit_scripts;
pub mod limits;
pub mod pins;
pub mod seal;

/// Why a Redis operation gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Failed(String),
    /// Redis failed a moment ago: calls do not wait for it until the link tries again.
    #[error("Redis is unavailable (retried in the background)")]
    Resting,
}

/// How long calls skip Redis after it failed (background work keeps trying).
const REST_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub use crate::config::redis_address;

/// This instance's part in a cluster: the link and the limits shared through it.
pub struct Cluster {
    pub link: Arc<Link>,
    pub limits: Arc<limits::RedisLimits>,
    /// Events to the other instances, once started.
    pub bus: std::sync::OnceLock<events::Bus>,
    /// From `cluster.secret`: without it, keys added through the API cannot be shared.
    pub sealer: Option<Arc<seal::Sealer>>,
}

impl Cluster {
    pub fn start(cfg: &ClusterConfig) -> Result<Cluster, String> {
        let link = Link::start(cfg)?;
        let limits = limits::RedisLimits::start(link.clone());
        Ok(Cluster {
            link,
            limits,
            bus: std::sync::OnceLock::new(),
            sealer: cfg
                .secret
                .as_deref()
                .map(|s| Arc::new(seal::Sealer::new(s))),
        })
    }

    /// The limits as stages see them.
    pub fn limits_handle(&self) -> gemini_proxy_sdk::SharedLimitsHandle {
        gemini_proxy_sdk::SharedLimitsHandle(self.limits.clone())
    }
}

/// The shared link to Redis, with its own small runtime so that its connection outlives any one
/// of the gateway's services.
pub struct Link {
    pub instance_id: String,
    pub prefix: String,
    pub address: String,
    budget: Duration,
    client: redis::Client,
    manager: ConnectionManager,
    /// The connection for calls' paths, made on first use from a call's runtime so that its
    /// driver runs on the same threads as the calls (no hop to the link's thread and back).
    calls: std::sync::OnceLock<ConnectionManager>,
    runtime: tokio::runtime::Handle,
    degraded: AtomicBool,
    /// Until when (unix ms) calls skip Redis after a failure.
    resting_until: AtomicU64,
    errors: AtomicU64,
    /// Live instances at the last heartbeat (0 = none seen yet).
    peers: AtomicU32,
    fallback_instances: u32,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl Link {
    /// Starts the link's runtime and a connection that connects on first use.
    pub fn start(cfg: &ClusterConfig) -> Result<Arc<Link>, String> {
        let address = redis_address(&cfg.redis)?;
        let client = redis::Client::open(cfg.redis.as_str())
            .map_err(|e| format!("not a Redis URL ({:?})", e.kind()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("cluster-link".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cluster runtime");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(std::future::pending::<()>());
            })
            .map_err(|e| e.to_string())?;
        let runtime = rx.recv().map_err(|e| e.to_string())?;
        let manager = {
            let _enter = runtime.enter();
            new_manager(&client)?
        };
        Ok(Arc::new(Link {
            instance_id: cfg.instance_id.clone().unwrap_or_else(default_instance_id),
            prefix: cfg.key_prefix.clone(),
            address,
            budget: cfg.op_timeout.0,
            client,
            manager,
            calls: std::sync::OnceLock::new(),
            runtime,
            degraded: AtomicBool::new(true),
            resting_until: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            peers: AtomicU32::new(0),
            fallback_instances: cfg.fallback_instances.max(1),
            last_error: parking_lot::Mutex::new(Some("not connected yet".into())),
        }))
    }

    fn call_manager(&self) -> ConnectionManager {
        self.calls
            .get_or_init(|| new_manager(&self.client).unwrap_or_else(|_| self.manager.clone()))
            .clone()
    }

    /// A Redis key or channel name under the cluster's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `op` within a time budget: `budget` on the link's own runtime (background work), or
    /// with `None` the link's budget on the caller's runtime (a call's path, which does not
    /// wait at all for a while after Redis failed).
    pub async fn run<T, F, Fut>(&self, budget: Option<Duration>, op: F) -> Result<T, LinkError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        if budget.is_none()
            && crate::util::clock::unix_millis() < self.resting_until.load(Ordering::Relaxed)
        {
            return Err(LinkError::Resting);
        }
        let outcome = match budget {
            // On a call's path: on the caller's own runtime, no hop to the link's thread.
            None => match tokio::time::timeout(self.budget, op(self.call_manager())).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(LinkError::Failed(describe(&e))),
                Err(_) => Err(LinkError::Timeout(self.budget)),
            },
            Some(budget) => {
                let task = self.runtime.spawn(op(self.manager.clone()));
                let abort = task.abort_handle();
                match tokio::time::timeout(budget, task).await {
                    Ok(Ok(Ok(v))) => Ok(v),
                    Ok(Ok(Err(e))) => Err(LinkError::Failed(describe(&e))),
                    Ok(Err(_)) => Err(LinkError::Failed("the operation stopped".into())),
                    Err(_) => {
                        abort.abort();
                        Err(LinkError::Timeout(budget))
                    }
                }
            }
        };
        match &outcome {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        outcome
    }

    fn succeeded(&self) {
        self.resting_until.store(0, Ordering::Relaxed);
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(target: "gemini_proxy::cluster", redis = %self.address, "Redis answers again: shared state in use");
        }
    }

    fn failed(&self, e: &LinkError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.resting_until.store(
            crate::util::clock::unix_millis() + REST_AFTER_FAILURE.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "gemini_proxy::cluster", redis = %self.address, error = %e, "Redis unavailable: going on with local state");
        }
        *self.last_error.lock() = Some(e.to_string());
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// The longest a call waits for Redis (`cluster.op_timeout`).
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Instances to share a limit with while Redis is away.
    pub fn instances(&self) -> u32 {
        match self.peers.load(Ordering::Relaxed) {
            0 => self.fallback_instances,
            n => n,
        }
    }

    pub(crate) fn set_peers(&self, n: u32) {
        self.peers.store(n, Ordering::Relaxed);
    }

    /// Spawns a background task on the link's runtime.
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(f);
    }
}

/// A connection that connects on first use and reconnects with backoff.
fn new_manager(client: &redis::Client) -> Result<ConnectionManager, String> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(3);
    ConnectionManager::new_lazy_with_config(client.clone(), cfg)
        .map_err(|e| format!("Redis connection: {:?}", e.kind()))
}

/// A Lua script, hashed once for the life of the process.
pub type StaticScript = std::sync::LazyLock<redis::Script>;

/// Runs a Lua script (by its hash, loading it when Redis does not know it yet).
pub async fn eval<T: redis::FromRedisValue>(
    mut c: ConnectionManager,
    script: &'static redis::Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> redis::RedisResult<T> {
    let mut inv = script.prepare_invoke();
    for k in &keys {
        inv.key(k);
    }
    for a in &args {
        inv.arg(a);
    }
    inv.invoke_async(&mut c).await
}

/// A Redis error without anything the server or the URL might have put in it beyond its kind
/// and code.
fn describe(e: &redis::RedisError) -> String {
    match e.code() {
        Some(code) => format!("{:?} ({code})", e.kind()),
        None if e.is_timeout() => "timed out".into(),
        None if e.is_connection_refusal() => "connection refused".into(),
        None if e.is_io_error() => "connection lost".into(),
        None => format!("{:?}", e.kind()),
    }
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}-{}", std::process::id())
}
