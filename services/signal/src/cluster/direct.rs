//! Direct copies (sans-IO): what a node remembers to send messages straight to the node that
//! holds their receiver, and to deliver such copies without breaking any guarantee.
//!
//! A message for an id held on another node still goes through Redis, which keeps every
//! promise (per-sender order, delivered once or `EXPIRE`d, survival of a Redis restart). When
//! this node also knows where the id is (the last route answer for it named the holder) and
//! the number of the sender's previous message to the same id, it sends a copy over a node
//! link too. The holder delivers whichever copy comes first and drops the other by number.
//! A direct copy is delivered only when the sender's previous message to that id already was
//! (or the inbox went past it): otherwise it is dropped and the Redis copy delivers it in
//! order. So a link can only make a message earlier, never reorder, repeat or lose one.

use kibitz_proto::peerjs::MessageType;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receivers (and sender-receiver pairs) remembered on the sending side, over all shards
/// (beyond it a shard's table starts over: the next message to each goes through Redis
/// alone).
const OUT_CAP: usize = 200_000;
/// Direct deliveries awaiting their Redis copy, per sending node and shard; beyond it direct
/// copies are dropped (the Redis copies deliver them).
const IN_CAP: usize = 50_000;
/// How long a direct delivery waits for its Redis copy to be recognised as a repeat.
const IN_KEEP: Duration = Duration::from_secs(120);

/// A direct copy: the message, its number on the sending node and shard, and the number of
/// the sender's previous message to the same receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirectMsg {
    pub shard: u32,
    pub n: u64,
    pub prev: u64,
    pub kind: MessageType,
    pub src: String,
    pub dst: String,
    pub text: String,
}

/// Whether node id `node` has a link address (`{uuid}@{host}:{port}`).
pub(crate) fn link_addr(node: &str) -> Option<&str> {
    node.split_once('@')
        .map(|(_, a)| a)
        .filter(|a| !a.is_empty())
}

/// The sending side of one shard.
#[derive(Debug)]
pub(crate) struct Out {
    /// Where each receiver was held as of the last route answer naming it.
    owner: HashMap<String, Arc<str>>,
    /// The number of each sender's last message to each receiver.
    last: HashMap<Arc<str>, HashMap<String, u64>>,
    last_len: usize,
    cap: usize,
}

impl Out {
    /// The sending side of one shard of `shards`.
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            owner: HashMap::new(),
            last: HashMap::new(),
            last_len: 0,
            cap: (OUT_CAP / shards.max(1)).max(1000),
        }
    }

    /// Message `n` from `src` to `dst` is on its way through Redis: the node to send a copy
    /// to, with the number of the previous message from `src` to `dst`.
    pub(crate) fn sent(
        &mut self,
        me: &str,
        src: &Arc<str>,
        dst: &str,
        n: u64,
    ) -> Option<(Arc<str>, u64)> {
        if self.last_len >= self.cap {
            self.last.clear();
            self.last_len = 0;
        }
        let per = self.last.entry(src.clone()).or_default();
        let prev = match per.get_mut(dst) {
            Some(p) => Some(std::mem::replace(p, n)),
            None => {
                per.insert(dst.to_owned(), n);
                self.last_len += 1;
                None
            }
        }?;
        let owner = self.owner.get(dst)?;
        (&**owner != me && link_addr(owner).is_some()).then(|| (owner.clone(), prev))
    }

    /// Redis routed a message for `dst` to `owner` (`None`: queued, not held).
    pub(crate) fn routed(&mut self, dst: &str, owner: Option<&str>) {
        match owner {
            Some(o) => {
                if self.owner.get(dst).is_some_and(|x| &**x == o) {
                    return;
                }
                if self.owner.len() >= self.cap {
                    self.owner.clear();
                }
                self.owner.insert(dst.to_owned(), Arc::from(o));
            }
            None => {
                self.owner.remove(dst);
            }
        }
    }
}

#[derive(Debug, Default)]
struct From {
    /// The highest number the inbox brought from this sender.
    hi: u64,
    /// Numbers delivered direct whose Redis copy has not come, ascending, with when.
    direct: VecDeque<(u64, Instant)>,
}

/// The receiving side of one shard, per sending node (keyed by the prefix of its message
/// numbers: `{node}` or `{node}.{shard}`).
#[derive(Debug, Default)]
pub(crate) struct In {
    from: HashMap<String, From>,
}

