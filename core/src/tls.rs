//! TLS termination on the proxy (and optionally admin) listener: rustls with TLS 1.3 and 1.2
//! only (rustls offers only AEAD suites with forward secrecy), HTTP/2 by ALPN, and a
//! certificate held in a swappable slot, so a renewed certificate (files changed on disk, or
//! an ACME renewal) is served from the next handshake without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use serde::Serialize;

/// What is being served, for `/health` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// `file` or `acme`.
    pub source: &'static str,
    /// Subject alternative names of the leaf certificate.
    pub names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// When this certificate was put in service.
    pub loaded_at: u64,
    /// The last failed attempt to replace it, if any since.
    pub last_error: Option<String>,
}

/// ALPN protocol of ACME TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate slot the listeners read on every handshake.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    info: parking_lot::Mutex<CertInfo>,
    /// TLS-ALPN-01 validation certificates by domain, while an order is pending.
    alpn_challenges: parking_lot::RwLock<std::collections::HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("info", &*self.info.lock())
            .finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validation {
            // Only the CA's validation handshake gets the challenge certificate (and nothing
            // else is served over `acme-tls/1`).
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.alpn_challenges.read().get(&name).cloned();
        }
        Some(self.current.load_full())
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A parsed certificate chain and key, checked to belong together.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub not_after: i64,
}

/// Parses PEM text of a chain and a private key.
pub fn parse_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let Some(leaf) = certs.first() else {
        return Err("no certificate in the PEM".into());
    };
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("key PEM: {e}"))?
        .ok_or("no private key in the PEM")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("certificate: {e}"))?;
    let not_after = parsed.validity().not_after.timestamp();
    let names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                        16 => {
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                                .to_string()
                        }
                        _ => String::new(),
                    },
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(certs, key, &provider)
        .map_err(|e| format!("certificate and key do not match or are unsupported: {e}"))?;
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
        not_after,
    })
}

/// Reads and parses a chain and key from files.
pub fn load_files(cert: &Path, key: &Path) -> Result<LoadedCert, String> {
    let c = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let k = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    parse_pem(&c, &k)
}

impl CertStore {
    /// A slot serving `first`.
    pub fn new(first: LoadedCert, source: &'static str) -> Arc<CertStore> {
        Arc::new(CertStore {
            alpn_challenges: Default::default(),
            current: ArcSwap::new(first.key),
            info: parking_lot::Mutex::new(CertInfo {
                source,
                names: first.names,
                not_after: first.not_after,
                loaded_at: now_unix(),
                last_error: None,
            }),
        })
    }

    /// Puts a new certificate in service (next handshake on).
    pub fn swap(&self, next: LoadedCert, source: &'static str) {
        self.current.store(next.key);
        *self.info.lock() = CertInfo {
            source,
            names: next.names,
            not_after: next.not_after,
            loaded_at: now_unix(),
            last_error: None,
        };
    }

    /// Serves `cert` to TLS-ALPN-01 validation handshakes for `domain` (`None` removes it).
    pub fn set_alpn_challenge(&self, domain: &str, cert: Option<Arc<CertifiedKey>>) {
        let mut map = self.alpn_challenges.write();
        match cert {
            Some(c) => map.insert(domain.to_ascii_lowercase(), c),
            None => map.remove(&domain.to_ascii_lowercase()),
        };
    }

    /// Listener settings serving this slot: Pingora's rustls builder (TLS 1.2 and 1.3) with
    /// this store as the certificate resolver; ALPN is the caller's to set.
    pub fn listener_settings(
        self: &Arc<Self>,
    ) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(self.clone());
        Ok(settings)
    }

    /// Records a failed replacement (the current certificate stays).
    pub fn failed(&self, error: String) {
        self.info.lock().last_error = Some(error);
    }

    /// What is being served.
    pub fn info(&self) -> CertInfo {
        self.info.lock().clone()
    }

    /// Seconds until the served certificate expires (negative once expired).
    pub fn expires_in(&self) -> i64 {
        self.info.lock().not_after - now_unix() as i64
    }
}

/// Reloads the certificate files when they change (checked every `every`).
pub struct CertFileWatch {
    /// Where certificate changes are recorded.
    pub audit: crate::audit::AuditHandle,
    pub store: Arc<CertStore>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub every: Duration,
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[async_trait]
impl BackgroundService for CertFileWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = (stamp(&self.cert), stamp(&self.key));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            let now = (stamp(&self.cert), stamp(&self.key));
            if now == last {
                continue;
            }
            last = now;
            // Both files may be mid-replacement: give the writer a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (cert, key) = (self.cert.clone(), self.key.clone());
            let loaded = tokio::task::spawn_blocking(move || load_files(&cert, &key))
                .await
                .unwrap_or_else(|e| Err(format!("loader panicked: {e}")));
            match loaded {
                Ok(c) => {
                    let (names, not_after) = (c.names.clone(), c.not_after);
                    self.store.swap(c, "file");
                    tracing::info!(target: "gemini_proxy::tls", ?names, not_after, "certificate reloaded from files");
                    self.audit.record(crate::audit::security_event(
                        "tls certificate reloaded from files",
                        "Success",
                        None,
                        serde_json::json!({"names": names, "not_after": not_after}),
                    ));
                }
                Err(e) => {
                    tracing::warn!(target: "gemini_proxy::tls", error = %e, "new certificate files refused; serving the previous certificate");
                    self.store.failed(e.clone());
                    self.audit.record(crate::audit::security_event(
                        "tls certificate reload failed",
                        "Failure",
                        None,
                        serde_json::json!({"error": e}),
                    ));
                }
            }
        }
    }
}
