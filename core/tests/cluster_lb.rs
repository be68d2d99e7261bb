//! The cluster of `examples/cluster/` end to end: three real gateway processes with the example
//! configs, a real nginx in front with the example's balancer config, a real `redis-server`.
//! Only the ports (free ones instead of 8080-8083 and 9091-9093), the upstream (the mock) and
//! the Redis time budget (a loaded test machine) are changed. Needs `nginx` and `redis-server` (`apt-get install -y nginx-light
//! redis-server`; `scripts/test` installs them).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gemini_proxy_core::mock::MockGemini;
use gemini_proxy_plugins::auth::{new_claims, sign};
use gemini_proxy_sdk::Role;
use gemini_proxy_tests::{RedisServer, free_port, http_once as http};

const SECRET: &str = "Cluster-example-secret-0123456789-abcdefghij!";
const SEAL: &str = "Cluster-example-seal-0123456789-abcdefghijkl";
const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn wait_for(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "GET", path, &[], "").0 == 0 {
        assert!(Instant::now() < deadline, "nothing answers on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Cluster {
    lb: u16,
    admins: Vec<u16>,
    gateways: Vec<Proc>,
    _nginx: Proc,
    _dir: tempfile::TempDir,
}

fn start(redis: &RedisServer, mock: &MockGemini) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (mut gateways, mut ports, mut admins) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=3 {
        let (port, admin) = (free_port(), free_port());
        let text = example(&format!("gw-{i}.yaml"))
            .replace(&format!("port: 808{i}"), &format!("port: {port}"))
            .replace(
                &format!("prometheus_port: 909{i}"),
                &format!("prometheus_port: {admin}"),
            )
            .replace(
                "gemini: {}",
                &format!("gemini: {{ base_url: \"{}\" }}", mock.base_url()),
            )
            // Exact counts need Redis to answer; a loaded test machine may take over 50 ms.
            .replace(
                "  key_prefix: \"gemini-proxy:\"",
                "  key_prefix: \"gemini-proxy:\"\n  op_timeout: 1s",
            );
        let path = dir.path().join(format!("gw-{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("gw-{i}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gemini-proxy"))
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--upgrade-sock")
            .arg(dir.path().join(format!("gw-{i}.sock")))
            .env("GEMINI_API_KEY", "valid-a,valid-b")
            .env("JWT_SECRET", SECRET)
            .env("REDIS_URL", redis.url())
            .env("CLUSTER_SECRET", SEAL)
            .env("RUST_LOG", "info")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        gateways.push(Proc(child));
        ports.push(port);
        admins.push(admin);
    }
    let lb = free_port();
    let mut conf = example("nginx.conf").replace("127.0.0.1:8080", &format!("127.0.0.1:{lb}"));
    for (i, p) in ports.iter().enumerate() {
        conf = conf.replace(
            &format!("127.0.0.1:808{}", i + 1),
            &format!("127.0.0.1:{p}"),
        );
    }
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let nginx = Command::new("nginx")
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-p")
        .arg(dir.path())
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install -y nginx-light)");
    for a in &admins {
        wait_for(*a, "/health");
    }
    wait_for(lb, "/healthz");
    Cluster {
        lb,
        admins,
        gateways,
        _nginx: Proc(nginx),
        _dir: dir,
    }
}

fn token(sub: &str) -> String {
    let claims = new_claims(sub, Role::User, Duration::from_secs(600), vec![]);
    sign(SECRET, "HS256", None, &claims).unwrap()
}

/// `n` calls at once through the balancer; the statuses.
fn burst(lb: u16, n: usize, token: &str) -> Vec<u16> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let t = token.to_string();
            std::thread::spawn(move || {
                http(lb, "POST", GENERATE, &[("x-goog-api-key", &t)], BODY).0
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn the_example_cluster_behind_nginx_holds_one_limit_and_survives_failures() {
    let mut redis = RedisServer::start();
    let mock = MockGemini::start().unwrap();
    let mut c = start(&redis, &mock);
    // Every instance sees the other two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = sign(
        SECRET,
        "HS256",
        None,
        &new_claims("ops", Role::Admin, Duration::from_secs(600), vec![]),
    )
    .unwrap();
    let bearer = format!("Bearer {admin}");
    loop {
        let (s, body) = http(
            c.admins[0],
            "GET",
            "/api/cluster",
            &[("authorization", &bearer)],
            "",
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if s == 200 && v["instances"].as_array().map_or(0, Vec::len) == 3 {
            assert_eq!(v["config_drift"], false, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{s} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The example's per-user limit (60 a minute) holds across the three instances.
    let statuses = burst(c.lb, 90, &token("alice"));
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (60, 30), "{statuses:?}");
    // Every instance took part.
    for a in &c.admins {
        let (_, m) = http(*a, "GET", "/metrics", &[], "");
        let served: f64 = m
            .lines()
            .filter(|l| l.starts_with("http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(served >= 10.0, "an instance served {served} calls");
    }
    // A key added through one instance's admin API is in the others' pools within a second.
    let (s, body) = http(
        c.admins[0],
        "POST",
        "/api/keys",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        r#"{"id":"added","key":"valid-added"}"#,
    );
    assert_eq!(s, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(1);
    let has_added = || {
        let (_, body) = http(
            c.admins[2],
            "GET",
            "/api/keys",
            &[("authorization", &bearer)],
            "",
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["keys"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["id"] == "added"))
    };
    while !has_added() {
        assert!(
            Instant::now() < deadline,
            "the added key did not reach gw-3"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // An instance dies: the balancer sends its calls to the others.
    drop(c.gateways.remove(1));
    let statuses = burst(c.lb, 30, &token("bob"));
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // Redis dies: calls go on with local state, none fails.
    redis.kill();
    let statuses = burst(c.lb, 30, &token("carol"));
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // No secret in any instance's log.
    for i in [1, 3] {
        let log = std::fs::read_to_string(c._dir.path().join(format!("gw-{i}.log"))).unwrap();
        for secret in [
            "valid-a",
            "valid-b",
            "valid-added",
            SECRET,
            SEAL,
            redis.password.as_str(),
        ] {
            assert!(!log.contains(secret), "gw-{i}.log holds a secret");
        }
    }
}
