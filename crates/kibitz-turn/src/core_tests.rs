//! The sans-IO core, driven with hand-built messages and injected time: every method and
//! error path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::auth::{Secret, TurnAuth, long_term_key};
use crate::core::{CoreConfig, Forward, Output, Server, TurnLimits};
use crate::stun::{self, Builder, Class, Message};

const REALM: &str = "kibitz";
const USER: &str = "wblan";
const PASS: &str = "Sp64SHsXMZOdzT6rgYcF";
const UNIX0: u64 = 1_800_000_000;
const ADV: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));

fn client() -> SocketAddr {
    "192.168.1.20:50000".parse().unwrap()
}
fn peer() -> SocketAddr {
    "192.168.1.30:40000".parse().unwrap()
}

fn server_with(auth: TurnAuth, limits: TurnLimits) -> (Server, Instant) {
    // Any instant works: the core only compares instants it is given.
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let cfg = CoreConfig {
        realm: REALM.into(),
        auth,
        advertised_ip: ADV,
        limits,
    };
    (Server::new(cfg, [9; 32], t0, UNIX0), t0)
}

fn static_auth() -> TurnAuth {
    TurnAuth::Static {
        user: USER.into(),
        pass: Secret::new(PASS),
    }
}

fn server() -> (Server, Instant) {
    server_with(static_auth(), TurnLimits::default())
}

/// One client's view: credentials and the last nonce.
struct Cli {
    addr: SocketAddr,
    user: String,
    key: [u8; 16],
    nonce: String,
    n: u8,
}

impl Cli {
    fn new(addr: SocketAddr, user: &str, pass: &str) -> Self {
        Cli {
            addr,
            user: user.into(),
            key: long_term_key(user, REALM, pass),
            nonce: String::new(),
            n: 0,
        }
    }

    fn txid(&mut self) -> [u8; 12] {
        self.n += 1;
        [self.n; 12]
    }

    /// A signed request with `attrs`.
    fn req(&mut self, method: u16, attrs: &[(u16, Vec<u8>)]) -> ([u8; 12], Vec<u8>) {
        let txid = self.txid();
        (txid, self.req_with(method, txid, attrs, true))
    }

    fn req_with(
        &self,
        method: u16,
        txid: [u8; 12],
        attrs: &[(u16, Vec<u8>)],
        sign: bool,
    ) -> Vec<u8> {
        let mut b = Builder::new(method, Class::Request, &txid);
        for (t, v) in attrs {
            b = b.attr(*t, v);
        }
        if !sign {
            return b.finish(None);
        }
        b.attr(stun::A_USERNAME, self.user.as_bytes())
            .attr(stun::A_REALM, REALM.as_bytes())
            .attr(stun::A_NONCE, self.nonce.as_bytes())
            .finish(Some(&self.key))
    }
}

fn udp() -> (u16, Vec<u8>) {
    (stun::A_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}
fn xor_peer(p: SocketAddr, txid: &[u8; 12]) -> (u16, Vec<u8>) {
    (stun::A_XOR_PEER_ADDRESS, stun::encode_xor_addr(p, txid))
}

/// Every datagram queued for clients; panics on other outputs unless `allow_other`.
fn transmits(s: &mut Server) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut v = Vec::new();
    while let Some(o) = s.poll_output() {
        match o {
            Output::Transmit { to, data } => v.push((to, data)),
            other => panic!("unexpected {other:?}"),
        }
    }
    v
}

fn one_answer(s: &mut Server) -> Vec<u8> {
    let mut t = transmits(s);
    assert_eq!(t.len(), 1, "want exactly one answer");
    t.remove(0).1
}

fn error_code(b: &[u8]) -> Option<u16> {
    let m = Message::parse(b).unwrap();
    let v = m.get(stun::A_ERROR_CODE)?;
    Some(u16::from(v[2] & 7) * 100 + u16::from(v[3]))
}

