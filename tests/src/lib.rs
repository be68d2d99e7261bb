//! Test harness: a mock Gemini and a gateway in-process on loopback ports.

pub mod live;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use gemini_proxy_core::config::{LoadedConfig, load_file, load_str};
use gemini_proxy_core::server::{RunningGateway, ServeOptions};
pub use gemini_proxy_mock::{MockGemini, Recorded};

/// A port that was free a moment ago (Pingora binds by address, so tests pick one), never one
/// this process was given before: the kernel may offer a just-closed port again, and two
/// listeners of one gateway on one port would share a socket.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Gateway config text for a mock at `base_url`.
pub fn config_yaml(
    base_url: &str,
    port: u16,
    admin: u16,
    keys: &[(&str, &str, u32)],
    extra: &str,
) -> String {
    let keys: String = keys
        .iter()
        .map(|(id, key, w)| format!("    - {{ id: {id}, key: {key}, weight: {w} }}\n"))
        .collect();
    format!(
        "server: {{ host: 127.0.0.1, port: {port} }}\nmetrics: {{ enabled: true, prometheus_port: {admin} }}\ngemini:\n  base_url: \"{base_url}\"\n  api_keys:\n{keys}{extra}"
    )
}

pub struct Harness {
    pub mock: MockGemini,
    pub gateway: RunningGateway,
    pub client: reqwest::Client,
    pub config_path: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A mock and a gateway with the default pipeline and the given keys.
    pub fn start(keys: &[(&str, &str, u32)]) -> Harness {
        Self::start_with(keys, "", |_| {})
    }

    /// Like [`start`](Self::start), with extra YAML appended under `gemini:` (indent it) or at the
    /// top level, and a hook to edit the text before it is written.
    pub fn start_with(
        keys: &[(&str, &str, u32)],
        extra: &str,
        edit: impl FnOnce(&mut String),
    ) -> Harness {
        let mock = MockGemini::start().expect("mock");
        Self::start_against(mock, keys, extra, edit)
    }

    pub fn start_against(
        mock: MockGemini,
        keys: &[(&str, &str, u32)],
        extra: &str,
        edit: impl FnOnce(&mut String),
    ) -> Harness {
        Self::start_full(mock, keys, extra, edit, Duration::from_millis(100))
    }

    /// Full control, including how often the config file is polled.
    pub fn start_full(
        mock: MockGemini,
        keys: &[(&str, &str, u32)],
        extra: &str,
        edit: impl FnOnce(&mut String),
        watch: Duration,
    ) -> Harness {
        let registry = gemini_proxy_core::builtin_registry();
        Self::start_embedded(mock, keys, extra, edit, watch, registry)
    }

    /// As an embedding binary runs the gateway: with its own plugin registry.
    pub fn start_embedded(
        mock: MockGemini,
        keys: &[(&str, &str, u32)],
        extra: &str,
        edit: impl FnOnce(&mut String),
        watch: Duration,
        registry: gemini_proxy_sdk::Registry,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = config_yaml(&mock.base_url(), free_port(), free_port(), keys, extra);
        edit(&mut text);
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, &text).expect("write config");
        let loaded = load_file(&path, &|_| None).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let opts = ServeOptions {
            watch_interval: watch,
            upgrade_sock: dir.path().join("upgrade.sock").display().to_string(),
            ..ServeOptions::default()
        };
        let shared = gemini_proxy_core::runtime::Shared::new(&loaded, registry)
            .unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let gateway = RunningGateway::start_shared(shared, opts).expect("gateway starts");
        Harness {
            mock,
            gateway,
            client: client(),
            config_path: Some(path),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.proxy_addr, path)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.admin_addr.expect("admin"), path)
    }

    /// A call presenting `cred`, answered as (status, JSON body or `Null`).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        cred: (&str, &str),
        body: Option<String>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(method, self.url(path))
            .header(cred.0, cred.1);
        if let Some(b) = body {
            req = req.body(b);
        }
        json_of(req.send().await.expect("gateway answers")).await
    }

    /// A POST of `body` to `path` with the client token.
    pub async fn post(&self, path: &str, body: String) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header(CLIENT.0, CLIENT.1)
            .body(body)
            .send()
            .await
            .expect("gateway answers")
    }

    /// `generateContent` on gemini-2.5-flash with the client token.
    pub async fn generate(&self, text: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1beta/models/gemini-2.5-flash:generateContent"))
            .header(CLIENT.0, CLIENT.1)
            .body(gen_body(text))
            .send()
            .await
            .expect("gateway answers")
    }

    pub async fn admin_text(&self, path: &str) -> String {
        let r = self
            .client
            .get(self.admin(path))
            .send()
            .await
            .expect("admin answers");
        r.text().await.expect("admin body")
    }

    /// `POST /auth/login` with `password` on the admin listener.
    pub async fn login(&self, password: &str) -> reqwest::Response {
        self.client
            .post(self.admin("/auth/login"))
            .json(&serde_json::json!({ "password": password }))
            .send()
            .await
            .expect("admin answers")
    }

    /// An admin GET with a Bearer token, as text.
    pub async fn admin_text_with(&self, path: &str, token: &str) -> String {
        let r = self
            .client
            .get(self.admin(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("admin answers");
        r.text().await.expect("admin body")
    }

    /// An admin GET with a Bearer token, as JSON.
    pub async fn admin_json_with(&self, path: &str, token: &str) -> serde_json::Value {
        let r = self
            .client
            .get(self.admin(path))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .expect("admin answers");
        r.json().await.expect("admin JSON")
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.admin_text(path).await).expect("admin JSON")
    }

    /// The pool key the mock saw on the last request.
    pub fn last_key(&self) -> String {
        self.mock
            .requests()
            .last()
            .and_then(|r| r.key.clone())
            .unwrap_or_default()
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.config_path.as_ref().expect("file")).expect("read config")
    }

    /// Waits (up to 5 s) until the active config generation is at least `want`.
    pub async fn wait_generation(&self, want: u64) {
        for _ in 0..100 {
            if self.gateway.shared.runtime.load().generation >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("config generation never reached {want}");
    }

    /// Rewrites the config file (the watcher picks it up).
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path.as_ref().expect("file"), text).expect("write");
    }
}

