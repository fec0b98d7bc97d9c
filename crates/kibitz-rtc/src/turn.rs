//! A TURN client (RFC 8656) over UDP for one connection's socket, sans-IO: Allocate with
//! long-term credentials (the `/api/turn` REST username and password), CreatePermission via
//! ChannelBind, ChannelData and Send indications, Refresh. Used for relay-only connections:
//! every datagram of such a connection goes to the TURN server and nowhere else.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// Where and as whom to relay.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The TURN server (UDP).
    pub server: SocketAddr,
    /// The REST username (`<expiry>:<id>`).
    pub username: String,
    /// The REST password (`base64(HMAC-SHA1(secret, username))`).
    pub credential: String,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("credential", &"***")
            .finish()
    }
}

/// Why a relay could not be configured from `/api/turn`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No `turn:` URL over UDP with a username and credential (`turns:` and TCP are not
    /// supported).
    #[error("no UDP turn: server in the ICE servers")]
    NoTurn,
    /// The URL is not `turn:HOST[:PORT][?transport=udp]`.
    #[error("bad turn URL {0:?}")]
    BadUrl(String),
    /// The host did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
}

/// `turn:HOST[:PORT][?transport=udp]` as `(host, port)`; `None` for `turns:`, TCP, garbage.
fn parse_turn_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("turn:")?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let transport = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="))
        .unwrap_or("udp");
    if transport != "udp" || hostport.is_empty() {
        return None;
    }
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 3478,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((hostport.to_owned(), 3478)),
    }
}

impl RelayConfig {
    /// From one `turn:` URL (UDP) and its credentials; resolves the host.
    pub async fn from_url(url: &str, username: &str, credential: &str) -> Result<Self, RelayError> {
        let (host, port) = parse_turn_url(url).ok_or_else(|| RelayError::BadUrl(url.into()))?;
        let found = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next());
        let server = found.ok_or(RelayError::Resolve(host))?;
        Ok(RelayConfig {
            server,
            username: username.to_owned(),
            credential: credential.to_owned(),
        })
    }

    /// The first UDP `turn:` server of an `/api/turn` answer (its `iceServers`, or the bare
    /// list), with that entry's `username` and `credential`.
    pub async fn from_ice_servers(body: &serde_json::Value) -> Result<Self, RelayError> {
        let list = body.get("iceServers").unwrap_or(body);
        let entries = list.as_array().ok_or(RelayError::NoTurn)?;
        for e in entries {
            let (Some(user), Some(cred)) = (
                e.get("username").and_then(|v| v.as_str()),
                e.get("credential").and_then(|v| v.as_str()),
            ) else {
                continue;
            };
            let urls: Vec<&str> = match e.get("urls") {
                Some(serde_json::Value::String(u)) => vec![u.as_str()],
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|u| u.as_str()).collect(),
                _ => continue,
            };
            if let Some(url) = urls.into_iter().find(|u| parse_turn_url(u).is_some()) {
                return Self::from_url(url, user, cred).await;
            }
        }
        Err(RelayError::NoTurn)
    }
}

const MAGIC: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x003;
const REFRESH: u16 = 0x004;
const SEND: u16 = 0x006;
const DATA: u16 = 0x007;
const CHANNEL_BIND: u16 = 0x009;

const REQUEST: u16 = 0x0000;
const INDICATION: u16 = 0x0010;
const SUCCESS: u16 = 0x0100;
const ERROR: u16 = 0x0110;

const A_USERNAME: u16 = 0x0006;
const A_INTEGRITY: u16 = 0x0008;
const A_ERROR_CODE: u16 = 0x0009;
const A_CHANNEL_NUMBER: u16 = 0x000C;
const A_LIFETIME: u16 = 0x000D;
const A_PEER: u16 = 0x0012;
const A_DATA: u16 = 0x0013;
const A_REALM: u16 = 0x0014;
const A_NONCE: u16 = 0x0015;
const A_RELAYED: u16 = 0x0016;
const A_TRANSPORT: u16 = 0x0019;