/// 401 challenge: the client learns the nonce.
fn challenge(s: &mut Server, now: Instant, c: &mut Cli) {
    let txid = c.txid();
    let b = c.req_with(stun::ALLOCATE, txid, &[udp()], false);
    assert!(s.handle_client(now, c.addr, &b).is_none());
    let a = one_answer(s);
    assert_eq!(error_code(&a), Some(401));
    let m = Message::parse(&a).unwrap();
    assert_eq!(m.class, Class::Error);
    assert_eq!(m.txid, txid);
    assert_eq!(m.text(stun::A_REALM), Some(REALM));
    assert!(
        !m.has_integrity(),
        "a challenge carries no MESSAGE-INTEGRITY"
    );
    c.nonce = m.text(stun::A_NONCE).unwrap().to_owned();
}

/// Allocates for `c`; returns the allocation id and the relayed address.
fn allocate(s: &mut Server, now: Instant, c: &mut Cli, port: u16) -> (u64, SocketAddr) {
    challenge(s, now, c);
    let (txid, b) = c.req(stun::ALLOCATE, &[udp()]);
    assert!(s.handle_client(now, c.addr, &b).is_none());
    let Some(Output::BindRelay { alloc, .. }) = s.poll_output() else {
        panic!("want BindRelay")
    };
    assert!(s.poll_output().is_none());
    s.relay_bound(now, alloc, Ok(port));
    let a = one_answer(s);
    let m = Message::parse(&a).unwrap();
    assert_eq!(
        (m.method, m.class, m.txid),
        (stun::ALLOCATE, Class::Success, txid)
    );
    assert!(m.check_integrity(&c.key));
    assert_eq!(m.u32(stun::A_LIFETIME), Some(600));
    assert_eq!(m.xor_addr(stun::A_XOR_MAPPED_ADDRESS), Some(c.addr));
    let relay = m.xor_addr(stun::A_XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay, SocketAddr::new(ADV, port));
    (alloc, relay)
}

fn signed_error(s: &mut Server, c: &Cli) -> u16 {
    let a = one_answer(s);
    let m = Message::parse(&a).unwrap();
    assert!(
        m.check_integrity(&c.key),
        "errors after authentication are signed"
    );
    error_code(&a).unwrap()
}

fn bind_channel(
    s: &mut Server,
    now: Instant,
    c: &mut Cli,
    number: u16,
    p: SocketAddr,
) -> Option<u16> {
    let txid = c.txid();
    let b = c.req_with(
        stun::CHANNEL_BIND,
        txid,
        &[
            (
                stun::A_CHANNEL_NUMBER,
                vec![(number >> 8) as u8, number as u8, 0, 0],
            ),
            xor_peer(p, &txid),
        ],
        true,
    );
    s.handle_client(now, c.addr, &b);
    let a = one_answer(s);
    let m = Message::parse(&a).unwrap();
    assert!(m.check_integrity(&c.key));
    error_code(&a)
}

fn permit(s: &mut Server, now: Instant, c: &mut Cli, peers: &[SocketAddr]) -> Option<u16> {
    let txid = c.txid();
    let attrs: Vec<_> = peers.iter().map(|p| xor_peer(*p, &txid)).collect();
    let b = c.req_with(stun::CREATE_PERMISSION, txid, &attrs, true);
    s.handle_client(now, c.addr, &b);
    let a = one_answer(s);
    assert!(Message::parse(&a).unwrap().check_integrity(&c.key));
    error_code(&a)
}

fn refresh(
    s: &mut Server,
    now: Instant,
    c: &mut Cli,
    lifetime: Option<u32>,
) -> (Option<u16>, Option<u32>) {
    let attrs: Vec<_> = lifetime
        .map(|l| (stun::A_LIFETIME, l.to_be_bytes().to_vec()))
        .into_iter()
        .collect();
    let (_, b) = c.req(stun::REFRESH, &attrs);
    s.handle_client(now, c.addr, &b);
    let mut code = None;
    let mut life = None;
    while let Some(o) = s.poll_output() {
        if let Output::Transmit { data, .. } = o {
            let m = Message::parse(&data).unwrap();
            code = error_code(&data);
            life = m.u32(stun::A_LIFETIME);
        }
    }
    (code, life)
}

