//! The sans-IO TURN server: datagrams and time in, datagrams and socket commands out.
//!
//! Run loop (what [`crate::TurnServer`] does):
//! - a datagram on the listening socket → [`Server::handle_client`]; a returned [`Forward`]
//!   is sent at once from that allocation's relay socket (the hot path allocates nothing);
//! - a datagram on a relay socket → [`Server::handle_peer`] with 4 bytes of headroom in front
//!   of the data; a returned [`ToClient`] is sent from the listening socket;
//! - at [`Server::poll_timeout`] → [`Server::handle_timeout`];
//! - after any of these, drain [`Server::poll_output`] until `None`: control responses,
//!   Data indications, relay sockets to bind ([`Output::BindRelay`], answered with
//!   [`Server::relay_bound`]) or close.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::auth::{Refusal, TurnAuth};
use crate::stun::{self, Builder, Class, Message};

/// Allocation lifetime when the client asks for less or nothing (RFC 8656 §3.2).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Permission lifetime (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// Resource bounds. The defaults suit one LAN or a small deployment.
#[derive(Debug, Clone)]
pub struct TurnLimits {
    /// Allocations at once (beyond: 486). Default 1024.
    pub max_allocations: usize,
    /// Allocations at once from one client IP (beyond: 486). Default 32: a browser makes one
    /// per peer connection and ICE restart.
    pub max_allocations_per_ip: usize,
    /// Permissions per allocation (beyond: 508). Default 32.
    pub max_permissions: usize,
    /// Channels per allocation (beyond: 508). Default 32.
    pub max_channels: usize,
    /// Longest allocation lifetime granted. Default 3600 s (coturn's).
    pub max_lifetime: Duration,
    /// How long a NONCE stays fresh (then 438). Default 600 s.
    pub nonce_lifetime: Duration,
    /// Relay to loopback peers (127.0.0.0/8, ::1). Off by default: a relay that reaches its own
    /// host's loopback services is an open door. Tests on 127.0.0.1 turn it on.
    pub allow_loopback_peers: bool,
    /// Relay to private and link-local peers (10/8, 172.16/12, 192.168/16, 100.64/10,
    /// 169.254/16 — cloud metadata lives there —, fc00::/7, fe80::/10). On by default: the LAN
    /// hub relays between LAN devices. An internet-facing relay turns it off (as coturn's
    /// `denied-peer-ip` does) so nobody reaches the host's LAN through it; the advertised IP
    /// itself stays reachable (relay to relay on this host).
    pub allow_private_peers: bool,
}

impl Default for TurnLimits {
    fn default() -> Self {
        Self {
            max_allocations: 1024,
            max_allocations_per_ip: 32,
            max_permissions: 32,
            max_channels: 32,
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(600),
            allow_loopback_peers: false,
            allow_private_peers: true,
        }
    }
}

/// What the core needs to know (no sockets).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// REALM sent in challenges and expected back.
    pub realm: String,
    /// Who may allocate.
    pub auth: TurnAuth,
    /// The IP put in XOR-RELAYED-ADDRESS (relay ports are the bound ones).
    pub advertised_ip: IpAddr,
    /// Bounds.
    pub limits: TurnLimits,
}

/// Channel numbers accepted: RFC 5766's range. RFC 8656 narrowed it to 0x4000-0x4FFF, but
/// coturn's clients still pick numbers up to 0x7FFF, and nothing else shares this port.
pub const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// An allocation's number; never reused within one [`Server`].
pub type AllocId = u64;

/// Relay `range` of the input datagram from allocation `alloc`'s relay socket to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Whose relay socket sends.
    pub alloc: AllocId,
    /// The peer.
    pub to: SocketAddr,
    /// The payload within the datagram given to [`Server::handle_client`].
    pub range: Range<usize>,
}

/// Send `range` of the peer buffer (ChannelData header already written) to client `to` from
/// the listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToClient {
    /// The client.
    pub to: SocketAddr,
    /// The ChannelData message within the buffer given to [`Server::handle_peer`].
    pub range: Range<usize>,
}

