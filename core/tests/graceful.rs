//! Operations that must not drop a call, with the real binary: SIGTERM drains (no new
//! connections, streams in flight finish, the audit is flushed, exit 0, early when idle);
//! SIGQUIT with a new process started with `--upgrade` hands the listening sockets over while a
//! load runs, and no call fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gemini_proxy_core::mock::MockGemini;

use gemini_proxy_tests::{free_port, http_once as http};

/// A call with the client's credential.
fn call(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut all = vec![("x-goog-api-key", "client-token")];
    all.extend_from_slice(headers);
    http(port, "POST", path, &all, body)
}

const BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, dir: &Path, upgrade: bool) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemini-proxy"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .arg("--upgrade-sock")
        .arg(dir.join("upgrade.sock"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(if upgrade { "new.log" } else { "old.log" })).unwrap(),
        );
    if upgrade {
        cmd.arg("--upgrade");
    }
    Proc(cmd.spawn().unwrap())
}

fn wait_health(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http(admin, "GET", "/health", &[], "").0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gateway did not become healthy");
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits for the process to exit; returns its code.
fn wait_exit(p: &mut Proc, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = p.0.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "no exit within {within:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn setup(audit: &str) -> (MockGemini, tempfile::TempDir, PathBuf, u16, u16) {
    let mock = MockGemini::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ host: 127.0.0.1, port: {port}, grace_period: 20s }}\nmetrics: {{ enabled: true, prometheus_port: {admin} }}\ngemini:\n  base_url: \"{}\"\n  api_keys:\n    - {{ id: k1, key: valid-k1, weight: 1 }}\npool: {{ state_file: \"\", keys_file: \"\" }}\naudit: {audit}\n",
            mock.base_url()
        ),
    )
    .unwrap();
    (mock, dir, config, port, admin)
}

#[test]
fn sigterm_finishes_streams_in_flight_refuses_new_calls_and_exits_early() {
    let (_mock, dir, config, port, admin) = setup("{ flush_interval: 1h }");
    let mut gw = spawn(&config, dir.path(), false);
    wait_health(admin);
    // A stream of 6 events, 300 ms apart (~1.8 s).
    let stream = std::thread::spawn(move || {
        call(
            port,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            &[("x-mock-chunks", "6"), ("x-mock-event-delay-ms", "300")],
            BODY,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    signal(&gw, "-TERM");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        call(
            port,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[],
            BODY
        )
        .0,
        0,
        "a new connection after SIGTERM is refused"
    );
    let (status, body) = stream.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body.matches("data: ").count(),
        6,
        "the whole stream arrived: {body}"
    );
    assert!(body.contains("finishReason"), "{body}");
    let code = wait_exit(&mut gw, Duration::from_secs(15));
    assert_eq!(code, 0);
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "left as soon as drained, not after the 20 s grace period ({:?})",
        sent.elapsed()
    );
    // The audit was flushed at exit (flush_interval is an hour).
    let log = std::fs::read_to_string(dir.path().join("logs/audit.log")).unwrap();
    assert!(log.contains("streamGenerateContent"), "{log}");
}

#[test]
fn sigquit_hands_the_listeners_to_a_new_process_under_load_without_failures() {
    // The default audit: JSON lines and DuckDB (the new process opens the database once the
    // old one has let it go, keeping its rows meanwhile).
    let (_mock, dir, config, port, admin) = setup("{ flush_interval: 200ms }");
    let mut old = spawn(&config, dir.path(), false);
    wait_health(admin);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let failures = failures.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (s, _) = call(
                        port,
                        "/v1beta/models/gemini-2.5-flash:generateContent",
                        &[],
                        BODY,
                    );
                    if s == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(s);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut new = spawn(&config, dir.path(), true);
    std::thread::sleep(Duration::from_millis(500));
    let before = ok.load(Ordering::Relaxed);
    signal(&old, "-QUIT");
    assert_eq!(
        wait_exit(&mut old, Duration::from_secs(25)),
        0,
        "the old process drains and exits 0"
    );
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(
        ok > before + 20,
        "calls went on after the hand-over ({before} -> {ok})"
    );
    assert_eq!(
        failed,
        0,
        "no call failed ({ok} succeeded; statuses {:?})",
        failures.lock().unwrap()
    );
    // The new process serves both listeners.
    wait_health(admin);
    assert_eq!(
        call(
            port,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[],
            BODY
        )
        .0,
        200
    );
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "the new process runs on"
    );
    // Every call of both processes is in the database, through the new process's SQL API.
    let want = ok + 1;
    let mut rows = 0;
    let mut last = String::new();
    for _ in 0..100 {
        let sql = r#"{"sql":"SELECT count(*) AS n FROM requests"}"#;
        let (_, body) = http(admin, "POST", "/api/sql", &[], sql);
        rows = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["rows"][0][0].as_u64())
            .unwrap_or(0) as usize;
        last = body;
        if rows == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rows, want, "every call in the audit database: {last}");
    signal(&new, "-TERM");
    assert_eq!(wait_exit(&mut new, Duration::from_secs(15)), 0);
}

type LiveWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A Live session through the gateway, past its `setupComplete`.
async fn live_session(port: u16) -> LiveWs {
    use futures_util::{SinkExt, StreamExt};
    let url = format!(
        "ws://127.0.0.1:{port}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key=client-token"
    );
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let setup = r#"{"setup":{"model":"models/gemini-live-2.5-flash"}}"#;
    ws.send(setup.into()).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws
}

/// Sends a turn; whether it was answered, and the close code if the session ended instead.
async fn live_turn(ws: &mut LiveWs, text: &str) -> (bool, Option<u16>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let turn = format!(
        r#"{{"clientContent":{{"turns":[{{"role":"user","parts":[{{"text":"{text}"}}]}}],"turnComplete":true}}}}"#
    );
    ws.send(turn.into()).await.unwrap();
    let mut answered = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                return (answered, f.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(Message::Binary(b)))) => {
                let b = String::from_utf8_lossy(&b);
                answered |= b.contains(text);
                if answered && b.contains("turnComplete") {
                    return (true, None);
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no answer nor close: {other:?}"),
        }
    }
}

/// The close code that ends a session that is left waiting.
async fn live_close(ws: &mut LiveWs) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

fn grace(config: &Path, period: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("grace_period: 20s", &format!("grace_period: {period}"));
    std::fs::write(config, text).unwrap();
}

#[test]
fn sigterm_lets_live_sessions_run_then_closes_them_with_1001_and_audits_them() {
    let (_mock, dir, config, port, admin) = setup("{ flush_interval: 1h }");
    grace(&config, "3s");
    let mut gw = spawn(&config, dir.path(), false);
    wait_health(admin);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (answered_after_signal, code, sent) = rt.block_on(async {
        let mut ws = live_session(port).await;
        let sent = Instant::now();
        signal(&gw, "-TERM");
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Still served after the signal.
        let (answered, _) = live_turn(&mut ws, "still here").await;
        (answered, live_close(&mut ws).await, sent)
    });
    assert!(
        answered_after_signal,
        "the session was served after SIGTERM"
    );
    assert_eq!(code, Some(1001));
    let closed_after = sent.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1500),
        "closed at {closed_after:?}, before the grace period's last second"
    );
    assert_eq!(wait_exit(&mut gw, Duration::from_secs(10)), 0);
    let log = std::fs::read_to_string(dir.path().join("logs/audit.log")).unwrap();
    let row = log
        .lines()
        .find(|l| l.contains("BidiGenerateContent"))
        .unwrap_or_else(|| panic!("no Live row: {log}"));
    assert!(row.contains("\"live_close_code\":\"1001\""), "{row}");
    assert!(row.contains("\"live_closed_by\":\"gateway\""), "{row}");
}

#[test]
fn sigquit_hands_new_live_sessions_to_the_new_process_while_the_old_one_finishes_its_own() {
    let (_mock, dir, config, port, admin) = setup("{ flush_interval: 1h }");
    // Longer than the 5 s the old process goes on accepting after the hand-over.
    grace(&config, "8s");
    let mut old = spawn(&config, dir.path(), false);
    wait_health(admin);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut before = live_session(port).await;
        let mut new = spawn(&config, dir.path(), true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        signal(&old, "-QUIT");
        // Pingora's old process accepts on the shared sockets for 5 s after handing them over.
        tokio::time::sleep(Duration::from_millis(5500)).await;
        // A session opened now is the new process's: its admin listener (handed over too)
        // counts one open session, while the old process still serves the one it had.
        let mut after = live_session(port).await;
        let (_, metrics) = http(admin, "GET", "/metrics", &[], "");
        assert!(metrics.contains("live_sessions_active 1"), "{metrics}");
        assert_eq!(live_turn(&mut before, "old process").await, (true, None));
        assert_eq!(live_turn(&mut after, "new process").await, (true, None));
        // The old process closes its session at the end of its grace period and exits.
        assert_eq!(live_close(&mut before).await, Some(1001));
        assert_eq!(wait_exit(&mut old, Duration::from_secs(10)), 0);
        assert_eq!(live_turn(&mut after, "still served").await, (true, None));
        assert!(
            new.0.try_wait().unwrap().is_none(),
            "the new process runs on"
        );
        signal(&new, "-TERM");
        assert_eq!(live_close(&mut after).await, Some(1001));
        assert_eq!(wait_exit(&mut new, Duration::from_secs(10)), 0);
    });
}