fn peer_data(
    s: &mut Server,
    now: Instant,
    alloc: u64,
    from: SocketAddr,
    payload: &[u8],
) -> (Option<Vec<u8>>, Vec<Vec<u8>>) {
    let mut buf = vec![0u8; 4 + payload.len()];
    buf[4..].copy_from_slice(payload);
    let direct = s
        .handle_peer(now, alloc, from, &mut buf, payload.len())
        .map(|t| {
            assert_eq!(t.to, client());
            buf[t.range].to_vec()
        });
    let queued = transmits(s).into_iter().map(|(_, d)| d).collect();
    (direct, queued)
}

#[test]
fn binding_request_answers_xor_mapped_address_with_fingerprint() {
    let (mut s, t0) = server();
    let b = Builder::new(stun::BINDING, Class::Request, &[5; 12]).finish(None);
    assert!(s.handle_client(t0, client(), &b).is_none());
    let a = one_answer(&mut s);
    // FINGERPRINT is checked by parse.
    let m = Message::parse(&a).unwrap();
    assert_eq!((m.method, m.class), (stun::BINDING, Class::Success));
    assert_eq!(m.xor_addr(stun::A_XOR_MAPPED_ADDRESS), Some(client()));
    // An unknown comprehension-required attribute gets 420.
    let b = Builder::new(stun::BINDING, Class::Request, &[5; 12])
        .attr(0x0042, b"?")
        .finish(None);
    s.handle_client(t0, client(), &b);
    let a = one_answer(&mut s);
    assert_eq!(error_code(&a), Some(420));
    assert_eq!(
        Message::parse(&a).unwrap().get(stun::A_UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x42][..])
    );
}

