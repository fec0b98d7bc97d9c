//! The room's public vocabulary: what goes into and comes out of the engine, and the
//! views and errors the controller API hands back. It uses nothing of the crate but the
//! transport vocabulary in [`crate::net`] (itself a leaf), so every part can use it.

use std::collections::BTreeMap;

use kibitz_proto::content::Content;
use kibitz_proto::grants::Grant;
use kibitz_proto::presence::{LobbyStatus, Meta};

use crate::net::{MediaLane, MediaMode, NetCmd, NetEvent};

/// The current time as the driver reads it: a monotonic clock and the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Now {
    /// Monotonic milliseconds (any epoch; only differences matter).
    pub ms: u64,
    /// Unix time, milliseconds (tokens and grants expire on it).
    pub unix_ms: u64,
}

impl Now {
    /// Unix seconds.
    pub fn unix(self) -> u64 {
        self.unix_ms / 1000
    }

    /// The same clocks `ms` milliseconds later.
    pub fn plus(self, ms: u64) -> Self {
        Self {
            ms: self.ms + ms,
            unix_ms: self.unix_ms + ms,
        }
    }
}

/// Input to [`Engine::handle_input`](crate::Engine::handle_input).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Something happened on the network.
    Net(NetEvent),
    /// The time given by the last [`Output::Timeout`] has come (early calls are harmless).
    Timeout,
}

/// What [`Engine::poll_output`](crate::Engine::poll_output) yields.
// Outputs are drained one at a time and handled at once; boxing events would only add
// allocations on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Ask the transport to do something.
    Net(NetCmd),
    /// Tell the application something.
    Event(Event),
    /// Nothing more for now: call [`Engine::handle_input`](crate::Engine::handle_input) with
    /// [`Input::Timeout`] at this monotonic time (ms), or earlier on any input.
    Timeout(u64),
}

/// Where this participant stands with the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not started.
    Idle,
    /// Claiming `kbz-v1-<room>`.
    Claiming,
    /// The id is taken: connecting to whoever holds it.
    Connecting,
    /// Connected to the authority.
    Connected,
    /// Holding `kbz-v1-<room>`: this participant coordinates the room.
    Authority,
    /// Lost the room; claiming again shortly.
    Reconnecting {
        /// Why.
        reason: String,
    },
    /// Out of the room for good (left, or kicked).
    Left {
        /// Why.
        reason: String,
    },
}

/// A roster member as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// voiceId.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Camera on.
    pub cam: bool,
    /// Announced meta.
    pub meta: Option<Meta>,
    /// This participant.
    pub is_self: bool,
    /// The verified host.
    pub is_host: bool,
    /// The grant in force for this member.
    pub grant: Grant,
}

/// A knocker waiting in the lobby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knocker {
    /// The knock's connection id (the `target` of `admit`/`deny`).
    pub id: String,
    /// The announced name.
    pub name: String,
}

/// Content that arrived on the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The sender's voiceId (the connection's remote peer id).
    pub from: String,
    /// Sent to us alone (`dm`).
    pub direct: bool,
    /// The envelope.
    pub content: Content,
}

/// One entry of the local audit feed. It names kinds and members, never content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at_unix: u64,
    /// What happened.
    pub kind: AuditKind,
}

/// What the audit feed records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditKind {
    /// We did not send content to `to`: its grant does not allow it.
    Withheld {
        /// Recipient voiceId.
        to: String,
        /// Envelope kind.
        what: String,
    },
    /// Content from `from` was dropped: the sender may not send it.
    Dropped {
        /// Sender voiceId.
        from: String,
        /// Envelope kind.
        what: String,
    },
    /// We may not send this ourselves.
    Blocked {
        /// Envelope kind.
        what: String,
    },
    /// The grants in force changed.
    GrantsChanged {
        /// Who sent them (voiceId), or `"lapsed"` when the issuing host left.
        by: String,
    },
    /// A frame for `to` never went out: its link did not open in time, too many waited, or
    /// it left the roster first.
    Unsent {
        /// Recipient voiceId.
        to: String,
        /// Envelope kind or control tag.
        what: String,
    },
    /// A media signalling frame was not acted on: its sender is not in the roster, or it
    /// came on a channel other than sig.
    MediaRefused {
        /// Sender voiceId.
        from: String,
        /// Its `t`.
        what: String,
    },
    /// A `caps` frame from someone other than the verified host was ignored.
    CapsRefused {
        /// Sender voiceId.
        from: String,
    },
}

/// What the engine tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Status changed.
    Status(Status),
    /// The roster changed: the whole list.
    Participants(Vec<Participant>),
    /// Someone joined the roster.
    Join(Participant),
    /// Someone left the roster (voiceId).
    Leave(String),
    /// Content arrived.
    Message(Message),
    /// Our own lobby status (waiting, admitted, denied, locked, unverified).
    Lobby(LobbyStatus),
    /// The knockers waiting (for the host, or the authority).
    LobbyQueue(Vec<Knocker>),
    /// The host cleared the chat.
    Reset,
    /// The grants in force changed.
    Grants(BTreeMap<String, Grant>),
    /// An audit entry.
    Audit(AuditEntry),
    /// A media connection with a peer is connected.
    MediaConnected {
        /// The peer's voiceId.
        voice_id: String,
        /// How.
        mode: MediaMode,
    },
    /// A media connection with a peer ended.
    MediaDisconnected {
        /// The peer's voiceId.
        voice_id: String,
    },
    /// Media (made by the driver, not the engine): a lane of a participant started flowing.
    Track {
        /// The sender's voiceId.
        voice_id: String,
        /// Which lane.
        lane: MediaLane,
    },
    /// Media (driver): a video lane's picture size, from a keyframe (no decoding).
    VideoSize {
        /// The sender's voiceId.
        voice_id: String,
        /// Which lane.
        lane: MediaLane,
        /// Width in pixels.
        width: u16,
        /// Height in pixels.
        height: u16,
    },
    /// Media (driver): a participant started or stopped speaking (the web client's rule:
    /// received RMS above 0.045, held 350 ms).
    Speaking {
        /// The sender's voiceId.
        voice_id: String,
        /// Whether speaking now.
        speaking: bool,
        /// The RMS (0..1) that decided it.
        level: f32,
    },
    /// As authority: a host command was refused.
    HostCommandRefused {
        /// Why.
        reason: String,
    },
    /// As authority: an agent's key assertion verified, carrying its manifest grant.
    AgentVerified {
        /// The agent's presence connection.
        conn: String,
        /// The grant its key entry names.
        grant: Grant,
    },
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The media peer is not open yet.
    #[error("not connected to the mesh yet")]
    NotConnected,
    /// Our grant does not allow it.
    #[error("not permitted by this participant's grant")]
    NotPermitted,
    /// No such roster member.
    #[error("no member {0} in the roster")]
    UnknownMember(String),
}

/// Why a host operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The room commits no host: nobody moderates.
    #[error("the room has no host")]
    NoHostTier,
    /// This participant cannot moderate (no key, or not the soft host coordinating).
    #[error("this participant is not the host")]
    NotHost,
    /// Not connected to the room.
    #[error("not connected to the room")]
    NotConnected,
}
