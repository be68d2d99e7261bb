//! Slow and idle clients cannot hold the gateway: a head sent a byte at a time, a body that
//! trickles, a stream nobody reads, and more open connections than the listener allows.

use std::time::{Duration, Instant};

use gemini_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start(limits: &str) -> Harness {
    Harness::start_with(&[("a", "valid-a", 1)], "", |t| {
        set_server_line(t, None, &format!("clients: {{ {limits} }}"));
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_sent_a_byte_at_a_time_is_cut_off() {
    let h = start("head_timeout: 1s");
    let mut s = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let head = b"GET /v1beta/models HTTP/1.1\r\nhost: x\r\nx-goog-api-key: client-token\r\n\r\n";
    let started = Instant::now();
    let mut closed_at = None;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("the connection was closed before the head was done");
    assert!(closed_at < Duration::from_secs(4), "{closed_at:?}");
    assert!(h.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_closed_and_half_heads_expire() {
    let h = start("max_connections: 20, head_timeout: 2s");
    until_proxy_connections_open(&h, 0).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
        s.write_all(b"GET /v1beta/models HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    until_proxy_connections_open(&h, 20).await;
    // The 21st connection is closed as soon as it is accepted.
    let mut extra = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /v1beta/models HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let (got, closed) = until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(
        closed.is_some() && got.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(proxy_refused_connections(&h).await);
    // The twenty half heads are closed by the head deadline.
    for s in &mut held {
        let (_, closed) = until_closed(s, Duration::from_secs(6)).await;
        assert!(closed.is_some(), "a half head stayed open");
    }
    // And the listener serves again.
    let r = h
        .client
        .get(h.url("/v1beta/models"))
        .header(CLIENT.0, CLIENT.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_from_one_client_are_capped_and_expire() {
    let h = start("max_connections: 100, max_connections_per_client: 10, head_timeout: 2s");
    until_proxy_connections_open(&h, 0).await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(h.gateway.proxy_addr).await.unwrap());
    }
    until_proxy_connections_open(&h, 10).await;
    // The same address cannot open more, though the listener has room.
    let mut extra = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /v1beta/models HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let (got, closed) = until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(
        closed.is_some() && got.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // Connections that never send a byte are closed by the head deadline, not kept a minute.
    for s in &mut silent {
        let (got, closed) = until_closed(s, Duration::from_secs(6)).await;
        assert!(got.is_empty());
        let closed = closed.expect("a silent connection stayed open");
        assert!(closed < Duration::from_secs(5), "{closed:?}");
    }
    let r = h
        .client
        .get(h.url("/v1beta/models"))
        .header(CLIENT.0, CLIENT.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_body_gets_408() {
    let h = start("body_timeout: 1s");
    let mut s = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    s.write_all(
        b"POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: x\r\nx-goog-api-key: client-token\r\ncontent-length: 1000\r\n\r\n{\"contents\":",
    )
    .await
    .unwrap();
    let (got, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(closed.is_some());
    assert!(h.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_nobody_reads_frees_its_key() {
    let h = start("write_timeout: 1s");
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(h.gateway.proxy_addr).await.unwrap();
    let body = gen_body("x");
    s.write_all(
        format!(
            "POST /v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse HTTP/1.1\r\nhost: x\r\nx-goog-api-key: client-token\r\nx-mock-chunks: 10000\r\nx-mock-pad: 16384\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // Stop reading. The gateway's writes block; after write_timeout it gives the call up.
    let live = h.gateway.shared.runtime.load().live[0].clone();
    assert_eq!(live.in_flight(), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while live.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "the key stayed in flight for a client that never reads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(s);
    let r = h.generate("next").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_the_limit_after_100_continue_gets_413_and_closes() {
    let h = Harness::start_with(&[("a", "valid-a", 1)], "", |t| {
        set_server_line(
            t,
            None,
            "max_body_bytes: 100000, clients: { body_timeout: 10s }",
        );
    });
    for expect in ["expect: 100-continue\r\n", ""] {
        let mut s = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
        s.write_all(
            format!("POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: x\r\nx-goog-api-key: client-token\r\ntransfer-encoding: chunked\r\n{expect}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        if !expect.is_empty() {
            let mut cont = [0u8; 64];
            let n = s.read(&mut cont).await.unwrap();
            assert!(String::from_utf8_lossy(&cont[..n]).starts_with("HTTP/1.1 100"));
        }
        // Four times the limit, then the end of the body.
        let chunk = vec![b'a'; 16384];
        for _ in 0..25 {
            let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
            c.extend_from_slice(&chunk);
            c.extend_from_slice(b"\r\n");
            if s.write_all(&c).await.is_err() {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
        let (got, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("HTTP/1.1 413"), "{expect:?}: {text}");
        assert!(
            closed.is_some(),
            "{expect:?}: the connection stayed open after the 413"
        );
    }
    assert!(h.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_chunked_body_gets_400_and_the_connection_closes() {
    let h = start("body_timeout: 5s");
    let mut s = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    // `zz` is no chunk size; a pipelined request follows.
    s.write_all(b"POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: x\r\nx-goog-api-key: client-token\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /v1beta/models HTTP/1.1\r\nhost: x\r\nx-goog-api-key: client-token\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(
        closed.is_some(),
        "the connection stayed open after a framing error"
    );
    assert!(h.mock.requests().is_empty());
}
