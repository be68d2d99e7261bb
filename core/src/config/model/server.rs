//! The `server:` section: listeners, client limits, CORS, TLS and ACME.

use serde::{Deserialize, Serialize};

use crate::config::duration::ConfigDuration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsConfig,
    /// Largest request body accepted (buffered calls); larger gets 413.
    pub max_body_bytes: u64,
    /// Largest body of one streamed upload request.
    pub max_upload_bytes: u64,
    /// Worker threads of the proxy service (0 = one per core).
    pub threads: usize,
    /// Idle worker threads take waiting tasks from busy ones (one tokio runtime for all
    /// threads); `false` gives each thread its own runtime with the connections it accepted.
    pub work_stealing: bool,
    /// Seconds to let in-flight calls finish on SIGTERM.
    pub grace_period: ConfigDuration,
    /// Public URL clients use to reach the gateway (used to rewrite `x-goog-upload-url`);
    /// when unset, the request's Host header is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `development` or `production` (production refuses weak security at startup).
    pub mode: ServerMode,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed when finding the client IP.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Largest total size of the request line and headers; larger gets 431.
    pub max_header_bytes: u64,
    /// Browser clients: which origins may call the proxy (none by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    /// How long and how many clients may hold the listeners (proxy and admin alike).
    pub clients: ClientLimits,
}

/// Bounds on what a slow or idle client may hold.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// Open client connections per listener; past it, new ones are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64) per listener; addresses in
    /// `server.trusted_proxies` (a load balancer) are not capped.
    pub max_connections_per_client: usize,
    /// From a new connection's accept (and later from a keep-alive request's first byte) to
    /// the end of the request head (HTTP/1).
    pub head_timeout: ConfigDuration,
    /// A whole buffered request body; for streamed uploads, the longest wait for one chunk.
    pub body_timeout: ConfigDuration,
    /// Slowest average upload rate accepted (bytes a second), checked once the upload has run
    /// for `body_timeout`.
    pub min_body_rate: u64,
    /// Longest a single write toward the client may block (a client that stops reading a
    /// stream loses it, and its upstream connection and key slot are freed).
    pub write_timeout: ConfigDuration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections: 10_000,
            max_connections_per_client: 256,
            head_timeout: ConfigDuration::secs(10),
            body_timeout: ConfigDuration::secs(60),
            min_body_rate: 1024,
            write_timeout: ConfigDuration::secs(30),
        }
    }
}

/// CORS for browser clients.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `*` for any.
    pub allowed_origins: Vec<String>,
    /// Request headers browsers may send (besides the CORS-safelisted ones).
    #[serde(default = "cors_headers")]
    pub allowed_headers: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "cors_max_age")]
    pub max_age: ConfigDuration,
}

fn cors_headers() -> Vec<String> {
    [
        "authorization",
        "content-type",
        "x-goog-api-key",
        "x-goog-api-client",
        "x-goog-upload-protocol",
        "x-goog-upload-command",
        "x-goog-upload-offset",
        "x-goog-upload-header-content-length",
        "x-goog-upload-header-content-type",
        "x-request-id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn cors_max_age() -> ConfigDuration {
    ConfigDuration::secs(600)
}

impl CorsConfig {
    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    pub fn allow(&self, origin: &str) -> Option<String> {
        if self.allowed_origins.iter().any(|o| o == "*") {
            Some("*".into())
        } else {
            self.allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
                .then(|| origin.to_string())
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            tls: TlsConfig::default(),
            max_body_bytes: 20 * 1024 * 1024,
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            threads: 0,
            work_stealing: true,
            grace_period: ConfigDuration::secs(30),
            public_url: None,
            mode: ServerMode::Development,
            trusted_proxies: Vec::new(),
            max_header_bytes: 64 * 1024,
            cors: None,
            clients: ClientLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServerMode {
    #[default]
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub enabled: bool,
    pub domains: Vec<String>,
    /// An e-mail address for the CA (`ops@example.com` or `mailto:...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// `production` (Let's Encrypt, the default), `staging`, or the directory URL of any CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_url: Option<String>,
    /// A PEM root to trust for the directory's own TLS (private CAs, Pebble).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `http-01` (answered on `http_port`) or `tls-alpn-01` (answered on the TLS listener).
    pub challenge: AcmeChallenge,
    /// Plain-HTTP port answering HTTP-01 challenges (other paths redirect to HTTPS).
    pub http_port: u16,
    /// Account, certificate and key (files 0600), relative to the config file's folder.
    pub storage_dir: String,
    /// Renew this long before expiry.
    pub renew_before: ConfigDuration,
    /// First delay after a failure (doubling, at most an hour).
    pub retry_after: ConfigDuration,
}

/// How the CA checks that the gateway controls a domain.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum AcmeChallenge {
    /// A file fetched over plain HTTP on port 80 (`http_port`).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A special certificate in a TLS handshake on the HTTPS port (RFC 8737).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            domains: Vec::new(),
            contact: None,
            directory_url: None,
            ca_file: None,
            challenge: AcmeChallenge::Http01,
            http_port: 80,
            storage_dir: "data/acme".into(),
            renew_before: ConfigDuration::secs(30 * 86_400),
            retry_after: ConfigDuration::secs(60),
        }
    }
}
