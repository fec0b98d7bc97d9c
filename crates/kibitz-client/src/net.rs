//! What the engine asks of the network, and what the network tells it.
//!
//! The engine speaks in PeerJS terms: a *peer* is one registration with the broker (an id),
//! a *connection* is one reliable, ordered DataConnection between two peers. Frames are
//! [`Value`]s; the transport serializes them (BinaryPack on the real wire).
//!
//! Handles: the engine names every peer it opens ([`PeerKey`]) and every connection it dials
//! ([`ConnId`] below [`ConnId::INCOMING`]); the transport names connections that others dial to
//! it, with ids at or above [`ConnId::INCOMING`]. Events for a handle the engine has dropped
//! are stale and ignored, so a transport never has to cancel anything.

use kibitz_proto::binarypack::Value;

/// Which of a participant's two peers (KIBITZ.md §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Plane {
    /// The presence peer: claims `kbz-v1-<room>` or dials it.
    Presence,
    /// The media peer: its id is the voiceId; carries the data mesh.
    Media,
}

/// One broker registration the engine asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey(pub u64);

/// One DataConnection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Connections the transport accepted on the engine's behalf are numbered from here.
    pub const INCOMING: u64 = 1 << 63;

    /// The `n`th incoming connection.
    pub fn incoming(n: u64) -> Self {
        Self(Self::INCOMING | n)
    }

    /// Whether the transport named it (someone dialled us).
    pub fn is_incoming(self) -> bool {
        self.0 & Self::INCOMING != 0
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_incoming() {
            write!(f, "in{}", self.0 & !Self::INCOMING)
        } else {
            write!(f, "c{}", self.0)
        }
    }
}

/// Why a peer failed or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFailure {
    /// The broker refused the id: someone holds it (`ID-TAKEN`).
    IdTaken,
    /// The peer lost its id or its broker connection after it was open.
    Lost,
    /// Anything else (network, server error); worth retrying.
    Error,
}

/// What the engine asks the transport to do.
#[derive(Debug, Clone, PartialEq)]
pub enum NetCmd {
    /// Register with the broker: with `id` (a claim) or an anonymous id.
    OpenPeer {
        /// Which plane.
        plane: Plane,
        /// The engine's name for this registration.
        key: PeerKey,
        /// The id to claim, or `None` for one the broker assigns.
        id: Option<String>,
    },
    /// Drop a registration and every connection on it.
    ClosePeer {
        /// The registration.
        key: PeerKey,
    },
    /// Dial `remote` from peer `peer`.
    Connect {
        /// From which registration.
        peer: PeerKey,
        /// The engine's name for the connection.
        conn: ConnId,
        /// The remote peer id.
        remote: String,
        /// The channel label; `None` is PeerJS's default (the connectionId). The data mesh
        /// labels its second channel [`BULK_LABEL`].
        label: Option<String>,
    },
    /// Send one frame (reliable, ordered).
    Send {
        /// On which connection.
        conn: ConnId,
        /// The frame.
        frame: Value,
    },
    /// Close a connection.
    Close {
        /// The connection.
        conn: ConnId,
    },
}

/// The label of the data mesh's second channel (KIBITZ.md §4.9), which carries content so
/// a large transfer cannot hold up control frames on the first.
pub const BULK_LABEL: &str = "bulk";

/// What the transport tells the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum NetEvent {
    /// A registration is open under `id`.
    PeerOpen {
        /// The registration.
        key: PeerKey,
        /// The id the broker confirmed.
        id: String,
    },
    /// A registration failed or ended.
    PeerFailed {
        /// The registration.
        key: PeerKey,
        /// Why.
        failure: PeerFailure,
    },
    /// A dial failed: the remote peer is not registered (`EXPIRE`, PeerJS `peer-unavailable`)
    /// or the connection could not be set up.
    ConnFailed {
        /// The connection that will not open.
        conn: ConnId,
    },
    /// Someone dialled one of our peers and the connection is open.
    Incoming {
        /// The registration that was dialled.
        peer: PeerKey,
        /// The transport's name for the connection (at or above [`ConnId::INCOMING`]).
        conn: ConnId,
        /// The remote peer id.
        remote: String,
        /// The remote side's DTLS certificate fingerprint, if readable.
        fingerprint: Option<String>,
        /// The channel label the dialler chose (`None` when the transport cannot tell).
        label: Option<String>,
    },
    /// A connection we dialled is open.
    Open {
        /// The connection.
        conn: ConnId,
        /// The remote side's DTLS certificate fingerprint, if readable.
        fingerprint: Option<String>,
    },
    /// A frame arrived.
    Data {
        /// On which connection.
        conn: ConnId,
        /// The frame.
        frame: Value,
    },
    /// A connection closed (either side).
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// The broker says `remote` left (`LEAVE`). A broker with room leave notices sends this
    /// for the room id the moment its holder is gone for good, so a participant can claim it
    /// at once instead of waiting out the silence.
    Left {
        /// The registration the broker told.
        peer: PeerKey,
        /// Who left.
        remote: String,
    },
}
