//! A cap on open client connections per listener, and the HTTP server options that bound how
//! long a slow client may take (see `server.clients`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::config::ClientLimits;

/// Wraps a listener's app: a connection past `max` is closed as soon as it is accepted.
pub struct Capped<A> {
    inner: Arc<A>,
    open: AtomicUsize,
    max: usize,
    refused: prometheus::IntCounter,
}

impl<A> Capped<A> {
    pub fn new(inner: A, max: usize, refused: prometheus::IntCounter) -> Capped<A> {
        Capped {
            inner: Arc::new(inner),
            open: AtomicUsize::new(0),
            max,
            refused,
        }
    }
}

struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = Slot(&self.open);
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.refused.inc();
            drop(slot);
            // Dropping the stream closes the connection.
            return None;
        }
        let reused = self.inner.process_new(stream, shutdown).await;
        drop(slot);
        reused
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// The HTTP server options of a listener under `limits`.
pub fn server_options(limits: &ClientLimits) -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    // Patched pingora-core (vendor/pingora-core/PATCH.md): a deadline for the whole head.
    o.h1_request_head_timeout = Some(limits.head_timeout.0);
    o
}