impl In {
    /// The inbox brought message `n` from `sender`: whether it is the Redis copy of one
    /// delivered direct (to be dropped).
    pub(crate) fn read(&mut self, sender: &str, n: u64) -> bool {
        if !self.from.contains_key(sender) {
            self.from.insert(sender.to_owned(), From::default());
        }
        let Some(f) = self.from.get_mut(sender) else {
            return false;
        };
        f.hi = f.hi.max(n);
        let dup = match f.direct.binary_search_by_key(&n, |d| d.0) {
            Ok(i) => {
                f.direct.remove(i);
                true
            }
            Err(_) => false,
        };
        // The inbox went past these: their copies came, or went to another node.
        while f.direct.front().is_some_and(|d| d.0 <= f.hi) {
            f.direct.pop_front();
        }
        dup
    }

    /// Whether direct copy `n` (previous `prev`) from `sender` may be delivered now:
    /// `prev_seen` says the previous one was delivered here by number.
    pub(crate) fn may_deliver(&self, sender: &str, n: u64, prev: u64, prev_seen: bool) -> bool {
        let Some(f) = self.from.get(sender) else {
            return prev_seen;
        };
        if n <= f.hi || f.direct.len() >= IN_CAP {
            // Its Redis copy was read already (delivered, or it went elsewhere).
            return false;
        }
        prev_seen || prev <= f.hi || f.direct.binary_search_by_key(&prev, |d| d.0).is_ok()
    }

    /// Direct copy `n` from `sender` was delivered.
    pub(crate) fn delivered(&mut self, now: Instant, sender: &str, n: u64) {
        let f = self.from.entry(sender.to_owned()).or_default();
        match f.direct.binary_search_by_key(&n, |d| d.0) {
            Ok(_) => {}
            Err(i) => f.direct.insert(i, (n, now)),
        }
    }

    /// Forgets direct deliveries older than [`IN_KEEP`] and senders with nothing left.
    pub(crate) fn expire(&mut self, now: Instant) {
        for f in self.from.values_mut() {
            while f
                .direct
                .front()
                .is_some_and(|d| now.saturating_duration_since(d.1) > IN_KEEP)
            {
                f.direct.pop_front();
            }
        }
        if self.from.len() > 4096 {
            self.from.retain(|_, f| !f.direct.is_empty());
        }
    }
}

/// A message number `{sender}.{n}` split into the sender's part and `n`.
pub(crate) fn split_mid(mid: &str) -> Option<(&str, u64)> {
    let (sender, n) = mid.rsplit_once('.')?;
    Some((sender, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_goes_only_with_a_known_holder_and_a_previous_message() {
        let mut o = Out::new(1);
        let a: Arc<str> = Arc::from("a");
        assert_eq!(o.sent("me@h:1", &a, "b", 1), None, "no previous message");
        assert_eq!(o.sent("me@h:1", &a, "b", 2), None, "holder unknown");
        o.routed("b", Some("x@h:2"));
        assert_eq!(o.sent("me@h:1", &a, "b", 5), Some((Arc::from("x@h:2"), 2)));
        o.routed("b", Some("y"));
        assert_eq!(o.sent("me@h:1", &a, "b", 6), None, "holder without a link");
        o.routed("b", None);
        assert_eq!(o.sent("me@h:1", &a, "b", 7), None, "queued: not held");
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn direct_copies_wait_for_their_predecessor_and_drop_their_redis_twin() {
        let now = Instant::now();
        let mut i = In::default();
        // Message 3 came through Redis; 4 (prev 3) may come direct.
        assert!(!i.read("n", 3));
        assert!(i.may_deliver("n", 4, 3, false));
        i.delivered(now, "n", 4);
        // 6 (prev 5) may not: 5 was not delivered.
        assert!(!i.may_deliver("n", 6, 5, false));
        assert!(i.may_deliver("n", 6, 5, true));
        // 5 (prev 4, delivered direct) may.
        assert!(i.may_deliver("n", 5, 4, false));
        i.delivered(now, "n", 5);
        // Redis copies of 4 and 5 are repeats; 6 is not.
        assert!(i.read("n", 4));
        assert!(i.read("n", 5));
        assert!(!i.read("n", 6));
        // A direct copy the inbox already passed is not delivered.
        assert!(!i.may_deliver("n", 6, 5, true));
        assert_eq!(
            split_mid("u@127.0.0.1:9.3.17"),
            Some(("u@127.0.0.1:9.3", 17))
        );
        assert_eq!(link_addr("u@127.0.0.1:9"), Some("127.0.0.1:9"));
        assert_eq!(link_addr("u"), None);
    }
}