#[test]
fn static_user_allocates_relays_both_ways_and_refreshes() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    let (alloc, _) = allocate(&mut s, t0, &mut c, 50_001);
    assert_eq!(s.stats().allocations, 1);

    // Without a permission nothing flows either way.
    let (d, q) = peer_data(&mut s, t0, alloc, peer(), b"hi");
    assert!(d.is_none() && q.is_empty());

    // Permission: peer data arrives as a Data indication.
    assert_eq!(permit(&mut s, t0, &mut c, &[peer()]), None);
    let (d, q) = peer_data(&mut s, t0, alloc, peer(), b"hello");
    assert!(d.is_none());
    assert_eq!(q.len(), 1);
    let m = Message::parse(&q[0]).unwrap();
    assert_eq!((m.method, m.class), (stun::DATA, Class::Indication));
    assert_eq!(m.xor_addr(stun::A_XOR_PEER_ADDRESS), Some(peer()));
    assert_eq!(m.get(stun::A_DATA), Some(&b"hello"[..]));

    // Send indication goes out of the relay.
    let txid = [77; 12];
    let send = Builder::new(stun::SEND, Class::Indication, &txid)
        .xor_addr(stun::A_XOR_PEER_ADDRESS, peer())
        .attr(stun::A_DATA, b"out")
        .finish(None);
    let f = s.handle_client(t0, c.addr, &send).unwrap();
    assert_eq!((f.alloc, f.to), (alloc, peer()));
    assert_eq!(&send[f.range], b"out");

    // ChannelBind, then ChannelData both ways.
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4001, peer()), None);
    let cd = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    let f = s.handle_client(t0, c.addr, &cd).unwrap();
    assert_eq!(
        f,
        Forward {
            alloc,
            to: peer(),
            range: 4..7
        }
    );
    let (d, q) = peer_data(&mut s, t0, alloc, peer(), b"xyz");
    assert!(q.is_empty());
    assert_eq!(d.unwrap(), vec![0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z']);
    // Unknown channel, or a length beyond the datagram: dropped.
    assert!(
        s.handle_client(t0, c.addr, &[0x40, 0x02, 0, 1, 1])
            .is_none()
    );
    assert!(
        s.handle_client(t0, c.addr, &[0x40, 0x01, 0, 9, 1])
            .is_none()
    );
    assert!(s.handle_client(t0, c.addr, &[0x40, 0x01]).is_none());
    // Another source address has no allocation.
    let other: SocketAddr = "192.168.1.20:50001".parse().unwrap();
    assert!(s.handle_client(t0, other, &cd).is_none());

    // Refresh: capped at the maximum; 0 deletes.
    assert_eq!(
        refresh(&mut s, t0, &mut c, Some(100_000)),
        (None, Some(3600))
    );
    assert_eq!(refresh(&mut s, t0, &mut c, Some(1)), (None, Some(600)));
    assert_eq!(refresh(&mut s, t0, &mut c, None), (None, Some(600)));
    let (_, b) = c.req(
        stun::REFRESH,
        &[(stun::A_LIFETIME, 0u32.to_be_bytes().to_vec())],
    );
    s.handle_client(t0, c.addr, &b);
    assert_eq!(s.poll_output(), Some(Output::CloseRelay { alloc }));
    let a = one_answer(&mut s);
    assert_eq!(Message::parse(&a).unwrap().u32(stun::A_LIFETIME), Some(0));
    assert_eq!(s.stats().allocations, 0);
    // Now there is nothing to refresh.
    assert_eq!(refresh(&mut s, t0, &mut c, None).0, Some(437));
    assert!(s.handle_client(t0, c.addr, &cd).is_none());
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_a_second_one_437() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    challenge(&mut s, t0, &mut c);
    let (txid, b) = c.req(stun::ALLOCATE, &[udp()]);
    s.handle_client(t0, c.addr, &b);
    let Some(Output::BindRelay { alloc, .. }) = s.poll_output() else {
        panic!()
    };
    // While the relay socket is being bound, a retransmission is not answered twice.
    s.handle_client(t0, c.addr, &b);
    assert!(s.poll_output().is_none());
    s.relay_bound(t0, alloc, Ok(4000));
    let first = one_answer(&mut s);
    // Even after the nonce went stale, the retransmission gets the cached answer.
    let later = t0 + Duration::from_secs(3000);
    s.handle_client(later, c.addr, &b);
    assert_eq!(one_answer(&mut s), first);
    assert_eq!(Message::parse(&first).unwrap().txid, txid);
    // A new Allocate from the same 5-tuple: 437.
    let (_, b2) = c.req(stun::ALLOCATE, &[udp()]);
    s.handle_client(t0, c.addr, &b2);
    assert_eq!(signed_error(&mut s, &c), 437);
}

#[test]
fn bad_credentials_get_401_and_are_counted() {
    let (mut s, t0) = server();
    for (user, pass) in [(USER, "wrong"), ("someone", PASS)] {
        let mut c = Cli::new(client(), user, pass);
        challenge(&mut s, t0, &mut c);
        let (_, b) = c.req(stun::ALLOCATE, &[udp()]);
        s.handle_client(t0, c.addr, &b);
        let a = one_answer(&mut s);
        assert_eq!(error_code(&a), Some(401), "{user}/{pass}");
        // The 401 carries a new nonce and the realm, no integrity.
        let m = Message::parse(&a).unwrap();
        assert!(m.get(stun::A_NONCE).is_some() && !m.has_integrity());
    }
    assert_eq!(s.stats().auth_failures, 2);
    assert_eq!(s.stats().allocations, 0);
    // Wrong realm.
    let mut c = Cli::new(client(), USER, PASS);
    challenge(&mut s, t0, &mut c);
    let txid = c.txid();
    let b = Builder::new(stun::ALLOCATE, Class::Request, &txid)
        .attr(udp().0, &udp().1)
        .attr(stun::A_USERNAME, USER.as_bytes())
        .attr(stun::A_REALM, b"elsewhere")
        .attr(stun::A_NONCE, c.nonce.as_bytes())
        .finish(Some(&long_term_key(USER, "elsewhere", PASS)));
    s.handle_client(t0, c.addr, &b);
    assert_eq!(error_code(&one_answer(&mut s)), Some(401));
    // Integrity but no USERNAME: 400.
    let b = Builder::new(stun::ALLOCATE, Class::Request, &txid)
        .attr(udp().0, &udp().1)
        .finish(Some(&c.key));
    s.handle_client(t0, c.addr, &b);
    assert_eq!(error_code(&one_answer(&mut s)), Some(400));
}

#[test]
fn stale_forged_or_foreign_nonces_get_438() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    challenge(&mut s, t0, &mut c);
    let good = c.nonce.clone();
    // Issued for another client address.
    let mut other = Cli::new("192.168.1.99:1234".parse().unwrap(), USER, PASS);
    other.nonce = good.clone();
    let (_, b) = other.req(stun::ALLOCATE, &[udp()]);
    s.handle_client(t0, other.addr, &b);
    assert_eq!(error_code(&one_answer(&mut s)), Some(438));
    // Forged / garbage.
    for n in [
        "",
        "zzzzzzzz0000000000000000",
        "0000000000000000000000000",
        "ééééééééééééééééééééé",
    ] {
        c.nonce = n.into();
        let (_, b) = c.req(stun::ALLOCATE, &[udp()]);
        s.handle_client(t0, c.addr, &b);
        assert_eq!(error_code(&one_answer(&mut s)), Some(438), "{n:?}");
    }
    // Stale after the nonce lifetime; the 438 carries a fresh nonce that works.
    c.nonce = good;
    let later = t0 + Duration::from_secs(601);
    let (_, b) = c.req(stun::ALLOCATE, &[udp()]);
    s.handle_client(later, c.addr, &b);
    let a = one_answer(&mut s);
    assert_eq!(error_code(&a), Some(438));
    c.nonce = Message::parse(&a)
        .unwrap()
        .text(stun::A_NONCE)
        .unwrap()
        .into();
    let (_, b) = c.req(stun::ALLOCATE, &[udp()]);
    s.handle_client(later, c.addr, &b);
    assert!(matches!(s.poll_output(), Some(Output::BindRelay { .. })));
}

