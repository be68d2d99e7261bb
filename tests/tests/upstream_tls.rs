//! The upstream over HTTPS: certificate verification, SNI, ALPN h2, connection reuse.

use futures_util::StreamExt;
use gemini_proxy_mock::{MockOptions, MockTls};
use gemini_proxy_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

const KEYS: &[(&str, &str, u32)] = &[("pool-a", "valid-pool-key-a", 1)];

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("ca key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).expect("ca cert");
    Ca { cert, key }
}

/// A leaf for `names`, signed by `ca`, as the mock's TLS material.
fn leaf(ca: &Ca, names: &[&str]) -> MockTls {
    let key = KeyPair::generate().expect("leaf key");
    let p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("leaf cert");
    MockTls {
        cert_chain_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
    }
}

/// A TLS mock presenting `tls`, and a gateway trusting `trusted` (PEM), with extra `gemini:` YAML.
fn start(tls: MockTls, trusted: &Ca, extra: &str) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, trusted.cert.pem()).expect("write ca");
    let mock = MockGemini::start_with(MockOptions {
        tls: Some(tls),
        ..MockOptions::default()
    })
    .expect("tls mock");
    assert!(mock.base_url().starts_with("https://localhost:"));
    let extra = format!("  ca_file: \"{}\"\n{extra}", ca_path.display());
    (Harness::start_against(mock, KEYS, &extra, |_| {}), dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_is_verified_sends_sni_speaks_h2_and_reuses_the_connection() {
    let root = ca("test root");
    let (h, _dir) = start(leaf(&root, &["localhost"]), &root, "");
    for i in 0..5 {
        let (s, g) = json_of(h.generate(&format!("tls {i}")).await).await;
        assert_eq!(s, 200, "{g}");
        assert_eq!(
            g["candidates"][0]["content"]["parts"][0]["text"],
            format!("Echo: tls {i}")
        );
    }
    // A stream over the same connection.
    let r = h
        .post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            gen_body("stream"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut body = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        body.extend_from_slice(&c.unwrap());
    }
    assert!(String::from_utf8_lossy(&body).contains("\"finishReason\""));

    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 6);
    for r in &reqs {
        assert_eq!(r.tls_sni.as_deref(), Some("localhost"), "SNI");
        assert_eq!(r.version, "HTTP/2.0", "ALPN h2");
        assert_eq!(r.key.as_deref(), Some("valid-pool-key-a"));
        let authority = format!("localhost:{}", h.mock.addr.port());
        assert_eq!(r.header("host"), Some(authority.as_str()));
    }
    assert_eq!(h.mock.connections(), 1, "one reused h2 connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_over_http1_when_h2_is_off_reuses_connections() {
    let root = ca("test root");
    let (h, _dir) = start(leaf(&root, &["localhost"]), &root, "  http2: false\n");
    for i in 0..4 {
        assert_eq!(h.generate(&format!("h1 {i}")).await.status(), 200);
    }
    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 4);
    assert!(reqs.iter().all(|r| r.version == "HTTP/1.1"));
    assert!(
        reqs.iter()
            .all(|r| r.tls_sni.as_deref() == Some("localhost"))
    );
    assert_eq!(
        h.mock.connections(),
        1,
        "sequential calls reuse one connection"
    );
}

async fn assert_refused(h: &Harness) {
    let r = h.generate("must not arrive").await;
    assert_eq!(r.status(), 502);
    assert!(r.headers().contains_key("x-request-id"));
    let (_, body) = json_of(r).await;
    assert_eq!(body["error"]["code"], 502);
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(!msg.contains("valid-pool-key-a"), "{msg}");
    assert!(msg.contains("TLS with the upstream failed"), "{msg}");
    assert!(h.mock.requests().is_empty(), "nothing reached the mock");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_certificate_from_an_untrusted_ca_is_refused() {
    let root = ca("test root");
    let stranger = ca("someone else");
    let (h, _dir) = start(leaf(&root, &["localhost"]), &stranger, "");
    assert_refused(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_certificate_for_another_name_is_refused() {
    let root = ca("test root");
    let (h, _dir) = start(leaf(&root, &["gemini.example"]), &root, "");
    assert_refused(&h).await;
}
