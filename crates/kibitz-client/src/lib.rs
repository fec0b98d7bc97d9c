//! The Kibitz room protocol as a deterministic, sans-IO engine (KIBITZ.md §4).
//!
//! One [`Engine`] is one participant: it claims `kbz-v1-<room>` or connects to whoever holds
//! it, coordinates the room when it holds the id (roster, lobby, lock, kicks, identity gate,
//! host commands), keeps the data mesh over the roster, and enforces capability grants.
//!
//! # Run loop
//! The engine never reads a clock, draws randomness or touches a socket. Time comes in as
//! [`Now`] with every call; randomness as a seed in [`RoomConfig`]; the network as
//! [`NetEvent`]s. After any call that takes a `now` — [`Engine::start`],
//! [`Engine::handle_input`], or a controller method — drain [`Engine::poll_output`] until it
//! returns [`Output::Timeout`]: carry out each [`NetCmd`], deliver each [`Event`], then call
//! `handle_input(now, Input::Timeout)` at the time given (or earlier, on any input).
//! The shape is str0m's (`handle_input(now, input)`, `poll_output() -> Output`): the outbox is
//! never `None`, a drained engine says when it next wants time. `kibitz-rtc`'s `PeerCore` has
//! the same shape.
//!
//! # Media
//! With [`RoomConfig::media`] on (the default) the engine also runs the media plane's room
//! logic (MEDIA.md): per peer it picks legacy (PeerJS calls) or owned (a pc signalled on the
//! mesh's sig channel) media, decides who calls, recovers owned connections (ICE restart,
//! re-create, relay-only), fills `mh` with measured kbps, and gates each peer's lanes by its
//! grant. It emits media [`NetCmd`]s and takes media [`NetEvent`]s; [`net`] documents what the
//! transport must do for each. [`Engine::media_links`] shows the state per peer.
//!
//! # No lost lines
//! Content and sig control frames for a roster member whose mesh link is still opening wait
//! in a bounded per-member queue and go out in order when it opens
//! ([`Engine::unsent_count`] counts what never did).
//!
//! # Errors
//! Frames from the network are never trusted: malformed or unknown frames are ignored (the
//! wire is additive-only), oversized credentials are refused, and no input panics.
//! Controller calls that cannot be carried out return [`SendError`] or [`HostError`].
//!
//! # Testing
//! [`sim`] runs many engines over a seeded in-memory network with latency, loss, partitions
//! and crashes, on a virtual clock.

mod authority;
pub mod config;
mod ctx;
mod engine;
pub mod lan;
mod media;
mod mesh;
pub mod net;
pub mod sim;
mod types;
pub mod verify;
pub mod wire;

pub use config::{AgentIdentity, HostCommit, RoomConfig};
pub use engine::Engine;
pub use media::MediaLink;
pub use mesh::{Lane, MeshLink};
pub use net::{
    BULK_LABEL, ConnId, LaneGates, MediaLane, MediaMode, MediaSignal, NetCmd, NetEvent,
    PeerFailure, PeerKey, Plane,
};
pub use types::{
    AuditEntry, AuditKind, Event, HostError, Input, Knocker, Message, Now, Output, Participant,
    SendError, Status,
};
