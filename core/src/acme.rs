//! ACME (RFC 8555) certificates with instant-acme: the account is created once and kept, the
//! certificate is obtained with HTTP-01 challenges answered on a plain-HTTP listener (or
//! TLS-ALPN-01 answered in the TLS listener's own handshake), stored
//! with its key (0600), put in the TLS listeners' slot without a restart, and renewed in the
//! background `renew_before` its expiry; failures back off, are logged, audited and shown in
//! `/health`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::Response;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, LetsEncrypt,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{AcmeChallenge, AcmeConfig};
use crate::tls::{CertStore, LoadedCert};

/// Tokens the CA will fetch at `/.well-known/acme-challenge/{token}`, with their answers.
#[derive(Default)]
pub struct Challenges(parking_lot::RwLock<HashMap<String, String>>);

impl Challenges {
    fn answer(&self, token: &str) -> Option<String> {
        self.0.read().get(token).cloned()
    }
}

/// The directory URL for `production`, `staging` or a URL.
pub fn directory_url(cfg: &AcmeConfig) -> String {
    match cfg.directory_url.as_deref() {
        None | Some("") | Some("production") => LetsEncrypt::Production.url().to_string(),
        Some("staging") => LetsEncrypt::Staging.url().to_string(),
        Some(url) => url.to_string(),
    }
}

/// Where the account, certificate and key live.
pub struct Storage {
    pub dir: PathBuf,
}

impl Storage {
    fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        gemini_proxy_sdk::write_private(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The stored certificate, if any and readable.
    pub fn load(&self) -> Option<LoadedCert> {
        crate::tls::load_files(&self.cert(), &self.key()).ok()
    }
}

/// A self-signed certificate for the listeners until the first ACME certificate arrives.
pub fn placeholder(domains: &[String]) -> Result<LoadedCert, String> {
    let c = rcgen::generate_simple_self_signed(domains.to_vec()).map_err(|e| e.to_string())?;
    crate::tls::parse_pem(
        c.cert.pem().as_bytes(),
        c.key_pair.serialize_pem().as_bytes(),
    )
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Obtains a certificate for `cfg.domains`: account (created once, then reused), order,
/// HTTP-01 challenges published in `challenges`, finalisation, download, storage.
pub async fn obtain(
    cfg: &AcmeConfig,
    storage: &Storage,
    challenges: &Challenges,
    store: &CertStore,
) -> Result<LoadedCert, String> {
    let account = account(cfg, storage).await?;
    let ids: Vec<Identifier> = cfg.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut published = Vec::new();
    let result = match publish(cfg, &mut order, challenges, store, &mut published).await {
        Ok(()) => certificate(&mut order, storage).await,
        Err(e) => Err(e),
    };
    // Answers are withdrawn whether the order succeeded or not.
    for p in published {
        match p {
            Published::Token(t) => {
                challenges.0.write().remove(&t);
            }
            Published::Domain(d) => store.set_alpn_challenge(&d, None),
        }
    }
    result
}

/// The ACME account: the stored one, or a new one (stored for next time).
async fn account(cfg: &AcmeConfig, storage: &Storage) -> Result<Account, String> {
    let builder = || -> Result<_, String> {
        match &cfg.ca_file {
            Some(ca) => Account::builder_with_root(ca).map_err(|e| format!("ca_file {ca}: {e}")),
            None => Account::builder().map_err(|e| e.to_string()),
        }
    };
    let url = directory_url(cfg);
    let stored = std::fs::read(storage.account())
        .ok()
        .and_then(|b| serde_json::from_slice::<AccountCredentials>(&b).ok());
    if let Some(creds) = stored {
        return builder()?
            .from_credentials(creds)
            .await
            .map_err(|e| format!("ACME account ({url}): {e}"));
    }
    let contact = cfg.contact.as_ref().map(|c| {
        if c.starts_with("mailto:") {
            c.clone()
        } else {
            format!("mailto:{c}")
        }
    });
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, creds) = builder()?
        .create(&new, url.clone(), None)
        .await
        .map_err(|e| format!("ACME account at {url}: {e}"))?;
    let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    storage.write(&storage.account(), &json)?;
    tracing::info!(target: "gemini_proxy::acme", directory = %url, "ACME account created");
    Ok(account)
}

/// Publishes the answer to each pending authorization's challenge (noted in `published`, so
/// the caller withdraws them) and tells the CA it is ready.
async fn publish(
    cfg: &AcmeConfig,
    order: &mut instant_acme::Order,
    challenges: &Challenges,
    store: &CertStore,
    published: &mut Vec<Published>,
) -> Result<(), String> {
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut authz = a.map_err(|e| format!("authorization: {e}"))?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let (kind, name) = match cfg.challenge {
            AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
            AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        };
        let mut ch = authz
            .challenge(kind.clone())
            .ok_or_else(|| format!("the CA offers no {name} challenge"))?;
        if kind == ChallengeType::Http01 {
            let token = ch.token.clone();
            let answer = ch.key_authorization().as_str().to_string();
            challenges.0.write().insert(token.clone(), answer);
            published.push(Published::Token(token));
        } else {
            let domain = ch.identifier().to_string();
            let cert = alpn_challenge_cert(&domain, ch.key_authorization().digest().as_ref())?;
            store.set_alpn_challenge(&domain, Some(cert));
            published.push(Published::Domain(domain));
        }
        ch.set_ready()
            .await
            .map_err(|e| format!("challenge ready: {e}"))?;
    }
    Ok(())
}

