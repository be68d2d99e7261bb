//! `live:`: Live API sessions (WebSockets): how long the gateway waits, and how much it takes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration::ConfigDuration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Longest wait for the client's first message (`setup`) after the upgrade.
    pub setup_timeout: ConfigDuration,
    /// Largest first message (the setup carries the system instruction and tools).
    pub max_setup_bytes: usize,
    /// Largest message either way; a larger one closes the session with 1009.
    pub max_message_bytes: usize,
    /// Longest wait for the upstream to connect and answer the setup, per key tried.
    pub connect_timeout: ConfigDuration,
    /// A session with no message either way for this long is closed (1000).
    pub idle_timeout: ConfigDuration,
    /// The longest a session may last; then it is closed with 1000 and a reason.
    pub max_session: ConfigDuration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            setup_timeout: ConfigDuration(Duration::from_secs(10)),
            max_setup_bytes: 1024 * 1024,
            max_message_bytes: 16 * 1024 * 1024,
            connect_timeout: ConfigDuration(Duration::from_secs(10)),
            idle_timeout: ConfigDuration(Duration::from_secs(600)),
            max_session: ConfigDuration(Duration::from_secs(3600)),
        }
    }
}
