//! The engine's outbox, handle counters and seeded ids, shared by its parts.

use std::collections::VecDeque;

use kibitz_proto::SplitMix64;
use kibitz_proto::binarypack::Value;

use crate::net::{ConnId, NetCmd, PeerKey};
use crate::types::{Event, Now, Output};

#[derive(Debug)]
pub(crate) struct Ctx {
    pub out: VecDeque<Output>,
    pub now: Now,
    next_conn: u64,
    next_peer: u64,
    /// Ids need to be unique, not secret (signatures carry the security).
    rng: SplitMix64,
}

impl Ctx {
    pub fn new(seed: u64, now: Now) -> Self {
        Self {
            out: VecDeque::new(),
            now,
            next_conn: 1,
            next_peer: 1,
            rng: SplitMix64::new(seed),
        }
    }

    pub fn net(&mut self, cmd: NetCmd) {
        self.out.push_back(Output::Net(cmd));
    }

    pub fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    pub fn send(&mut self, conn: ConnId, frame: Value) {
        self.net(NetCmd::Send { conn, frame });
    }

    pub fn conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    pub fn peer_key(&mut self) -> PeerKey {
        let k = PeerKey(self.next_peer);
        self.next_peer += 1;
        k
    }

    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    pub fn jti(&mut self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_le_bytes()[..4]);
        out
    }
}
