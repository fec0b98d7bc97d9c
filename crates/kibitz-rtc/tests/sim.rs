//! Two sans-IO peers on a virtual clock and an in-memory network with a stand-in broker: no
//! sockets, no tokio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kibitz_rtc::{
    CloseReason, ConnId, ConnectOptions, CoreConfig, Event, Identity, Input, Message, Output,
    PackValue, PeerCore, Serialization,
};

struct Node {
    core: PeerCore,
    /// Sockets this node has been given (one per connection).
    addrs: Vec<SocketAddr>,
    events: Vec<Event>,
    /// When the core last said it next wants time.
    timeout: Option<Instant>,
}

/// Everything the core has to give, up to its [`Output::Timeout`].
fn drain(core: &mut PeerCore) -> Vec<Output> {
    let mut outs = Vec::new();
    loop {
        match core.poll_output() {
            Output::Timeout(_) => return outs,
            o => outs.push(o),
        }
    }
}

struct Sim {
    now: Instant,
    nodes: Vec<Node>,
    /// (to node, to socket, from, bytes)
    wire: VecDeque<(usize, SocketAddr, SocketAddr, Vec<u8>)>,
    next_port: u16,
    /// (to node, frame text)
    broker: VecDeque<(usize, String)>,
    /// Rewrites relayed frames (to play a lying remote).
    tamper: Option<fn(&mut serde_json::Value)>,
}

impl Sim {
    fn new(identities: &[Identity]) -> Self {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let nodes = identities
            .iter()
            .enumerate()
            .map(|(i, ident)| {
                let mut core = PeerCore::new(CoreConfig::new(format!("peer{i}"), ident.clone()));
                core.handle_input(now, Input::BrokerConnected);
                Node {
                    core,
                    addrs: Vec::new(),
                    events: Vec::new(),
                    timeout: None,
                }
            })
            .collect();
        let mut sim = Sim {
            now,
            nodes,
            wire: VecDeque::new(),
            next_port: 40_000,
            broker: VecDeque::new(),
            tamper: None,
        };
        sim.drain();
        sim
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.core.id() == id)
    }

    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            while self.nodes[i].core.spare_sockets() < 2 {
                let a: SocketAddr = format!("127.0.0.1:{}", self.next_port).parse().unwrap();
                self.next_port += 1;
                self.nodes[i].addrs.push(a);
                self.nodes[i].core.add_socket(a);
            }
            loop {
                match self.nodes[i].core.poll_output() {
                    Output::Signal(text) => {
                        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let Some(dst) = v.get("dst").and_then(|d| d.as_str()).map(str::to_owned)
                        else {
                            continue; // HEARTBEAT
                        };
                        v["src"] = self.nodes[i].core.id().into();
                        if let Some(t) = self.tamper {
                            t(&mut v);
                        }
                        if let Some(j) = self.index_of(&dst) {
                            self.broker.push_back((j, v.to_string()));
                        }
                    }
                    Output::Transmit {
                        source,
                        destination,
                        contents,
                    } => {
                        if let Some(j) = self
                            .nodes
                            .iter()
                            .position(|n| n.addrs.contains(&destination))
                        {
                            self.wire.push_back((j, destination, source, contents));
                        }
                    }
                    Output::Release { local } => self.nodes[i].addrs.retain(|a| *a != local),
                    Output::Event(e) => self.nodes[i].events.push(e),
                    Output::Timeout(at) => {
                        self.nodes[i].timeout = at;
                        break;
                    }
                }
            }
        }
    }

    /// Delivers everything in flight, then advances the clock to the next deadline (at most
    /// `step`), until `done` holds or `limit` of virtual time passed.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) {
        let end = self.now + limit;
        loop {
            self.drain();
            if done(self) {
                return;
            }
            if let Some((j, text)) = self.broker.pop_front() {
                let now = self.now;
                self.nodes[j].core.handle_input(now, Input::Signal(&text));
                continue;
            }
            if let Some((j, to, from, bytes)) = self.wire.pop_front() {
                let now = self.now;
                self.nodes[j].core.handle_input(
                    now,
                    Input::Datagram {
                        source: from,
                        local: to,
                        contents: &bytes,
                    },
                );
                continue;
            }
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.timeout)
                .min()
                .unwrap_or(end)
                .max(self.now + Duration::from_micros(100));
            if next > end {
                for n in &self.nodes {
                    for e in &n.events {
                        eprintln!("{} {e:?}", n.core.id());
                    }
                }
                panic!("timed out in virtual time");
            }
            self.now = next;
            for n in &mut self.nodes {
                n.core.handle_input(next, Input::Timeout);
            }
        }
    }

    fn opened(&self, i: usize) -> Vec<ConnId> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::ConnOpen { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect()
    }

    fn data(&self, i: usize) -> Vec<(ConnId, Message)> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Data { conn, value } => Some((*conn, value.clone())),
                _ => None,
            })
            .collect()
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn two_cores_exchange_binary_json_and_raw() {
    let a_id = Identity::generate().unwrap();
    let b_id = Identity::generate().unwrap();
    let mut sim = Sim::new(&[a_id.clone(), b_id.clone()]);
    let now = sim.now;
    let bin = sim.nodes[0]
        .core
        .connect(
            now,
            "peer1",
            "dc_bin".into(),
            ConnectOptions {
                reliable: true,
                ..Default::default()
            },
        )
        .unwrap();
    let json = sim.nodes[0]
        .core
        .connect(
            now,
            "peer1",
            "dc_json".into(),
            ConnectOptions {
                serialization: Serialization::Json,
                reliable: true,
                ..Default::default()
            },
        )
        .unwrap();
    // Sent before open: waits for the channel.
    let big = PackValue::Bin(pattern(40_000));
    sim.nodes[0]
        .core
        .send(now, bin, Message::Pack(big.clone()))
        .unwrap();
    sim.run_until(Duration::from_secs(10), |s| {
        s.opened(0).len() == 2 && s.opened(1).len() == 2
    });
    // Both sides report the other's fingerprint.
    for e in &sim.nodes[0].events {
        if let Event::ConnOpen {
            remote_fingerprint, ..
        } = e
        {
            assert_eq!(remote_fingerprint, b_id.fingerprint());
        }
    }
    for e in &sim.nodes[1].events {
        if let Event::ConnOpen {
            remote_fingerprint, ..
        } = e
        {
            assert_eq!(remote_fingerprint, a_id.fingerprint());
        }
    }
    let now = sim.now;
    sim.nodes[0]
        .core
        .send(
            now,
            json,
            Message::Json(serde_json::json!({"a": 1, "s": "é"})),
        )
        .unwrap();
    sim.run_until(Duration::from_secs(10), |s| s.data(1).len() == 2);
    let got: Vec<Message> = sim.data(1).into_iter().map(|(_, m)| m).collect();
    assert!(got.contains(&Message::Pack(big)));
    assert!(got.contains(&Message::Json(serde_json::json!({"a": 1, "s": "é"}))));

    // Reply on the answering side's connection.
    let b_bin = sim
        .data(1)
        .into_iter()
        .find(|(_, m)| matches!(m, Message::Pack(_)))
        .unwrap()
        .0;
    let now = sim.now;
    sim.nodes[1]
        .core
        .send(now, b_bin, Message::Pack("pong".into()))
        .unwrap();
    sim.run_until(Duration::from_secs(5), |s| !s.data(0).is_empty());
    assert_eq!(sim.data(0)[0], (bin, Message::Pack("pong".into())));

    // Wrong kind is refused locally.
    assert!(
        sim.nodes[0]
            .core
            .send(now, json, Message::Pack("x".into()))
            .is_err()
    );

    // Closing one side closes the other.
    let now = sim.now;
    sim.nodes[0].core.close(now, bin);
    sim.run_until(Duration::from_secs(10), |s| {
        s.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::ConnClosed { conn, .. } if *conn == b_bin))
    });
    assert!(sim.nodes[0].events.iter().any(|e| matches!(
        e,
        Event::ConnClosed { conn, reason: CloseReason::Local } if *conn == bin
    )));
}

