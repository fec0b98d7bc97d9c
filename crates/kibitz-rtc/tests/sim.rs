//! Two sans-IO peers on a virtual clock and an in-memory network with a stand-in broker: no
//! sockets, no tokio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kibitz_rtc::{
    CloseReason, ConnId, ConnectOptions, CoreConfig, Event, Identity, Message, Output, PackValue,
    PeerCore, Serialization,
};

struct Node {
    core: PeerCore,
    /// Sockets this node has been given (one per connection).
    addrs: Vec<SocketAddr>,
    events: Vec<Event>,
}

struct Sim {
    now: Instant,
    nodes: Vec<Node>,
    /// (to node, to socket, from, bytes)
    wire: VecDeque<(usize, SocketAddr, SocketAddr, Vec<u8>)>,
    next_port: u16,
    /// (to node, frame text)
    broker: VecDeque<(usize, String)>,
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
                core.broker_connected(now);
                Node {
                    core,
                    addrs: Vec::new(),
                    events: Vec::new(),
                }
            })
            .collect();
        let mut sim = Sim {
            now,
            nodes,
            wire: VecDeque::new(),
            next_port: 40_000,
            broker: VecDeque::new(),
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
            while let Some(o) = self.nodes[i].core.poll_output() {
                match o {
                    Output::Signal(text) => {
                        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let Some(dst) = v.get("dst").and_then(|d| d.as_str()).map(str::to_owned)
                        else {
                            continue; // HEARTBEAT
                        };
                        v["src"] = self.nodes[i].core.id().into();
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
                self.nodes[j].core.handle_signal(now, &text);
                continue;
            }
            if let Some((j, to, from, bytes)) = self.wire.pop_front() {
                let now = self.now;
                self.nodes[j].core.handle_datagram(now, from, to, &bytes);
                continue;
            }
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.core.poll_timeout())
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
                n.core.handle_timeout(next);
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
