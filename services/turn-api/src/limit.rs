//! A per-IP fixed-window rate limit: `n` requests per clock minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Windows tracked before old ones are swept.
const SWEEP_AT: usize = 65_536;

#[derive(Debug)]
pub(crate) struct PerIp {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl PerIp {
    /// `per_minute == 0` disables the limit.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request at `now` (unix seconds); `Err(seconds to wait)` when over the limit.
    pub(crate) fn check(&self, ip: IpAddr, now: u64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let window = now / 60;
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, (w, _)| *w == window);
        }
        let entry = map.entry(ip).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= self.per_minute {
            return Err(60 - now % 60);
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_per_minute() {
        let l = PerIp::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(l.check(a, 120).is_ok());
        assert!(l.check(a, 121).is_ok());
        assert_eq!(l.check(a, 150), Err(30));
        assert!(l.check(b, 150).is_ok());
        assert!(l.check(a, 180).is_ok(), "next minute");
        assert!(PerIp::new(0).check(a, 0).is_ok());
    }
}