/// xorshift64*: deterministic garbage.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn garbage_from_broker_network_and_remote_never_panics() {
    let mut sim = Sim::new(&[Identity::generate().unwrap(), Identity::generate().unwrap()]);
    // The remote says "binary" but sends raw bytes: every frame is undecodable BinaryPack.
    sim.tamper = Some(|v| {
        if v["payload"]["serialization"] == "raw" {
            v["payload"]["serialization"] = "binary".into();
        }
    });
    let now = sim.now;
    let conn = sim.nodes[0]
        .core
        .connect(
            now,
            "peer1",
            "dc_lie".into(),
            ConnectOptions {
                serialization: Serialization::Raw,
                reliable: true,
                ..Default::default()
            },
        )
        .unwrap();
    sim.run_until(Duration::from_secs(10), |s| s.opened(1).len() == 1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..200 {
        let mut junk = rng.bytes(3000);
        if i % 3 == 0 {
            // Looks like a chunk map header, then garbage.
            junk.splice(0..0, *b"\x84\xba__peerData");
        }
        let now = sim.now;
        sim.nodes[0]
            .core
            .send(now, conn, Message::Bytes(junk))
            .unwrap();
        sim.run_until(Duration::from_secs(5), |s| {
            s.wire.is_empty() && s.broker.is_empty()
        });
    }
    let errors = sim.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::ConnError { .. }))
        .count();
    assert!(errors > 100, "{errors} decode errors");

    // Random broker frames and datagrams at both nodes' sockets.
    let frames = [
        "",
        "null",
        "{",
        r#"{"type":"OFFER","src":"x","payload":{"type":"data","connectionId":"c","sdp":{"type":"offer","sdp":"v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"}}}"#,
        r#"{"type":"CANDIDATE","src":"peer0","payload":{"type":"data","connectionId":"dc_lie","candidate":{"candidate":"candidate:1 1 udp 1 999.1.1.1 9 typ host"}}}"#,
        r#"{"type":"ANSWER","src":"peer0","payload":{"type":"data","connectionId":"dc_lie","sdp":{"type":"answer","sdp":"v=0"}}}"#,
        r#"{"type":"EXPIRE","src":7}"#,
        r#"{"type":"LEAVE","src":"nobody"}"#,
    ];
    for (i, f) in frames.iter().enumerate() {
        let now = sim.now;
        sim.nodes[i % 2].core.handle_input(now, Input::Signal(f));
    }
    for _ in 0..2000 {
        let now = sim.now;
        let n = (rng.next() % 2) as usize;
        let addrs = sim.nodes[n].addrs.clone();
        let to = addrs[(rng.next() as usize) % addrs.len()];
        let junk = rng.bytes(1500);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        sim.nodes[n].core.handle_input(
            now,
            Input::Datagram {
                source: from,
                local: to,
                contents: &junk,
            },
        );
        let s = String::from_utf8_lossy(&junk).into_owned();
        sim.nodes[n].core.handle_input(now, Input::Signal(&s));
    }
    sim.run_until(Duration::from_secs(5), |s| {
        s.wire.is_empty() && s.broker.is_empty()
    });
    // Strangers' datagrams did not break the connection: it still carries data.
    let before = sim.nodes[1].events.len();
    let now = sim.now;
    sim.nodes[0]
        .core
        .send(now, conn, Message::Bytes(vec![0xc1, 0xff]))
        .unwrap();
    sim.run_until(Duration::from_secs(5), |s| {
        s.nodes[1].events[before..]
            .iter()
            .any(|e| matches!(e, Event::ConnError { .. }))
    });
    assert!(
        !sim.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::ConnClosed { .. }))
    );
}

