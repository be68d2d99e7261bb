//! A cap on open client connections per listener, and the HTTP server options that bound how
//! long a slow client may take (see `server.clients`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::Stream;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::server::ShutdownWatch;

use crate::config::ClientLimits;
use crate::util::Cidr;

/// Wraps a listener's app: a connection past `max` open on the listener, or past `per_client`
/// open from its client's address, is closed as soon as it is accepted, before any TLS
/// handshake; the handshake itself must end within `head_timeout`.
pub struct Capped<A> {
    inner: Arc<A>,
    counts: Arc<Counts>,
    handshake_timeout: Duration,
}

/// Open connections, in total and per client address.
struct Counts {
    open: AtomicUsize,
    max: usize,
    /// An entry lives while one of its connections is open, so there are never more than `max`.
    by_client: Mutex<HashMap<IpAddr, usize>>,
    per_client: usize,
    uncapped: Vec<Cidr>,
    refused: prometheus::IntCounter,
    /// Admitted connections still open (`open` also counts ones about to be refused).
    admitted: prometheus::IntGauge,
}

/// A listener's connection metrics.
pub struct ConnectionMetrics {
    pub refused: prometheus::IntCounter,
    pub open: prometheus::IntGauge,
}

impl<A> Capped<A> {
    /// `uncapped`: addresses with no per-client cap (trusted proxies carry many clients).
    pub fn new(
        inner: A,
        limits: &ClientLimits,
        uncapped: Vec<Cidr>,
        metrics: ConnectionMetrics,
    ) -> Capped<A> {
        Capped {
            inner: Arc::new(inner),
            counts: Arc::new(Counts {
                open: AtomicUsize::new(0),
                max: limits.max_connections,
                by_client: Mutex::new(HashMap::new()),
                per_client: limits.max_connections_per_client,
                uncapped,
                refused: metrics.refused,
                admitted: metrics.open,
            }),
            handshake_timeout: limits.head_timeout.0,
        }
    }
}

impl Counts {
    /// Takes a slot for a connection from `peer`, or `None` when a cap is reached.
    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<Slot> {
        let client = peer
            .filter(|ip| !self.uncapped.iter().any(|c| c.contains(*ip)))
            .map(gemini_proxy_sdk::caller_scope);
        let mut slot = Slot {
            counts: self.clone(),
            client,
            admitted: false,
        };
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            return slot.refuse();
        }
        if let Some(ip) = client {
            let mut by_client = self.by_client.lock();
            let n = by_client.entry(ip).or_insert(0);
            if *n >= self.per_client {
                drop(by_client);
                return slot.refuse();
            }
            *n += 1;
        }
        self.admitted.inc();
        slot.admitted = true;
        Some(slot)
    }
}

/// An admitted connection's place in the counts, given back when it closes.
struct Slot {
    counts: Arc<Counts>,
    /// Set once counted for its client.
    client: Option<IpAddr>,
    admitted: bool,
}

impl Slot {
    fn refuse(mut self) -> Option<Self> {
        self.client = None;
        self.counts.refused.inc();
        None
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
        if self.admitted {
            self.counts.admitted.dec();
        }
        if let Some(ip) = self.client {
            let mut by_client = self.counts.by_client.lock();
            if let Some(n) = by_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_client.remove(&ip);
                }
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(stream, shutdown).await
    }

    fn admit_connection(self: &Arc<Self>, peer: Option<&SocketAddr>) -> Option<Box<dyn Send>> {
        let ip = peer.and_then(|a| a.as_inet()).map(|a| a.ip());
        let slot = self.counts.admit(ip)?;
        Some(Box::new(slot))
    }

    fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// How long an HTTP/2 connection may stay without a stream (HTTP/1 keep-alive is 60 s too).
const H2_IDLE: Duration = Duration::from_secs(60);

/// The HTTP server options of a listener under `limits`.
pub fn server_options(limits: &ClientLimits) -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    // Patched pingora-core (vendor/pingora-core/PATCH.md): a deadline for the whole head.
    o.h1_request_head_timeout = Some(limits.head_timeout.0);
    // An HTTP/2 connection with no stream open is closed as an idle HTTP/1 keep-alive is.
    o.h2_idle_timeout = Some(H2_IDLE);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(max: usize, per_client: usize, uncapped: &[&str]) -> Arc<Counts> {
        let limits = ClientLimits {
            max_connections: max,
            max_connections_per_client: per_client,
            ..ClientLimits::default()
        };
        let uncapped = uncapped.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        let metrics = ConnectionMetrics {
            refused: prometheus::IntCounter::new("r", "r").unwrap(),
            open: prometheus::IntGauge::new("o", "o").unwrap(),
        };
        Capped::new((), &limits, uncapped, metrics).counts
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_client_cannot_take_every_slot() {
        let c = capped(10, 3, &["10.9.0.0/16"]);
        let held: Vec<_> = (0..3).map(|_| c.admit(ip("10.0.0.1")).unwrap()).collect();
        assert!(c.admit(ip("10.0.0.1")).is_none());
        // The same host in IPv6 form, or another address of its /64, is the same client.
        assert!(c.admit(ip("::ffff:10.0.0.1")).is_none());
        let v6: Vec<_> = (1..=3)
            .map(|i| c.admit(ip(&format!("2001:db8::{i}"))).unwrap())
            .collect();
        assert!(c.admit(ip("2001:db8::ffff")).is_none());
        // A trusted proxy is not capped per client, only by the listener's total.
        let lb: Vec<_> = (0..4).map(|_| c.admit(ip("10.9.0.1")).unwrap()).collect();
        assert!(c.admit(ip("10.0.0.2")).is_none(), "the listener is full");
        assert_eq!(c.refused.get(), 4);
        // The open gauge counts only what was admitted.
        assert_eq!(c.admitted.get(), 10);
        drop((held, lb));
        assert!(c.admit(ip("10.0.0.1")).is_some());
        drop(v6);
        // Closed connections leave nothing behind.
        assert!(c.by_client.lock().is_empty());
        assert_eq!(c.open.load(Ordering::Acquire), 0);
        assert_eq!(c.admitted.get(), 0);
    }
}
