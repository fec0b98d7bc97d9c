//! The registry spread over shards: one [`Registry`] per shard, each a complete registry
//! namespace in one Redis hash slot, behind one sans-IO state machine.
//!
//! An id lives in shard `crc16(id) % shards` (the hash Redis Cluster uses for slots; fixed
//! for every node and version). Claims and releases go to their id's shard, messages to
//! their receiver's, so every message for one receiver passes one shard's FIFO connection
//! and a sender's order holds. What crosses shards:
//! - the cluster-wide id limit: before a batch of claims, every shard is asked for its count
//!   (one call each, pipelined with its other traffic); each claim then checks, atomically
//!   in its shard, its shard's count plus the others' as just read. Claims landing on other
//!   shards within that round trip are not seen, so racing claims can pass the limit by a
//!   few;
//! - leave notices ("drop if the sender is held again"): the sender's shard is asked first,
//!   then the notice is routed in the receiver's shard; a re-registration between the two
//!   gives one spurious notice;
//! - node and id counts, rates and health: merged here (up only when every shard is).
//!
//! Messages for an id whose claim is in flight here wait for its answer ([`Claiming`]).
//!
//! With one shard this is the plain registry, unchanged.

use super::claiming::Claiming;
use super::direct::DirectMsg;
use super::protocol::{Cmd, Command, Event, Input, Lane, Output, Settings, ToCore};
use super::registry::Registry;
use crate::metrics::Metrics;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Redis Cluster's key hash (CRC16/XMODEM).
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The Redis Cluster slot of keys with hash tag `tag`.
pub(crate) fn slot_of(tag: &str) -> u16 {
    CRC16.checksum(tag.as_bytes()) & 16383
}

/// The Redis Cluster slot holding `id`'s registry record with `shards` shards (for tests
/// and operators: which master an id depends on).
pub fn registry_slot(id: &str, shards: usize) -> u16 {
    slot_of(&shard_of(id, shards).to_string())
}

/// The shard `id` lives in (public for tests and operators).
pub fn registry_shard(id: &str, shards: usize) -> usize {
    shard_of(id, shards)
}

/// The shard `id` lives in.
pub(crate) fn shard_of(id: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    usize::from(CRC16.checksum(id.as_bytes())) % shards
}

/// What the sharded registry asks for.
#[derive(Debug)]
pub(crate) enum SOutput {
    /// Run this on shard `.0`'s lane.
    Redis(usize, Lane, Command),
    Core(ToCore),
    /// Whether every shard answers.
    Up(bool),
    /// Answer with [`Input::Registrations`].
    NeedRegistrations,
    /// This node cannot join (see [`Event::Fatal`]).
    Fatal(String),
    /// Send this copy of a message to node `.0` over a node link.
    Direct(Arc<str>, DirectMsg),
    Timeout(Instant),
}

/// A count round: its claims, and each shard's answer (`None` until it answers,
/// `Some(None)` if it could not).
type Round = (Vec<Cmd>, Vec<Option<Option<u64>>>);

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Sharded {
    shards: Vec<Registry>,
    metrics: Metrics,
    concurrent_limit: usize,
    now: Instant,
    out: VecDeque<SOutput>,
    up: Vec<bool>,
    all_up: bool,
    /// Shards waiting for [`Input::Registrations`].
    needs: Vec<bool>,
    /// Each shard's live nodes and ids as of its last renewal.
    nodes: Vec<u64>,
    ids: Vec<u64>,
    /// Claims waiting for the next count round, and the round in flight.
    claims: Vec<Cmd>,
    round: Option<Round>,
    /// Messages waiting for a claim in flight here.
    claiming: Claiming,
    /// A shard was given input while its outputs were drained: drain them again.
    dirty: bool,
    /// Messages out and in since `rate_at`.
    sent: u64,
    read: u64,
    rate_at: Instant,
}

impl Sharded {
    /// `cfg` is the broker's (shard 0 of 1); each shard gets its share of the queue bound.
    pub(crate) fn new(now: Instant, cfg: &Settings, shards: usize, metrics: Metrics) -> Self {
        let shards = shards.max(1);
        let regs = (0..shards)
            .map(|s| Registry::new(now, cfg.for_shard(s, shards), metrics.clone()))
            .collect();
        Self {
            shards: regs,
            metrics,
            concurrent_limit: cfg.concurrent_limit,
            now,
            out: VecDeque::new(),
            up: vec![false; shards],
            all_up: false,
            needs: vec![false; shards],
            nodes: vec![0; shards],
            ids: vec![0; shards],
            claims: Vec::new(),
            round: None,
            claiming: Claiming::new(cfg.max_queued_per_dst),
            dirty: false,
            sent: 0,
            read: 0,
            rate_at: now,
        }
    }

