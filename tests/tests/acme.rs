//! ACME against Pebble (Debian package `pebble`, started here on loopback with its own TLS
//! certificate): the gateway creates an account once, answers HTTP-01 on its plain-HTTP port,
//! obtains a certificate for `localhost`, serves it (a client trusting Pebble's root completes
//! a handshake and a proxied call), renews it while calls continue, keeps it for the next
//! start, and keeps serving when the directory URL is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_proxy_tests::*;
use rcgen::{CertificateParams, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;

const KEYS: &[(&str, &str, u32)] = &[("a", "valid-a", 1)];

struct Pebble {
    child: Child,
    dir_url: String,
    mgmt: u16,
    ca_pem: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_pebble(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
    let bin = ["/usr/bin/pebble", "/usr/local/bin/pebble"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Pebble (the ACME test server) is needed: apt-get install -y pebble");
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.self_signed(&key).unwrap();
    let (ca_pem, key_pem) = (dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
    std::fs::write(&ca_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let (port, mgmt) = (free_port(), free_port());
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": ca_pem, "privateKey": key_pem,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false
        }})
        .to_string(),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-config")
        .arg(&config)
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("pebble.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pebble did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Pebble {
        child,
        dir_url: format!("https://127.0.0.1:{port}/dir"),
        mgmt,
        ca_pem,
    }
}

fn client_config(roots_pem: &[&[u8]]) -> Arc<tokio_rustls::rustls::ClientConfig> {
    tls_client(roots_pem, &[])
}

/// GET over TLS (HTTP/1.1, connection closed): the body.
async fn get_tls(
    addr: SocketAddr,
    name: &str,
    roots: &[&[u8]],
    path: &str,
) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(client_config(roots))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default())
}

