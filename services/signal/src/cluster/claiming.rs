//! Messages for an id whose claim is in flight on this node wait here for the claim's answer.
//!
//! Why: a route that Redis runs after this node's claim finds the id held here and goes
//! through this node's own inbox, while what the core relays once the claim is answered goes
//! straight to the socket, so a later message overtook earlier ones (the cluster simulation's
//! seeds 1663 and 2131, with no faults). On one node a message for an id that is not open yet
//! is queued and follows OPEN, and so it is here: the core's messages for the id (and those
//! this node's inbox handed it back meanwhile) wait, in order and bounded as an offline queue
//! is, and a granting answer carries them after the ones Redis had queued, so the core sends
//! them with OPEN in one step. Any other answer sends them on to the registry as they came.
//! Only what a queue would keep waits (OFFER, ANSWER, CANDIDATE; never a leave notice).

use super::protocol::Cmd;
use crate::core::{Claim, ConnId, Forward};
use kibitz_proto::peerjs::MessageType;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A message and its number on this node, as in [`Cmd::Forward`].
type Waiting = (Forward, u64);

#[derive(Debug)]
pub(crate) struct Claiming {
    /// The id of each claim in flight, by socket.
    conns: HashMap<ConnId, Arc<str>>,
    /// Per id: its claims in flight here, and the messages waiting for them, oldest first.
    ids: HashMap<Arc<str>, (usize, Vec<Waiting>)>,
    /// Messages that may wait per id (beyond it they go the ordinary way).
    max_per_id: usize,
}

impl Claiming {
    pub(crate) fn new(max_per_id: usize) -> Self {
        Self {
            conns: HashMap::new(),
            ids: HashMap::new(),
            max_per_id,
        }
    }

    /// The core claims `id` for `conn`.
    pub(crate) fn claim(&mut self, conn: ConnId, id: &Arc<str>) {
        if let Some(old) = self.conns.insert(conn, id.clone()) {
            // A socket claims once; should it claim again, the first claim stops counting.
            self.done(&old);
        }
        self.ids.entry(id.clone()).or_default().0 += 1;
    }

    /// Keeps `cmd` if it is a message for an id being claimed here; otherwise gives it back.
    pub(crate) fn hold(&mut self, now: Instant, cmd: Cmd) -> Option<Cmd> {
        let Cmd::Forward(mut f, seq) = cmd else {
            return Some(cmd);
        };
        let queueable = matches!(
            f.kind,
            MessageType::Offer | MessageType::Answer | MessageType::Candidate
        );
        match self.ids.get_mut(f.dst.as_str()) {
            Some((_, waiting)) if queueable && !f.notice && waiting.len() < self.max_per_id => {
                // Its queue lifetime runs from now, as it would in the registry.
                f.deadline.get_or_insert(now + f.ttl);
                waiting.push((f, seq));
                None
            }
            _ => Some(Cmd::Forward(f, seq)),
        }
    }

    /// The registry answered `conn`'s claim: a grant takes the messages that waited for the
    /// id (for the core to send after OPEN); the messages to hand the registry are returned
    /// (after a refusal, once no other claim for the id is in flight).
    pub(crate) fn answered(&mut self, conn: ConnId, claim: &mut Claim) -> Vec<Cmd> {
        let Some(id) = self.conns.remove(&conn) else {
            return Vec::new();
        };
        if let Claim::New { queued, .. } | Claim::Reattach { queued, .. } = claim
            && let Some((_, waiting)) = self.ids.get_mut(&id)
        {
            let src_text = |(f, _): Waiting| (f.src.to_string(), f.text);
            queued.extend(waiting.drain(..).map(src_text));
        }
        self.done(&id)
    }

    /// One claim for `id` is over: once none is left, what waits goes on.
    fn done(&mut self, id: &Arc<str>) -> Vec<Cmd> {
        let Some((claims, _)) = self.ids.get_mut(id) else {
            return Vec::new();
        };
        *claims = claims.saturating_sub(1);
        if *claims > 0 {
            return Vec::new();
        }
        self.ids.remove(id).map_or_else(Vec::new, |(_, waiting)| {
            waiting
                .into_iter()
                .map(|(f, seq)| Cmd::Forward(f, seq))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(dst: &str, text: &str, kind: MessageType) -> Cmd {
        Cmd::Forward(
            Forward {
                kind,
                src: Arc::from("s"),
                dst: dst.to_owned(),
                text: text.to_owned(),
                ttl: Duration::from_secs(5),
                requeue: false,
                notice: false,
                deadline: None,
            },
            0,
        )
    }

    fn texts(cmds: &[Cmd]) -> Vec<&str> {
        cmds.iter()
            .filter_map(|c| match c {
                Cmd::Forward(f, _) => Some(f.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A clock origin, and `max_per_id` bounds with claims for "x" by sockets `conns`.
    fn claiming(max_per_id: usize, conns: &[u64]) -> (Instant, Claiming) {
        #[allow(clippy::disallowed_methods)] // a fixed origin for the test's clock
        let now = Instant::now();
        let mut c = Claiming::new(max_per_id);
        for conn in conns {
            c.claim(ConnId(*conn), &Arc::from("x"));
        }
        (now, c)
    }

    #[test]
    fn a_grant_carries_what_waited_after_what_redis_queued() {
        let (now, mut c) = claiming(2, &[1]);
        assert!(c.hold(now, msg("x", "m1", MessageType::Offer)).is_none());
        // Not for the id, not queueable, or past the bound: on their way.
        assert!(c.hold(now, msg("y", "m2", MessageType::Offer)).is_some());
        assert!(c.hold(now, msg("x", "bye", MessageType::Leave)).is_some());
        assert!(
            c.hold(now, msg("x", "m3", MessageType::Candidate))
                .is_none()
        );
        assert!(c.hold(now, msg("x", "m4", MessageType::Answer)).is_some());
        let mut claim = Claim::New {
            reg: 1,
            queued: vec![("s".into(), "m0".into())],
        };
        assert!(c.answered(ConnId(1), &mut claim).is_empty());
        let Claim::New { queued, .. } = claim else {
            unreachable!()
        };
        let got: Vec<&str> = queued.iter().map(|q| q.1.as_str()).collect();
        assert_eq!(got, ["m0", "m1", "m3"]);
        // Answered: later messages for the id are not held.
        assert!(c.hold(now, msg("x", "m5", MessageType::Offer)).is_some());
    }

    #[test]
    fn a_refusal_sends_on_what_waited_once_no_claim_is_left() {
        let (now, mut c) = claiming(10, &[1, 2]);
        assert!(c.hold(now, msg("x", "m1", MessageType::Offer)).is_none());
        assert!(c.hold(now, msg("x", "m2", MessageType::Offer)).is_none());
        let mut taken = Claim::Taken;
        assert!(c.answered(ConnId(1), &mut taken).is_empty());
        let back = c.answered(ConnId(2), &mut Claim::Limit);
        assert_eq!(texts(&back), ["m1", "m2"]);
        // They keep the deadline they got when they started waiting.
        assert!(
            back.iter()
                .all(|c| matches!(c, Cmd::Forward(f, _) if f.deadline.is_some()))
        );
        // An answer for a socket that never claimed changes nothing.
        assert!(c.answered(ConnId(9), &mut Claim::Taken).is_empty());
    }
}
