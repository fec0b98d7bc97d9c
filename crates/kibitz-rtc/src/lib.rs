//! A Rust PeerJS peer: the PeerJS broker protocol over WebSocket, PeerJS-compatible WebRTC
//! data connections and media connections (Opus/VP8) on [str0m](https://docs.rs/str0m)
//! (sans-IO WebRTC).
//!
//! # Model
//!
//! - [`PeerCore`] is the whole peer as a sans-IO state machine, in str0m's shape (as the
//!   room engine in `kibitz-client`): [`PeerCore::handle_input`]`(now, `[`Input`]`)` takes
//!   broker frames, UDP datagrams, the broker socket going up or down and time; commands
//!   ([`PeerCore::connect`], [`PeerCore::send`], [`PeerCore::close`], the media commands)
//!   take `now` too.
//!   **After any of them, drain [`PeerCore::poll_output`] until it returns
//!   [`Output::Timeout`]** (frames for the broker, datagrams, [`Event`]s before it), then
//!   feed [`Input::Timeout`] at the time it gives. It never reads the clock and never
//!   touches a socket; str0m draws its own randomness (ICE credentials, DTLS).
//! - [`Peer::connect`] starts the thin tokio driver: one task owning the broker WebSocket
//!   (plain or TLS) and one UDP socket per connection, as browsers have one per peer
//!   connection (two connections between the same peers would otherwise share a 5-tuple,
//!   which DTLS cannot tell apart). It keeps spare sockets bound and hands them to the core
//!   ([`PeerCore::add_socket`]). It returns a [`PeerHandle`] to command it and an
//!   [`Events`] stream.
//! - One str0m `Rtc` per PeerJS connectionId. The offerer creates the single data channel
//!   (label = connectionId unless given, `ordered = reliable`); the answerer takes whatever
//!   channel arrives on that connection. OFFER/ANSWER/CANDIDATE use the payload shapes of
//!   peerjs 1.5. There is no candidate gathering: the peer advertises the connection's UDP
//!   socket address (with [`PeerOptions::host_ips`] when bound to `0.0.0.0`) in its SDP and
//!   as trickled CANDIDATEs, and learns the remote's from its SDP, its CANDIDATEs, or as
//!   peer-reflexive.
//! - Relay-only ([`PeerOptions::relay`], `iceTransportPolicy: "relay"`): each connection's
//!   socket talks to the TURN server only. The connection allocates (long-term credentials:
//!   the `/api/turn` REST username and password), advertises nothing but the relay address
//!   (trickled once allocated), installs a permission and channel for every remote candidate
//!   (an ICE-controlled agent only answers checks, which the server would otherwise drop),
//!   and refreshes. No allocation, no connection: a refused Allocate closes it at once
//!   ([`CloseReason::Failed`]), an unreachable server lets the open timeout close it; there is
//!   never a direct fallback.
//! - Serializations ([`Serialization`]): `binary` (BinaryPack, chunked over 16 300 bytes,
//!   via `kibitz_proto::binarypack`), `json` (UTF-8 JSON in a binary frame) and `raw`.
//! - One DTLS certificate per [`Identity`]; give the same `Identity` to several peers (a
//!   participant's presence and media peers) so remote parties see one fingerprint
//!   ([`Identity::fingerprint`]); the remote's, verified by DTLS, comes with
//!   [`Event::ConnOpen`].
//! - Backpressure: each connection buffers at most [`PeerOptions::max_buffered`] bytes
//!   (queued here plus unacknowledged in SCTP); [`PeerHandle::send`] reports what is
//!   buffered and refuses with [`SendError::Full`] beyond; [`Event::BufferedLow`] says when
//!   to resume.
//! - Media connections, two kinds (`MEDIA.md` §2), each its own str0m `Rtc` and UDP socket
//!   like a data connection, relay-only likewise (fail-closed):
//!   - **Legacy**, a PeerJS `MediaConnection` through the broker: [`PeerCore::call`] offers
//!     (`type: "media"`, `connectionId: "mc_…"`, audio + video sendrecv plus the unordered
//!     `"undefined"` data channel, BUNDLE); an incoming media OFFER is [`Event::Call`], taken
//!     by [`PeerCore::answer_call`]. The channel closing (either side) hangs up both; a new
//!     OFFER from the same peer replaces the call ([`CloseReason::Replaced`]). Relay-only
//!     when [`PeerOptions::relay`] is set.
//!   - **Owned**, a bare peer connection whose SDP the application carries (over the data
//!     mesh): [`PeerCore::media_offer`] and [`PeerCore::media_signal`] take and give
//!     [`MediaSignal`]s (out as [`Event::MediaSignal`]); remote candidates wait for the remote
//!     description; a re-offer (the browser's ICE restart) is answered on the same
//!     connection; [`PeerCore::media_restart_ice`] offers with fresh ICE credentials (str0m
//!     `SdpApi::ice_restart`); an offer while ours is pending is [`MediaError::Glare`] and
//!     [`PeerCore::media_rollback`] drops ours (perfect negotiation is the caller's). Its
//!     `relay` argument makes that one connection relay-only through [`CoreConfig::relay`].
//!   - Only Opus and VP8 are negotiated (browsers offer more; an offer with neither is
//!     refused). Every m-line is sendrecv and all ours share one msid stream (`kibitz`;
//!     browsers drop media without one). An m-line is a [`LaneRef`]: its kind and ordinal
//!     among m-lines of that kind in SDP order (an answer takes the offer's order).
//!   - Frames in and out whole: [`PeerCore::write_media`] (an Opus packet at 48 kHz RTP time,
//!     a VP8 frame at 90 kHz; str0m packetizes), [`Event::MediaFrame`] (depacketized).
//!     [`Event::MediaOpen`] when ICE and DTLS are up, [`Event::MediaState`] when ICE loses or
//!     regains the remote (nothing is closed for it: the application decides),
//!     [`Event::KeyframeRequest`] for a remote PLI/FIR and [`PeerCore::request_keyframe`] to
//!     send one, [`Event::MediaClosed`] at the end; [`PeerCore::media_stats`] counts payload
//!     bytes. Frames beyond 2048 per connection between timer ticks are dropped (flood bound).
//! - [`Link`]: a bare peer connection with one text data channel and no PeerJS around it,
//!   sans-IO in the same shape, built on the data connection machinery (offer or answer,
//!   trickle, relay-only). Kibitz's offline mode uses it for the hub and for peers.
//! - Events are not bounded: drain [`Events`] promptly. The driver reads every channel as
//!   fast as data comes, so a consumer that stops reading lets the queue grow.
//!
//! # Errors
//!
//! Nothing from the broker or a remote panics: malformed frames and payloads, garbage SDP and
//! bad candidates become [`Event::SignalError`]; undecodable data becomes
//! [`Event::ConnError`]; a connection WebRTC gives up on ends with [`Event::ConnClosed`].
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kibitz_rtc::{BrokerConfig, ConnectOptions, Event, Identity, Message, Peer, PeerOptions};
//! let identity = Identity::generate()?;
//! let mut opts = PeerOptions::new(BrokerConfig::plain("127.0.0.1", 9000), identity.clone());
//! opts.id = Some("kbz-v1-room".into());
//! let (peer, mut events) = Peer::connect(opts).await?;
//! let conn = peer.connect("bob", ConnectOptions { reliable: true, ..Default::default() }).await?;
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         Event::ConnOpen { conn: c, .. } if c == conn => {
//!             peer.send(conn, Message::Pack("hello".into())).await?;
//!         }
//!         Event::Data { value, .. } => println!("{value:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod broker;
mod conn;
mod core;
mod driver;
mod identity;
mod link;
mod media;
mod message;
mod signal;
pub mod tls;
mod turn;

/// Fuzzing entry points (cargo feature `fuzzing`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::turn::fuzz::turn_client;
}

pub use broker::{BrokerConfig, BrokerError, check_broker, fetch_id};
pub use conn::{CloseReason, ConnError, SendError};
pub use core::{CoreConfig, Event, Input, Output, PeerCore};
pub use driver::{Events, Peer, PeerError, PeerHandle, PeerOptions};
pub use identity::{Identity, IdentityError};
pub use kibitz_proto::binarypack::Value as PackValue;
pub use link::{Link, LinkConfig, LinkError, LinkOutput};
pub use media::{
    LaneRef, MediaCodec, MediaError, MediaKind, MediaOptions, MediaSignal, MediaStats,
    MediaWriteError,
};
pub use message::{ConnId, ConnInfo, ConnectOptions, Message, Serialization};
pub use signal::{CandidateInit, SignalError};
pub use tls::{ClientTls, ClientTlsError, ClientTlsOptions, HttpClient};
pub use turn::{RelayConfig, RelayError};
