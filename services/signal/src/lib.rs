//! PeerJS-compatible signaling broker (work in progress).
mod config;
pub use config::{Config, Limits};