    /// Whether the driver should hand over more commands now.
    pub(crate) fn wants_local(&self) -> bool {
        self.shards.iter().all(Registry::wants_local)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.shards.iter().all(Registry::is_stopped)
    }

    /// A lane's input for shard `shard`.
    pub(crate) fn handle_lane(&mut self, now: Instant, shard: usize, input: Input) {
        self.now = self.now.max(now);
        if let Some(r) = self.shards.get_mut(shard) {
            r.handle_input(now, input);
        }
    }

    /// Any other input.
    pub(crate) fn handle_input(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Local(cmd) => self.local(cmd),
            Input::Registrations(regs) => {
                let n = self.shards.len();
                let mut per: Vec<Vec<_>> = vec![Vec::new(); n];
                for r in regs {
                    per[shard_of(&r.0, n)].push(r);
                }
                for (s, regs) in per.into_iter().enumerate() {
                    if std::mem::take(&mut self.needs[s]) {
                        self.shards[s].handle_input(now, Input::Registrations(regs));
                    }
                }
            }
            Input::Timeout | Input::Stop => {
                let stop = matches!(input, Input::Stop);
                for r in &mut self.shards {
                    r.handle_input(now, if stop { Input::Stop } else { Input::Timeout });
                }
            }
            // Lane inputs come through `handle_lane`.
            Input::Connected(_)
            | Input::Failover(_)
            | Input::Disconnected(_)
            | Input::Reply(..) => {}
        }
    }

    fn local(&mut self, cmd: Cmd) {
        if let Cmd::Claim { conn, id, .. } = &cmd {
            self.claiming.claim(*conn, id);
        }
        let Some(cmd) = self.claiming.hold(self.now, cmd) else {
            return;
        };
        let n = self.shards.len();
        if n > 1 && matches!(cmd, Cmd::Claim { .. }) {
            self.claims.push(cmd);
            return self.count_round();
        }
        let s = match &cmd {
            Cmd::Claim { id, .. } | Cmd::Release { id, .. } => shard_of(id, n),
            Cmd::Forward(f, _) if f.notice && shard_of(&f.src, n) != shard_of(&f.dst, n) => {
                let Cmd::Forward(f, _) = cmd else { return };
                let s = shard_of(&f.src, n);
                self.shards[s].handle_input(self.now, Input::Local(Cmd::Probe(f)));
                return;
            }
            Cmd::Forward(f, _) | Cmd::Probe(f) => shard_of(&f.dst, n),
            Cmd::Count => return,
        };
        self.shards[s].handle_input(self.now, Input::Local(cmd));
    }

    /// Starts a count round for the waiting claims, unless one is in flight.
    fn count_round(&mut self) {
        if self.round.is_some() || self.claims.is_empty() {
            return;
        }
        let n = self.shards.len();
        self.round = Some((std::mem::take(&mut self.claims), vec![None; n]));
        for r in &mut self.shards {
            r.handle_input(self.now, Input::Local(Cmd::Count));
        }
    }

    /// Shard `s` counted its ids: once every shard has, the round's claims go to their
    /// shards with the limit less the other shards' counts.
    fn counted(&mut self, s: usize, ids: Option<u64>) {
        let Some((_, answers)) = &mut self.round else {
            return;
        };
        answers[s] = Some(ids);
        if answers.iter().any(Option::is_none) {
            return;
        }
        let Some((claims, answers)) = self.round.take() else {
            return;
        };
        for (i, a) in answers.into_iter().enumerate() {
            if let Some(Some(ids)) = a {
                self.ids[i] = ids;
            }
        }
        self.set_limits();
        let n = self.shards.len();
        for cmd in claims {
            if let Cmd::Claim { id, .. } = &cmd {
                let s = shard_of(id, n);
                self.shards[s].handle_input(self.now, Input::Local(cmd));
            }
        }
        self.count_round();
    }

    /// Every shard's share of the id limit: the limit less the other shards' last counts.
    fn set_limits(&mut self) {
        let total: u64 = self.ids.iter().sum();
        for (i, r) in self.shards.iter_mut().enumerate() {
            let others = usize::try_from(total - self.ids[i]).unwrap_or(usize::MAX);
            r.set_limit(self.concurrent_limit.saturating_sub(others));
        }
    }

    /// Direct copies from node `from` (see `direct`): those that may be delivered now, in
    /// order. Tell [`Sharded::direct_delivered`] which were.
    pub(crate) fn direct_in(&mut self, from: &str, msgs: Vec<DirectMsg>) -> Vec<DirectMsg> {
        let n = self.shards.len();
        let mut earlier: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut ok = Vec::with_capacity(msgs.len());
        for m in msgs {
            let s = m.shard as usize;
            let pass = s < n
                && shard_of(&m.dst, n) == s
                && self.shards[s].direct_ok(from, &m, &earlier[s]);
            if pass {
                earlier[s].push(m.n);
                ok.push(m);
            } else {
                self.metrics.cluster_direct_dropped.increment(1);
            }
        }
        ok
    }

    /// Direct copy `m` from node `from` was delivered.
    pub(crate) fn direct_delivered(&mut self, from: &str, m: &DirectMsg) {
        if let Some(r) = self.shards.get_mut(m.shard as usize) {
            r.direct_delivered(from, m.n);
        }
    }

    /// The next thing to do; [`SOutput::Timeout`] once there is nothing else.
    pub(crate) fn poll_output(&mut self) -> SOutput {
        loop {
            if let Some(o) = self.out.pop_front() {
                return o;
            }
            let mut wake: Option<Instant> = None;
            self.dirty = false;
            for s in 0..self.shards.len() {
                loop {
                    match self.shards[s].poll_output() {
                        Output::Timeout(at) => {
                            wake = Some(wake.map_or(at, |w| w.min(at)));
                            break;
                        }
                        o => self.take(s, o),
                    }
                }
            }
            // A shard drained earlier in this pass may have been given work since.
            if self.out.is_empty() && !self.dirty {
                return SOutput::Timeout(wake.unwrap_or(self.now));
            }
        }
    }

    fn take(&mut self, s: usize, o: Output) {
        match o {
            Output::Redis(lane, cmd) => self.out.push_back(SOutput::Redis(s, lane, cmd)),
            Output::Core(ToCore::Claim(conn, mut claim)) => {
                let back = self.claiming.answered(conn, &mut claim);
                self.out
                    .push_back(SOutput::Core(ToCore::Claim(conn, claim)));
                for cmd in back {
                    self.local(cmd);
                    self.dirty = true;
                }
            }
            Output::Core(ev) => self.out.push_back(SOutput::Core(ev)),
            Output::Event(Event::Up(up)) => {
                self.up[s] = up;
                self.metrics.shard_up(s, up);
                let n = self.up.iter().filter(|u| **u).count();
                self.metrics.cluster_shards_up.set(n as f64);
                let all = n == self.up.len();
                if all != self.all_up {
                    self.all_up = all;
                    self.out.push_back(SOutput::Up(all));
                }
            }
            Output::Event(Event::NeedRegistrations) => {
                if !self.needs.iter().any(|n| *n) {
                    self.out.push_back(SOutput::NeedRegistrations);
                }
                self.needs[s] = true;
            }
            Output::Event(Event::Stats {
                nodes,
                ids,
                sent,
                read,
            }) => self.stats(s, nodes, ids, sent, read),
            Output::Event(Event::Fatal(msg)) => self.out.push_back(SOutput::Fatal(msg)),
            Output::Counted(ids) => {
                self.counted(s, ids);
                self.dirty = true;
            }
            Output::Probed(mut f, held) => {
                if !held {
                    // Not held again: route it in the receiver's shard (where the sender is
                    // never held, so the notice goes through).
                    f.notice = false;
                    let d = shard_of(&f.dst, self.shards.len());
                    self.shards[d].handle_input(self.now, Input::Local(Cmd::Forward(f, 0)));
                    self.dirty = true;
                }
            }
            Output::Direct(to, m) => self.out.push_back(SOutput::Direct(to, m)),
            Output::Timeout(_) => {}
        }
    }

    /// One shard's renewal figures: merged gauges, and every shard's share of the id limit.
    fn stats(&mut self, s: usize, nodes: u64, ids: u64, sent: u64, read: u64) {
        self.nodes[s] = nodes;
        self.ids[s] = ids;
        self.sent += sent;
        self.read += read;
        let total: u64 = self.ids.iter().sum();
        let live = self.nodes.iter().copied().max().unwrap_or(0);
        self.metrics.cluster_nodes.set(live as f64);
        self.metrics.cluster_peers.set(total as f64);
        self.set_limits();
        // Rates over the time since shard 0 last reported (every shard reports once per
        // renewal period).
        if s == 0 {
            let secs = self
                .now
                .saturating_duration_since(self.rate_at)
                .as_secs_f64();
            if secs > 0.0 {
                self.metrics.cluster_rate_out.set(self.sent as f64 / secs);
                self.metrics.cluster_rate_in.set(self.read as f64 / secs);
                (self.sent, self.read, self.rate_at) = (0, 0, self.now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::Script;
    use redis::Value;
    use std::time::Duration;

    fn settings() -> Settings {
        Settings {
            node: "n1".into(),
            shard: 0,
            shards: 1,
            lease: Duration::from_secs(1),
            concurrent_limit: 10,
            max_queued_per_dst: 10,
            max_queued_total: 100,
        }
    }

    /// Drains `s` until it waits; returns what it asked for besides the timeout.
    fn drain(s: &mut Sharded) -> Vec<SOutput> {
        let mut out = Vec::new();
        loop {
            match s.poll_output() {
                SOutput::Timeout(_) => return out,
                o => out.push(o),
            }
        }
    }

    #[test]
    fn a_node_with_another_shard_count_stays_down_and_says_why() {
        #[allow(clippy::disallowed_methods)] // a fixed origin for the test's clock
        let now = Instant::now();
        let mut s = Sharded::new(now, &settings(), 2, Metrics::new());
        drain(&mut s);
        s.handle_lane(now, 1, Input::Connected(Lane::Main));
        let out = drain(&mut s);
        assert!(
            matches!(&out[..], [SOutput::Redis(1, Lane::Main, Command::Run(_))]),
            "{out:?}"
        );
        // The scripts load, then the hello finds the cluster uses 16 shards.
        let loaded = vec![Ok(Value::Okay); Script::ALL.len()];
        s.handle_lane(now, 1, Input::Reply(Lane::Main, loaded));
        drain(&mut s);
        let theirs = Value::Array(vec![
            Value::BulkString(b"shards".to_vec()),
            Value::BulkString(b"16".to_vec()),
        ]);
        s.handle_lane(now, 1, Input::Reply(Lane::Main, vec![Ok(theirs)]));
        let out = drain(&mut s);
        let fatal: Vec<&String> = out
            .iter()
            .filter_map(|o| match o {
                SOutput::Fatal(m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(fatal.len(), 1, "{out:?}");
        assert!(
            fatal[0].contains("2 shards") && fatal[0].contains("16"),
            "{}",
            fatal[0]
        );
        assert!(!out.iter().any(|o| matches!(o, SOutput::Up(true))));
    }

    #[test]
    fn a_node_drops_its_ids_before_its_lease_can_lapse() {
        #[allow(clippy::disallowed_methods)] // a fixed origin for the test's clock
        let t0 = Instant::now();
        let lease = settings().lease;
        let mut s = Sharded::new(t0, &settings(), 1, Metrics::new());
        drain(&mut s);
        // Set up: scripts, hello (sent at t0: the lease holds until t0 + lease at least),
        // an empty re-assert.
        s.handle_lane(t0, 0, Input::Connected(Lane::Main));
        drain(&mut s);
        let loaded = vec![Ok(Value::Okay); Script::ALL.len()];
        s.handle_lane(t0, 0, Input::Reply(Lane::Main, loaded));
        drain(&mut s);
        let epoch = Value::BulkString(b"e1".to_vec());
        s.handle_lane(t0, 0, Input::Reply(Lane::Main, vec![Ok(epoch)]));
        let out = drain(&mut s);
        assert!(
            out.iter().any(|o| matches!(o, SOutput::NeedRegistrations)),
            "{out:?}"
        );
        s.handle_input(t0, Input::Registrations(Vec::new()));
        drain(&mut s);
        for _ in 0..2 {
            s.handle_lane(t0, 0, Input::Reply(Lane::Main, vec![Ok(Value::Okay)]));
            drain(&mut s);
        }
        // No renewal is ever answered. Just before nine tenths of the lease: nothing yet.
        let fence = t0 + lease - lease / 10;
        s.handle_input(fence - Duration::from_millis(1), Input::Timeout);
        let out = drain(&mut s);
        assert!(
            !out.iter()
                .any(|o| matches!(o, SOutput::Core(ToCore::Fenced { .. }))),
            "{out:?}"
        );
        // At the fence the core is told to drop the shard's ids, and the registry starts over.
        s.handle_input(fence, Input::Timeout);
        let out = drain(&mut s);
        assert!(
            out.iter().any(|o| matches!(
                o,
                SOutput::Core(ToCore::Fenced {
                    shard: 0,
                    shards: 1
                })
            )),
            "{out:?}"
        );
        assert!(
            out.iter()
                .any(|o| matches!(o, SOutput::Redis(0, Lane::Main, Command::Connect))),
            "{out:?}"
        );
    }

    #[test]
    fn ids_hash_like_redis_cluster() {
        // Redis Cluster's documented example: CRC16 of "123456789" is 0x31C3.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        assert_eq!(shard_of("anything", 1), 0);
        let n = 16;
        let mut seen = [false; 16];
        for i in 0..1000 {
            seen[shard_of(&format!("peer-{i}"), n)] = true;
        }
        assert!(seen.iter().all(|s| *s), "ids spread over every shard");
    }
}