/// Waits for validation, finalizes, and stores the certificate and its key.
async fn certificate(
    order: &mut instant_acme::Order,
    storage: &Storage,
) -> Result<LoadedCert, String> {
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    match order
        .poll_ready(&retry)
        .await
        .map_err(|e| format!("validation: {e}"))?
    {
        OrderStatus::Ready => {}
        other => {
            return Err(format!(
                "the order is {other:?}, not ready (challenge failed?)"
            ));
        }
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    let loaded = crate::tls::parse_pem(chain.as_bytes(), key_pem.as_bytes())?;
    storage.write(&storage.key(), key_pem.as_bytes())?;
    storage.write(&storage.cert(), chain.as_bytes())?;
    Ok(loaded)
}

/// What an order put up for validation (taken down when it ends).
enum Published {
    Token(String),
    Domain(String),
}

/// The self-signed certificate a TLS-ALPN-01 validation handshake must see: the domain as its
/// only name and the key authorization's SHA-256 in the critical `acmeIdentifier` extension.
fn alpn_challenge_cert(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<pingora::tls::sign::CertifiedKey>, String> {
    let mut p =
        rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    // Not through `parse_pem`: its key-match check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate must carry.
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let der = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
        tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(Arc::new(pingora::tls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Keeps a certificate from the CA in `store`: at start (unless a stored one is still good),
/// then before each expiry.
pub struct AcmeService {
    /// Where certificate changes are recorded.
    pub audit: crate::audit::AuditHandle,
    pub store: Arc<CertStore>,
    pub cfg: AcmeConfig,
    pub storage: Storage,
    pub challenges: Arc<Challenges>,
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let renew_before = self.cfg.renew_before.0.as_secs() as i64;
        let retry = self.cfg.retry_after.0.max(Duration::from_secs(1));
        let mut backoff = retry;
        loop {
            let info = self.store.info();
            let until_renewal = info.not_after - renew_before - now_unix();
            let wait = if info.source != "acme" || until_renewal <= 0 {
                match obtain(&self.cfg, &self.storage, &self.challenges, &self.store).await {
                    Ok(c) => {
                        let (names, not_after) = (c.names.clone(), c.not_after);
                        self.store.swap(c, "acme");
                        backoff = retry;
                        tracing::info!(target: "gemini_proxy::acme", ?names, not_after, "certificate obtained and in service");
                        self.audit.record(crate::audit::security_event(
                            "acme certificate obtained",
                            "Success",
                            None,
                            serde_json::json!({"names": names, "not_after": not_after}),
                        ));
                        // Never sooner than `retry_after`, even for a certificate whose whole
                        // life is inside the renewal window.
                        let next = not_after - renew_before - now_unix();
                        Duration::from_secs(next.max(retry.as_secs() as i64) as u64)
                            .min(Duration::from_secs(3600))
                            .max(retry)
                    }
                    Err(e) => {
                        tracing::warn!(target: "gemini_proxy::acme", error = %e, retry_in_s = backoff.as_secs(), "ACME failed; serving the current certificate");
                        self.store.failed(e.clone());
                        self.audit.record(crate::audit::security_event(
                            "acme certificate failed",
                            "Failure",
                            None,
                            serde_json::json!({"error": e}),
                        ));
                        let w = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(3600));
                        w
                    }
                }
            } else {
                Duration::from_secs(until_renewal.clamp(1, 3600) as u64)
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The plain-HTTP listener: answers HTTP-01 challenges, redirects everything else to HTTPS.
pub struct ChallengeApp {
    pub challenges: Arc<Challenges>,
    pub https_port: u16,
}

#[async_trait]
impl ServeHttp for ChallengeApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/")
            && let Some(answer) = self.challenges.answer(token)
        {
            return Response::builder()
                .status(200)
                .header("content-type", "application/octet-stream")
                .header("content-length", answer.len())
                .body(answer.into_bytes())
                .expect("valid response");
        }
        let host = req
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h).to_string())
            .unwrap_or_default();
        let valid_host = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
        if !valid_host {
            return Response::builder()
                .status(404)
                .header("content-length", 0)
                .body(Vec::new())
                .expect("valid response");
        }
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let target = format!(
            "https://{host}{port}{}",
            req.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        Response::builder()
            .status(301)
            .header("location", target)
            .header("content-length", 0)
            .body(Vec::new())
            .expect("valid response")
    }
}