#[test]
fn heartbeats_every_five_seconds_only_while_the_broker_is_up() {
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut core = PeerCore::new(CoreConfig::new("p".into(), Identity::generate().unwrap()));
    let beats = |core: &mut PeerCore| {
        let mut n = 0;
        for o in drain(core) {
            if o == Output::Signal(r#"{"type":"HEARTBEAT"}"#.into()) {
                n += 1;
            }
        }
        n
    };
    core.handle_input(t0, Input::BrokerConnected);
    assert_eq!(
        core.poll_output(),
        Output::Timeout(Some(t0 + Duration::from_secs(5)))
    );
    let mut n = 0;
    for s in 1..=12 {
        core.handle_input(t0 + Duration::from_secs(s), Input::Timeout);
        n += beats(&mut core);
    }
    assert_eq!(n, 2);
    core.handle_input(t0 + Duration::from_secs(12), Input::BrokerDisconnected);
    assert!(matches!(
        core.poll_output(),
        Output::Event(Event::Disconnected)
    ));
    core.handle_input(t0 + Duration::from_secs(30), Input::Timeout);
    assert_eq!(beats(&mut core), 0);
    assert_eq!(core.poll_output(), Output::Timeout(None));
    // A connect while the broker is down waits for it: the OFFER goes out on reconnect.
    core.add_socket("127.0.0.1:40000".parse().unwrap());
    core.connect(t0, "q", "dc_1".into(), ConnectOptions::default())
        .unwrap();
    for o in drain(&mut core) {
        assert!(!matches!(o, Output::Signal(_)), "signal while down: {o:?}");
    }
    core.handle_input(t0 + Duration::from_secs(31), Input::BrokerConnected);
    let mut offers = 0;
    for o in drain(&mut core) {
        if let Output::Signal(s) = o
            && s.starts_with(r#"{"type":"OFFER""#)
        {
            offers += 1;
        }
    }
    assert_eq!(offers, 1);
}

#[test]
fn connections_are_bounded() {
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut cfg = CoreConfig::new("p".into(), Identity::generate().unwrap());
    cfg.max_connections = 1;
    let mut core = PeerCore::new(cfg);
    core.handle_input(t0, Input::BrokerConnected);
    for port in [40_001, 40_002, 40_003] {
        core.add_socket(format!("127.0.0.1:{port}").parse().unwrap());
    }
    core.connect(t0, "q", "dc_1".into(), ConnectOptions::default())
        .unwrap();
    assert!(
        core.connect(t0, "q", "dc_2".into(), ConnectOptions::default())
            .is_err()
    );
    // Without a socket to spare, or over the bound, an OFFER is refused, never a panic.
    let offer = r#"{"type":"OFFER","src":"r","dst":"p","payload":{"type":"data","connectionId":"dc_9","sdp":{"type":"offer","sdp":"v=0"}}}"#;
    core.handle_input(t0, Input::Signal(offer));
    let mut refused = false;
    for o in drain(&mut core) {
        if let Output::Event(Event::SignalError(e)) = o {
            refused = e.to_string().contains("too many connections");
        }
    }
    assert!(refused);
}