/// Effects for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A datagram for a client, from the listening socket.
    Transmit {
        /// The client.
        to: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// Bind a UDP socket for `alloc` on the relay IP, then call [`Server::relay_bound`].
    BindRelay {
        /// The allocation.
        alloc: AllocId,
        /// The port must be even (EVEN-PORT).
        even: bool,
    },
    /// Close `alloc`'s relay socket.
    CloseRelay {
        /// The allocation.
        alloc: AllocId,
    },
}

/// Counters, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live allocations.
    pub allocations: usize,
    /// Datagrams relayed, both directions.
    pub relayed: u64,
    /// Requests refused with 401 after carrying MESSAGE-INTEGRITY (bad or expired credentials).
    pub auth_failures: u64,
    /// Datagrams dropped: malformed, no allocation, no permission or channel.
    pub dropped: u64,
}

#[derive(Debug)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Allocation {
    client: SocketAddr,
    username: String,
    key: [u8; 16],
    /// None until the relay socket is bound.
    relay: Option<SocketAddr>,
    expires: Instant,
    /// The Allocate transaction and its answer, for retransmissions (RFC 8656 §7.2).
    txid: [u8; 12],
    answer: Vec<u8>,
    lifetime: u32,
    perms: Vec<(IpAddr, Instant)>,
    channels: Vec<Channel>,
}

impl Allocation {
    fn permitted(&self, now: Instant, ip: IpAddr) -> bool {
        self.perms.iter().any(|(p, exp)| *p == ip && *exp > now)
    }
}

/// The TURN server state machine. See the module docs for the run loop.
#[derive(Debug)]
pub struct Server {
    config: CoreConfig,
    t0: Instant,
    unix0: u64,
    nonce_key: [u8; 32],
    next_id: AllocId,
    txid_counter: u64,
    allocs: BTreeMap<AllocId, Allocation>,
    // Lookups only, never iterated: order cannot leak.
    by_client: HashMap<SocketAddr, AllocId>,
    per_ip: HashMap<IpAddr, usize>,
    out: VecDeque<Output>,
    stats: Stats,
}

