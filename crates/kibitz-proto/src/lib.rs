//! Kibitz and PeerJS wire formats, in one place: pure types and functions, no I/O.
//!
//! - [`peerjs`]: the PeerJS signaling frames a broker and its clients exchange.

pub mod peerjs;
