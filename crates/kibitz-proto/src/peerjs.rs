//! PeerJS signaling frames (`peer` 1.0.x server, `peerjs` 1.5.x client).
//!
//! Client frames are a flat JSON object `{type, dst?, payload?}`; the broker relays them as
//! `{type, src, dst, payload}` with `src` stamped by the server. `payload` is opaque: it is
//! borrowed as raw JSON text and written back byte for byte, never reshaped or inspected.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write as _;

/// The `type` of a PeerJS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MessageType {
    /// Server: the id is registered.
    Open,
    /// Server: admission failed.
    Error,
    /// Server: the id is held with another token.
    IdTaken,
    /// Client: keep-alive.
    Heartbeat,
    /// Relayed: SDP offer.
    Offer,
    /// Relayed: SDP answer.
    Answer,
    /// Relayed: ICE candidate.
    Candidate,
    /// Relayed: the peer is leaving.
    Leave,
    /// Relayed or server: the destination never came online.
    Expire,
    /// Anything else, including a missing or non-string `type`.
    Unknown,
}

impl MessageType {
    /// The wire name (`ID-TAKEN`, `OFFER`, …); `Unknown` has none and gives `""`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Error => "ERROR",
            Self::IdTaken => "ID-TAKEN",
            Self::Heartbeat => "HEARTBEAT",
            Self::Offer => "OFFER",
            Self::Answer => "ANSWER",
            Self::Candidate => "CANDIDATE",
            Self::Leave => "LEAVE",
            Self::Expire => "EXPIRE",
            Self::Unknown => "",
        }
    }

    /// Parses a wire name exactly (case-sensitive, as the reference server does).
    pub fn from_wire(s: &str) -> Self {
        match s {
            "OPEN" => Self::Open,
            "ERROR" => Self::Error,
            "ID-TAKEN" => Self::IdTaken,
            "HEARTBEAT" => Self::Heartbeat,
            "OFFER" => Self::Offer,
            "ANSWER" => Self::Answer,
            "CANDIDATE" => Self::Candidate,
            "LEAVE" => Self::Leave,
            "EXPIRE" => Self::Expire,
            _ => Self::Unknown,
        }
    }

    /// Types the broker relays to `dst`.
    pub fn is_relayed(self) -> bool {
        matches!(
            self,
            Self::Offer | Self::Answer | Self::Candidate | Self::Leave | Self::Expire
        )
    }
}

/// Why a client frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Not a JSON object (`null`, an array, a number, or not JSON at all).
    #[error("frame is not a JSON object")]
    NotAnObject,
    /// A JSON object that could not be parsed (syntax error, duplicate key).
    #[error("frame is not valid JSON")]
    Malformed,
}

/// Where a relayed frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dst<'a> {
    /// No `dst`, or `null`, or the empty string.
    Missing,
    /// A non-empty string id.
    Id(Cow<'a, str>),
    /// Something that is not a string (the reference matches it against nothing).
    Invalid,
}

/// A frame a client sent, borrowed from the text it arrived in.
#[derive(Debug)]
pub struct ClientFrame<'a> {
    /// The frame's type; unknown and non-string types are [`MessageType::Unknown`].
    pub kind: MessageType,
    /// The destination.
    pub dst: Dst<'a>,
    /// The payload exactly as sent, if the key was present (even as `null`).
    pub payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    dst: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as `Some(null)`, unlike `Option`'s default.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Reads a raw JSON value as a string if it is one, borrowing when it has no escapes.
fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

impl<'a> ClientFrame<'a> {
    /// Parses one client frame. Extra keys are ignored; only a JSON object is a frame.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        if !text.trim_start().starts_with('{') {
            return Err(FrameError::NotAnObject);
        }
        let raw: RawFrame<'a> = serde_json::from_str(text).map_err(|_| FrameError::Malformed)?;
        let kind = match raw.kind.and_then(raw_str) {
            Some(name) => MessageType::from_wire(&name),
            None => MessageType::Unknown,
        };
        let dst = match raw.dst {
            None => Dst::Missing,
            Some(v) if v.get() == "null" => Dst::Missing,
            Some(v) => match raw_str(v) {
                Some(s) if s.is_empty() => Dst::Missing,
                Some(s) => Dst::Id(s),
                None => Dst::Invalid,
            },
        };
        Ok(Self {
            kind,
            dst,
            payload: raw.payload,
        })
    }
}

