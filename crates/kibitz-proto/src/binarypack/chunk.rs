//! PeerJS chunking of large BinaryPack messages, and the `__peerData` control messages.
//!
//! A packed message over [`CHUNK_SIZE`] bytes goes out as several maps
//! `{"__peerData": msg#, "n": i, "data": <bin>, "total": count}` (keys in that order), each
//! packed on its own. `msg#` counts per connection from 1 ([`Chunker`]). The receiver
//! ([`Reassembler`]) joins the slices of one `msg#` in `n` order once all have come, and
//! unpacks the result. Any top-level map with a truthy `__peerData` is a chunk or control
//! message and never user data ([`classify`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Error, Limits, Value, decode, encode};

/// The largest packed message sent whole; larger ones are cut into slices of this size.
pub const CHUNK_SIZE: usize = 16_300;

/// The key that marks chunks and control messages.
pub const PEER_DATA: &str = "__peerData";

/// `{"__peerData":{"type":"close"}}`, sent by `close({flush: true})`.
pub const CLOSE: &[u8] = b"\x81\xba__peerData\x81\xb4type\xb5close";

/// Numbers a connection's outgoing chunked messages from 1 and packs them.
#[derive(Debug, Clone, Default)]
pub struct Chunker {
    last: u64,
}

impl Chunker {
    /// A fresh counter for one connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// The DataChannel messages to send for `packed` (the output of [`encode`]): the message
    /// itself when it fits in [`CHUNK_SIZE`], else one packed chunk map per slice.
    pub fn split(&mut self, packed: Vec<u8>) -> Vec<Vec<u8>> {
        if packed.len() <= CHUNK_SIZE {
            return vec![packed];
        }
        self.last += 1;
        let id = self.last;
        let total = packed.len().div_ceil(CHUNK_SIZE);
        packed
            .chunks(CHUNK_SIZE)
            .enumerate()
            .map(|(n, slice)| chunk_frame(id, n, total, slice))
            .collect()
    }
}

fn chunk_frame(id: u64, n: usize, total: usize, slice: &[u8]) -> Vec<u8> {
    let as_int = |x: usize| i64::try_from(x).map_or(Value::UInt(x as u64), Value::Int);
    let map = Value::Map(vec![
        (
            PEER_DATA.into(),
            i64::try_from(id).map_or(Value::UInt(id), Value::Int),
        ),
        ("n".into(), as_int(n)),
        ("data".into(), Value::Bin(slice.to_vec())),
        ("total".into(), as_int(total)),
    ]);
    // Cannot fail: integers and a slice of at most CHUNK_SIZE bytes.
    encode(&map).unwrap_or_default()
}

/// What one received DataChannel message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// User data.
    Data(Value),
    /// One slice of a chunked message.
    Chunk {
        /// The sender's message number (`__peerData`), as sent.
        id: Value,
        /// 0-based slice index.
        n: u32,
        /// Number of slices.
        total: u32,
        /// The slice.
        data: Vec<u8>,
    },
    /// `{"__peerData":{"type":"close"}}`: the sender is closing.
    Close,
    /// Another control message (truthy `__peerData`), to be ignored.
    Control(Value),
}

/// Sorts a decoded top-level value into user data, a chunk or a control message.
pub fn classify(value: Value) -> Frame {
    let peer_data = match value.get(PEER_DATA) {
        Some(p) if p.is_truthy() => p.clone(),
        _ => return Frame::Data(value),
    };
    if peer_data.get("type").and_then(Value::as_str) == Some("close") {
        return Frame::Close;
    }
    let n = value
        .get("n")
        .and_then(Value::as_i64)
        .and_then(|n| u32::try_from(n).ok());
    let total = value
        .get("total")
        .and_then(Value::as_i64)
        .and_then(|t| u32::try_from(t).ok());
    match (n, total, value.get("data")) {
        (Some(n), Some(total), Some(Value::Bin(data))) if n < total => Frame::Chunk {
            id: peer_data,
            n,
            total,
            data: data.clone(),
        },
        _ => Frame::Control(value),
    }
}

/// Why a message could not be taken in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The message itself, or a reassembled one, is not valid BinaryPack.
    #[error(transparent)]
    Decode(#[from] Error),
    /// Pending chunks would exceed the byte cap or [`MAX_PENDING_MESSAGES`]; that message
    /// was dropped.
    #[error("chunked message over the byte cap, dropped")]
    OverCap,
    /// A chunk disagreed with earlier ones of its message (total or a repeated index).
    #[error("inconsistent chunk, message dropped")]
    Inconsistent,
}

