//! Broker health and the shared verdict, as a pure state machine: probe results and time in,
//! answers out. The I/O layer probes and calls [`Verdicts::record`]; handlers call
//! [`Verdicts::answer`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Consecutive results needed to flip a host's state: one lost probe changes nothing.
pub const FLIP_AFTER: u32 = 2;

/// One broker's health with hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    up: bool,
    /// Consecutive probe results disagreeing with `up`.
    against: u32,
}

/// Room answers kept at most this long without use.
const ROOM_IDLE: Duration = Duration::from_secs(3600);
/// Room answers kept at most; the oldest half is dropped beyond.
const ROOM_CAP: usize = 100_000;

/// Every configured broker's health, and which broker each room was sent to.
#[derive(Debug)]
pub struct Verdicts {
    hosts: Vec<String>,
    health: Vec<Health>,
    fallback: Option<String>,
    rooms: HashMap<String, (usize, Instant)>,
    /// The hosts are nodes of one broker cluster (one id space): any healthy one will do.
    cluster: bool,
}

/// What `/api/signal` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The broker host, or `None` for "no broker" (clients then use their own default).
    pub host: Option<String>,
    /// Whether a configured broker is healthy (decides the cache lifetime).
    pub healthy: bool,
}

impl Verdicts {
    /// Hosts in preference order; all start up, so a fresh process answers at once and a
    /// dead broker is dropped after [`FLIP_AFTER`] failed probes.
    pub fn new(hosts: Vec<String>, fallback: Option<String>) -> Self {
        let health = vec![
            Health {
                up: true,
                against: 0
            };
            hosts.len()
        ];
        Self {
            hosts,
            health,
            fallback,
            rooms: HashMap::new(),
            cluster: false,
        }
    }

    /// Cluster mode: the hosts share one id space, so a room never needs to stay on one of
    /// them. Room answers spread over the healthy hosts by a hash of the room (the same for
    /// every caller at any instant), and nothing is remembered.
    pub fn with_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// The `n`th healthy host, counting around from a hash of `room`.
    fn spread(&self, room: &str) -> Option<usize> {
        let up: Vec<usize> = (0..self.hosts.len()).filter(|&i| self.is_up(i)).collect();
        if up.is_empty() {
            return None;
        }
        // FNV-1a: stable across processes and releases, unlike the std hasher.
        let h = room.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        up.get((h % up.len() as u64) as usize).copied()
    }

    /// The configured hosts, in preference order.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Records one probe of host `i`. Returns true if its state flipped.
    pub fn record(&mut self, i: usize, ok: bool) -> bool {
        let Some(h) = self.health.get_mut(i) else {
            return false;
        };
        if ok == h.up {
            h.against = 0;
            return false;
        }
        h.against += 1;
        if h.against >= FLIP_AFTER {
            *h = Health { up: ok, against: 0 };
            return true;
        }
        false
    }

    /// Whether host `i` is currently considered up.
    pub fn is_up(&self, i: usize) -> bool {
        self.health.get(i).is_some_and(|h| h.up)
    }

    fn first_up(&self) -> Option<usize> {
        self.health.iter().position(|h| h.up)
    }

    /// The answer for everyone, or for one room: a room keeps the broker it was first sent to
    /// while that broker stays up, so a late joiner meets the others even across a flap.
    pub fn answer(&mut self, room: Option<&str>, now: Instant) -> Answer {
        if self.hosts.is_empty() {
            return Answer {
                host: None,
                healthy: true,
            };
        }
        let chosen = match room {
            None => self.first_up(),
            Some(room) if self.cluster => self.spread(room),
            Some(room) => {
                let sticky = self
                    .rooms
                    .get(room)
                    .map(|&(i, _)| i)
                    .filter(|&i| self.is_up(i));
                let pick = sticky.or_else(|| self.first_up());
                if let Some(i) = pick {
                    self.remember(room, i, now);
                }
                pick
            }
        };
        match chosen {
            Some(i) => Answer {
                host: self.hosts.get(i).cloned(),
                healthy: true,
            },
            None => Answer {
                host: self.fallback.clone(),
                healthy: false,
            },
        }
    }

