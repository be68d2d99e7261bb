//! Live figures of each key (in flight, latency), read without a lock by selection strategies.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Live figures of one key, read without a lock by selection strategies. Shared by every config
/// generation that has the key, so counts survive reloads.
#[derive(Debug, Default)]
pub struct KeyLive {
    pub(super) in_flight: AtomicU32,
    /// f64 bits of the latency EWMA in ms.
    ewma_ms: AtomicU64,
}

impl KeyLive {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn latency_ewma_ms(&self) -> f64 {
        f64::from_bits(self.ewma_ms.load(Ordering::Relaxed))
    }

    pub(super) fn observe_latency(&self, ms: f64) {
        // A lost update under a race only skews one sample of a moving average.
        let old = self.latency_ewma_ms();
        let new = if old == 0.0 { ms } else { 0.8 * old + 0.2 * ms };
        self.ewma_ms.store(new.to_bits(), Ordering::Relaxed);
    }
}
