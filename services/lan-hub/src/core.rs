//! The hub's router (LAN.md §4), sans-IO: sessions, rooms and frames. No clock, no sockets.
//!
//! Input: a session opened or closed, a text frame from a session. Output, drained with
//! [`HubCore::poll_output`] after every input: `(session, text)` pairs to send.

use std::collections::{BTreeMap, VecDeque};

use kibitz_proto::lan::{self, ClientFrame};

/// A session's hub id: integers from 1, never reused while the hub runs.
pub type SessionId = u64;

/// Counters the router keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// `from` frames delivered.
    pub routed: u64,
    /// `to` frames dropped (no such session, or not in the sender's room).
    pub dropped: u64,
    /// Frames ignored: invalid JSON, unknown `t`, wrong types, binary.
    pub bad: u64,
}

/// The router's state.
#[derive(Debug, Default)]
pub struct HubCore {
    next_id: SessionId,
    /// Session → room (`""` until it joins).
    rooms: BTreeMap<SessionId, String>,
    out: VecDeque<(SessionId, String)>,
    stats: CoreStats,
}

impl HubCore {
    /// An empty hub; the first session gets id 1.
    pub fn new() -> Self {
        HubCore {
            next_id: 1,
            ..Default::default()
        }
    }

    /// A session's channel opened: allocates its id and queues `{"t":"id"}` as its first frame.
    pub fn open(&mut self) -> SessionId {
        let id = self.next_id;
        self.next_id += 1;
        self.rooms.insert(id, String::new());
        self.out.push_back((id, lan::id_frame(id)));
        id
    }

