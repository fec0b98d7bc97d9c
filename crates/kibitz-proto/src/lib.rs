//! Kibitz and PeerJS wire formats, in one place: pure types and functions, no I/O.
//!
//! - [`peerjs`]: the PeerJS signaling frames a broker and its clients exchange.
//! - [`binarypack`]: the PeerJS DataChannel serialization (BinaryPack), chunking and control messages.
//! - [`turn`]: TURN REST credentials and Kibitz room grants.
//! - [`room`]: room ids: normalisation, the `kbz-v1-` signaling id, fresh and page rooms.
//! - [`gate`]: the gate descriptor a room link carries, and where its parameters ride.
//! - [`token`]: ECDSA P-256 signed tokens, JWKs and invites, as WebCrypto makes them.
//! - [`seal`]: passphrase-sealed blobs (PBKDF2 + AES-256-GCM), e.g. the host key in `ghk`.
//! - [`link`]: reading pasted room links and codes, building room and share links.
//! - [`presence`]: the presence wire (participant ⇄ authority), the `meta` block and `~kbz`.
//! - [`content`]: content envelopes on the data mesh (chat, transfers, app, ink, caps, …).
//! - [`media`]: media lanes and the grant rule that gates them.
//! - [`mesh`]: data-mesh control frames and classifying what a mesh channel carries.
//! - [`grants`]: capability grants: sanitising, intersecting, defaults by role.
//! - [`lan`]: offline mode: the hub blob, the synthesised answer, hub frames and LAN room payloads.
//! - [`hostcmd`]: signed host commands (`kbz-host-cmd.v1`) and their replay guard.
//! - [`agent`]: agent key assertions (`kbz-agent-key.v1`) and key thumbprints.
//! - [`manifest`]: signed room manifests (members, domains, agent keys).
//! - [`credit`]: agent credit JWTs (RS256 against an issuer's JWKS).
//! - [`SplitMix64`]: the one small deterministic generator (seeded ids, simulations, tests).

pub mod agent;
pub mod binarypack;
pub mod content;
pub mod credit;
pub mod gate;
pub mod grants;
pub mod hostcmd;
pub mod lan;
pub mod link;
pub mod manifest;
pub mod media;
pub mod mesh;
pub mod peerjs;
pub mod presence;
pub mod room;
pub mod seal;
mod splitmix;
pub mod token;
pub mod turn;

pub use splitmix::SplitMix64;

/// The RNG traits (rand_core 0.6) that key generation and sealing take, for matching versions.
pub use rand_core;
