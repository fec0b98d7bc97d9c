//! `--connect-rate` / `--connect-burst`: a token bucket per client IP for WebSocket upgrades,
//! checked before the upgrade (refusals answer 429 with `Retry-After`), against reconnect
//! storms. Time is passed in.
//!
//! Memory is bounded: past [`MAX_TRACKED`] addresses, buckets that have refilled (the same as
//! no bucket) are swept, at most once a second; if every bucket is still in use, a new
//! address is let through untracked rather than refused, so filling the table cannot lock
//! newcomers out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at once (about 4 MiB of table).
pub(crate) const MAX_TRACKED: usize = 100_000;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    swept: Option<Instant>,
}

/// Per-IP connection rate limit; `rate == 0` disables it.
#[derive(Debug)]
pub(crate) struct ConnectRate {
    rate: f64,
    burst: f64,
    cap: usize,
    table: Mutex<Table>,
}

impl ConnectRate {
    /// `rate` upgrades per second per IP, `burst` at once.
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        Self::with_capacity(rate, burst, MAX_TRACKED)
    }

    fn with_capacity(rate: f64, burst: u32, cap: usize) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            cap,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                swept: None,
            }),
        }
    }

    fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + secs * self.rate).min(self.burst)
    }

    /// Takes a token for `ip` at `now`; `Err(wait)` until the next one when there is none.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = t.buckets.get_mut(&ip) {
            let tokens = self.refilled(*b, now);
            b.at = now;
            if tokens >= 1.0 {
                b.tokens = tokens - 1.0;
                return Ok(());
            }
            b.tokens = tokens;
            return Err(Duration::from_secs_f64((1.0 - tokens) / self.rate));
        }
        if t.buckets.len() >= self.cap {
            if t.swept
                .is_none_or(|s| now.saturating_duration_since(s) >= SWEEP_EVERY)
            {
                t.swept = Some(now);
                t.buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
            }
            if t.buckets.len() >= self.cap {
                return Ok(());
            }
        }
        t.buckets.insert(
            ip,
            Bucket {
                tokens: self.burst - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + n))
    }

    #[test]
    fn a_burst_then_the_rate_per_address() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let l = ConnectRate::new(2.0, 3);
        for _ in 0..3 {
            assert!(l.check(ip(1), t0).is_ok());
        }
        let wait = l.check(ip(1), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(l.check(ip(2), t0).is_ok(), "other addresses are unaffected");
        let later = t0 + Duration::from_millis(500);
        assert!(l.check(ip(1), later).is_ok(), "one token after 1/rate");
        assert!(l.check(ip(1), later).is_err());
        let much_later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check(ip(1), much_later).is_ok(), "refills to the burst");
        }
        assert!(l.check(ip(1), much_later).is_err());
        let off = ConnectRate::new(0.0, 1);
        for _ in 0..10 {
            assert!(off.check(ip(1), t0).is_ok());
        }
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let l = ConnectRate::with_capacity(1.0, 2, 4);
        for n in 0..4 {
            assert!(l.check(ip(n), t0).is_ok());
        }
        // Full of live buckets: a newcomer passes, untracked.
        assert!(l.check(ip(9), t0).is_ok());
        assert_eq!(l.tracked(), 4);
        // A second later every bucket has refilled: the sweep frees them.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.check(ip(9), t1).is_ok());
        assert_eq!(l.tracked(), 1);
        // Tracked addresses are still limited while the table is full.
        let l = ConnectRate::with_capacity(0.001, 1, 1);
        assert!(l.check(ip(1), t0).is_ok());
        assert!(l.check(ip(1), t0).is_err());
        assert!(l.check(ip(2), t0).is_ok());
        assert!(l.check(ip(1), t0).is_err());
    }
}