#[test]
fn rest_credentials_expired_tampered_and_rotated() {
    let auth = TurnAuth::RestSecrets(vec![Secret::new("new-secret"), Secret::new("old-secret")]);
    let (mut s, t0) = server_with(auth, TurnLimits::default());
    let try_alloc = |s: &mut Server, addr: &str, user: &str, pass: &str| -> Option<u16> {
        let mut c = Cli::new(addr.parse().unwrap(), user, pass);
        challenge(s, t0, &mut c);
        let (_, b) = c.req(stun::ALLOCATE, &[udp()]);
        s.handle_client(t0, c.addr, &b);
        match s.poll_output() {
            Some(Output::BindRelay { .. }) => None,
            Some(Output::Transmit { data, .. }) => error_code(&data),
            other => panic!("{other:?}"),
        }
    };
    let user = format!("{}:alice", UNIX0 + 3600);
    let pw = |secret: &str, u: &str| kibitz_proto::turn::rest_password(secret.as_bytes(), u);
    assert_eq!(
        try_alloc(&mut s, "10.0.0.1:1", &user, &pw("new-secret", &user)),
        None
    );
    assert_eq!(
        try_alloc(&mut s, "10.0.0.2:1", &user, &pw("old-secret", &user)),
        None
    );
    assert_eq!(
        try_alloc(&mut s, "10.0.0.3:1", &user, &pw("other", &user)),
        Some(401)
    );
    // Tampered password, tampered username (signed for another one).
    let mut p = pw("new-secret", &user);
    p.replace_range(0..1, if p.starts_with('A') { "B" } else { "A" });
    assert_eq!(try_alloc(&mut s, "10.0.0.4:1", &user, &p), Some(401));
    let bob = format!("{}:bob", UNIX0 + 3600);
    assert_eq!(
        try_alloc(&mut s, "10.0.0.5:1", &bob, &pw("new-secret", &user)),
        Some(401)
    );
    // Expired a second ago, properly signed.
    let old = format!("{}:alice", UNIX0 - 1);
    assert_eq!(
        try_alloc(&mut s, "10.0.0.6:1", &old, &pw("new-secret", &old)),
        Some(401)
    );
    // Not a REST username.
    assert_eq!(
        try_alloc(&mut s, "10.0.0.7:1", "alice", &pw("new-secret", "alice")),
        Some(401)
    );
    assert_eq!(s.stats().auth_failures, 5);
}

