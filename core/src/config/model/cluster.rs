//! `cluster:`: several instances sharing limits, key health, revocations and affinity through
//! Redis. Absent: one instance, all state in the process.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration::ConfigDuration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[:password@]host[:port][/db]` or `rediss://` (TLS). `REDIS_URL` overrides it.
    /// Its password is a secret: redacted wherever the config is shown.
    pub redis: String,
    /// This instance's name in `/api/cluster`, audit rows and exports (default: host name and
    /// process id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Prefix of every Redis key and channel the gateway uses (several clusters on one Redis).
    #[serde(default = "d_prefix")]
    pub key_prefix: String,
    /// Longest wait for Redis on a call's path; past it the call goes on with local state.
    #[serde(default = "d_op_timeout")]
    pub op_timeout: ConfigDuration,
    /// Instances assumed when Redis is away and none was seen yet: local limits are the
    /// configured ones divided by the instances last seen (or by this).
    #[serde(default = "d_instances")]
    pub fallback_instances: u32,
    /// Shared by every instance (`CLUSTER_SECRET` overrides): keys added through the admin API
    /// travel to the other instances sealed with it, so Redis never holds a key in clear. Without
    /// it, adding a key through the API is refused while the gateway runs as a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn d_prefix() -> String {
    "gemini-proxy:".into()
}

fn d_op_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(50))
}

fn d_instances() -> u32 {
    1
}

/// Where Redis is, for display: host and port, never the credentials.
pub fn redis_address(url: &str) -> Result<String, String> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| format!("not a Redis URL ({:?})", e.kind()))?;
    match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => Ok(format!("{h}:{p}")),
        redis::ConnectionAddr::TcpTls { host, port, .. } => Ok(format!("{host}:{port} (TLS)")),
        _ => Err("use redis:// or rediss:// (a TCP address)".into()),
    }
}

/// What the security check needs of a Redis URL: host, TLS, whether a password is set.
pub fn redis_endpoint(url: &str) -> Option<(String, bool, bool)> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).ok()?;
    let password = info
        .redis_settings()
        .password()
        .is_some_and(|p| !p.is_empty());
    match info.addr() {
        redis::ConnectionAddr::Tcp(h, _) => Some((h.clone(), false, password)),
        redis::ConnectionAddr::TcpTls { host, .. } => Some((host.clone(), true, password)),
        _ => None,
    }
}
