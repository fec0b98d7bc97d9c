//! PeerJS broker frames as a peer sees them: server messages in, client messages out
//! (`PEERJS.md` §2.2–2.3). Pure functions; nothing here touches a socket.

use serde::{Deserialize, Serialize};

use crate::Serialization;

/// Why a frame from the broker, or a payload relayed from a remote peer, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The frame is not a JSON object with a string `type`.
    #[error("broker frame is not a PeerJS message")]
    NotAFrame,
    /// A relayed message without a `src`.
    #[error("{kind} without src")]
    NoSource {
        /// The message type.
        kind: &'static str,
    },
    /// The payload is missing or has the wrong shape.
    #[error("{kind} from {src}: bad payload: {why}")]
    BadPayload {
        /// The message type.
        kind: &'static str,
        /// Who sent it.
        src: String,
        /// What was wrong.
        why: String,
    },
    /// An OFFER of an unknown connection type (neither `data` nor `media`).
    #[error("OFFER from {src}: unsupported connection type {kind:?}")]
    Unsupported {
        /// Who sent it.
        src: String,
        /// The payload `type` (`media`, …).
        kind: String,
    },
    /// A serialization this peer does not speak (`MsgPack`, unknown names).
    #[error("OFFER from {src}: unsupported serialization {serialization:?}")]
    UnsupportedSerialization {
        /// Who sent it.
        src: String,
        /// The payload's `serialization`.
        serialization: String,
    },
    /// The SDP or a candidate was refused by WebRTC.
    #[error("{kind} from {src} for {connection_id}: {why}")]
    Rejected {
        /// The message type.
        kind: &'static str,
        /// Who sent it.
        src: String,
        /// The PeerJS connectionId.
        connection_id: String,
        /// Why.
        why: String,
    },
}

/// `{type, sdp}` as `RTCSessionDescription.toJSON()` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: String,
    pub sdp: String,
}

/// `RTCIceCandidate.toJSON()`: `{candidate, sdpMid, sdpMLineIndex, usernameFragment}`
/// (serde in that camelCase shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInit {
    /// The `candidate:` line (without `a=`).
    pub candidate: String,
    /// The m-line's mid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The m-line's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u32>,
    /// The ICE ufrag it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Every payload key a data connection's OFFER, ANSWER or CANDIDATE may carry; unknown keys
/// (`browser`, …) are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Payload {
    #[serde(default)]
    pub sdp: Option<SessionDescription>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub connection_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub reliable: Option<bool>,
    #[serde(default)]
    pub serialization: Option<String>,
    #[serde(default)]
    pub candidate: Option<CandidateInit>,
}

/// A message from the broker.
#[derive(Debug, Clone)]
pub(crate) enum ServerMsg {
    Open,
    Error(String),
    IdTaken,
    Expire {
        src: String,
    },
    Leave {
        src: String,
    },
    Offer {
        src: String,
        payload: Payload,
    },
    Answer {
        src: String,
        payload: Payload,
    },
    Candidate {
        src: String,
        payload: Payload,
    },
    /// Another type (`HEARTBEAT` echoes, future types): ignored.
    Other,
}

#[derive(Deserialize)]
struct RawServer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    src: Option<serde_json::Value>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

/// Reads one broker frame.
pub(crate) fn parse_server(text: &str) -> Result<ServerMsg, SignalError> {
    let raw: RawServer = serde_json::from_str(text).map_err(|_| SignalError::NotAFrame)?;
    let kind: &'static str = match raw.kind.as_str() {
        "OPEN" => return Ok(ServerMsg::Open),
        "ID-TAKEN" => return Ok(ServerMsg::IdTaken),
        "ERROR" => {
            let msg = raw
                .payload
                .as_ref()
                .and_then(|p| p.get("msg"))
                .and_then(|m| m.as_str())
                .unwrap_or("unknown error");
            return Ok(ServerMsg::Error(msg.to_owned()));
        }
        "EXPIRE" => "EXPIRE",
        "LEAVE" => "LEAVE",
        "OFFER" => "OFFER",
        "ANSWER" => "ANSWER",
        "CANDIDATE" => "CANDIDATE",
        _ => return Ok(ServerMsg::Other),
    };
    let src = match raw.src {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        _ => return Err(SignalError::NoSource { kind }),
    };
    match kind {
        "EXPIRE" => return Ok(ServerMsg::Expire { src }),
        "LEAVE" => return Ok(ServerMsg::Leave { src }),
        _ => {}
    }
    let payload = match raw.payload {
        Some(p @ serde_json::Value::Object(_)) => {
            serde_json::from_value::<Payload>(p).map_err(|e| SignalError::BadPayload {
                kind,
                src: src.clone(),
                why: e.to_string(),
            })?
        }
        _ => {
            return Err(SignalError::BadPayload {
                kind,
                src,
                why: "payload is not an object".into(),
            });
        }
    };
    Ok(match kind {
        "OFFER" => ServerMsg::Offer { src, payload },
        "ANSWER" => ServerMsg::Answer { src, payload },
        _ => ServerMsg::Candidate { src, payload },
    })
}

/// `{"type":"HEARTBEAT"}`.
pub(crate) const HEARTBEAT: &str = r#"{"type":"HEARTBEAT"}"#;

#[derive(Serialize)]
struct Frame<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    dst: &'a str,
    payload: P,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OfferPayload<'a> {
    sdp: SessionDescription,
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a serde_json::Value>,
    label: &'a str,
    reliable: bool,
    serialization: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnswerPayload<'a> {
    sdp: SessionDescription,
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CandidatePayload<'a> {
    candidate: CandidateInit,
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: &'a str,
}

