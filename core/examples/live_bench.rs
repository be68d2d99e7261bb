//! Live API relay cost: sequential round trips of one message (echoed by the mock's
//! `mock-live-echo` model) straight to the mock and through the gateway, interleaved in rounds;
//! then the gateway's memory per idle open session. Loopback only, bounded.
//!
//! Usage: live_bench MOCK_PORT GATEWAY_PORT GATEWAY_PID [ROUND_TRIPS] [ROUNDS] [IDLE_SESSIONS]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

const PATH: &str = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

async fn open(port: u16, model: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{port}{PATH}?key=valid-bench");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade");
    let setup = format!(r#"{{"setup":{{"model":"models/{model}"}}}}"#);
    ws.send(Message::text(setup)).await.expect("setup");
    ws.next()
        .await
        .expect("setupComplete")
        .expect("setupComplete");
    ws
}

/// Microseconds of each of `n` round trips.
async fn round_trips(ws: &mut Ws, n: usize) -> Vec<f64> {
    let payload = format!(
        r#"{{"realtimeInput":{{"audio":{{"mimeType":"audio/pcm;rate=16000","data":"{}"}}}}}}"#,
        "A".repeat(640)
    );
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::text(payload.clone())).await.expect("send");
        loop {
            match ws.next().await.expect("answer").expect("answer") {
                Message::Text(_) | Message::Binary(_) => break,
                _ => continue,
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| a.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (mock, gateway, pid) = (arg(1, 0) as u16, arg(2, 0) as u16, arg(3, 0) as u32);
    let (n, rounds, idle) = (arg(4, 2000) as usize, arg(5, 3), arg(6, 500) as usize);
    let mut direct_ws = open(mock, "mock-live-echo").await;
    let mut gw_ws = open(gateway, "mock-live-echo").await;
    round_trips(&mut direct_ws, 200).await;
    round_trips(&mut gw_ws, 200).await;
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.extend(round_trips(&mut direct_ws, n).await);
        via.extend(round_trips(&mut gw_ws, n).await);
    }
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (g50, g99) = (pct(&mut via, 0.5), pct(&mut via, 0.99));
    println!(
        "round trip (one message each way), {} per target:",
        direct.len()
    );
    println!("  direct to the mock   p50 {d50:.1} us  p99 {d99:.1} us");
    println!("  through the gateway  p50 {g50:.1} us  p99 {g99:.1} us");
    println!(
        "  added                p50 {:.1} us  p99 {:.1} us",
        g50 - d50,
        g99 - d99
    );
    drop(gw_ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut open_sessions = Vec::with_capacity(idle);
    for _ in 0..idle {
        open_sessions.push(open(gateway, "mock-live-echo").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!(
        "idle sessions: {idle} open, gateway RSS {before} KiB -> {after} KiB, {:.1} KiB per session",
        (after.saturating_sub(before)) as f64 / idle as f64
    );
}
