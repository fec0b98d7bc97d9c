//! The engine's outbox, handle counters and seeded ids, shared by its parts.

use std::collections::VecDeque;

use kibitz_proto::binarypack::Value;

use crate::net::{ConnId, NetCmd, PeerKey};
use crate::types::{Event, Now, Output};

#[derive(Debug)]
pub(crate) struct Ctx {
    pub out: VecDeque<Output>,
    pub now: Now,
    next_conn: u64,
    next_peer: u64,
    rng: u64,
}

impl Ctx {
    pub fn new(seed: u64, now: Now) -> Self {
        Self {
            out: VecDeque::new(),
            now,
            next_conn: 1,
            next_peer: 1,
            rng: seed,
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

    /// SplitMix64: ids need to be unique, not secret (signatures carry the security).
    pub fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn jti(&mut self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_le_bytes()[..4]);
        out
    }
}
