//! Data-mesh control frames (KIBITZ.md §4.9) on a media-peer pair's `sig` channel, and the
//! classification of everything that arrives on a mesh channel.
//!
//! Control frames are tagged `t`; content envelopes ([`crate::content`]) are tagged `k`. Decode
//! a mesh message as [`MeshFrame`]: control, content, or anything else kept whole.

use serde::{Deserialize, Deserializer, Serialize};

use crate::content::Content;
use crate::presence::Raw;

/// Label of the second (bulk) mesh channel.
pub const BULK_LABEL: &str = "bulk";
/// Media-health heartbeat interval, ms.
pub const MH_INTERVAL_MS: u64 = 2000;
/// Channels close this long after `bye`, ms.
pub const BYE_CLOSE_MS: u64 = 250;

/// `offer` or `answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    /// An offer.
    Offer,
    /// An answer.
    Answer,
}

/// An RTCSessionDescriptionInit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// Offer or answer.
    #[serde(rename = "type")]
    pub kind: SdpType,
    /// The SDP.
    pub sdp: String,
}

/// An RTCIceCandidateInit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidateInit {
    /// The candidate line (`""` = end of candidates).
    #[serde(default)]
    pub candidate: String,
    /// Media stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// m-line index.
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_m_line_index: Option<u16>,
    /// ICE ufrag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A control frame on the `sig` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum MeshControl {
    /// Capabilities, sent on sig open (`{t:"cap", bulk:1}`).
    Cap {
        /// `1` when the sender takes a bulk channel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bulk: Option<u8>,
    },
    /// Media-health heartbeat (kbps; zeros without a media connection).
    Mh {
        /// Inbound video.
        #[serde(default)]
        v: f64,
        /// Inbound audio.
        #[serde(default)]
        a: f64,
        /// Outbound video.
        #[serde(default)]
        ov: f64,
        /// Outbound audio.
        #[serde(default)]
        oa: f64,
    },
    /// Media is dead here: initiator, please re-create.
    MhDead,
    /// Initiator, please create media.
    MDial,
    /// Offer or answer of the owned media connection.
    MSdp {
        /// The description.
        d: SessionDescription,
        /// Relay-only ICE.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<bool>,
    },
    /// A trickled ICE candidate.
    MIce {
        /// The candidate.
        c: IceCandidateInit,
    },
    /// Re-create media.
    MRecreate {
        /// Relay-only ICE.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<bool>,
    },
    /// Graceful leave.
    Bye,
}

impl MeshControl {
    /// The `cap` frame a peer that takes a bulk channel sends.
    pub fn cap_bulk() -> Self {
        Self::Cap { bulk: Some(1) }
    }
}

/// Anything received on a mesh channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MeshFrame {
    /// A control frame (`t`).
    Control(MeshControl),
    /// A content envelope (`k`).
    Content(Content),
    /// Anything else, kept whole.
    Unknown(Raw),
}

impl<'de> Deserialize<'de> for MeshFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_raw(Raw::deserialize(d)?))
    }
}

impl MeshFrame {
    /// Classifies a value: control if it is a map with a known `t`, content if one with a
    /// known `k`, else unknown.
    pub fn from_raw(raw: Raw) -> Self {
        if matches!(raw, Raw::Map(_)) {
            if let Ok(c) = MeshControl::deserialize(raw.clone()) {
                return Self::Control(c);
            }
            if let Ok(c) = Content::deserialize(raw.clone()) {
                return Self::Content(c);
            }
        }
        Self::Unknown(raw)
    }
}

/// Whether this side dials a pair: the lexicographically smaller id initiates.
pub fn should_initiate(own_id: &str, other_id: &str) -> bool {
    own_id < other_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_frames_round_trip() {
        let frames = [
            json!({"t": "cap", "bulk": 1}),
            json!({"t": "mh", "v": 800.0, "a": 32.0, "ov": 0.0, "oa": 0.5}),
            json!({"t": "mh-dead"}),
            json!({"t": "m-dial"}),
            json!({"t": "m-sdp", "d": {"type": "offer", "sdp": "v=0\r\n"}, "relay": false}),
            json!({"t": "m-ice", "c": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
                   "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}}),
            json!({"t": "m-recreate", "relay": true}),
            json!({"t": "bye"}),
        ];
        for v in frames {
            let f: MeshFrame = serde_json::from_value(v.clone()).unwrap();
            assert!(matches!(f, MeshFrame::Control(_)), "{v}");
            assert_eq!(serde_json::to_value(&f).unwrap(), v);
        }
        assert_eq!(
            serde_json::to_value(MeshControl::cap_bulk()).unwrap(),
            json!({"t": "cap", "bulk": 1})
        );
        let app: MeshFrame = serde_json::from_value(json!({"k": "app", "data": 1})).unwrap();
        assert!(matches!(app, MeshFrame::Content(Content::App { .. })));
        for v in [json!({"t": "m-warp"}), json!({"k": "nope"}), json!([1, 2])] {
            let f: MeshFrame = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(f, MeshFrame::Unknown(crate::presence::tests::raw(v)));
        }
        assert!(should_initiate("a", "b") && !should_initiate("b", "a"));
    }
}
