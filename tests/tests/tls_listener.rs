//! TLS on the proxy listener: rustls with h2 by ALPN, TLS 1.2+ only, a certificate from files
//! swapped in when the files change (no restart), a broken replacement refused while the
//! previous certificate keeps serving, expiry in `/health` and `/metrics`.

use std::time::Duration;

use gemini_proxy_tests::*;
use rcgen::{CertificateParams, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;

const KEYS: &[(&str, &str, u32)] = &[("a", "valid-a", 1)];

struct Pem {
    cert: String,
    key: String,
    der: Vec<u8>,
}

fn self_signed(names: &[&str], days: i64) -> Pem {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let cert = p.self_signed(&key).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// Connects with TLS trusting `trust`, offering `alpn`; returns the stream.
async fn connect(
    addr: std::net::SocketAddr,
    trust: &[&Pem],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let roots: Vec<&[u8]> = trust.iter().map(|p| p.cert.as_bytes()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(tls_client(&roots, alpn))
        .connect(ServerName::try_from("gw.test").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

fn served_cert(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_serves_h2_and_swaps_certificates_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = self_signed(&["gw.test"], 30);
    std::fs::write(&cert_path, &first.cert).unwrap();
    std::fs::write(&key_path, &first.key).unwrap();
    let (c, k) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let h = Harness::start_with(KEYS, "", |text| {
        set_server_line(
            text,
            None,
            &format!("tls: {{ enabled: true, cert_path: \"{c}\", key_path: \"{k}\" }}"),
        );
    });
    let addr = h.gateway.proxy_addr;

    // h2 by ALPN, the configured certificate.
    let s = connect(addr, &[&first], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(served_cert(&s), first.der);
    drop(s);

    // A proxied call over TLS (HTTP/1.1).
    let mut s = connect(addr, &[&first], &[b"http/1.1"]).await.unwrap();
    let body = gen_body("over tls");
    s.write_all(
        format!(
            "POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: gw.test\r\nx-goog-api-key: client-token\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.ok();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Echo: over tls"));

    let health = h.admin_json("/health").await;
    assert_eq!(health["tls"]["source"], "file");
    assert_eq!(health["tls"]["names"][0], "gw.test");
    let left = health["tls"]["expires_in_seconds"].as_i64().unwrap();
    assert!(left > 28 * 86_400 && left <= 31 * 86_400, "{left}");

    // New files: served from the next handshake on, no restart.
    let second = self_signed(&["gw.test", "alt.test"], 90);
    std::fs::write(&key_path, &second.key).unwrap();
    std::fs::write(&cert_path, &second.cert).unwrap();
    let mut swapped = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(s) = connect(addr, &[&first, &second], &[b"http/1.1"]).await
            && served_cert(&s) == second.der
        {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "the new certificate was never served");
    let metrics = h.admin_text("/metrics").await;
    let expiry: i64 = metrics
        .lines()
        .find(|l| l.starts_with("certificate_expiry_seconds "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .expect("certificate_expiry_seconds");
    assert!(expiry > 88 * 86_400, "{expiry}");

    // A broken replacement is refused; the last good certificate keeps serving.
    std::fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut refused = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !h.admin_json("/health").await["tls"]["last_error"].is_null() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the broken key was not reported");
    let s = connect(addr, &[&second], &[b"http/1.1"]).await.unwrap();
    assert_eq!(served_cert(&s), second.der);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_can_speak_tls_with_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let pem = self_signed(&["gw.test"], 30);
    std::fs::write(&cert_path, &pem.cert).unwrap();
    std::fs::write(&key_path, &pem.key).unwrap();
    let (c, k) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let h = Harness::start_with(KEYS, "", |text| {
        set_server_line(
            text,
            None,
            &format!("tls: {{ enabled: true, cert_path: \"{c}\", key_path: \"{k}\" }}"),
        );
        *text = text.replace("prometheus_port: ", "tls: true, prometheus_port: ");
    });
    let admin = h.gateway.admin_addr.unwrap();
    let mut s = connect(admin, &[&pem], &[b"http/1.1"]).await.unwrap();
    assert_eq!(served_cert(&s), pem.der);
    s.write_all(b"GET /health HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.ok();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"tls\""), "{resp}");
    // The operator console is served there too, over the same TLS.
    let mut s = connect(admin, &[&pem], &[b"http/1.1"]).await.unwrap();
    s.write_all(b"GET /ui/ HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.ok();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{resp}"
    );
    assert!(resp.contains("app.js"), "{resp}");
    // Plain HTTP is not answered there.
    assert!(h.client.get(h.admin("/health")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_to_the_tls_listener_are_counted_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(&["gw.test"], 30);
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &pem.cert).unwrap();
    std::fs::write(&key_path, &pem.key).unwrap();
    let (c, k) = (cert_path.display(), key_path.display());
    let h = Harness::start_with(KEYS, "", |text| {
        set_server_line(
            text,
            None,
            &format!(
                "tls: {{ enabled: true, cert_path: \"{c}\", key_path: \"{k}\" }}, clients: {{ max_connections_per_client: 3, head_timeout: 2s }}"
            ),
        );
    });
    let addr = h.gateway.proxy_addr;
    until_proxy_connections_open(&h, 0).await;

    // Three connections that never start a TLS handshake hold this client's three slots.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    until_proxy_connections_open(&h, 3).await;
    // A fourth is closed before any handshake.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed = until_closed(&mut extra, Duration::from_millis(800)).await.1;
    assert!(closed.is_some(), "the connection past the cap stayed open");
    // The silent ones are closed once the head deadline passes, not after 60 s.
    for s in &mut silent {
        let closed = until_closed(s, Duration::from_secs(6)).await.1;
        assert!(
            closed.is_some(),
            "a silent TLS connection outlived head_timeout"
        );
    }
    // Their slots are free again.
    let s = connect(addr, &[&pem], &[b"h2"]).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // An h2 connection that never sends its preface is closed within the deadline too.
    let mut s = s;
    let closed = until_closed(&mut s, Duration::from_secs(6)).await.1;
    assert!(
        closed.is_some(),
        "an h2 connection without a preface stayed open"
    );
    assert!(proxy_refused_connections(&h).await);
}
