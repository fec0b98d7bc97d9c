//! Content envelopes on the data mesh (KIBITZ.md §4.9): chat, images, chunked transfers, app
//! payloads, ink, payment links, ID tokens, grants, schemas, relay lanes and widgets.
//!
//! Every envelope is an object tagged `k`. The sender is the DataConnection's peer id, never a
//! field. Decode as [`Wire<Content>`](crate::presence::Wire): unknown kinds are kept whole.
//! Opaque payloads (`app.data`, widget data, relay `m`, …) are kept as [`Raw`] values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::grants::{Grant, sanitize_grant};
use crate::presence::{Raw, Wire};

/// Longest chat text, in characters.
pub const MAX_CHAT_CHARS: usize = 500;
/// Transfer chunk size (48 KiB): `n` must equal `ceil(size / XFER_CHUNK)`.
pub const XFER_CHUNK: u64 = 48 * 1024;
/// Largest transfer held in memory (50 MiB).
pub const XFER_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// A chat message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    /// The text (≤ 500 characters).
    #[serde(default)]
    pub text: String,
    /// Directed to this peer only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<bool>,
    /// Message id, `"<voiceId>#<seq>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// Sent at, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// Original author (relayed history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Author's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A legacy inline image (≤ 256 KB).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Img {
    /// MIME type.
    pub mime: String,
    /// base64 data.
    pub data: String,
    /// File name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<f64>,
    /// Height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h: Option<f64>,
    /// Directed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<bool>,
    /// Message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// Sent at, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// Original author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Author's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name2: Option<String>,
}

/// What a transfer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XferKind {
    /// Long text.
    Text,
    /// An image.
    Image,
    /// A file.
    File,
}

/// `xbegin`: a chunked transfer starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XBegin {
    /// Transfer id.
    pub id: String,
    /// What it carries.
    pub kind: XferKind,
    /// Total bytes.
    pub size: u64,
    /// Number of chunks.
    pub n: u64,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// File name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Offered for download (the receiver accepts first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<bool>,
    /// Directed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<bool>,
    /// Message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// Sent at, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// Original author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Author's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_name: Option<String>,
}

impl XBegin {
    /// Whether the declared chunk count and size are consistent and within the in-memory cap.
    pub fn is_consistent(&self) -> bool {
        self.size <= XFER_MAX_BYTES && self.n == self.size.div_ceil(XFER_CHUNK)
    }
}

/// `xchunk` (xfer.v1): one base64 chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XChunk {
    /// Transfer id.
    pub id: String,
    /// Chunk index.
    pub i: u64,
    /// base64 chunk.
    pub data: String,
    /// Directed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<bool>,
}

/// `xend`: all chunks sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XEnd {
    /// Transfer id.
    pub id: String,
    /// SHA-256 hex of the whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Directed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<bool>,
}

/// A transfer control (`xcancel xaccept xdecline xack`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XCtl {
    /// Transfer id.
    pub id: String,
    /// Directed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<bool>,
}

/// `xresume`: resume from `have` chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XResume {
    /// Transfer id.
    pub id: String,
    /// Chunks already held.
    pub have: u64,
    /// Directed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<bool>,
}

/// An ink event (its own `k` tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum InkEvent {
    /// Pointer moved.
    Ptr {
        /// x.
        x: f64,
        /// y.
        y: f64,
    },
    /// Stroke point.
    Draw {
        /// Stroke id.
        sid: Raw,
        /// x.
        x: f64,
        /// y.
        y: f64,
        /// First point of a stroke.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start: Option<bool>,
        /// Stroke colour.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        color: Option<String>,
    },
    /// Clear the layer.
    Clear,
    /// Restore a snapshot.
    Restore {
        /// Snapshot image.
        image: Raw,
        /// Strokes.
        strokes: Raw,
    },
}

/// `ink`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ink {
    /// The event.
    pub e: Wire<InkEvent>,
    /// Sender's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<Raw>,
    /// Sender's colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<Raw>,
}

/// `widget`: a widget's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Widget {
    /// Widget id.
    pub id: String,
    /// Widget kind.
    pub kind: String,
    /// Widget state.
    #[serde(default)]
    pub data: Raw,
    /// Replayed to a newcomer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<bool>,
    /// Removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Author's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