fn lifetime_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Server {
    /// A server whose clock reads `unix` (seconds) at `now`; `seed` keys the nonces (random
    /// per run).
    pub fn new(config: CoreConfig, seed: [u8; 32], now: Instant, unix: u64) -> Self {
        Self {
            config,
            t0: now,
            unix0: unix,
            nonce_key: seed,
            next_id: 1,
            txid_counter: 0,
            allocs: BTreeMap::new(),
            by_client: HashMap::new(),
            per_ip: HashMap::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix0 + now.saturating_duration_since(self.t0).as_secs()
    }

    /// Replaces who may allocate: every request from now on is checked against `auth`.
    pub fn set_auth(&mut self, auth: TurnAuth) {
        self.config.auth = auth;
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocs.len(),
            ..self.stats
        }
    }

    /// The next effect, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call [`Server::handle_timeout`] next (the earliest allocation expiry).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocs.values().map(|a| a.expires).min()
    }

    /// Expires allocations (closing their relay sockets), permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        let dead: Vec<AllocId> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            tracing::debug!(alloc = id, "allocation expired");
            self.remove(id);
        }
        for a in self.allocs.values_mut() {
            a.perms.retain(|(_, exp)| *exp > now);
            a.channels.retain(|c| c.expires > now);
        }
    }

    fn remove(&mut self, id: AllocId) {
        if self.forget(id) {
            self.out.push_back(Output::CloseRelay { alloc: id });
        }
    }

    /// Drops the allocation's state (not its socket); false if there was none.
    fn forget(&mut self, id: AllocId) -> bool {
        let Some(a) = self.allocs.remove(&id) else {
            return false;
        };
        self.by_client.remove(&a.client);
        let ip = a.client.ip();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        true
    }

    /// A datagram from a client on the listening socket. STUN requests are answered through
    /// [`Server::poll_output`]; relayed data (ChannelData, Send indications) comes back as a
    /// [`Forward`] to send from the allocation's relay socket.
    pub fn handle_client(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<Forward> {
        match data.first() {
            Some(0x40..=0x7F) => {
                let fwd = self.channel_data(now, from, data);
                if fwd.is_some() {
                    self.stats.relayed += 1;
                } else {
                    self.stats.dropped += 1;
                }
                fwd
            }
            _ => match Message::parse(data) {
                Ok(m) => self.stun(now, from, &m),
                Err(e) => {
                    tracing::trace!(len = data.len(), why = %e, "dropped a datagram");
                    self.stats.dropped += 1;
                    None
                }
            },
        }
    }

    fn channel_data(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Option<Forward> {
        if data.len() < 4 {
            return None;
        }
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if 4 + len > data.len() {
            return None;
        }
        let id = *self.by_client.get(&from)?;
        let a = self.allocs.get(&id)?;
        let c = a
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > now)?;
        if !a.permitted(now, c.peer.ip()) {
            return None;
        }
        Some(Forward {
            alloc: id,
            to: c.peer,
            range: 4..4 + len,
        })
    }

    /// A datagram from `from` on allocation `alloc`'s relay socket, at `buf[4..4 + len]`
    /// (the first 4 bytes are headroom). With a channel bound to `from`, the ChannelData
    /// header is written into the headroom and a [`ToClient`] returned; otherwise a Data
    /// indication is queued. Without a permission for `from`'s IP it is dropped.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        alloc: AllocId,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<ToClient> {
        let Some(a) = self.allocs.get(&alloc) else {
            self.stats.dropped += 1;
            return None;
        };
        if buf.len() < 4 + len || !a.permitted(now, from.ip()) || a.expires <= now {
            self.stats.dropped += 1;
            return None;
        }
        self.stats.relayed += 1;
        let client = a.client;
        if let Some(c) = a
            .channels
            .iter()
            .find(|c| c.peer == from && c.expires > now)
        {
            // A datagram is below 64 KiB.
            let l = u16::try_from(len).unwrap_or(u16::MAX);
            buf[..2].copy_from_slice(&c.number.to_be_bytes());
            buf[2..4].copy_from_slice(&l.to_be_bytes());
            return Some(ToClient {
                to: client,
                range: 0..4 + len,
            });
        }
        let txid = self.fresh_txid();
        let data = Builder::new(stun::DATA, Class::Indication, &txid)
            .xor_addr(stun::A_XOR_PEER_ADDRESS, from)
            .attr(stun::A_DATA, &buf[4..4 + len])
            .finish_plain();
        self.out.push_back(Output::Transmit { to: client, data });
        None
    }

    /// The relay socket for `alloc` is bound (`Ok(port)`) or could not be (`Err(())`).
    pub fn relay_bound(&mut self, now: Instant, alloc: AllocId, port: Result<u16, ()>) {
        let Some(a) = self.allocs.get_mut(&alloc) else {
            // Expired or deleted meanwhile.
            if port.is_ok() {
                self.out.push_back(Output::CloseRelay { alloc });
            }
            return;
        };
        if a.relay.is_some() {
            return;
        }
        let (client, txid, key) = (a.client, a.txid, a.key);
        match port {
            Ok(port) => {
                let relay = SocketAddr::new(self.config.advertised_ip, port);
                a.relay = Some(relay);
                a.expires = now + Duration::from_secs(u64::from(a.lifetime));
                a.answer = Builder::new(stun::ALLOCATE, Class::Success, &txid)
                    .xor_addr(stun::A_XOR_RELAYED_ADDRESS, relay)
                    .u32(stun::A_LIFETIME, a.lifetime)
                    .xor_addr(stun::A_XOR_MAPPED_ADDRESS, client)
                    .finish(Some(&key));
                tracing::debug!(alloc, %client, %relay, lifetime = a.lifetime, "allocated");
                let data = a.answer.clone();
                self.out.push_back(Output::Transmit { to: client, data });
            }
            Err(()) => {
                tracing::warn!(alloc, "could not bind a relay socket");
                self.forget(alloc);
                let data = Builder::new(stun::ALLOCATE, Class::Error, &txid)
                    .error(508, "Insufficient Capacity")
                    .finish(Some(&key));
                self.out.push_back(Output::Transmit { to: client, data });
            }
        }
    }

    fn fresh_txid(&mut self) -> [u8; 12] {
        self.txid_counter += 1;
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&self.txid_counter.to_be_bytes());
        for (b, k) in id.iter_mut().zip(self.nonce_key[20..].iter()) {
            *b ^= k;
        }
        id
    }

    fn nonce_mac(&self, issued: u32, client: SocketAddr) -> String {
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&self.nonce_key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(&issued.to_be_bytes());
        mac.update(client.to_string().as_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A stateless nonce: issue time and a MAC binding it to the client address.
    fn nonce(&self, now: Instant, client: SocketAddr) -> String {
        // Unix seconds fit u32 until 2106.
        let issued = u32::try_from(self.unix(now)).unwrap_or(u32::MAX);
        format!("{issued:08x}{}", self.nonce_mac(issued, client))
    }

    fn nonce_fresh(&self, now: Instant, client: SocketAddr, nonce: &str) -> bool {
        if nonce.len() != 24 || !nonce.is_ascii() {
            return false;
        }
        let Ok(issued) = u32::from_str_radix(&nonce[..8], 16) else {
            return false;
        };
        let mac = self.nonce_mac(issued, client);
        let same = subtle_eq(mac.as_bytes(), &nonce.as_bytes()[8..]);
        same && u64::from(issued) + self.config.limits.nonce_lifetime.as_secs() >= self.unix(now)
    }

    fn send(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.out.push_back(Output::Transmit { to, data });
    }

    /// An error answer without MESSAGE-INTEGRITY (before authentication).
    fn reject(&mut self, to: SocketAddr, m: &Message<'_>, code: u16, reason: &str) {
        let data = Builder::new(m.method, Class::Error, &m.txid)
            .error(code, reason)
            .finish(None);
        self.send(to, data);
    }

    /// 401/438 with REALM and a fresh NONCE.
    fn challenge(&mut self, now: Instant, to: SocketAddr, m: &Message<'_>, code: u16) {
        let reason = if code == 438 {
            "Stale Nonce"
        } else {
            "Unauthorized"
        };
        let nonce = self.nonce(now, to);
        let data = Builder::new(m.method, Class::Error, &m.txid)
            .error(code, reason)
            .attr(stun::A_REALM, self.config.realm.as_bytes())
            .attr(stun::A_NONCE, nonce.as_bytes())
            .finish(None);
        self.send(to, data);
    }

    fn stun(&mut self, now: Instant, from: SocketAddr, m: &Message<'_>) -> Option<Forward> {
        match (m.class, m.method) {
            (Class::Request, stun::BINDING) => {
                let unknown = m.unknown_required();
                if !unknown.is_empty() {
                    self.unknown_attributes(from, m, &unknown, None);
                    return None;
                }
                let data = Builder::new(stun::BINDING, Class::Success, &m.txid)
                    .xor_addr(stun::A_XOR_MAPPED_ADDRESS, from)
                    .finish(None);
                self.send(from, data);
                None
            }
            (
                Class::Request,
                stun::ALLOCATE | stun::REFRESH | stun::CREATE_PERMISSION | stun::CHANNEL_BIND,
            ) => {
                self.request(now, from, m);
                None
            }
            (Class::Request, _) => {
                self.reject(from, m, 400, "Bad Request");
                None
            }
            (Class::Indication, stun::SEND) => {
                let fwd = self.send_indication(now, from, m);
                if fwd.is_some() {
                    self.stats.relayed += 1;
                } else {
                    self.stats.dropped += 1;
                }
                fwd
            }
            // Responses and other indications: nothing to do.
            _ => {
                self.stats.dropped += 1;
                None
            }
        }
    }

    fn unknown_attributes(
        &mut self,
        to: SocketAddr,
        m: &Message<'_>,
        unknown: &[u16],
        key: Option<&[u8]>,
    ) {
        let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
        let data = Builder::new(m.method, Class::Error, &m.txid)
            .error(420, "Unknown Attribute")
            .attr(stun::A_UNKNOWN_ATTRIBUTES, &list)
            .finish(key);
        self.send(to, data);
    }

    fn send_indication(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
    ) -> Option<Forward> {
        if !m.unknown_required().is_empty() {
            return None;
        }
        let id = *self.by_client.get(&from)?;
        let a = self.allocs.get(&id)?;
        let peer = m.xor_addr(stun::A_XOR_PEER_ADDRESS)?;
        let range = m.range(stun::A_DATA)?;
        if !a.permitted(now, peer.ip()) || a.relay.is_none() {
            return None;
        }
        Some(Forward {
            alloc: id,
            to: peer,
            range,
        })
    }

    /// Authenticates a TURN request; on success returns the key (and the username).
    fn authenticate(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
    ) -> Option<([u8; 16], String)> {
        if !m.has_integrity() {
            self.challenge(now, from, m, 401);
            return None;
        }
        let (Some(username), Some(realm), Some(nonce)) = (
            m.text(stun::A_USERNAME),
            m.text(stun::A_REALM),
            m.text(stun::A_NONCE),
        ) else {
            self.reject(from, m, 400, "Bad Request");
            return None;
        };
        if !self.nonce_fresh(now, from, nonce) {
            self.challenge(now, from, m, 438);
            return None;
        }
        if realm != self.config.realm {
            self.stats.auth_failures += 1;
            self.challenge(now, from, m, 401);
            return None;
        }
        if let Some(a) = self.by_client.get(&from).and_then(|id| self.allocs.get(id)) {
            // Requests on an allocation use its key (RFC 8656 §5: same credentials).
            if a.username != username {
                let key = a.key;
                let data = Builder::new(m.method, Class::Error, &m.txid)
                    .error(441, "Wrong Credentials")
                    .finish(Some(&key));
                self.send(from, data);
                return None;
            }
            if m.check_integrity(&a.key) {
                return Some((a.key, username.to_owned()));
            }
            self.stats.auth_failures += 1;
            self.challenge(now, from, m, 401);
            return None;
        }
        let unix = self.unix(now);
        let keys = match self.config.auth.keys(username, realm, unix) {
            Ok(k) => k,
            Err(why) => {
                tracing::debug!(
                    why = match why {
                        Refusal::UnknownUser => "unknown user",
                        Refusal::Expired => "expired",
                    },
                    "refused credentials"
                );
                self.stats.auth_failures += 1;
                self.challenge(now, from, m, 401);
                return None;
            }
        };
        if let Some(key) = keys.into_iter().find(|k| m.check_integrity(k)) {
            return Some((key, username.to_owned()));
        }
        tracing::debug!("refused credentials: bad MESSAGE-INTEGRITY");
        self.stats.auth_failures += 1;
        self.challenge(now, from, m, 401);
        None
    }

    fn request(&mut self, now: Instant, from: SocketAddr, m: &Message<'_>) {
        // A retransmitted Allocate of a live allocation gets the same answer, before anything
        // else (its nonce may have gone stale meanwhile).
        if m.method == stun::ALLOCATE
            && let Some(a) = self.by_client.get(&from).and_then(|id| self.allocs.get(id))
            && a.txid == m.txid
        {
            if !a.answer.is_empty() {
                let data = a.answer.clone();
                self.send(from, data);
            }
            return;
        }
        let Some((key, username)) = self.authenticate(now, from, m) else {
            return;
        };
        let unknown = m.unknown_required();
        if !unknown.is_empty() {
            self.unknown_attributes(from, m, &unknown, Some(&key));
            return;
        }
        let err = match m.method {
            stun::ALLOCATE => self.allocate(now, from, m, key, username),
            stun::REFRESH => self.refresh(now, from, m, key),
            stun::CREATE_PERMISSION => self.create_permission(now, from, m, key),
            _ => self.channel_bind(now, from, m, key),
        };
        if let Err((code, reason)) = err {
            let data = Builder::new(m.method, Class::Error, &m.txid)
                .error(code, reason)
                .finish(Some(&key));
            self.send(from, data);
        }
    }

    fn requested_lifetime(&self, m: &Message<'_>) -> u32 {
        let max = lifetime_secs(self.config.limits.max_lifetime);
        let default = lifetime_secs(DEFAULT_LIFETIME).min(max);
        m.u32(stun::A_LIFETIME)
            .map_or(default, |l| l.min(max).max(default))
    }

    fn allocate(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        key: [u8; 16],
        username: String,
    ) -> Result<(), (u16, &'static str)> {
        if self.by_client.contains_key(&from) {
            return Err((437, "Allocation Mismatch"));
        }
        match m.get(stun::A_REQUESTED_TRANSPORT) {
            None => return Err((400, "Bad Request")),
            Some(v) if v.len() != 4 => return Err((400, "Bad Request")),
            Some(v) if v[0] != 17 => return Err((442, "Unsupported Transport Protocol")),
            Some(_) => {}
        }
        let v4 = self.config.advertised_ip.is_ipv4();
        match m.get(stun::A_REQUESTED_ADDRESS_FAMILY) {
            None => {}
            Some([1, ..]) if v4 => {}
            Some([2, ..]) if !v4 => {}
            Some([1 | 2, ..]) => return Err((440, "Address Family not Supported")),
            Some(_) => return Err((400, "Bad Request")),
        }
        // An even port is easy; reserving the next one (R bit) or using a reservation is
        // not offered (RFC 8656 §7.2: then 508).
        let even = match m.get(stun::A_EVEN_PORT) {
            None => false,
            Some([]) => return Err((400, "Bad Request")),
            Some([r, ..]) if r & 0x80 == 0 => true,
            Some(_) => return Err((508, "Insufficient Capacity")),
        };
        if m.has(stun::A_RESERVATION_TOKEN) {
            return Err((508, "Insufficient Capacity"));
        }
        let limits = &self.config.limits;
        let from_ip = self.per_ip.get(&from.ip()).copied().unwrap_or(0);
        if self.allocs.len() >= limits.max_allocations || from_ip >= limits.max_allocations_per_ip {
            return Err((486, "Allocation Quota Reached"));
        }
        let lifetime = self.requested_lifetime(m);
        let id = self.next_id;
        self.next_id += 1;
        self.allocs.insert(
            id,
            Allocation {
                client: from,
                username,
                key,
                relay: None,
                // Until bound; the driver answers BindRelay at once.
                expires: now + Duration::from_secs(u64::from(lifetime)),
                txid: m.txid,
                answer: Vec::new(),
                lifetime,
                perms: Vec::new(),
                channels: Vec::new(),
            },
        );
        self.by_client.insert(from, id);
        *self.per_ip.entry(from.ip()).or_insert(0) += 1;
        self.out.push_back(Output::BindRelay { alloc: id, even });
        Ok(())
    }

    fn refresh(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        key: [u8; 16],
    ) -> Result<(), (u16, &'static str)> {
        let id = *self
            .by_client
            .get(&from)
            .ok_or((437, "Allocation Mismatch"))?;
        let requested = m.u32(stun::A_LIFETIME);
        let lifetime = if requested == Some(0) {
            tracing::debug!(alloc = id, "allocation deleted");
            self.remove(id);
            0
        } else {
            let lifetime = self.requested_lifetime(m);
            if let Some(a) = self.allocs.get_mut(&id) {
                a.expires = now + Duration::from_secs(u64::from(lifetime));
            }
            lifetime
        };
        let data = Builder::new(stun::REFRESH, Class::Success, &m.txid)
            .u32(stun::A_LIFETIME, lifetime)
            .finish(Some(&key));
        self.send(from, data);
        Ok(())
    }

    /// Why relaying to `peer` is refused, if it is.
    fn check_peer(&self, peer: SocketAddr) -> Result<(), (u16, &'static str)> {
        if peer.is_ipv4() != self.config.advertised_ip.is_ipv4() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        let ip = peer.ip();
        let limits = &self.config.limits;
        let own = ip == self.config.advertised_ip;
        let forbidden = ip.is_unspecified()
            || ip.is_multicast()
            || (ip.is_loopback() && !limits.allow_loopback_peers && !own)
            || (is_private(ip) && !limits.allow_private_peers && !own)
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if forbidden {
            return Err((403, "Forbidden"));
        }
        Ok(())
    }

    fn live_alloc(&self, from: SocketAddr) -> Result<AllocId, (u16, &'static str)> {
        match self.by_client.get(&from) {
            Some(id) if self.allocs.get(id).is_some_and(|a| a.relay.is_some()) => Ok(*id),
            _ => Err((437, "Allocation Mismatch")),
        }
    }

    fn permit(
        &mut self,
        id: AllocId,
        now: Instant,
        ips: &[IpAddr],
    ) -> Result<(), (u16, &'static str)> {
        let max = self.config.limits.max_permissions;
        let Some(a) = self.allocs.get_mut(&id) else {
            return Err((437, "Allocation Mismatch"));
        };
        a.perms.retain(|(_, exp)| *exp > now);
        let new = ips
            .iter()
            .filter(|ip| !a.perms.iter().any(|(p, _)| p == *ip))
            .count();
        if a.perms.len() + new > max {
            return Err((508, "Insufficient Capacity"));
        }
        for ip in ips {
            let exp = now + PERMISSION_LIFETIME;
            match a.perms.iter_mut().find(|(p, _)| p == ip) {
                Some(p) => p.1 = exp,
                None => a.perms.push((*ip, exp)),
            }
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        key: [u8; 16],
    ) -> Result<(), (u16, &'static str)> {
        let id = self.live_alloc(from)?;
        let mut ips = Vec::new();
        for v in m.get_all(stun::A_XOR_PEER_ADDRESS) {
            let peer = stun::decode_xor_addr(v, &m.txid).ok_or((400, "Bad Request"))?;
            self.check_peer(peer)?;
            ips.push(peer.ip());
        }
        if ips.is_empty() {
            return Err((400, "Bad Request"));
        }
        self.permit(id, now, &ips)?;
        let data =
            Builder::new(stun::CREATE_PERMISSION, Class::Success, &m.txid).finish(Some(&key));
        self.send(from, data);
        Ok(())
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: &Message<'_>,
        key: [u8; 16],
    ) -> Result<(), (u16, &'static str)> {
        let id = self.live_alloc(from)?;
        let number = match m.get(stun::A_CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) => u16::from_be_bytes([hi, lo]),
            _ => return Err((400, "Bad Request")),
        };
        if !CHANNELS.contains(&number) {
            return Err((400, "Bad Request"));
        }
        let peer = m
            .xor_addr(stun::A_XOR_PEER_ADDRESS)
            .ok_or((400, "Bad Request"))?;
        self.check_peer(peer)?;
        let max = self.config.limits.max_channels;
        {
            let Some(a) = self.allocs.get_mut(&id) else {
                return Err((437, "Allocation Mismatch"));
            };
            a.channels.retain(|c| c.expires > now);
            // A number is bound to one peer, a peer to one number (RFC 8656 §12.2).
            let clash = a
                .channels
                .iter()
                .any(|c| (c.number == number) != (c.peer == peer));
            if clash {
                return Err((400, "Bad Request"));
            }
            let known = a.channels.iter().any(|c| c.number == number);
            if !known && a.channels.len() >= max {
                return Err((508, "Insufficient Capacity"));
            }
        }
        self.permit(id, now, &[peer.ip()])?;
        if let Some(a) = self.allocs.get_mut(&id) {
            let expires = now + CHANNEL_LIFETIME;
            match a.channels.iter_mut().find(|c| c.number == number) {
                Some(c) => c.expires = expires,
                None => a.channels.push(Channel {
                    number,
                    peer,
                    expires,
                }),
            }
        }
        let data = Builder::new(stun::CHANNEL_BIND, Class::Success, &m.txid).finish(Some(&key));
        self.send(from, data);
        Ok(())
    }
}

/// Private, shared (CGNAT) and link-local ranges.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Constant-time equality (the nonce MAC).
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