/// Retransmit schedule for requests (RFC 8489: RTO 500 ms, doubling, 7 sends).
const RTO: Duration = Duration::from_millis(500);
const MAX_SENDS: u32 = 7;
/// Channel bindings last 10 min and permissions 5 min; refreshing the binding renews both.
const CHANNEL_REFRESH: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allocate,
    Refresh,
    Bind(SocketAddr, u16),
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    bytes: Vec<u8>,
    sends: u32,
    next: Instant,
    retried_auth: bool,
}

/// What the client tells its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TurnEvent {
    /// The relay address to advertise as a `relay` candidate.
    Allocated(SocketAddr),
    /// Allocation failed or was lost: the connection cannot work (fail-closed).
    Failed(String),
}

/// What one datagram from the server was.
#[derive(Debug)]
pub(crate) enum TurnInput {
    /// Relayed data from `peer`.
    Data { peer: SocketAddr, data: Vec<u8> },
    /// A state change.
    Event(TurnEvent),
    /// Handled internally, or ignored.
    Nothing,
}

#[derive(Debug)]
pub(crate) struct TurnClient {
    cfg: RelayConfig,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 16]>,
    relay: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    failed: bool,
    pending: BTreeMap<[u8; 12], Pending>,
    channels: BTreeMap<SocketAddr, (u16, bool, Instant)>,
    by_number: BTreeMap<u16, SocketAddr>,
    next_channel: u16,
    /// Peers to permit once allocated.
    wanted: Vec<SocketAddr>,
    out: VecDeque<Vec<u8>>,
}

fn txid() -> [u8; 12] {
    let mut id = [0u8; 12];
    id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
    id
}

struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(method: u16, class: u16, id: &[u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&(method | class).to_be_bytes());
        buf.extend_from_slice(&0u16.to_be_bytes());
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(id);
        Msg { buf }
    }

    fn attr(&mut self, t: u16, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        // Attribute values here are short (names, nonces, a datagram): within u16.
        self.buf
            .extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
        self.buf.extend_from_slice(v);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    fn set_len(&mut self, extra: usize) {
        let len = u16::try_from(self.buf.len() - 20 + extra).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    fn finish(mut self, key: Option<&[u8; 16]>) -> Vec<u8> {
        match key {
            Some(key) => {
                self.set_len(24);
                // HMAC accepts keys of any length.
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
                    return self.buf;
                };
                mac.update(&self.buf);
                let tag = mac.finalize().into_bytes();
                self.attr(A_INTEGRITY, &tag);
            }
            None => self.set_len(0),
        }
        self.buf
    }
}

fn xor_addr(addr: SocketAddr, id: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC >> 16) as u16;
    let mut v = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend_from_slice(&(u32::from(ip) ^ MAGIC).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
            mask[4..].copy_from_slice(id);
            let o = ip.octets();
            v.extend((0..16).map(|i| o[i] ^ mask[i]));
        }
    }
    v
}

fn read_xor_addr(v: &[u8], id: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 8 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    match v[1] {
        1 => {
            let raw = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(raw)), port))
        }
        2 if v.len() >= 20 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
            mask[4..].copy_from_slice(id);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

/// A parsed STUN message: type, transaction id, attributes.
struct Parsed<'a> {
    kind: u16,
    id: [u8; 12],
    attrs: Vec<(u16, &'a [u8])>,
}

fn parse(b: &[u8]) -> Option<Parsed<'_>> {
    if b.len() < 20 || b[0] & 0xC0 != 0 {
        return None;
    }
    let kind = u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if u32::from_be_bytes([b[4], b[5], b[6], b[7]]) != MAGIC || b.len() < 20 + len {
        return None;
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&b[8..20]);
    let mut attrs = Vec::new();
    let mut rest = &b[20..20 + len];
    while rest.len() >= 4 {
        let t = u16::from_be_bytes([rest[0], rest[1]]);
        let l = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if rest.len() < 4 + l {
            return None;
        }
        attrs.push((t, &rest[4..4 + l]));
        let padded = (4 + l).div_ceil(4) * 4;
        rest = rest.get(padded..).unwrap_or(&[]);
    }
    Some(Parsed { kind, id, attrs })
}

