//! Inbound fairness: a socket that keeps the broker busy reading cannot delay everyone else.
//!
//! Every socket has a bucket of bytes (`--heavy-bytes-per-sec`, `--heavy-burst-bytes`) that
//! each read draws from. While it holds bytes the socket is *light* and reads at once. Once it
//! is empty the socket is *heavy*: before each read (one read chunk, and the processing of the
//! messages it completes) it takes one of a few permits of a shared gate and gives it back
//! right after, so at most that many heavy sockets are being read and processed at any moment,
//! and a light socket's task waits behind at most that many heavy steps. Heavy sockets take
//! turns in FIFO order; while they wait they do not read, so TCP backpressure holds their
//! senders back.
//!
//! A heavy socket stays heavy while it has data waiting: it is light again only once a read
//! finds nothing left (it is no longer backlogged) and its bucket has refilled. So a flood
//! that never lets up gets its burst and then only its turns at the gate, however long it
//! lasts. The debt a socket can run up is one burst, so a peer that once sent a large burst
//! is back on the fast path at most 2 x burst / rate after it has been read.
//!
//! [`Bucket`] is the per-socket state, sans-IO (time comes in as `now`).

use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// The shared gate heavy sockets take a permit of.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) permits: Arc<Semaphore>,
    /// Bytes per second a socket reads without the gate.
    rate: f64,
    /// Bytes a socket may read at once without the gate.
    burst: f64,
    /// Reads made through the gate.
    pub(crate) throttled: metrics::Counter,
}

impl Gate {
    /// `None` when `rate` is 0 (fairness off).
    pub(crate) fn new(
        rate: u64,
        burst: u64,
        permits: usize,
        throttled: metrics::Counter,
    ) -> Option<Self> {
        (rate > 0).then(|| Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            rate: rate as f64,
            burst: burst.max(1) as f64,
            throttled,
        })
    }

    /// A full bucket for a new socket.
    pub(crate) fn bucket(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.burst,
            at: now,
            heavy: false,
        }
    }
}

/// One socket's standing: see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    /// Bytes it may still read before it is heavy; negative (down to minus one burst) after
    /// reading more.
    tokens: f64,
    at: Instant,
    heavy: bool,
}

impl Bucket {
    fn refill(&mut self, gate: &Gate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * gate.rate).min(gate.burst);
        self.at = now;
    }

    /// Whether the next read must go through the gate.
    pub(crate) fn heavy(&mut self, gate: &Gate, now: Instant) -> bool {
        if !self.heavy {
            self.refill(gate, now);
            self.heavy = self.tokens <= 0.0;
        }
        self.heavy
    }

    /// A read returned `n` bytes.
    pub(crate) fn spent(&mut self, gate: &Gate, n: usize) {
        self.tokens = (self.tokens - n as f64).max(-gate.burst);
    }

    /// A read found nothing waiting: a heavy socket that has caught up and whose bucket has
    /// refilled is light again.
    pub(crate) fn drained(&mut self, gate: &Gate, now: Instant) {
        if self.heavy {
            self.refill(gate, now);
            self.heavy = self.tokens <= 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate() -> Gate {
        Gate::new(1000, 4000, 2, metrics::Counter::noop()).unwrap()
    }

    #[test]
    fn off_at_zero_rate() {
        assert!(Gate::new(0, 4000, 2, metrics::Counter::noop()).is_none());
    }

    #[test]
    fn burst_then_heavy_until_drained_and_refilled() {
        let g = gate();
        #[allow(clippy::disallowed_methods)] // a fixed origin for the test's clock
        let t0 = Instant::now();
        let mut b = g.bucket(t0);
        // The burst is free, and one read may overdraw it.
        for _ in 0..3 {
            assert!(!b.heavy(&g, t0));
            b.spent(&g, 1500);
        }
        assert!(b.heavy(&g, t0));
        // While backlogged it stays heavy however long it takes and whatever the bucket says.
        let later = t0 + Duration::from_secs(60);
        assert!(b.heavy(&g, later));
        b.spent(&g, 1500);
        // Caught up after a long time: the bucket is full (not more), the socket light.
        b.drained(&g, later);
        assert!(!b.heavy(&g, later));
        b.spent(&g, 4000);
        assert!(b.heavy(&g, later));
    }

    #[test]
    fn debt_is_at_most_one_burst_and_is_repaid_before_light() {
        let g = gate();
        #[allow(clippy::disallowed_methods)] // a fixed origin for the test's clock
        let t0 = Instant::now();
        let mut b = g.bucket(t0);
        // 1 MB read (gated or not): the debt stops at one burst, 4000 B.
        for _ in 0..100 {
            b.heavy(&g, t0);
            b.spent(&g, 10_000);
        }
        assert!(b.heavy(&g, t0));
        // Caught up, but 4 s refills only up to zero: still heavy.
        let t4 = t0 + Duration::from_secs(4);
        b.drained(&g, t4);
        assert!(b.heavy(&g, t4));
        let t5 = t0 + Duration::from_millis(4100);
        b.drained(&g, t5);
        assert!(!b.heavy(&g, t5));
    }

    #[test]
    fn steady_light_traffic_is_never_gated() {
        let g = gate();
        #[allow(clippy::disallowed_methods)] // a fixed origin for the test's clock
        let t0 = Instant::now();
        let mut b = g.bucket(t0);
        // 900 B every second against a refill of 1000 B/s.
        for s in 0..100 {
            let now = t0 + Duration::from_secs(s);
            assert!(!b.heavy(&g, now), "second {s}");
            b.spent(&g, 900);
            b.drained(&g, now);
        }
    }
}