fn to_text<P: Serialize>(kind: &'static str, dst: &str, payload: P) -> String {
    // Serializing strings, bools and JSON values into a String cannot fail.
    serde_json::to_string(&Frame { kind, dst, payload }).unwrap_or_default()
}

/// What a data connection's OFFER says besides its SDP.
#[derive(Debug, Clone)]
pub(crate) struct OfferMeta<'a> {
    pub connection_id: &'a str,
    pub label: &'a str,
    pub reliable: bool,
    pub serialization: Serialization,
    pub metadata: Option<&'a serde_json::Value>,
}

pub(crate) fn offer(dst: &str, sdp: String, meta: &OfferMeta<'_>) -> String {
    to_text(
        "OFFER",
        dst,
        OfferPayload {
            sdp: SessionDescription {
                kind: "offer".into(),
                sdp,
            },
            kind: "data",
            connection_id: meta.connection_id,
            metadata: meta.metadata,
            label: meta.label,
            reliable: meta.reliable,
            serialization: meta.serialization.as_wire(),
        },
    )
}

pub(crate) fn answer(dst: &str, connection_id: &str, sdp: String) -> String {
    answer_of("data", dst, connection_id, sdp)
}

/// A media call's OFFER (PeerJS `MediaConnection`: no label, reliability or serialization).
pub(crate) fn media_offer(dst: &str, connection_id: &str, sdp: String) -> String {
    to_text(
        "OFFER",
        dst,
        AnswerPayload {
            sdp: SessionDescription {
                kind: "offer".into(),
                sdp,
            },
            kind: "media",
            connection_id,
        },
    )
}

pub(crate) fn answer_of(kind: &'static str, dst: &str, connection_id: &str, sdp: String) -> String {
    to_text(
        "ANSWER",
        dst,
        AnswerPayload {
            sdp: SessionDescription {
                kind: "answer".into(),
                sdp,
            },
            kind,
            connection_id,
        },
    )
}

pub(crate) fn candidate(dst: &str, connection_id: &str, candidate: CandidateInit) -> String {
    candidate_of("data", dst, connection_id, candidate)
}

pub(crate) fn candidate_of(
    kind: &'static str,
    dst: &str,
    connection_id: &str,
    candidate: CandidateInit,
) -> String {
    to_text(
        "CANDIDATE",
        dst,
        CandidatePayload {
            candidate,
            kind,
            connection_id,
        },
    )
}

/// The value of the first `a=<attr>:` line of an SDP.
pub(crate) fn sdp_attr<'a>(sdp: &'a str, attr: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix("a=")
            .and_then(|l| l.strip_prefix(attr))
            .and_then(|l| l.strip_prefix(':'))
    })
}

/// The SHA-256 fingerprint an SDP declares, in colon-hex (`AB:CD:…`, upper case).
pub(crate) fn sdp_fingerprint(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| {
        let rest = l.trim_end().strip_prefix("a=fingerprint:")?;
        let (func, hex) = rest.split_once(' ')?;
        func.eq_ignore_ascii_case("sha-256")
            .then(|| hex.trim().to_ascii_uppercase())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn offer_has_the_peerjs_shape() {
        let meta = OfferMeta {
            connection_id: "dc_x",
            label: "dc_x",
            reliable: true,
            serialization: Serialization::Binary,
            metadata: None,
        };
        assert_eq!(
            offer("bob", "v=0".into(), &meta),
            r#"{"type":"OFFER","dst":"bob","payload":{"sdp":{"type":"offer","sdp":"v=0"},"type":"data","connectionId":"dc_x","label":"dc_x","reliable":true,"serialization":"binary"}}"#
        );
        let c = CandidateInit {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        assert_eq!(
            candidate("bob", "dc_x", c),
            r#"{"type":"CANDIDATE","dst":"bob","payload":{"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0},"type":"data","connectionId":"dc_x"}}"#
        );
    }

    #[test]
    fn server_frames_parse_and_bad_ones_are_errors() {
        assert!(matches!(
            parse_server(r#"{"type":"OPEN"}"#),
            Ok(ServerMsg::Open)
        ));
        assert!(matches!(
            parse_server(r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#),
            Ok(ServerMsg::Error(m)) if m == "Invalid key provided"
        ));
        let offer = r#"{"type":"OFFER","src":"a","dst":"b","payload":{"sdp":{"type":"offer","sdp":"v=0"},"type":"data","connectionId":"dc_1","label":"l","reliable":true,"serialization":"binary","browser":"chrome"}}"#;
        let Ok(ServerMsg::Offer { src, payload }) = parse_server(offer) else {
            panic!("offer")
        };
        assert_eq!(src, "a");
        assert_eq!(payload.connection_id.as_deref(), Some("dc_1"));
        for bad in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"type":7}"#,
            r#"{"type":"OFFER","payload":{}}"#,
            r#"{"type":"OFFER","src":"a"}"#,
            r#"{"type":"OFFER","src":"a","payload":"x"}"#,
            r#"{"type":"OFFER","src":"a","payload":{"sdp":5}}"#,
            r#"{"type":"CANDIDATE","src":"a","payload":{"candidate":{"sdpMid":"0"}}}"#,
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_server(r#"{"type":"HEARTBEAT"}"#),
            Ok(ServerMsg::Other)
        ));
    }

    #[test]
    fn sdp_helpers() {
        let sdp = "v=0\r\na=mid:0\r\na=fingerprint:sha-256 ab:CD:01\r\n";
        assert_eq!(sdp_attr(sdp, "mid"), Some("0"));
        assert_eq!(sdp_fingerprint(sdp).as_deref(), Some("AB:CD:01"));
        assert_eq!(sdp_fingerprint("v=0"), None);
    }
}