/// The credential the tests' clients present: a gateway token, never a pool key.
pub const CLIENT: (&str, &str) = ("x-goog-api-key", "client-token");
/// The same token as OpenAI clients send it.
pub const BEARER: (&str, &str) = ("authorization", "Bearer client-token");

/// (status, JSON body or `Null`).
/// Waits until `f` holds, at most `within`; how long it took.
pub async fn within<F, Fut>(within: Duration, what: &str, f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

pub async fn json_of(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Parses inline YAML as a config (no file, no environment).
pub fn loaded(text: &str) -> LoadedConfig {
    load_str(text, "(test)", &|_| None).expect("config")
}

/// A generateContent body with `text`.
pub fn gen_body(text: &str) -> String {
    serde_json::json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}).to_string()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Rewrites the first line of a [`config_yaml`] config (`server: { host, port }`) to
/// `server: { host: 127.0.0.1, port: PORT, EXTRA }`: its own port unless `port` is given.
/// Points a harness config's `gemini.base_url` at `base_url` (several gateways, one upstream).
pub fn set_upstream(text: &mut String, base_url: &str) {
    *text = text
        .lines()
        .map(|l| {
            if l.starts_with("  base_url:") {
                format!("  base_url: \"{base_url}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
}

pub fn set_server_line(text: &mut String, port: Option<u16>, extra: &str) {
    let line = text.lines().next().expect("server line").to_string();
    let port = port.map(|p| p.to_string()).unwrap_or_else(|| {
        line.split("port: ")
            .nth(1)
            .expect("port")
            .trim_end_matches(" }")
            .to_string()
    });
    *text = text.replace(
        &line,
        &format!("server: {{ host: 127.0.0.1, port: {port}, {extra} }}"),
    );
}

/// A rustls client (ring) trusting the certificates in `roots_pem` and offering `alpn`.
pub fn tls_client(
    roots_pem: &[&[u8]],
    alpn: &[&[u8]],
) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.expect("PEM certificate")).expect("root");
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    std::sync::Arc::new(cfg)
}

/// Reads until the peer closes (or `within` passes); returns what came and how long it took
/// to close (`None`: still open).
pub async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> (Vec<u8>, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(started.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

/// Waits (up to 10 s) until the proxy listener has exactly `n` client connections open:
/// the harness's own probe connections close asynchronously.
pub async fn until_proxy_connections_open(h: &Harness, n: usize) {
    let want = format!("client_connections_open{{listener=\"proxy\"}} {n}");
    let started = std::time::Instant::now();
    loop {
        // The metrics call itself is on the admin listener, not counted here.
        let m = h.admin_text("/metrics").await;
        if m.lines().any(|l| l == want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never {n} open proxy connections: {:?}",
            m.lines()
                .filter(|l| l.starts_with("client_connections_open"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `/metrics` counts connections refused on the proxy listener.
pub async fn proxy_refused_connections(h: &Harness) -> bool {
    let m = h.admin_text("/metrics").await;
    m.lines().any(|l| {
        l.starts_with("client_connections_refused_total{listener=\"proxy\"}") && !l.ends_with(" 0")
    })
}

/// One HTTP/1.1 exchange on a fresh connection (closed after it): (status, body). Status 0
/// when nothing answered (refused connection, reset).
pub fn http_once(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\ncontent-type: application/json\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// A real `redis-server` on a free loopback port with a password, for cluster tests; killed when
/// dropped. Needs the Debian package (`apt-get install -y redis-server`; `scripts/test` installs
/// it).
pub struct RedisServer {
    pub port: u16,
    pub password: String,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    /// On a given port (to restart one where the gateways expect it).
    pub fn start_on(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = "Cluster-test-password-0123456789".to_string();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--requirepass", &password])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)");
        let r = RedisServer {
            port,
            password,
            child: Some(child),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// The URL a gateway's `cluster.redis` takes.
    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// `redis-cli` against this server: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-a", &self.password])
            .arg("--no-auth-warning")
            .args(args)
            .output()
            .expect("redis-cli (apt-get install -y redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kills the server at once (a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
