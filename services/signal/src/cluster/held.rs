//! The messages this node keeps for the registry: those waiting for it to come back (until
//! their queue deadline), and those it accepted lately (kept for their queue lifetime, to hand
//! again if Redis loses its data), with the numbers receivers use to drop repeats.

use super::protocol::Cmd;
use crate::core::Forward;
use crate::metrics::Metrics;
use kibitz_proto::peerjs::MessageType;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Expired offline queues, as the core hears of them: (dst, senders).
pub(crate) type Due = Vec<(String, Vec<String>)>;

/// A message waiting for the registry.
#[derive(Debug)]
struct Waiting {
    fwd: Forward,
    seq: u64,
    deadline: Instant,
}

/// A message the registry accepted.
#[derive(Debug)]
struct Recent {
    /// When it was handed over.
    at: Instant,
    /// Its queue deadline.
    until: Instant,
    seq: u64,
    fwd: Forward,
    /// It went into an offline queue (rather than a node's inbox).
    queued: bool,
}

impl Recent {
    /// As a command, with what is left of its queue lifetime.
    fn again(&self, t: Instant) -> Cmd {
        let mut f = self.fwd.clone();
        f.ttl = self
            .until
            .saturating_duration_since(t)
            .max(Duration::from_millis(1));
        Cmd::Forward(f, self.seq)
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Held {
    /// Bound on each of `waiting` and `recent`.
    cap: usize,
    metrics: Metrics,
    /// Messages for the registry sent while it could not be reached, oldest first.
    waiting: VecDeque<Waiting>,
    /// The earliest deadline in `waiting`.
    waiting_due: Option<Instant>,
    /// Messages handed to the registry within their queue lifetime, oldest first, kept to
    /// hand again if the registry loses its data.
    recent: VecDeque<Recent>,
    /// The last message number given out.
    next_seq: u64,
    /// `waiting`'s length as last added to the pending gauge (which every shard adds to).
    reported: usize,
}

impl Held {
    pub(crate) fn new(cap: usize, metrics: Metrics) -> Self {
        Self {
            cap,
            metrics,
            waiting: VecDeque::new(),
            waiting_due: None,
            recent: VecDeque::new(),
            next_seq: 0,
            reported: 0,
        }
    }

    /// Brings the pending gauge up to date with `waiting`.
    fn gauge(&mut self) {
        let n = self.waiting.len();
        if n > self.reported {
            self.metrics
                .cluster_pending
                .increment((n - self.reported) as f64);
        } else {
            self.metrics
                .cluster_pending
                .decrement((self.reported - n) as f64);
        }
        self.reported = n;
    }

    /// Numbers a message the first time the registry sees it.
    pub(crate) fn number(&mut self, seq: u64) -> u64 {
        if seq != 0 {
            return seq;
        }
        self.next_seq += 1;
        self.next_seq
    }

    /// The earliest deadline of a waiting message.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.waiting_due
    }

    /// Keeps a message until the registry is back (bounded), up to its queue deadline.
    pub(crate) fn wait(&mut self, now: Instant, fwd: Forward, seq: u64) {
        if self.waiting.len() >= self.cap {
            self.metrics.rejected("queue_full");
            return;
        }
        // Its original deadline (a message taken back after a timed-out request keeps it).
        let deadline = fwd.deadline.unwrap_or(now + fwd.ttl);
        self.waiting_due = Some(self.waiting_due.map_or(deadline, |d| d.min(deadline)));
        self.waiting.push_back(Waiting { fwd, seq, deadline });
        self.gauge();
    }

    /// Messages whose deadline passed while the registry was away: one EXPIRE per
    /// (dst, sender), as an offline queue would have produced.
    pub(crate) fn expire_waiting(&mut self, now: Instant) -> Due {
        let mut due = Due::new();
        self.waiting.retain(|w| {
            if w.deadline > now {
                return true;
            }
            if !matches!(w.fwd.kind, MessageType::Leave | MessageType::Expire) {
                add_sender(&mut due, &w.fwd);
            }
            false
        });
        self.waiting_due = self.waiting.iter().map(|w| w.deadline).min();
        self.gauge();
        due
    }

    /// The waiting messages, in order, with what is left of their lifetime: an outage does not
    /// extend a queue's lifetime.
    pub(crate) fn take_waiting(&mut self, t: Instant) -> Vec<Cmd> {
        self.waiting_due = None;
        let waiting = std::mem::take(&mut self.waiting);
        self.gauge();
        waiting
            .into_iter()
            .map(|mut w| {
                w.fwd.ttl = w
                    .deadline
                    .saturating_duration_since(t)
                    .max(Duration::from_millis(1));
                Cmd::Forward(w.fwd, w.seq)
            })
            .collect()
    }

    /// Keeps a message handed to the registry for its queue lifetime (bounded).
    pub(crate) fn remember(&mut self, t: Instant, fwd: Forward, seq: u64, queued: bool) {
        while self.recent.front().is_some_and(|r| r.until <= t) || self.recent.len() >= self.cap {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            at: t,
            until: fwd.deadline.unwrap_or(t + fwd.ttl),
            seq,
            fwd,
            queued,
        });
    }

    /// The registry lost its data: the queued messages still within their lifetime, to hand
    /// again at once, and the EXPIREs due for the others (which the sweep would have sent).
    pub(crate) fn after_loss(&mut self, t: Instant) -> (Vec<Cmd>, Due) {
        let again = self
            .recent
            .iter()
            .filter(|r| r.queued && r.until > t)
            .map(|r| r.again(t))
            .collect();
        let mut due = Due::new();
        for r in self.recent.iter().filter(|r| r.queued && r.until <= t) {
            add_sender(&mut due, &r.fwd);
        }
        self.recent.retain(|r| !r.queued);
        (again, due)
    }

    /// The messages handed over before the data loss at `lost` and still within their
    /// lifetime, to hand again.
    pub(crate) fn replay(&self, now: Instant, lost: Instant) -> Vec<Cmd> {
        self.recent
            .iter()
            .filter(|r| r.at <= lost && r.until > now)
            .map(|r| r.again(now))
            .collect()
    }
}

/// Adds `fwd`'s sender to the EXPIREs due for its destination (once per sender).
fn add_sender(due: &mut Vec<(String, Vec<String>)>, fwd: &Forward) {
    let src = fwd.src.to_string();
    match due.iter_mut().find(|(d, _)| *d == fwd.dst) {
        Some((_, s)) if s.contains(&src) => {}
        Some((_, s)) => s.push(src),
        None => due.push((fwd.dst.clone(), vec![src])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_message_taken_back_keeps_its_original_deadline() {
        #[allow(clippy::disallowed_methods)] // a fixed origin for the test's clock
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let fwd = Forward {
            kind: MessageType::Offer,
            src: Arc::from("a"),
            dst: "b".into(),
            text: "x".into(),
            ttl,
            requeue: false,
            notice: false,
            deadline: Some(t0 + ttl),
        };
        let mut h = Held::new(10, Metrics::new());
        // Its request timed out a second later: it waits, still due at t0 + ttl.
        h.wait(t0 + Duration::from_secs(1), fwd, 1);
        assert_eq!(h.due(), Some(t0 + ttl));
        assert!(
            h.expire_waiting(t0 + ttl - Duration::from_millis(1))
                .is_empty()
        );
        let due = h.expire_waiting(t0 + ttl);
        assert_eq!(due, vec![("b".to_owned(), vec!["a".to_owned()])]);
    }
}