impl Parsed<'_> {
    fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(k, _)| *k == t).map(|(_, v)| *v)
    }
    fn text(&self, t: u16) -> Option<String> {
        self.get(t)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    }
    fn error_code(&self) -> Option<u16> {
        let v = self.get(A_ERROR_CODE)?;
        (v.len() >= 4).then(|| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
    }
}

impl TurnClient {
    /// Starts allocating at once.
    pub fn new(now: Instant, cfg: RelayConfig) -> Self {
        let mut c = TurnClient {
            cfg,
            realm: None,
            nonce: None,
            key: None,
            relay: None,
            refresh_at: None,
            failed: false,
            pending: BTreeMap::new(),
            channels: BTreeMap::new(),
            by_number: BTreeMap::new(),
            next_channel: 0x4000,
            wanted: Vec::new(),
            out: VecDeque::new(),
        };
        c.request(now, Kind::Allocate);
        c
    }

    pub fn server(&self) -> SocketAddr {
        self.cfg.server
    }

    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay
    }

    fn build(&self, kind: Kind, id: &[u8; 12]) -> Vec<u8> {
        let (method, lifetime) = match kind {
            Kind::Allocate => (ALLOCATE, None),
            Kind::Refresh => (REFRESH, Some(600u32)),
            Kind::Bind(..) => (CHANNEL_BIND, None),
        };
        let mut m = Msg::new(method, REQUEST, id);
        match kind {
            Kind::Allocate => {
                m.attr(A_TRANSPORT, &[17, 0, 0, 0]);
            }
            Kind::Bind(peer, ch) => {
                m.attr(A_CHANNEL_NUMBER, &[(ch >> 8) as u8, ch as u8, 0, 0]);
                m.attr(A_PEER, &xor_addr(peer, id));
            }
            Kind::Refresh => {}
        }
        if let Some(l) = lifetime {
            m.attr(A_LIFETIME, &l.to_be_bytes());
        }
        if let (Some(realm), Some(nonce), Some(_)) = (&self.realm, &self.nonce, &self.key) {
            m.attr(A_USERNAME, self.cfg.username.as_bytes());
            m.attr(A_REALM, realm.as_bytes());
            m.attr(A_NONCE, nonce.as_bytes());
        }
        m.finish(self.key.as_ref())
    }

    fn request(&mut self, now: Instant, kind: Kind) {
        let id = txid();
        let bytes = self.build(kind, &id);
        self.out.push_back(bytes.clone());
        self.pending.insert(
            id,
            Pending {
                kind,
                bytes,
                sends: 1,
                next: now + RTO,
                retried_auth: false,
            },
        );
    }

    fn fail(&mut self, why: String) -> TurnInput {
        if self.failed {
            return TurnInput::Nothing;
        }
        self.failed = true;
        self.pending.clear();
        TurnInput::Event(TurnEvent::Failed(why))
    }

    /// Datagrams for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        if self.failed {
            return None;
        }
        self.pending
            .values()
            .map(|p| p.next)
            .chain(self.refresh_at)
            .chain(self.channels.values().map(|c| c.2))
            .min()
    }

    /// Retransmits and refreshes; a request that never got an answer fails the client.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TurnEvent> {
        if self.failed {
            return None;
        }
        let mut lost = None;
        for p in self.pending.values_mut() {
            if now >= p.next {
                if p.sends >= MAX_SENDS {
                    lost = Some(p.kind);
                    continue;
                }
                p.sends += 1;
                p.next = now + RTO * 2u32.pow(p.sends - 1);
                self.out.push_back(p.bytes.clone());
            }
        }
        if let Some(kind) = lost {
            if let TurnInput::Event(e) = self.fail(format!("TURN server did not answer {kind:?}")) {
                return Some(e);
            }
            return None;
        }
        if self.refresh_at.is_some_and(|t| now >= t) {
            self.refresh_at = None;
            self.request(now, Kind::Refresh);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, c)| now >= c.2)
            .map(|(p, c)| (*p, c.0))
            .collect();
        for (peer, ch) in due {
            if let Some(c) = self.channels.get_mut(&peer) {
                c.2 = now + CHANNEL_REFRESH;
            }
            self.request(now, Kind::Bind(peer, ch));
        }
        None
    }

    /// Installs a permission (with a channel binding) for `peer` now, or once allocated, so
    /// that its checks reach us before we sent it anything: an ICE-controlled agent only
    /// answers checks, and without a permission the server drops them.
    pub fn permit(&mut self, now: Instant, peer: SocketAddr) {
        if self.failed || self.channels.contains_key(&peer) {
            return;
        }
        if self.relay.is_none() {
            if !self.wanted.contains(&peer) && self.wanted.len() < 64 {
                self.wanted.push(peer);
            }
            return;
        }
        self.bind(now, peer);
    }

    fn bind(&mut self, now: Instant, peer: SocketAddr) -> Option<u16> {
        if self.next_channel > 0x7FFE {
            return None;
        }
        let ch = self.next_channel;
        self.next_channel += 1;
        self.channels
            .insert(peer, (ch, false, now + CHANNEL_REFRESH));
        self.by_number.insert(ch, peer);
        self.request(now, Kind::Bind(peer, ch));
        Some(ch)
    }

    /// Sends `data` to `peer` through the relay: ChannelData once the channel is bound, a
    /// Send indication before (after asking for the binding, which also installs the
    /// permission).
    pub fn send_to(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        if self.failed || self.relay.is_none() {
            return;
        }
        let (ch, bound) = match self.channels.get(&peer) {
            Some(c) => (c.0, c.1),
            None => match self.bind(now, peer) {
                Some(ch) => (ch, false),
                None => return,
            },
        };
        if bound {
            let mut b = Vec::with_capacity(4 + data.len() + 3);
            b.extend_from_slice(&ch.to_be_bytes());
            b.extend_from_slice(&u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
            b.extend_from_slice(data);
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
            self.out.push_back(b);
        } else {
            let id = txid();
            let mut m = Msg::new(SEND, INDICATION, &id);
            m.attr(A_PEER, &xor_addr(peer, &id));
            m.attr(A_DATA, data);
            self.out.push_back(m.finish(None));
        }
    }

    /// One datagram from the server.
    pub fn handle(&mut self, now: Instant, b: &[u8]) -> TurnInput {
        if self.failed || b.len() < 4 {
            return TurnInput::Nothing;
        }
        if (0x40..0x80).contains(&b[0]) {
            let ch = u16::from_be_bytes([b[0], b[1]]);
            let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
            return match (self.by_number.get(&ch), b.get(4..4 + len)) {
                (Some(peer), Some(data)) => TurnInput::Data {
                    peer: *peer,
                    data: data.to_vec(),
                },
                _ => TurnInput::Nothing,
            };
        }
        let Some(m) = parse(b) else {
            return TurnInput::Nothing;
        };
        let class = m.kind & 0x0110;
        let method = m.kind & !0x0110;
        if class == INDICATION && method == DATA {
            return match (
                m.get(A_PEER).and_then(|v| read_xor_addr(v, &m.id)),
                m.get(A_DATA),
            ) {
                (Some(peer), Some(data)) => TurnInput::Data {
                    peer,
                    data: data.to_vec(),
                },
                _ => TurnInput::Nothing,
            };
        }
        let Some(p) = self.pending.remove(&m.id) else {
            return TurnInput::Nothing;
        };
        match class {
            SUCCESS => self.on_success(now, p.kind, &m),
            ERROR => self.on_error(now, p, &m),
            _ => TurnInput::Nothing,
        }
    }

    fn on_success(&mut self, now: Instant, kind: Kind, m: &Parsed<'_>) -> TurnInput {
        let lifetime = m
            .get(A_LIFETIME)
            .filter(|v| v.len() == 4)
            .map_or(600, |v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        let refresh_in = Duration::from_secs(u64::from(lifetime.max(60)) / 2);
        match kind {
            Kind::Allocate => {
                let Some(relay) = m.get(A_RELAYED).and_then(|v| read_xor_addr(v, &m.id)) else {
                    return self.fail("Allocate success without a relayed address".into());
                };
                self.relay = Some(relay);
                self.refresh_at = Some(now + refresh_in);
                for peer in std::mem::take(&mut self.wanted) {
                    self.permit(now, peer);
                }
                TurnInput::Event(TurnEvent::Allocated(relay))
            }
            Kind::Refresh => {
                self.refresh_at = Some(now + refresh_in);
                TurnInput::Nothing
            }
            Kind::Bind(peer, _) => {
                if let Some(c) = self.channels.get_mut(&peer) {
                    c.1 = true;
                }
                TurnInput::Nothing
            }
        }
    }

    fn on_error(&mut self, now: Instant, p: Pending, m: &Parsed<'_>) -> TurnInput {
        let code = m.error_code().unwrap_or(0);
        if matches!(code, 401 | 438) && !p.retried_auth {
            if let Some(n) = m.text(A_NONCE) {
                self.nonce = Some(n);
            }
            if let Some(r) = m.text(A_REALM) {
                self.realm = Some(r);
            }
            if let Some(realm) = &self.realm {
                let mut h = Md5::new();
                h.update(format!(
                    "{}:{realm}:{}",
                    self.cfg.username, self.cfg.credential
                ));
                self.key = Some(h.finalize().into());
            }
            if self.realm.is_some() && self.nonce.is_some() {
                let id = txid();
                let bytes = self.build(p.kind, &id);
                self.out.push_back(bytes.clone());
                self.pending.insert(
                    id,
                    Pending {
                        kind: p.kind,
                        bytes,
                        sends: 1,
                        next: now + RTO,
                        retried_auth: true,
                    },
                );
                return TurnInput::Nothing;
            }
        }
        match p.kind {
            Kind::Bind(peer, _) => {
                // A refused permission (e.g. 403 for a forbidden peer) only loses that peer.
                if let Some((ch, ..)) = self.channels.remove(&peer) {
                    self.by_number.remove(&ch);
                }
                TurnInput::Nothing
            }
            kind => self.fail(format!("TURN {kind:?} refused with {code}")),
        }
    }

    /// A Refresh with lifetime 0: frees the allocation (best effort, no retransmit).
    pub fn deallocate(&mut self) {
        if self.relay.is_some() && !self.failed {
            let id = txid();
            let mut m = Msg::new(REFRESH, REQUEST, &id);
            m.attr(A_LIFETIME, &0u32.to_be_bytes());
            if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
                m.attr(A_USERNAME, self.cfg.username.as_bytes());
                m.attr(A_REALM, realm.as_bytes());
                m.attr(A_NONCE, nonce.as_bytes());
            }
            self.out.push_back(m.finish(self.key.as_ref()));
            self.failed = true;
        }
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn turn_urls() {
        assert_eq!(
            parse_turn_url("turn:127.0.0.1:3478?transport=udp"),
            Some(("127.0.0.1".into(), 3478))
        );
        assert_eq!(
            parse_turn_url("turn:example.org"),
            Some(("example.org".into(), 3478))
        );
        assert_eq!(parse_turn_url("turn:[::1]:9"), Some(("::1".into(), 9)));
        for bad in [
            "turn:127.0.0.1:3478?transport=tcp",
            "turns:example.org:5349",
            "stun:example.org",
            "turn:",
            "turn:h:x",
        ] {
            assert_eq!(parse_turn_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn xor_addresses_round_trip_and_garbage_is_ignored() {
        let id = [7u8; 12];
        for a in ["127.0.0.1:3478", "[::1]:9", "203.0.113.5:65535"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(read_xor_addr(&xor_addr(a, &id), &id), Some(a));
        }
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut c = TurnClient::new(
            now,
            RelayConfig {
                server: "127.0.0.1:3478".parse().unwrap(),
                username: "u".into(),
                credential: "p".into(),
            },
        );
        let first = c.poll_transmit().unwrap();
        assert_eq!(&first[0..2], &[0, 3]);
        assert_eq!(first.len(), 28);
        for junk in [
            &b""[..],
            b"\x40\x00\xff\xff",
            &first[..],
            &[0u8; 19],
            &[1u8; 300],
        ] {
            assert!(matches!(c.handle(now, junk), TurnInput::Nothing));
        }
    }
}