/// A content envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Content {
    /// Chat text.
    Chat(Chat),
    /// Legacy inline image.
    Img(Img),
    /// Transfer begins.
    #[serde(rename = "xbegin")]
    XBegin(XBegin),
    /// Transfer chunk (xfer.v1).
    #[serde(rename = "xchunk")]
    XChunk(XChunk),
    /// Transfer ends.
    #[serde(rename = "xend")]
    XEnd(XEnd),
    /// Transfer cancelled.
    #[serde(rename = "xcancel")]
    XCancel(XCtl),
    /// Offered transfer accepted.
    #[serde(rename = "xaccept")]
    XAccept(XCtl),
    /// Offered transfer declined.
    #[serde(rename = "xdecline")]
    XDecline(XCtl),
    /// Resume a transfer.
    #[serde(rename = "xresume")]
    XResume(XResume),
    /// Transfer acknowledged.
    #[serde(rename = "xack")]
    XAck(XCtl),
    /// Opaque app payload.
    App {
        /// The payload.
        #[serde(default)]
        data: Raw,
    },
    /// A payment link.
    Pay {
        /// Label.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        /// URL.
        url: String,
        /// Directed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dm: Option<bool>,
    },
    /// Shared ink.
    Ink(Ink),
    /// A cert-bound OIDC ID token.
    Idtoken {
        /// The token.
        jwt: String,
    },
    /// Grants by voiceId, as sent (read them through [`Content::sanitized_grants`]).
    Caps {
        /// voiceId → grant.
        grants: BTreeMap<String, Raw>,
    },
    /// An app schema.
    Schema {
        /// Schema name.
        name: String,
        /// Version.
        #[serde(default)]
        version: Raw,
        /// The schema.
        #[serde(default)]
        schema: Raw,
    },
    /// Relay lane: ledger.
    Ledger {
        /// Lane message.
        #[serde(default)]
        m: Raw,
    },
    /// Relay lane: chat ledger.
    Chatledger {
        /// Lane message.
        #[serde(default)]
        m: Raw,
    },
    /// Relay lane: control.
    Ctl {
        /// Lane message.
        #[serde(default)]
        m: Raw,
    },
    /// Relay lane: blob.
    Blob {
        /// Lane message.
        #[serde(default)]
        m: Raw,
    },
    /// Relay lane: blob data.
    Blobdata {
        /// Lane message.
        #[serde(default)]
        m: Raw,
    },
    /// Widget state.
    Widget(Widget),
    /// A widget event.
    Wevt {
        /// Widget id.
        id: String,
        /// The event.
        #[serde(default)]
        e: Raw,
    },
}

impl Content {
    /// Whether a sender lacking `send-chat` may still send this (only `idtoken`).
    pub fn allowed_without_send_chat(&self) -> bool {
        matches!(self, Self::Idtoken { .. })
    }

    /// Whether the envelope is marked directed (`dm: true`).
    pub fn is_directed(&self) -> bool {
        let dm = match self {
            Self::Chat(c) => c.dm,
            Self::Img(i) => i.dm,
            Self::XBegin(x) => x.dm,
            Self::XChunk(x) => x.dm,
            Self::XEnd(x) => x.dm,
            Self::XCancel(x) | Self::XAccept(x) | Self::XDecline(x) | Self::XAck(x) => x.dm,
            Self::XResume(x) => x.dm,
            Self::Pay { dm, .. } => *dm,
            _ => None,
        };
        dm == Some(true)
    }

