//! Cluster mode: the handlers for what the shared registry tells this node. The core still
//! owns this node's sockets, peer table, liveness and rate limits; the id space, offline
//! queues and routing to other nodes live in the registry, which the I/O layer drives. The
//! core asks with [`Output::Claim`], [`Output::Release`] and [`Output::Forward`] and learns
//! the answers here.

use super::api::{Claim, CloseReason, ConnId, Forward, Output};
use super::broker::{Broker, Pending};
use kibitz_proto::peerjs::{self, MessageType};
use std::sync::Arc;
use std::time::Instant;

impl Broker {
    /// Cluster mode: this node's live registrations (id, token, registry number), for
    /// re-asserting them after a registry outage.
    pub fn registrations(&self) -> Vec<(Arc<str>, String, u64)> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.moved)
            .map(|(id, p)| (id.clone(), p.token.clone(), p.reg))
            .collect()
    }

    /// Cluster mode: the registry's answer to [`Output::Claim`] for `conn`.
    pub fn handle_claim(&mut self, now: Instant, conn: ConnId, claim: Claim) {
        self.saw(now);
        let Some(pending) = self.conns.get_mut(&conn).and_then(|c| c.pending.take()) else {
            // The socket closed while its claim was in flight: undo what the registry did.
            if let Claim::New { reg, queued } | Claim::Reattach { reg, queued } = claim {
                self.abandon_claim(conn, reg, queued);
            }
            return;
        };
        let Pending { id, token, early } = *pending;
        let queued = match claim {
            Claim::Taken => return self.reject(conn, peerjs::ID_TAKEN.to_owned(), "id_taken"),
            Claim::Limit => {
                return self.reject(
                    conn,
                    peerjs::error_frame(peerjs::MSG_LIMIT),
                    "concurrent_limit",
                );
            }
            Claim::Unavailable(msg) => {
                return self.reject(conn, peerjs::error_frame(msg), "registry_unavailable");
            }
            Claim::New { reg, queued } => {
                self.register(now, conn, None, &id, token, reg);
                self.send(conn, peerjs::OPEN.to_owned());
                queued
            }
            Claim::Reattach { reg, queued } => {
                let here = self
                    .peers
                    .get(&id)
                    .filter(|p| !p.moved && p.token == token)
                    .map(|p| p.conn);
                match here {
                    // Another socket of this node re-attached first.
                    Some(old) => self.reattach_here(now, conn, None, &id, old),
                    None => {
                        self.register(now, conn, None, &id, token, reg);
                        if self.cfg.takeover {
                            self.send(conn, peerjs::OPEN.to_owned());
                        }
                    }
                }
                queued
            }
        };
        for (_, text) in queued {
            self.send(conn, text);
        }
        for text in early {
            self.handle_message(now, conn, &text);
        }
    }

    /// A claim answered after its socket closed: release it and put its messages back.
    fn abandon_claim(&mut self, conn: ConnId, reg: u64, queued: Vec<(String, String)>) {
        let Some(id) = self.orphans.remove(&conn) else {
            return;
        };
        self.out.push_back(Output::Release {
            id: id.clone(),
            reg,
        });
        for (src, text) in queued {
            self.out.push_back(Output::Forward(Forward {
                // Only OFFER, ANSWER and CANDIDATE are ever queued; the type only matters
                // for LEAVE and EXPIRE.
                kind: MessageType::Offer,
                src: Arc::from(src),
                dst: id.to_string(),
                text,
                ttl: self.cfg.expire_timeout,
                requeue: true,
                notice: false,
                deadline: None,
            }));
        }
    }

    /// Cluster mode: another node (or the registry's offline queue) hands over a message for
    /// `dst`. Delivered if `dst` is held here; otherwise it goes back to the registry.
    pub fn handle_remote(&mut self, kind: MessageType, src: &str, dst: &str, text: String) {
        self.metrics.cluster_in.increment(1);
        let Err(text) = self.deliver_held(kind, src, dst, text) else {
            return;
        };
        let ttl = self.queue_ttl(dst);
        self.out.push_back(Output::Forward(Forward {
            kind,
            src: Arc::from(src),
            dst: dst.to_owned(),
            text,
            ttl,
            requeue: true,
            notice: false,
            deadline: None,
        }));
    }

    /// Cluster mode: a direct copy of a message from another node (its Redis copy follows):
    /// delivered only if `dst` is held here; whether it was. Never queued or sent on: if
    /// it is not delivered here, the Redis copy goes where `dst` is.
    pub fn handle_direct(&mut self, kind: MessageType, src: &str, dst: &str, text: String) -> bool {
        let delivered = self.deliver_held(kind, src, dst, text).is_ok();
        if delivered {
            self.metrics.cluster_in.increment(1);
        }
        delivered
    }

    /// Sends a message from another node to `dst`'s socket if `dst` is held here (and not
    /// moved away); otherwise hands the frame back.
    fn deliver_held(
        &mut self,
        kind: MessageType,
        src: &str,
        dst: &str,
        text: String,
    ) -> Result<(), String> {
        let Some(conn) = self.peers.get(dst).filter(|p| !p.moved).map(|p| p.conn) else {
            return Err(text);
        };
        if matches!(
            kind,
            MessageType::Offer | MessageType::Answer | MessageType::Candidate
        ) {
            let dst: Arc<str> = Arc::from(dst);
            self.note_contact(&dst, src);
        }
        self.send(conn, text);
        Ok(())
    }

    /// Cluster mode: `id` was re-attached (same token) on another node. With takeover the
    /// socket here is closed; otherwise it keeps speaking for the id, as an older re-attached
    /// socket does on one node, but is no longer delivered to.
    pub fn handle_moved(&mut self, now: Instant, id: &str) {
        self.saw(now);
        let Some(conn) = self.mark_moved(id) else {
            return;
        };
        if self.cfg.takeover {
            self.close_moved(now, id, conn, CloseReason::Replaced);
        }
    }

    /// Cluster mode: after a registry outage another client holds `id`; this node's socket
    /// for it is closed without releasing anything.
    pub fn handle_lost(&mut self, now: Instant, id: &str) {
        self.saw(now);
        if let Some(conn) = self.mark_moved(id) {
            self.close_moved(now, id, conn, CloseReason::Lost);
        }
    }

    /// Cluster mode: this node may no longer hold the ids for which `in_shard` is true (its
    /// registry lease may lapse before it can renew it): their sockets are closed without
    /// releasing anything, so no id speaks from here once another node may grant it. The
    /// registry forgets them when this node re-asserts its ids.
    pub fn handle_fenced(&mut self, now: Instant, in_shard: impl Fn(&str) -> bool) {
        self.saw(now);
        let ids: Vec<Arc<str>> = self
            .peers
            .iter()
            .filter(|(id, p)| !p.moved && in_shard(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(conn) = self.mark_moved(&id) {
                self.close_moved(now, &id, conn, CloseReason::Fenced);
            }
        }
    }

    /// `id`, held here, is now held elsewhere: it is no longer delivered to or released from
    /// here. Returns its socket.
    fn mark_moved(&mut self, id: &str) -> Option<ConnId> {
        let p = self.peers.get_mut(id).filter(|p| !p.moved)?;
        p.moved = true;
        Some(p.conn)
    }

    /// Closes the socket of a moved `id` for `reason` and ends the registration here.
    fn close_moved(&mut self, now: Instant, id: &str, conn: ConnId, reason: CloseReason) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.id = None;
        }
        self.out.push_back(Output::Close { conn, reason });
        self.unregister(now, id);
    }

    /// Cluster mode: the registry expired the offline queue for `dst`; each of `senders` gets
    /// one `EXPIRE`, if it is online.
    pub fn handle_expired(&mut self, now: Instant, dst: &str, senders: &[String]) {
        self.saw(now);
        let dst: Arc<str> = Arc::from(dst);
        for sender in senders {
            self.metrics.expired.increment(1);
            let text = peerjs::relay_frame(MessageType::Expire, &dst, sender, None);
            self.relay(now, MessageType::Expire, dst.clone(), sender, text);
        }
    }
}