#[test]
fn allocate_attribute_errors() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    challenge(&mut s, t0, &mut c);
    type Attrs = Vec<(u16, Vec<u8>)>;
    let cases: Vec<(Attrs, u16)> = vec![
        (vec![], 400),
        (vec![(stun::A_REQUESTED_TRANSPORT, vec![17, 0])], 400),
        (vec![(stun::A_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])], 442),
        (
            vec![udp(), (stun::A_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
            440,
        ),
        (
            vec![udp(), (stun::A_REQUESTED_ADDRESS_FAMILY, vec![9, 0, 0, 0])],
            400,
        ),
        (vec![udp(), (stun::A_EVEN_PORT, vec![0x80])], 508),
        (vec![udp(), (stun::A_EVEN_PORT, vec![])], 400),
        (vec![udp(), (stun::A_RESERVATION_TOKEN, vec![0; 8])], 508),
        (vec![udp(), (stun::A_DONT_FRAGMENT, vec![])], 420),
        (vec![udp(), (0x7001, vec![1])], 420),
    ];
    for (attrs, want) in cases {
        let (_, b) = c.req(stun::ALLOCATE, &attrs);
        s.handle_client(t0, c.addr, &b);
        assert_eq!(signed_error(&mut s, &c), want, "{attrs:?}");
    }
    // A comprehension-optional unknown attribute is fine, as is family IPv4.
    let (_, b) = c.req(
        stun::ALLOCATE,
        &[
            udp(),
            (0x8123, vec![1]),
            (stun::A_REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0]),
        ],
    );
    s.handle_client(t0, c.addr, &b);
    assert!(matches!(s.poll_output(), Some(Output::BindRelay { .. })));
}

#[test]
fn quotas_per_source_ip_and_overall() {
    let limits = TurnLimits {
        max_allocations: 3,
        max_allocations_per_ip: 2,
        ..TurnLimits::default()
    };
    let (mut s, t0) = server_with(static_auth(), limits);
    let mut n = 0;
    let mut go = |s: &mut Server, addr: &str| -> Option<u16> {
        n += 1;
        let mut c = Cli::new(addr.parse().unwrap(), USER, PASS);
        challenge(s, t0, &mut c);
        let (_, b) = c.req(stun::ALLOCATE, &[udp()]);
        s.handle_client(t0, c.addr, &b);
        match s.poll_output() {
            Some(Output::BindRelay { alloc, .. }) => {
                s.relay_bound(t0, alloc, Ok(5000 + n));
                let _ = one_answer(s);
                None
            }
            Some(Output::Transmit { data, .. }) => error_code(&data),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(go(&mut s, "10.0.0.1:1"), None);
    assert_eq!(go(&mut s, "10.0.0.1:2"), None);
    assert_eq!(go(&mut s, "10.0.0.1:3"), Some(486));
    assert_eq!(go(&mut s, "10.0.0.2:1"), None);
    assert_eq!(go(&mut s, "10.0.0.3:1"), Some(486));
    assert_eq!(s.stats().allocations, 3);
}

#[test]
fn relay_bind_failure_answers_508_and_frees_the_slot() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    challenge(&mut s, t0, &mut c);
    let (_, b) = c.req(stun::ALLOCATE, &[udp()]);
    s.handle_client(t0, c.addr, &b);
    let Some(Output::BindRelay { alloc, .. }) = s.poll_output() else {
        panic!()
    };
    s.relay_bound(t0, alloc, Err(()));
    assert_eq!(signed_error(&mut s, &c), 508);
    assert_eq!(s.stats().allocations, 0);
    // A late bind for a gone allocation closes the socket.
    s.relay_bound(t0, alloc, Ok(1));
    assert_eq!(s.poll_output(), Some(Output::CloseRelay { alloc }));
    allocate(&mut s, t0, &mut c, 6000);
}

#[test]
fn permission_and_channel_errors() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    // Before allocating: 437 (after authentication).
    challenge(&mut s, t0, &mut c);
    assert_eq!(permit(&mut s, t0, &mut c, &[peer()]), Some(437));
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4000, peer()), Some(437));
    allocate(&mut s, t0, &mut c, 7000);
    let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:5".parse().unwrap();
    let mc: SocketAddr = "224.0.0.1:5".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:5".parse().unwrap();
    assert_eq!(permit(&mut s, t0, &mut c, &[v6]), Some(443));
    assert_eq!(permit(&mut s, t0, &mut c, &[lo]), Some(403));
    assert_eq!(permit(&mut s, t0, &mut c, &[mc]), Some(403));
    assert_eq!(permit(&mut s, t0, &mut c, &[peer(), any]), Some(403));
    assert_eq!(permit(&mut s, t0, &mut c, &[]), Some(400));
    // Several peers at once.
    let p2: SocketAddr = "192.168.1.31:1".parse().unwrap();
    assert_eq!(permit(&mut s, t0, &mut c, &[peer(), p2]), None);
    // Channel numbers out of range, clashes.
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x3FFF, peer()), Some(400));
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x8000, peer()), Some(400));
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4000, lo), Some(403));
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4000, peer()), None);
    assert_eq!(
        bind_channel(&mut s, t0, &mut c, 0x4000, peer()),
        None,
        "refresh"
    );
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4000, p2), Some(400));
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4001, peer()), Some(400));
    // Missing attributes.
    let (_, b) = c.req(
        stun::CHANNEL_BIND,
        &[(stun::A_CHANNEL_NUMBER, vec![0x40, 0, 0, 0])],
    );
    s.handle_client(t0, c.addr, &b);
    assert_eq!(signed_error(&mut s, &c), 400);
    let txid = c.txid();
    let b = c.req_with(stun::CHANNEL_BIND, txid, &[xor_peer(peer(), &txid)], true);
    s.handle_client(t0, c.addr, &b);
    assert_eq!(signed_error(&mut s, &c), 400);
    // A different user on this allocation: 441.
    let mut mallory = Cli::new(client(), "mallory", "x");
    mallory.nonce = c.nonce.clone();
    mallory.n = 200;
    assert_eq!(refresh(&mut s, t0, &mut mallory, None).0, Some(441));
    // Unknown request method: 400.
    let b = Builder::new(0x00F, Class::Request, &[3; 12]).finish(None);
    s.handle_client(t0, c.addr, &b);
    assert_eq!(error_code(&one_answer(&mut s)), Some(400));
}