/// Appends `s` to `out` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Builds a relayed frame `{"type","src","dst","payload"}` in the reference's key order;
/// `payload` is omitted when absent and otherwise copied verbatim.
pub fn relay_frame(kind: MessageType, src: &str, dst: &str, payload: Option<&RawValue>) -> String {
    let payload_len = payload.map_or(0, |p| p.get().len() + 11);
    let mut out = String::with_capacity(32 + src.len() + dst.len() + payload_len);
    out.push_str("{\"type\":");
    push_json_str(&mut out, kind.as_str());
    out.push_str(",\"src\":");
    push_json_str(&mut out, src);
    out.push_str(",\"dst\":");
    push_json_str(&mut out, dst);
    if let Some(p) = payload {
        out.push_str(",\"payload\":");
        out.push_str(p.get());
    }
    out.push('}');
    out
}

/// `{"type":"OPEN"}`.
pub const OPEN: &str = r#"{"type":"OPEN"}"#;
/// `ID-TAKEN` as the reference sends it.
pub const ID_TAKEN: &str = r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#;
/// Admission error: a required query parameter is missing or empty.
pub const MSG_INVALID_PARAMS: &str = "No id, token, or key supplied to websocket server";
/// Admission error: wrong key.
pub const MSG_INVALID_KEY: &str = "Invalid key provided";
/// Admission error: `concurrent_limit` reached.
pub const MSG_LIMIT: &str = "Server has reached its concurrent user limit";

/// `{"type":"ERROR","payload":{"msg":…}}`.
pub fn error_frame(msg: &str) -> String {
    let mut out = String::with_capacity(40 + msg.len());
    out.push_str(r#"{"type":"ERROR","payload":{"msg":"#);
    push_json_str(&mut out, msg);
    out.push_str("}}");
    out
}

/// The JSON banner served at the HTTP base path.
pub const BANNER: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_rebuild_in_reference_order() {
        let f = ClientFrame::parse(
            r#"{"payload":{"b":[1,2],"a":"x"},"extra":42,"src":"mallory","dst":"bob","type":"OFFER"}"#,
        )
        .unwrap();
        assert_eq!(f.kind, MessageType::Offer);
        assert_eq!(f.dst, Dst::Id(Cow::Borrowed("bob")));
        assert_eq!(
            relay_frame(f.kind, "alice", "bob", f.payload),
            r#"{"type":"OFFER","src":"alice","dst":"bob","payload":{"b":[1,2],"a":"x"}}"#
        );
    }

    #[test]
    fn absent_payload_is_omitted_and_null_is_kept() {
        let f = ClientFrame::parse(r#"{"type":"ANSWER","dst":"yy"}"#).unwrap();
        assert_eq!(
            relay_frame(f.kind, "xx", "yy", f.payload),
            r#"{"type":"ANSWER","src":"xx","dst":"yy"}"#
        );
        let f = ClientFrame::parse(r#"{"type":"ANSWER","dst":"yy","payload":null}"#).unwrap();
        assert_eq!(
            relay_frame(f.kind, "xx", "yy", f.payload),
            r#"{"type":"ANSWER","src":"xx","dst":"yy","payload":null}"#
        );
    }

    #[test]
    fn ids_are_escaped_on_the_way_out() {
        let f = ClientFrame::parse(r#"{"type":"OFFER","dst":"a\"b\\c\u0001"}"#).unwrap();
        let Dst::Id(dst) = f.dst else { panic!() };
        assert_eq!(dst, "a\"b\\c\u{1}");
        let out = relay_frame(MessageType::Offer, "é x", &dst, None);
        assert_eq!(out, r#"{"type":"OFFER","src":"é x","dst":"a\"b\\c\u0001"}"#);
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["dst"], "a\"b\\c\u{1}");
    }

    #[test]
    fn non_objects_and_garbage_are_errors() {
        for bad in [
            "null",
            "[]",
            r#"["OFFER","x",{}]"#,
            "42",
            "\"OFFER\"",
            "",
            "{",
        ] {
            assert!(ClientFrame::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn odd_types_and_dsts() {
        let f = ClientFrame::parse(r#"{"type":["OFFER"],"dst":123}"#).unwrap();
        assert_eq!(f.kind, MessageType::Unknown);
        assert_eq!(f.dst, Dst::Invalid);
        let f = ClientFrame::parse(r#"{"type":"OFF\u0045R","dst":""}"#).unwrap();
        assert_eq!(f.kind, MessageType::Offer);
        assert_eq!(f.dst, Dst::Missing);
        let f = ClientFrame::parse(r#"{"type":"offer","dst":null}"#).unwrap();
        assert_eq!(f.kind, MessageType::Unknown);
        assert_eq!(f.dst, Dst::Missing);
    }

    #[test]
    fn server_frames_are_exact() {
        assert_eq!(
            error_frame(MSG_INVALID_KEY),
            r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#
        );
        assert_eq!(
            ID_TAKEN,
            r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#
        );
    }
}
