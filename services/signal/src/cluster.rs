//! Cluster mode: the shared registry on Redis, and this node's driver for it.
//!
//! Layout: `registry` is this node's side of one registry shard as a sans-IO state machine
//! (time, the core's commands and Redis replies in; Redis calls and answers for the core
//! out), with its inputs and outputs in `protocol` and the messages it keeps in `held`;
//! `sharded` puts one per shard behind one state machine (see its docs for what crosses
//! shards, and `claiming` for messages to an id whose claim is in flight here);
//! `driver` is the thin async layer that owns the Redis connections; `handle` is what the
//! broker holds (the bounded command queue, health); `scripts` holds the Lua scripts (the
//! `.lua` files) and turns calls into Redis commands; `wire` reads Redis answers.
//!
//! # Model
//! Every node has a random node id and a *node lease*: the key `{p}node:{node}` with a
//! `PX` expiry of `lease`, renewed every `lease / 3`. An id is held when its record
//! `{p}id:{id}` (a hash: `node`, `token`, `reg`) names a node whose lease is alive. Claims,
//! releases and routing are Lua scripts, so each is atomic against every other node:
//!
//! * claim: held by another token → `ID-TAKEN`; held with the same token → re-attach (the
//!   record moves here and the old node is told through its inbox); free → a new
//!   registration numbered from `{p}seq`, refused when the live nodes' id sets
//!   (`{p}ids:{node}`) already hold `concurrent_limit` ids. Queued messages come back in
//!   the claim's answer, so OPEN is followed by them in order, as on one node.
//! * release (socket closed, liveness timeout): deletes the record if it is still this
//!   registration's.
//! * route: a message for an id held elsewhere is appended to the holder's inbox, the stream
//!   `{p}inbox:{node}` that the holder reads with a blocking `XREAD`; a message for an id not
//!   held goes to the offline queue `{p}q:{id}` (src, frame pairs) whose deadline is in the
//!   sorted set `{p}qd`, with the same bounds as one node has. Every node sweeps due queues
//!   (an atomic pop, so each queue is expired by exactly one node) and relays one `EXPIRE`
//!   per sender.
//!
//! A node that dies stops renewing: within `lease` its ids are free (claims check the
//! holder's lease, not just the record) and any live node reaps its records later.
//!
//! # Shards
//! The registry is split into `shards` complete namespaces, each under the prefix
//! `{p}{s}:` whose hash tag puts all its keys in one Redis Cluster slot (with one shard on one
//! Redis the prefix is `{p}` itself, as before). An id lives in shard `crc16(id) % shards`;
//! each script declares the shard prefix as its key, so a Redis Cluster runs it on the master
//! of that slot. A shard whose master changes (a failover) is treated like a Redis that lost
//! its data.
//!
//! # Outages
//! All registry traffic runs in order on one connection, in pipelined batches (up to
//! `MAX_INFLIGHT` requests in flight; a run of messages is one route script call that writes
//! one inbox entry per receiving node). When Redis
//! cannot be reached, claims are refused with an in-band `ERROR` (never granted locally, so
//! an id never gets two owners) and messages for other nodes wait here, bounded, until their
//! queue deadline, when their senders get `EXPIRE`. A message whose route command got no
//! answer is sent again after reconnecting (at least once). On reconnect the node renews
//! its lease and re-asserts every id it still holds; an id another client took meanwhile is
//! closed here. If the registry lost its data (its `{p}epoch` changed), claims are refused
//! cluster-wide for one lease period (`{p}settle`), so every live node can re-assert first.
//! A node keeps every message it handed to Redis for that message's queue lifetime (bounded
//! by `max_queued_total`); when it finds the registry lost its data it hands them again,
//! numbered, and receivers drop numbers they have seen, so unread inbox entries and offline
//! queues that died with Redis are not lost.

mod claiming;
mod direct;
mod driver;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handle;
mod held;
mod link;
mod protocol;
mod registry;
mod scripts;
mod sharded;
#[cfg(test)]
mod sim;
mod wire;

pub(crate) use direct::DirectMsg;
pub(crate) use driver::{Local, run};
pub(crate) use handle::Cluster;
pub(crate) use protocol::{Cmd, ToCore};
pub use sharded::{registry_shard, registry_slot};
pub use wire::{MSG_RECOVERING, MSG_UNAVAILABLE};
