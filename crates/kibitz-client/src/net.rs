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
//!
//! # Media (MEDIA.md)
//! With [`RoomConfig::media`](crate::RoomConfig::media) on, the engine also runs one media
//! connection per roster peer and tells the transport what to build; the transport does the
//! RTP, codecs and ICE. Media connections are named by [`ConnId`]s from the same counter as
//! data connections (the engine names every one, incoming calls excepted). Per peer the mode is
//! [`MediaMode::Legacy`] (a PeerJS MediaConnection through the broker, on the media peer) or
//! [`MediaMode::Owned`] (a self-made peer connection whose SDP and candidates the engine
//! carries as `m-sdp`/`m-ice` on the data mesh's sig channel). What the transport must do:
//!
//! - [`NetCmd::MediaGates`]: apply at once, to every media connection (existing and future):
//!   per peer (voiceId), a lane whose gate is `false` sends its placeholder instead of the real
//!   source (silence that flows, a 2×2 black frame; replaceTrack, never renegotiation); peers
//!   not in `send` get every lane gated. `receive` names the lanes we may record or forward:
//!   zero / drop the others. It always precedes the first call, answer or answering signal
//!   for a peer, so the first packet is already gated.
//! - [`NetCmd::MediaCall`]: legacy: place a PeerJS call from the media peer to `remote`
//!   (audio, video and the `"undefined"` data channel) → [`NetEvent::MediaOpen`] or
//!   `MediaClosed`.
//!   Owned: create a pc (mic, camera, share, share-audio lanes; relay-only ICE when `relay`)
//!   and make an offer → [`NetEvent::MediaLocalSignal`] with the offer, then candidates.
//! - [`NetCmd::MediaAnswerCall`]: answer the legacy call named by a
//!   [`NetEvent::MediaIncomingCall`] with our stream.
//! - [`NetCmd::MediaSignal`]: owned: apply the remote's description or candidate to `conn`.
//!   The engine always names the connection (`Some`): a connection the transport does not
//!   know yet, with an offer, means "build an answering pc under this name" (relay-only when
//!   `relay`), then report the answer and candidates as `MediaLocalSignal`. Candidates that
//!   arrive before the remote description are queued by the transport. (`None` is not
//!   emitted.)
//! - [`NetCmd::MediaRestartIce`]: owned: ICE restart on `conn` (a new offer follows as
//!   `MediaLocalSignal`).
//! - [`NetCmd::MediaClose`]: close `conn` at once; no event needs to follow.
//! - Report [`NetEvent::MediaOpen`] when the connection is connected (media can flow),
//!   [`NetEvent::MediaClosed`] when it ends (`failed` when ICE/DTLS failed), and
//!   [`NetEvent::MediaStats`] about once a second per open connection (cumulative bytes:
//!   the engine's `mh` figures and its recovery ladder depend on them).

use std::collections::BTreeMap;

use kibitz_proto::binarypack::Value;
use kibitz_proto::mesh::IceCandidateInit;

pub use kibitz_proto::media::{LaneGates, MediaLane};

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
    /// Media: call `remote` (legacy) or create a pc and offer (owned). See the module docs.
    MediaCall {
        /// The engine's name for the media connection.
        conn: ConnId,
        /// The remote voiceId.
        remote: String,
        /// How.
        mode: MediaMode,
        /// Relay-only ICE.
        relay: bool,
    },
    /// Media (legacy): answer the incoming call `conn` with our stream.
    MediaAnswerCall {
        /// The call, as [`NetEvent::MediaIncomingCall`] named it.
        conn: ConnId,
    },
    /// Media (owned): feed the remote's description or candidate to a pc.
    MediaSignal {
        /// The pc; one the transport does not know yet, with an offer, is a new answering pc.
        conn: Option<ConnId>,
        /// The remote voiceId.
        remote: String,
        /// The remote's offer, answer or candidate.
        signal: MediaSignal,
        /// Relay-only ICE (for a new pc).
        relay: bool,
    },
    /// Media (owned): restart ICE on a pc (a new offer follows).
    MediaRestartIce {
        /// The pc.
        conn: ConnId,
    },
    /// Media: close a media connection.
    MediaClose {
        /// The connection.
        conn: ConnId,
    },
    /// Media: which lanes may carry their real source, per peer (sending) and for us
    /// (receiving). Emitted whenever any gate changes and before any call or answer for a peer.
    MediaGates {
        /// voiceId → what we may send that peer.
        send: BTreeMap<String, LaneGates>,
        /// What we may record or forward ourselves.
        receive: LaneGates,
    },
}

/// How media runs with one peer (MEDIA.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MediaMode {
    /// PeerJS MediaConnections through the broker (the v0.1.0 / extension build).
    Legacy,
    /// One self-made peer connection, signalled on the sig channel (`m-sdp`, `m-ice`).
    Owned,
}

/// An owned media connection's signalling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSignal {
    /// An offer (`offer`) or answer.
    Sdp {
        /// Offer or answer.
        offer: bool,
        /// The SDP (never logged).
        sdp: String,
    },
    /// A trickled candidate.
    Candidate(IceCandidateInit),
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
    /// Media (legacy): a PeerJS media call arrived on our media peer (`OFFER`, `type:"media"`).
    /// The transport names it (at or above [`ConnId::INCOMING`]); the engine answers it with
    /// [`NetCmd::MediaAnswerCall`] or drops it with [`NetCmd::MediaClose`].
    MediaIncomingCall {
        /// The transport's name for the call.
        conn: ConnId,
        /// The caller's voiceId.
        remote: String,
    },
    /// Media (owned): our pc made an offer, an answer or a candidate, for the engine to carry.
    MediaLocalSignal {
        /// The pc.
        conn: ConnId,
        /// What it made.
        signal: MediaSignal,
    },
    /// Media: a connection is connected.
    MediaOpen {
        /// The connection.
        conn: ConnId,
    },
    /// Media: a connection ended.
    MediaClosed {
        /// The connection.
        conn: ConnId,
        /// ICE or DTLS failed (rather than a close).
        failed: bool,
    },
    /// Media: cumulative byte counts of one open connection, about once a second.
    MediaStats {
        /// The connection.
        conn: ConnId,
        /// Audio received (all audio lanes).
        audio_in_bytes: u64,
        /// Video received.
        video_in_bytes: u64,
        /// Audio sent.
        audio_out_bytes: u64,
        /// Video sent.
        video_out_bytes: u64,
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
