//! The Kibitz room engine ([`kibitz_client::Engine`]) on real networks.
//!
//! [`start`] runs one participant: a task owns the engine and two `kibitz-rtc` PeerJS peers
//! (presence and media) that share one DTLS identity, carries out what the engine asks,
//! feeds back what the peers report, and keeps the engine's timer. [`RoomHandle`] is the
//! controller; events arrive on a channel. [`select`] chooses the broker (`/api/signal` or
//! given) and the TURN relay (`/api/turn`) as the web client does; relay-only is fail-closed.
//! [`lan`] is the offline mode: a participant of a LAN room on a `kibitz hub` (LAN.md).

mod driver;
pub mod lan;
pub mod media;
pub mod select;

pub use driver::{
    HostAction, HostActionError, RoomHandle, RoomOptions, Stopped, start, start_with_media,
};