/// What the receiver should do with one incoming message.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Deliver this value to the user.
    Data(Value),
    /// A chunk was stored; nothing to deliver yet.
    Pending,
    /// The peer is closing the connection.
    Close,
    /// A control message that is not for the user.
    Control(Value),
}

/// Joins chunked messages for one connection, bounded in bytes and in time.
///
/// Sans-IO: pass the current time in; call [`Reassembler::expire`] now and then.
#[derive(Debug, Clone)]
pub struct Reassembler {
    limits: Limits,
    max_pending_bytes: usize,
    timeout: Duration,
    pending: BTreeMap<Key, Partial>,
    pending_bytes: usize,
}

/// Chunked messages being collected at once; PeerJS sends one message's slices in a row.
pub const MAX_PENDING_MESSAGES: usize = 64;

/// What each held slice costs against the byte cap besides its data, so that a flood of
/// empty slices is bounded too.
const SLICE_OVERHEAD: usize = 64;

/// Message ids are compared by their packed form (JS keys an object by the number).
type Key = Vec<u8>;

#[derive(Debug, Clone)]
struct Partial {
    total: u32,
    slices: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    first_seen: Instant,
}

impl Reassembler {
    /// At most `max_pending_bytes` of slices (and [`MAX_PENDING_MESSAGES`] messages) held at
    /// once; a message not
    /// complete `timeout` after its first slice is dropped. `limits` bound each decode.
    pub fn new(limits: Limits, max_pending_bytes: usize, timeout: Duration) -> Self {
        Reassembler {
            limits,
            max_pending_bytes,
            timeout,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        }
    }

    /// Bytes charged for the slices currently held (their data plus a small fixed overhead).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Takes one received DataChannel message.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) -> Result<Received, ReassemblyError> {
        self.expire(now);
        let value = decode(bytes, self.limits)?;
        match classify(value) {
            Frame::Data(v) => Ok(Received::Data(v)),
            Frame::Close => Ok(Received::Close),
            Frame::Control(v) => Ok(Received::Control(v)),
            Frame::Chunk { id, n, total, data } => self.chunk(now, &id, n, total, data),
        }
    }

    fn chunk(
        &mut self,
        now: Instant,
        id: &Value,
        n: u32,
        total: u32,
        data: Vec<u8>,
    ) -> Result<Received, ReassemblyError> {
        let key = encode(id).unwrap_or_default();
        let len = data.len() + SLICE_OVERHEAD + key.len();
        let new = !self.pending.contains_key(&key);
        if self.pending_bytes.saturating_add(len) > self.max_pending_bytes
            || (new && self.pending.len() >= MAX_PENDING_MESSAGES)
        {
            self.drop_message(&key);
            return Err(ReassemblyError::OverCap);
        }
        let partial = self.pending.entry(key.clone()).or_insert_with(|| Partial {
            total,
            slices: BTreeMap::new(),
            bytes: 0,
            first_seen: now,
        });
        if partial.total != total || partial.slices.contains_key(&n) {
            self.drop_message(&key);
            return Err(ReassemblyError::Inconsistent);
        }
        partial.slices.insert(n, data);
        partial.bytes += len;
        self.pending_bytes += len;
        if partial.slices.len() < usize::try_from(total).unwrap_or(usize::MAX) {
            return Ok(Received::Pending);
        }
        let Some(done) = self.pending.remove(&key) else {
            return Ok(Received::Pending);
        };
        self.pending_bytes -= done.bytes;
        let mut whole = Vec::with_capacity(done.slices.values().map(Vec::len).sum());
        for slice in done.slices.into_values() {
            whole.extend_from_slice(&slice);
        }
        let value = decode(&whole, self.limits)?;
        Ok(Received::Data(value))
    }

    fn drop_message(&mut self, key: &Key) {
        if let Some(p) = self.pending.remove(key) {
            self.pending_bytes -= p.bytes;
        }
    }

    /// Drops messages whose first slice came `timeout` or more before `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.timeout;
        let before = self.pending.len();
        let mut freed = 0;
        self.pending.retain(|_, p| {
            let keep = now.saturating_duration_since(p.first_seen) < timeout;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.pending_bytes -= freed;
        before - self.pending.len()
    }

    /// When the oldest pending message will expire, if any.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.first_seen + self.timeout)
            .min()
    }
}
