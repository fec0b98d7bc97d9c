//! Room leave notices: who signalled with each held room id, and the notices waiting out
//! their grace period once the id is let go. The broker decides when an id is held or let
//! go and sends the notices; this module only keeps the books.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Leave notices for room ids (`kbz-v1-…`): when the socket holding one closes and the id is
/// not registered again within `grace`, every peer that exchanged OFFER/ANSWER/CANDIDATE with
/// it gets `{"type":"LEAVE","src":<room id>,"dst":<peer>}`, so a room's survivors can reclaim
/// at once instead of after seconds of silence. Messages queued for an unheld room id expire
/// after `expire` instead of `expire_timeout`. Never applies to other ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomNotices {
    /// How long a closed room id may come back before the notice goes out.
    pub grace: Duration,
    /// Offline-queue lifetime for room ids.
    pub expire: Duration,
}

/// The prefix of Kibitz room ids (`peerIdFor`).
pub const ROOM_PREFIX: &str = "kbz-v1-";
/// Peers remembered per room id for its leave notice.
const MAX_CONTACTS: usize = 1024;

/// A leave notice waiting out its grace period.
struct Notice {
    token: String,
    contacts: BTreeSet<Arc<str>>,
    deadline: (Instant, u64),
}

/// The notice books; inert (and empty) when notices are off.
pub(super) struct Notices {
    cfg: Option<RoomNotices>,
    /// Registered room ids: who signalled with each.
    contacts: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Closed room ids waiting out their grace period, and their deadlines.
    waiting: HashMap<Arc<str>, Notice>,
    deadlines: BTreeMap<(Instant, u64), Arc<str>>,
}

impl Notices {
    pub(super) fn new(cfg: Option<RoomNotices>) -> Self {
        Self {
            cfg,
            contacts: HashMap::new(),
            waiting: HashMap::new(),
            deadlines: BTreeMap::new(),
        }
    }

    /// How long messages for `dst` may wait for it: room ids have their own lifetime.
    pub(super) fn queue_ttl(&self, dst: &str, default: Duration) -> Duration {
        match self.cfg {
            Some(rn) if dst.starts_with(ROOM_PREFIX) => rn.expire,
            _ => default,
        }
    }

    /// Remembers that `a` and `b` signalled, for whichever of them is a room id that
    /// `registered` knows (it returns the table's own key, to share the allocation).
    pub(super) fn note_contact(
        &mut self,
        a: &Arc<str>,
        b: &str,
        registered: impl Fn(&str) -> Option<Arc<str>>,
    ) {
        if self.cfg.is_none() {
            return;
        }
        for (room, other) in [(a.as_ref(), b), (b, a.as_ref())] {
            if room.starts_with(ROOM_PREFIX) && room != other {
                let Some(key) = registered(room) else {
                    continue;
                };
                let set = self.contacts.entry(key).or_default();
                if set.len() < MAX_CONTACTS {
                    set.insert(Arc::from(other));
                }
            }
        }
    }

    /// `id` is registered again (`holder` is its new token) within its grace period: no
    /// notice. The same client (same token) keeps the peers it signalled with.
    pub(super) fn cancel(&mut self, id: &Arc<str>, holder: Option<&str>) {
        let Some(notice) = self.waiting.remove(id) else {
            return;
        };
        self.deadlines.remove(&notice.deadline);
        if holder == Some(notice.token.as_str()) {
            self.contacts.insert(id.clone(), notice.contacts);
        }
    }

    /// The registration of `id` (with `token`) ended at `now`: if anyone signalled with it,
    /// its notice waits out the grace. `seq` numbers the deadline.
    pub(super) fn ended(&mut self, now: Instant, id: Arc<str>, token: String, seq: &mut u64) {
        let Some(rn) = self.cfg else {
            return;
        };
        if let Some(contacts) = self.contacts.remove(&id)
            && !contacts.is_empty()
        {
            *seq += 1;
            let deadline = (now + rn.grace, *seq);
            self.deadlines.insert(deadline, id.clone());
            self.waiting.insert(
                id,
                Notice {
                    token,
                    contacts,
                    deadline,
                },
            );
        }
    }

    /// When the next notice is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|(k, _)| k.0)
    }

    /// A notice due at `now`: the room id and the peers to tell.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Arc<str>, BTreeSet<Arc<str>>)> {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                return None;
            }
            let room = entry.remove();
            if let Some(notice) = self.waiting.remove(&room) {
                return Some((room, notice.contacts));
            }
        }
        None
    }
}