    /// A session ended. Nobody is told; frames to it are dropped from now on.
    pub fn close(&mut self, id: SessionId) {
        self.rooms.remove(&id);
        // Frames still queued for it would go nowhere.
        self.out.retain(|(to, _)| *to != id);
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.rooms.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// A binary frame: the protocol is text only, so it is ignored and counted.
    pub fn binary(&mut self, from: SessionId) {
        if self.rooms.contains_key(&from) {
            self.stats.bad += 1;
        }
    }

    /// A text frame from `from`.
    pub fn text(&mut self, from: SessionId, text: &str) {
        let Some(room) = self.rooms.get(&from) else {
            return;
        };
        let Some(frame) = lan::parse_client_frame(text) else {
            self.stats.bad += 1;
            return;
        };
        match frame {
            ClientFrame::Join { room } => {
                self.rooms.insert(from, room);
            }
            ClientFrame::Peers => {
                let ids: Vec<SessionId> = self
                    .rooms
                    .iter()
                    .filter(|(_, r)| *r == room)
                    .map(|(id, _)| *id)
                    .collect();
                self.out.push_back((from, lan::peers_frame(&ids)));
            }
            ClientFrame::To { id, payload } => {
                // Isolation is enforced: dst must exist and share the sender's current room.
                if self.rooms.get(&id) == Some(room) {
                    self.out.push_back((id, lan::from_frame(from, &payload)));
                    self.stats.routed += 1;
                } else {
                    self.stats.dropped += 1;
                }
            }
            ClientFrame::Echo { x } => {
                self.out.push_back((from, lan::echo_frame(&x)));
            }
        }
    }

    /// The next frame to send, if any.
    pub fn poll_output(&mut self) -> Option<(SessionId, String)> {
        self.out.pop_front()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kibitz_proto::lan::HubFrame;

    fn drain(core: &mut HubCore) -> Vec<(SessionId, HubFrame)> {
        let mut v = Vec::new();
        while let Some((id, text)) = core.poll_output() {
            v.push((id, serde_json::from_str(&text).unwrap()));
        }
        v
    }

    fn peers_of(core: &mut HubCore, id: SessionId) -> Vec<u64> {
        core.text(id, r#"{"t":"peers"}"#);
        match drain(core).as_slice() {
            [(to, HubFrame::Peers { ids })] if *to == id => {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn id_first_and_never_reused() {
        let mut c = HubCore::new();
        let a = c.open();
        let b = c.open();
        assert_eq!((a, b), (1, 2));
        assert_eq!(
            drain(&mut c),
            vec![(1, HubFrame::Id { id: 1 }), (2, HubFrame::Id { id: 2 })]
        );
        c.close(a);
        assert_eq!(c.open(), 3);
        assert_eq!(c.sessions(), 2);
    }

    /// LAN.md §9 hub_test: alpha {a, b}, beta {c}, never-joined d.
    #[test]
    fn upstream_hub_test_rooms() {
        let mut c = HubCore::new();
        let (a, b, cc, d) = (c.open(), c.open(), c.open(), c.open());
        drain(&mut c);
        c.text(a, r#"{"t":"join","room":"alpha"}"#);
        c.text(b, r#"{"t":"join","room":"alpha"}"#);
        c.text(cc, r#"{"t":"join","room":"beta"}"#);
        assert!(drain(&mut c).is_empty(), "join has no reply");
        assert_eq!(peers_of(&mut c, a), vec![a, b]);
        assert_eq!(peers_of(&mut c, cc), vec![cc]);
        assert_eq!(peers_of(&mut c, d), vec![d]);

        c.text(
            a,
            &format!(r#"{{"t":"to","id":{b},"payload":{{"k":"hi"}}}}"#),
        );
        assert_eq!(
            drain(&mut c),
            vec![(
                b,
                HubFrame::From {
                    id: a,
                    payload: serde_json::json!({"k": "hi"})
                }
            )]
        );
        // a → c is dropped even with c's id; d cannot reach alpha either.
        c.text(a, &format!(r#"{{"t":"to","id":{cc},"payload":1}}"#));
        c.text(d, &format!(r#"{{"t":"to","id":{a},"payload":1}}"#));
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.stats().routed, 1);
        assert_eq!(c.stats().dropped, 2);
    }

    #[test]
    fn join_last_wins_self_send_and_echo() {
        let mut c = HubCore::new();
        let a = c.open();
        let b = c.open();
        drain(&mut c);
        c.text(a, r#"{"t":"join","room":"x"}"#);
        c.text(a, r#"{"t":"join","room":"y"}"#);
        c.text(b, r#"{"t":"join","room":"x"}"#);
        assert_eq!(peers_of(&mut c, a), vec![a]);
        assert_eq!(peers_of(&mut c, b), vec![b]);
        c.text(a, &format!(r#"{{"t":"to","id":{a}}}"#));
        c.text(a, r#"{"t":"echo","x":[1,"two"]}"#);
        c.text(a, r#"{"t":"echo"}"#);
        assert_eq!(
            drain(&mut c),
            vec![
                (
                    a,
                    HubFrame::From {
                        id: a,
                        payload: serde_json::Value::Null
                    }
                ),
                (
                    a,
                    HubFrame::Echo {
                        x: serde_json::json!([1, "two"])
                    }
                ),
                (
                    a,
                    HubFrame::Echo {
                        x: serde_json::Value::Null
                    }
                ),
            ]
        );
    }

    #[test]
    fn payload_is_relayed_verbatim() {
        let mut c = HubCore::new();
        let a = c.open();
        drain(&mut c);
        c.text(
            a,
            r#"{"t":"to","id":1,"payload":{"b":1,  "a":[1.50,"\u00e9"]}}"#,
        );
        let (_, text) = c.poll_output().unwrap();
        assert_eq!(
            text,
            r#"{"t":"from","id":1,"payload":{"b":1,  "a":[1.50,"\u00e9"]}}"#
        );
    }

    #[test]
    fn bad_frames_are_ignored_and_counted() {
        let mut c = HubCore::new();
        let a = c.open();
        let b = c.open();
        drain(&mut c);
        for bad in [
            "nope",
            r#"{"t":"join","room":7}"#,
            r#"{"t":"to","id":"2"}"#,
            r#"{"t":"to","id":2.5}"#,
            r#"{"t":"dance"}"#,
            r#"{"room":"x"}"#,
        ] {
            c.text(a, bad);
        }
        c.binary(a);
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.stats().bad, 7);
        // The session is kept.
        assert_eq!(peers_of(&mut c, a), vec![a, b]);
    }

    #[test]
    fn disconnect_tells_nobody_and_drops_frames_to_it() {
        let mut c = HubCore::new();
        let a = c.open();
        let b = c.open();
        drain(&mut c);
        c.text(a, &format!(r#"{{"t":"to","id":{b},"payload":1}}"#));
        c.close(b);
        assert!(drain(&mut c).is_empty(), "queued frame to a closed session");
        c.text(a, &format!(r#"{{"t":"to","id":{b},"payload":1}}"#));
        assert!(drain(&mut c).is_empty());
        assert_eq!(peers_of(&mut c, a), vec![a]);
        // Frames from a closed session are ignored.
        c.text(b, r#"{"t":"echo"}"#);
        assert!(drain(&mut c).is_empty());
    }
}
