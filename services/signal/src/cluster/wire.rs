//! Reading the registry's answers: Redis values into claims, queued messages and inbox
//! entries, and the set of message numbers already delivered here (so a message handed to
//! Redis twice is delivered once). Garbage from the wire never panics.

use crate::core::Claim;
use kibitz_proto::peerjs::MessageType;
use redis::Value;
use std::collections::{HashSet, VecDeque};

/// The error a client gets when a claim cannot be decided.
pub const MSG_UNAVAILABLE: &str = "Cluster registry unavailable, try again";
/// The error a client gets while the registry recovers from losing its data.
pub const MSG_RECOVERING: &str = "Cluster registry is recovering, try again";

/// Message numbers each node remembers for dropping repeats.
pub(crate) const SEEN_CAP: usize = 200_000;

/// Message numbers delivered here lately (set, and its order for eviction).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Whether message number `mid` was seen (and is still remembered).
    pub(crate) fn contains(&self, mid: &str) -> bool {
        self.set.contains(mid)
    }

    /// Whether message number `mid` is new here (and remembers it). Unnumbered messages
    /// always pass.
    pub(crate) fn fresh(&mut self, mid: &str) -> bool {
        if mid.is_empty() {
            return true;
        }
        if !self.set.insert(mid.to_owned()) {
            return false;
        }
        self.order.push_back(mid.to_owned());
        if self.order.len() > SEEN_CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

pub(crate) fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => Vec::new(),
    }
}

pub(crate) fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The first element of an array answer (a script's tag).
pub(crate) fn text_tag(v: &Value) -> Option<String> {
    match v {
        Value::Array(a) => a.first().cloned().and_then(text),
        _ => None,
    }
}

/// Queued messages `[src, frame, number, …]` → (src, frame), without numbers this node has
/// already delivered.
pub(crate) fn queued(rest: impl Iterator<Item = Value>, seen: &mut Seen) -> Vec<(String, String)> {
    let flat: Vec<String> = rest.filter_map(text).collect();
    flat.chunks_exact(3)
        .filter(|m| seen.fresh(&m[2]))
        .map(|m| (m[0].clone(), m[1].clone()))
        .collect()
}

/// The claim's answer, and the node the id was re-attached from (if another one).
pub(crate) fn parse_claim(v: Value, seen: &mut Seen) -> (Claim, Option<String>) {
    let mut it = items(v).into_iter();
    let tag = it.next().and_then(text).unwrap_or_default();
    let claim = match tag.as_str() {
        "new" | "reattach" => {
            let reg = it
                .next()
                .and_then(text)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let from = it.next().and_then(text).filter(|n| !n.is_empty());
            let queued = queued(it, seen);
            return (
                if tag == "new" {
                    Claim::New { reg, queued }
                } else {
                    Claim::Reattach { reg, queued }
                },
                from,
            );
        }
        "taken" => Claim::Taken,
        "limit" => Claim::Limit,
        "settle" => Claim::Unavailable(MSG_RECOVERING),
        _ => Claim::Unavailable(MSG_UNAVAILABLE),
    };
    (claim, None)
}

pub(crate) fn kind_of(s: &str) -> MessageType {
    match s {
        "ANSWER" => MessageType::Answer,
        "CANDIDATE" => MessageType::Candidate,
        "LEAVE" => MessageType::Leave,
        "EXPIRE" => MessageType::Expire,
        _ => MessageType::Offer,
    }
}

/// One entry of a node's inbox stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A message (kind, src, dst, frame) with its number ("" for none).
    Message(MessageType, String, String, String, String),
    /// `id` was re-attached on node `n`.
    Moved(String, String),
    /// The old node confirmed it stopped delivering to `id`'s socket.
    Acked(String),
}