#[test]
fn private_peers_can_be_refused_except_the_advertised_ip() {
    let limits = TurnLimits {
        allow_private_peers: false,
        ..TurnLimits::default()
    };
    let (mut s, t0) = server_with(static_auth(), limits);
    let mut c = Cli::new(client(), USER, PASS);
    allocate(&mut s, t0, &mut c, 8100);
    for p in [
        "10.1.2.3:1",
        "172.16.0.1:1",
        "192.168.1.30:1",
        "169.254.169.254:80",
        "100.64.0.1:1",
    ] {
        assert_eq!(
            permit(&mut s, t0, &mut c, &[p.parse().unwrap()]),
            Some(403),
            "{p}"
        );
    }
    // The relay's own (advertised) address and public peers are fine.
    let own = SocketAddr::new(ADV, 50_000);
    assert_eq!(permit(&mut s, t0, &mut c, &[own]), None);
    assert_eq!(
        permit(&mut s, t0, &mut c, &["203.0.113.9:1".parse().unwrap()]),
        None
    );
    assert!(crate::core::is_private("fd00::1".parse().unwrap()));
    assert!(crate::core::is_private("fe80::1".parse().unwrap()));
    assert!(!crate::core::is_private("2001:db8::1".parse().unwrap()));
}

#[test]
fn limits_on_permissions_and_channels() {
    let limits = TurnLimits {
        max_permissions: 2,
        max_channels: 1,
        ..TurnLimits::default()
    };
    let (mut s, t0) = server_with(static_auth(), limits);
    let mut c = Cli::new(client(), USER, PASS);
    allocate(&mut s, t0, &mut c, 8000);
    let p = |i: u8| SocketAddr::from(([10, 0, 0, i], 9));
    assert_eq!(permit(&mut s, t0, &mut c, &[p(1), p(2)]), None);
    assert_eq!(permit(&mut s, t0, &mut c, &[p(3)]), Some(508));
    assert_eq!(
        permit(&mut s, t0, &mut c, &[p(1)]),
        None,
        "refreshing is not adding"
    );
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4000, p(1)), None);
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4001, p(2)), Some(508));
    // After the permissions expire there is room again.
    let later = t0 + Duration::from_secs(301);
    assert_eq!(permit(&mut s, later, &mut c, &[p(3), p(4)]), None);
}

