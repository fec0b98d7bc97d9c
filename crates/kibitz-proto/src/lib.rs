//! Kibitz and PeerJS wire formats, in one place: pure types and functions, no I/O.
//!
//! - [`peerjs`]: the PeerJS signaling frames a broker and its clients exchange.
//! - [`turn`]: TURN REST credentials and Kibitz room grants.

pub mod peerjs;
pub mod turn;