/// An `XREAD` answer → the stream id of the last entry read, and the entries this node
/// understands.
pub(crate) fn inbox_entries(v: Value) -> (Option<String>, Vec<Entry>) {
    let mut last = None;
    let mut out = Vec::new();
    for stream in items(v) {
        let mut s = items(stream).into_iter();
        let _name = s.next();
        for entry in s.next().map(items).unwrap_or_default() {
            let mut e = items(entry).into_iter();
            if let Some(id) = e.next().and_then(text) {
                last = Some(id);
            }
            let fields: Vec<String> = e
                .next()
                .map(items)
                .unwrap_or_default()
                .into_iter()
                .filter_map(text)
                .collect();
            let get = |k: &str| {
                fields
                    .chunks_exact(2)
                    .find(|f| f[0] == k)
                    .map(|f| f[1].clone())
            };
            match get("t").as_deref() {
                Some("m") => {
                    if let (Some(k), Some(s), Some(d), Some(m)) =
                        (get("k"), get("s"), get("d"), get("m"))
                    {
                        let mid = get("i").unwrap_or_default();
                        out.push(Entry::Message(kind_of(&k), s, d, m, mid));
                    }
                }
                // A batch: (k, s, d, m, i) groups, in order.
                Some("b") => {
                    let mut msg: [Option<String>; 4] = Default::default();
                    let mut it = fields.into_iter().skip(2);
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        let slot = match k.as_str() {
                            "k" => {
                                msg = Default::default();
                                0
                            }
                            "s" => 1,
                            "d" => 2,
                            "m" => 3,
                            "i" => {
                                if let [Some(k), Some(s), Some(d), Some(m)] =
                                    std::mem::take(&mut msg)
                                {
                                    out.push(Entry::Message(kind_of(&k), s, d, m, v));
                                }
                                continue;
                            }
                            _ => continue,
                        };
                        msg[slot] = Some(v);
                    }
                }
                Some("v") => {
                    if let (Some(d), Some(n)) = (get("d"), get("n")) {
                        out.push(Entry::Moved(d, n));
                    }
                }
                Some("a") => {
                    if let Some(d) = get("d") {
                        out.push(Entry::Acked(d));
                    }
                }
                _ => {}
            }
        }
    }
    (last, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn claim_answers_parse_and_drop_repeated_messages() {
        let mut c = Seen::default();
        assert!(c.fresh("n.1"));
        let v = Value::Array(vec![
            bulk("new"),
            Value::Int(7),
            bulk(""),
            bulk("a"),
            bulk("frame-1"),
            bulk("n.1"),
            bulk("b"),
            bulk("frame-2"),
            bulk("n.2"),
        ]);
        assert_eq!(
            parse_claim(v, &mut c),
            (
                Claim::New {
                    reg: 7,
                    queued: vec![("b".into(), "frame-2".into())]
                },
                None
            )
        );
        let v = Value::Array(vec![bulk("reattach"), bulk("3"), bulk("node-b")]);
        assert_eq!(
            parse_claim(v, &mut c),
            (
                Claim::Reattach {
                    reg: 3,
                    queued: vec![]
                },
                Some("node-b".into())
            )
        );
        for (tag, want) in [
            ("taken", Claim::Taken),
            ("limit", Claim::Limit),
            ("settle", Claim::Unavailable(MSG_RECOVERING)),
            ("stale", Claim::Unavailable(MSG_UNAVAILABLE)),
        ] {
            assert_eq!(parse_claim(Value::Array(vec![bulk(tag)]), &mut c).0, want);
        }
        // Garbage from the wire never panics.
        assert_eq!(
            parse_claim(Value::Nil, &mut c).0,
            Claim::Unavailable(MSG_UNAVAILABLE)
        );
        assert_eq!(
            parse_claim(Value::Array(vec![bulk("new"), bulk("x"), bulk("")]), &mut c).0,
            Claim::New {
                reg: 0,
                queued: vec![]
            }
        );
    }

    #[test]
    fn repeats_are_forgotten_only_beyond_the_cap() {
        let mut c = Seen::default();
        for i in 0..SEEN_CAP + 1 {
            assert!(c.fresh(&i.to_string()));
        }
        assert!(c.fresh("0"), "the oldest number was evicted");
        assert!(!c.fresh(&SEEN_CAP.to_string()));
        assert!(c.fresh(""), "unnumbered messages always pass");
        assert!(c.fresh(""));
    }

    #[test]
    fn inbox_entries_parse_and_garbage_is_skipped() {
        let entry = |id: &str, f: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(f.iter().map(|s| bulk(s)).collect()),
            ])
        };
        let v = Value::Array(vec![Value::Array(vec![
            bulk("inbox"),
            Value::Array(vec![
                entry(
                    "1-0",
                    &[
                        "t", "m", "k", "ANSWER", "s", "a", "d", "b", "m", "x", "i", "n.1",
                    ],
                ),
                entry("1-1", &["t", "v", "d", "b", "n", "node2"]),
                entry("1-2", &["t", "a", "d", "b"]),
                entry("1-3", &["t", "m", "k", "OFFER"]),
                entry(
                    "1-4",
                    &[
                        "t", "b", "k", "OFFER", "s", "a", "d", "c", "m", "y", "i", "n.2", "k",
                        "OFFER", "s", "a", "i", "n.3", "k", "LEAVE", "s", "a", "d", "c", "m", "z",
                        "i", "n.4", "k",
                    ],
                ),
                Value::Nil,
            ]),
        ])]);
        let (last, got) = inbox_entries(v);
        assert_eq!(last.as_deref(), Some("1-4"));
        assert_eq!(
            got,
            vec![
                Entry::Message(
                    MessageType::Answer,
                    "a".into(),
                    "b".into(),
                    "x".into(),
                    "n.1".into()
                ),
                Entry::Moved("b".into(), "node2".into()),
                Entry::Acked("b".into()),
                Entry::Message(
                    MessageType::Offer,
                    "a".into(),
                    "c".into(),
                    "y".into(),
                    "n.2".into()
                ),
                Entry::Message(
                    MessageType::Leave,
                    "a".into(),
                    "c".into(),
                    "z".into(),
                    "n.4".into()
                ),
            ]
        );
        assert_eq!(inbox_entries(Value::Nil), (None, vec![]));
    }
}