    /// For `caps`: every grant that reads as an object, sanitised.
    pub fn sanitized_grants(&self) -> BTreeMap<String, Grant> {
        match self {
            Self::Caps { grants } => grants
                .iter()
                .filter_map(|(id, g)| {
                    let json = serde_json::to_value(g).ok()?;
                    Some((id.clone(), sanitize_grant(&json)?))
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

/// The agent SDK envelope inside `app` data: `{__kib_agent: "chat"|"view"|"act", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "__kib_agent", rename_all = "lowercase")]
pub enum AgentApp {
    /// Agent chat.
    Chat {
        /// Text.
        text: String,
    },
    /// A view for the agent.
    View {
        /// The view.
        #[serde(default)]
        view: Raw,
    },
    /// An action from the agent.
    Act {
        /// The action.
        #[serde(default)]
        action: Raw,
    },
}

impl AgentApp {
    /// Reads app data as an agent envelope; `None` when it is other (raw) app data.
    pub fn from_app_data(data: &Raw) -> Option<Self> {
        Self::deserialize(data.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::tests::raw;
    use serde_json::json;

    fn content(v: &serde_json::Value) -> Wire<Content> {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn every_kind_round_trips() {
        let frames = [
            json!({"k": "chat", "text": "hi", "dm": true, "mid": "a#1", "ts": 1_700_000_000_000u64, "from": "a", "name": "A"}),
            json!({"k": "img", "mime": "image/png", "data": "AA==", "w": 2.0, "h": 3.0, "name2": "A"}),
            json!({"k": "xbegin", "id": "x", "kind": "file", "size": 49153, "n": 2, "mime": "a/b",
                   "name": "f", "offer": true, "author": "a", "authorName": "A"}),
            json!({"k": "xchunk", "id": "x", "i": 0, "data": "AA=="}),
            json!({"k": "xend", "id": "x", "hash": "00"}),
            json!({"k": "xcancel", "id": "x"}),
            json!({"k": "xaccept", "id": "x", "dm": true}),
            json!({"k": "xdecline", "id": "x"}),
            json!({"k": "xresume", "id": "x", "have": 3}),
            json!({"k": "xack", "id": "x"}),
            json!({"k": "app", "data": {"hello": "app-data", "n": 1}}),
            json!({"k": "pay", "label": "tip", "url": "https://pay"}),
            json!({"k": "ink", "e": {"k": "draw", "sid": "s1", "x": 0.5, "y": 0.25, "start": true, "color": "#f00"}, "n": "A", "c": "#f00"}),
            json!({"k": "ink", "e": {"k": "ptr", "x": 0.5, "y": 0.5}}),
            json!({"k": "ink", "e": {"k": "clear"}}),
            json!({"k": "ink", "e": {"k": "restore", "image": "data:", "strokes": []}}),
            json!({"k": "ink", "e": {"k": "laser", "x": 1}}),
            json!({"k": "idtoken", "jwt": "a.b.c"}),
            json!({"k": "caps", "grants": {"v1": {"perceive": ["read-chat"], "act": []}}}),
            json!({"k": "schema", "name": "poll", "version": 1, "schema": {"type": "object"}}),
            json!({"k": "ledger", "m": {"op": 1}}),
            json!({"k": "chatledger", "m": [1]}),
            json!({"k": "ctl", "m": "x"}),
            json!({"k": "blob", "m": null}),
            json!({"k": "blobdata", "m": 1}),
            json!({"k": "widget", "id": "w", "kind": "poll", "data": {"q": 1}, "replay": true}),
            json!({"k": "wevt", "id": "w", "e": {"vote": 2}}),
        ];
        for v in frames {
            let w = content(&v);
            assert!(matches!(w, Wire::Known(_)), "{v}");
            assert_eq!(serde_json::to_value(&w).unwrap(), v);
        }
        for v in [
            json!({"k": "future", "z": 1}),
            json!({"k": "chat", "text": 5}),
            json!({"t": "cap"}),
        ] {
            assert_eq!(
                content(&v),
                Wire::Unknown(crate::presence::tests::raw(v.clone()))
            );
        }
    }

    #[test]
    fn helpers() {
        let Wire::Known(c) =
            content(&json!({"k": "caps", "grants": {"a": {"act": ["speak", "x"]}, "b": 3}}))
        else {
            panic!()
        };
        let g = c.sanitized_grants();
        assert_eq!(g.len(), 1);
        assert_eq!(g["a"].act, [crate::grants::Act::Speak]);
        let Wire::Known(c) = content(&json!({"k": "chat", "text": "x", "dm": true})) else {
            panic!()
        };
        assert!(c.is_directed() && !c.allowed_without_send_chat());
        let Wire::Known(c) = content(&json!({"k": "idtoken", "jwt": "j"})) else {
            panic!()
        };
        assert!(c.allowed_without_send_chat());
        let begin: XBegin =
            serde_json::from_value(json!({"id": "x", "kind": "text", "size": 49153, "n": 2}))
                .unwrap();
        assert!(begin.is_consistent());
        assert!(!XBegin { n: 1, ..begin }.is_consistent());

        assert_eq!(
            AgentApp::from_app_data(&raw(json!({"__kib_agent": "chat", "text": "hi"}))),
            Some(AgentApp::Chat { text: "hi".into() })
        );
        assert_eq!(AgentApp::from_app_data(&raw(json!({"hello": 1}))), None);
    }
}