/// A proxied generateContent over a new TLS connection: the status.
async fn post_tls(addr: SocketAddr, root: &[u8]) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(client_config(&[root]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let body = gen_body("during renewal");
    s.write_all(format!("POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: localhost\r\nx-goog-api-key: client-token\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp).await;
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The leaf certificate the gateway serves now (DER), trusting `roots`.
async fn served(addr: SocketAddr, roots: &[&[u8]]) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let s = tokio_rustls::TlsConnector::from(client_config(roots))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(s.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn acme_gateway(
    pebble_url: &str,
    ca: &Path,
    http_port: u16,
    storage: &Path,
    extra: &str,
) -> Harness {
    acme_gateway_on(None, pebble_url, ca, http_port, storage, extra)
}

fn acme_gateway_on(
    fixed_port: Option<u16>,
    pebble_url: &str,
    ca: &Path,
    http_port: u16,
    storage: &Path,
    extra: &str,
) -> Harness {
    let (url, ca, storage) = (
        pebble_url.to_string(),
        ca.display().to_string(),
        storage.display().to_string(),
    );
    let extra = extra.to_string();
    Harness::start_with(KEYS, "", move |text| {
        set_server_line(
            text,
            fixed_port,
            &format!(
                "tls: {{ enabled: true, acme: {{ enabled: true, domains: [localhost], contact: ops@example.com, directory_url: \"{url}\", ca_file: \"{ca}\", http_port: {http_port}, storage_dir: \"{storage}\", retry_after: 1s{extra} }} }}"
            ),
        );
    })
}

async fn wait_for(
    h: &Harness,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..600 {
        let v = h.admin_json("/health").await;
        if f(&v["tls"]) {
            return v["tls"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}: {}", h.admin_json("/health").await["tls"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_pebble_is_served_renewed_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let pebble = start_pebble(dir.path(), http_port, free_port());
    let storage = dir.path().join("acme");
    // renew_before longer than any certificate's life: every certificate is due at once, so
    // the test sees renewals (no sooner than retry_after, 1 s, apart).
    let h = acme_gateway(
        &pebble.dir_url,
        &pebble.ca_pem,
        http_port,
        &storage,
        ", renew_before: 100000d",
    );
    let tls = wait_for(&h, "an ACME certificate", |t| t["source"] == "acme").await;
    assert_eq!(tls["names"][0], "localhost", "{tls}");
    // The root that signs Pebble's certificates, from its management port.
    let mgmt: SocketAddr = format!("127.0.0.1:{}", pebble.mgmt).parse().unwrap();
    let ca = std::fs::read(&pebble.ca_pem).unwrap();
    let root = get_tls(mgmt, "localhost", &[&ca], "/roots/0")
        .await
        .unwrap();
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
    let addr = h.gateway.proxy_addr;
    let first = served(addr, &[root.as_bytes()])
        .await
        .expect("handshake trusting Pebble's root");
    // A proxied call over it.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(client_config(&[root.as_bytes()]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let body = gen_body("over acme");
    s.write_all(format!("POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: localhost\r\nx-goog-api-key: client-token\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("Echo: over acme"),
        "{resp}"
    );

    // Renewal: a new certificate replaces the first while calls go on (each over a new
    // connection, so each handshake sees the slot as it is then).
    let mut renewed = false;
    let mut calls = 0;
    for _ in 0..300 {
        let now = served(addr, &[root.as_bytes()])
            .await
            .expect("no failed handshake during renewal");
        assert_eq!(
            post_tls(addr, root.as_bytes()).await,
            200,
            "call {calls} during renewal"
        );
        calls += 1;
        if now != first {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed, "the certificate was never renewed ({calls} calls)");

    // Stored with its key and the account, owner-only.
    #[cfg(unix)]
    for f in ["account.json", "cert.pem", "key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(storage.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
    }
    let account = std::fs::read(storage.join("account.json")).unwrap();
    drop(h);

    // The next start serves the stored certificate at once and keeps the account.
    let h2 = acme_gateway(&pebble.dir_url, &pebble.ca_pem, http_port, &storage, "");
    let tls = h2.admin_json("/health").await["tls"].clone();
    assert_eq!(tls["source"], "acme", "{tls}");
    assert!(
        served(h2.gateway.proxy_addr, &[root.as_bytes()])
            .await
            .is_ok()
    );
    assert_eq!(
        std::fs::read(storage.join("account.json")).unwrap(),
        account,
        "one account"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_directory_is_reported_and_the_gateway_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let pebble = start_pebble(dir.path(), http_port, free_port());
    let wrong = format!("https://127.0.0.1:{}/nowhere", free_port());
    let h = acme_gateway(
        &wrong,
        &pebble.ca_pem,
        http_port,
        &dir.path().join("acme"),
        "",
    );
    let tls = wait_for(&h, "the failure reported", |t| !t["last_error"].is_null()).await;
    assert_eq!(tls["source"], "placeholder", "{tls}");
    assert!(
        tls["last_error"].as_str().unwrap().contains("nowhere"),
        "{tls}"
    );
    // Still serving (the placeholder certificate), and plain HTTP is redirected.
    let ca = std::fs::read(&pebble.ca_pem).unwrap();
    let err = served(h.gateway.proxy_addr, &[&ca]).await.unwrap_err();
    assert!(
        err.contains("certificate"),
        "a handshake completes; the placeholder is not trusted: {err}"
    );
    let mut c = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"GET /v1beta/models HTTP/1.1\r\nhost: gw.example\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    let _ = c.read_to_string(&mut r);
    assert!(r.starts_with("HTTP/1.1 301"), "{r}");
    assert!(
        r.to_lowercase().contains(&format!(
            "location: https://gw.example:{}/v1beta/models",
            h.gateway.proxy_addr.port()
        )),
        "{r}"
    );
    let m = h.admin_text("/metrics").await;
    assert!(m.contains("certificate_expiry_seconds"), "expiry exported");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_is_answered_in_the_tls_listener_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, gw_port) = (free_port(), free_port());
    // Pebble validates over TLS on the gateway's own HTTPS port; its HTTP-01 port points
    // nowhere, so only the TLS-ALPN-01 answer can succeed.
    let pebble = start_pebble(dir.path(), free_port(), gw_port);
    let h = acme_gateway_on(
        Some(gw_port),
        &pebble.dir_url,
        &pebble.ca_pem,
        http_port,
        &dir.path().join("acme"),
        ", challenge: tls-alpn-01",
    );
    let tls = wait_for(&h, "an ACME certificate through tls-alpn-01", |t| {
        t["source"] == "acme"
    })
    .await;
    assert_eq!(tls["names"][0], "localhost", "{tls}");
    let mgmt: SocketAddr = format!("127.0.0.1:{}", pebble.mgmt).parse().unwrap();
    let ca = std::fs::read(&pebble.ca_pem).unwrap();
    let root = get_tls(mgmt, "localhost", &[&ca], "/roots/0")
        .await
        .unwrap();
    assert!(
        served(h.gateway.proxy_addr, &[root.as_bytes()])
            .await
            .is_ok()
    );
    // Outside a validation, a client that offers only acme-tls/1 gets no certificate.
    let tcp = tokio::net::TcpStream::connect(h.gateway.proxy_addr)
        .await
        .unwrap();
    let r = tokio_rustls::TlsConnector::from(tls_client(&[root.as_bytes()], &[b"acme-tls/1"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(r.is_err(), "no challenge certificate outside an order");
}
