//! The broker as a sans-IO state machine: peer table, offline queues, liveness, limits.
//!
//! # Run loop
//! The I/O layer owns sockets and one timer. It tells the core about connections and frames
//! through the `handle_*` methods, with `now` passed in, and after any of them drains
//! [`Broker::poll_output`] until it returns [`Output::Timeout`]: it carries out each other
//! output in order, then calls [`Broker::handle_timeout`] at the time given (or earlier, on
//! any input). The core never reads the clock and never touches a socket.
//!
//! # Layout
//! [`Broker`] (`broker`) is the single-node core; `cluster` holds its handlers for what a
//! shared registry reports; `notices` keeps the books for room leave notices; `api` is the
//! vocabulary the driver and the core exchange.
//!
//! # Cluster mode
//! With [`CoreConfig::cluster`], the core still owns this node's sockets, peer table,
//! liveness and rate limits, but the id space, offline queues and routing to other nodes live
//! in a shared registry that the I/O layer drives. The core asks for what it cannot decide
//! alone with [`Output::Claim`], [`Output::Release`] and [`Output::Forward`], and learns the
//! answers through [`Broker::handle_claim`], [`Broker::handle_remote`],
//! [`Broker::handle_moved`], [`Broker::handle_lost`] and [`Broker::handle_expired`]. Relays
//! between two sockets of the same node never leave the core.

mod api;
mod broker;
mod cluster;
mod notices;
#[cfg(test)]
mod tests;

pub use api::{Claim, CloseReason, ConnId, CoreConfig, Forward, OpenParams, Output};
pub use broker::Broker;
pub use notices::{ROOM_PREFIX, RoomNotices};