    fn remember(&mut self, room: &str, i: usize, now: Instant) {
        if self.rooms.len() >= ROOM_CAP && !self.rooms.contains_key(room) {
            self.rooms
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ROOM_IDLE / 2);
        }
        self.rooms.insert(room.to_owned(), (i, now));
    }

    /// Forgets rooms unused for an hour.
    pub fn sweep(&mut self, now: Instant) {
        self.rooms
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ROOM_IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Verdicts {
        Verdicts::new(vec!["a".into(), "b".into()], Some("0.peerjs.com".into()))
    }

    #[test]
    fn one_lost_probe_flips_nothing() {
        let mut v = v();
        let t = crate::now();
        assert!(!v.record(0, false));
        assert_eq!(v.answer(None, t).host.as_deref(), Some("a"));
        assert!(!v.record(0, true), "a success resets the count");
        assert!(!v.record(0, false));
        assert!(v.record(0, false), "two in a row flip");
        assert_eq!(v.answer(None, t).host.as_deref(), Some("b"));
        assert!(!v.record(0, true));
        assert!(v.record(0, true));
        assert_eq!(v.answer(None, t).host.as_deref(), Some("a"));
    }

    #[test]
    fn fallback_when_all_down_and_null_when_unconfigured() {
        let mut v = v();
        let t = crate::now();
        for i in 0..2 {
            v.record(i, false);
            v.record(i, false);
        }
        assert_eq!(
            v.answer(None, t),
            Answer {
                host: Some("0.peerjs.com".into()),
                healthy: false
            }
        );
        let mut none = Verdicts::new(vec![], None);
        assert_eq!(none.answer(None, t).host, None);
    }

    #[test]
    fn rooms_stick_to_their_broker_while_it_is_up() {
        let mut v = v();
        let t = crate::now();
        // a is down: the room is sent to b.
        v.record(0, false);
        v.record(0, false);
        assert_eq!(v.answer(Some("r"), t).host.as_deref(), Some("b"));
        // a recovers: new callers go to a, the room stays on b.
        v.record(0, true);
        v.record(0, true);
        assert_eq!(v.answer(None, t).host.as_deref(), Some("a"));
        assert_eq!(v.answer(Some("r"), t).host.as_deref(), Some("b"));
        assert_eq!(v.answer(Some("fresh"), t).host.as_deref(), Some("a"));
        // b dies: the room moves.
        v.record(1, false);
        v.record(1, false);
        assert_eq!(v.answer(Some("r"), t).host.as_deref(), Some("a"));
        v.sweep(t + ROOM_IDLE);
        assert!(v.rooms.is_empty());
    }

    #[test]
    fn a_cluster_spreads_rooms_over_healthy_nodes_and_moves_them_freely() {
        let now = crate::now();
        let hosts: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let mut v = Verdicts::new(hosts, None).with_cluster(true);
        let rooms: Vec<String> = (0..30).map(|i| format!("room-{i}")).collect();
        let first: Vec<Option<String>> =
            rooms.iter().map(|r| v.answer(Some(r), now).host).collect();
        // Every node gets some rooms; the same room gets the same node.
        for n in ["n1", "n2", "n3"] {
            assert!(first.iter().any(|h| h.as_deref() == Some(n)), "{n} unused");
        }
        assert_eq!(v.answer(Some("room-0"), now).host, first[0]);
        // n2 goes down: its rooms move to healthy nodes, nothing sticks to it.
        v.record(1, false);
        v.record(1, false);
        for r in &rooms {
            let h = v.answer(Some(r), now).host;
            assert!(matches!(h.as_deref(), Some("n1" | "n3")), "{r}: {h:?}");
        }
        assert_eq!(v.answer(None, now).host.as_deref(), Some("n1"));
        assert!(v.rooms.is_empty(), "nothing remembered");
    }
}