#[test]
fn permissions_channels_and_allocations_expire() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    let (alloc, _) = allocate(&mut s, t0, &mut c, 9000);
    assert_eq!(bind_channel(&mut s, t0, &mut c, 0x4000, peer()), None);
    let cd = [0x40, 0x00, 0x00, 0x01, 7];
    // The channel installed a permission: 300 s.
    let t299 = t0 + Duration::from_secs(299);
    assert!(s.handle_client(t299, c.addr, &cd).is_some());
    let t300 = t0 + Duration::from_secs(300);
    assert!(
        s.handle_client(t300, c.addr, &cd).is_none(),
        "permission expired"
    );
    assert!(peer_data(&mut s, t300, alloc, peer(), b"x").0.is_none());
    // Re-permit: the channel (600 s) works again until it expires.
    assert_eq!(permit(&mut s, t300, &mut c, &[peer()]), None);
    assert!(s.handle_client(t300, c.addr, &cd).is_some());
    // Refresh the allocation so that it outlives the channel.
    assert_eq!(
        refresh(&mut s, t300, &mut c, Some(1200)),
        (None, Some(1200))
    );
    let t599 = t0 + Duration::from_secs(599);
    s.handle_timeout(t599);
    assert!(s.handle_client(t599, c.addr, &cd).is_some());
    let t600 = t0 + Duration::from_secs(600);
    s.handle_timeout(t600);
    assert!(
        s.handle_client(t600, c.addr, &cd).is_none(),
        "channel expired"
    );
    // Peer data now arrives as a Data indication (permission still valid until 600).
    assert_eq!(permit(&mut s, t600, &mut c, &[peer()]), None);
    let (d, q) = peer_data(&mut s, t600, alloc, peer(), b"y");
    assert!(d.is_none() && q.len() == 1);
    // The allocation expires at t300 + 1200.
    assert_eq!(s.poll_timeout(), Some(t300 + Duration::from_secs(1200)));
    s.handle_timeout(t300 + Duration::from_secs(1199));
    assert!(s.poll_output().is_none());
    s.handle_timeout(t300 + Duration::from_secs(1200));
    assert_eq!(s.poll_output(), Some(Output::CloseRelay { alloc }));
    assert_eq!(s.stats().allocations, 0);
    assert_eq!(s.poll_timeout(), None);
    // The same client can allocate again.
    allocate(&mut s, t300 + Duration::from_secs(1200), &mut c, 9001);
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let (mut s, t0) = server();
    let mut c = Cli::new(client(), USER, PASS);
    let (alloc, _) = allocate(&mut s, t0, &mut c, 9100);
    // A simple deterministic generator (no rand dependency in tests).
    let mut x: u64 = 0x1234_5678_9abc_def0;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let valid = c.req(stun::REFRESH, &[]).1;
    for i in 0..20_000 {
        let len = (next() % 120) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 && !valid.is_empty() {
            // Mutations of a valid message reach deeper.
            b = valid.clone();
            let at = (next() as usize) % b.len();
            b[at] = next() as u8;
            if i % 2 == 0 {
                b.truncate((next() as usize) % b.len());
            }
        }
        if i % 5 == 0 && b.len() > 1 {
            b[0] = 0x40;
        }
        let _ = s.handle_client(t0, c.addr, &b);
        let mut buf = vec![0u8; 4 + b.len()];
        buf[4..].copy_from_slice(&b);
        let _ = s.handle_peer(t0, alloc, peer(), &mut buf, b.len());
        let _ = s.handle_peer(t0, alloc + 1, peer(), &mut buf, b.len());
        while s.poll_output().is_some() {}
    }
    assert!(s.stats().dropped > 0);
    // handle_peer with a too-short buffer is refused, not a panic.
    let mut tiny = [0u8; 3];
    assert!(s.handle_peer(t0, alloc, peer(), &mut tiny, 10).is_none());
}
