//! Two sans-IO peers on a virtual clock and an in-memory network with a stand-in broker: no
//! sockets, no tokio.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kibitz_rtc::{
    CloseReason, ConnId, CoreConfig, Event, Identity, Input, LaneRef, MediaCodec, MediaError,
    MediaOptions, MediaSignal, MediaWriteError, Output, PeerCore,
};

struct Node {
    core: PeerCore,
    addrs: Vec<SocketAddr>,
    events: Vec<Event>,
    timeout: Option<Instant>,
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
    /// Drops every datagram (a network outage).
    blackhole: bool,
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
            blackhole: false,
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
                        if self.blackhole {
                            continue;
                        }
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
}

fn media_open(sim: &Sim, i: usize) -> Option<(ConnId, Vec<LaneRef>)> {
    sim.nodes[i].events.iter().find_map(|e| match e {
        Event::MediaOpen { conn, lanes, .. } => Some((*conn, lanes.clone())),
        _ => None,
    })
}

fn frames(sim: &Sim, i: usize) -> Vec<(LaneRef, MediaCodec, u64, Vec<u8>)> {
    sim.nodes[i]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MediaFrame {
                lane,
                codec,
                rtp_time,
                data,
                ..
            } => Some((*lane, codec.clone(), *rtp_time, data.clone())),
            _ => None,
        })
        .collect()
}

fn closed(sim: &Sim, i: usize) -> Option<CloseReason> {
    sim.nodes[i].events.iter().find_map(|e| match e {
        Event::MediaClosed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// A VP8 keyframe header for `w`×`h` (enough for str0m's packetizer).
fn vp8_key(w: u16, h: u16) -> Vec<u8> {
    let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
    f.extend_from_slice(&w.to_le_bytes());
    f.extend_from_slice(&h.to_le_bytes());
    f.extend(std::iter::repeat_n(0u8, 200));
    f
}

#[test]
fn legacy_call_both_ways_and_hang_up() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    let now = sim.now;
    // Not open yet: writing is an error, not a panic.
    let call = sim.nodes[0]
        .core
        .call(now, "peer1", MediaOptions::LEGACY)
        .unwrap();
    assert_eq!(
        sim.nodes[0]
            .core
            .write_media(now, call, LaneRef::MIC, 0, vec![1, 2, 3]),
        Err(MediaWriteError::NotOpen)
    );
    sim.run_until(Duration::from_secs(5), |s| {
        s.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::Call { .. }))
    });
    let (incoming, cid) = sim.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Call {
                conn,
                connection_id,
                remote,
            } => {
                assert_eq!(remote, "peer0");
                Some((*conn, connection_id.clone()))
            }
            _ => None,
        })
        .unwrap();
    assert!(cid.starts_with("mc_"));
    let now = sim.now;
    sim.nodes[1]
        .core
        .answer_call(now, incoming, MediaOptions::LEGACY)
        .unwrap();
    sim.run_until(Duration::from_secs(10), |s| {
        media_open(s, 0).is_some() && media_open(s, 1).is_some()
    });
    let (_, lanes) = media_open(&sim, 1).unwrap();
    assert_eq!(lanes, vec![LaneRef::MIC, LaneRef::CAMERA]);
    // Audio 0→1, video 1→0, 20 frames each.
    for k in 0..20u64 {
        let now = sim.now;
        sim.nodes[0]
            .core
            .write_media(now, call, LaneRef::MIC, k * 960, vec![0xf8, k as u8, 1, 2])
            .unwrap();
        sim.nodes[1]
            .core
            .write_media(now, incoming, LaneRef::CAMERA, k * 3000, vp8_key(320, 240))
            .unwrap();
        let until = sim.now + Duration::from_millis(20);
        sim.run_until(Duration::from_secs(1), |s| s.now >= until);
    }
    sim.run_until(Duration::from_secs(2), |s| {
        frames(s, 1).len() >= 15 && frames(s, 0).len() >= 15
    });
    let a = frames(&sim, 1);
    assert!(
        a.iter()
            .all(|f| f.0 == LaneRef::MIC && f.1 == MediaCodec::Opus)
    );
    let v = frames(&sim, 0);
    assert!(
        v.iter()
            .all(|f| f.0 == LaneRef::CAMERA && f.1 == MediaCodec::Vp8)
    );
    assert_eq!(&v[0].3[6..10], &[0x40, 0x01, 0xf0, 0x00]);
    let stats = sim.nodes[1].core.media_stats(incoming).unwrap();
    assert!(stats.audio_in_bytes > 0 && stats.video_out_bytes > 0 && stats.last_in.is_some());
    // A lane that does not exist on a legacy call.
    let now = sim.now;
    assert_eq!(
        sim.nodes[0]
            .core
            .write_media(now, call, LaneRef::SHARE, 0, vec![1]),
        Err(MediaWriteError::NoLane)
    );
    // The caller hangs up: the channel closes, the callee's call ends too.
    sim.nodes[0].core.close(now, call);
    sim.run_until(Duration::from_secs(10), |s| closed(s, 1).is_some());
    assert_eq!(closed(&sim, 0), Some(CloseReason::Local));
    assert_eq!(closed(&sim, 1), Some(CloseReason::Remote));
}

/// Carries owned signalling between the two nodes (as the room engine would over the data
/// mesh), feeding each `MediaSignal` event once.
fn carry(sim: &mut Sim, seen: &mut [usize; 2], conns: &mut [Option<ConnId>; 2]) {
    for i in 0..2 {
        let j = 1 - i;
        let evs: Vec<Event> = sim.nodes[i].events[seen[i]..].to_vec();
        seen[i] = sim.nodes[i].events.len();
        for e in evs {
            if let Event::MediaSignal { conn, signal, .. } = e {
                conns[i] = Some(conn);
                let now = sim.now;
                let from = format!("peer{i}");
                let r = sim.nodes[j].core.media_signal(
                    now,
                    conns[j],
                    &from,
                    signal,
                    MediaOptions::OWNED,
                    false,
                );
                conns[j] = Some(r.unwrap());
            }
        }
    }
}

#[test]
fn owned_four_lanes_ice_restart_and_glare() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    let now = sim.now;
    let pc = sim.nodes[0]
        .core
        .media_offer(now, "peer1", MediaOptions::OWNED, false)
        .unwrap();
    // Relay asked without a TURN server: refused (fail-closed).
    assert_eq!(
        sim.nodes[0]
            .core
            .media_offer(now, "peer1", MediaOptions::OWNED, true),
        Err(MediaError::NoRelay)
    );
    let mut seen = [0, 0];
    let mut conns = [Some(pc), None];
    for _ in 0..200 {
        sim.drain();
        carry(&mut sim, &mut seen, &mut conns);
        if media_open(&sim, 0).is_some() && media_open(&sim, 1).is_some() {
            break;
        }
        let until = sim.now + Duration::from_millis(5);
        sim.run_until(Duration::from_secs(1), |s| s.now >= until);
    }
    let (_, lanes) = media_open(&sim, 1).unwrap();
    let mut sorted = lanes.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            LaneRef::MIC,
            LaneRef::SHARE_AUDIO,
            LaneRef::CAMERA,
            LaneRef::SHARE
        ]
    );
    let answerer = conns[1].unwrap();
    for k in 0..10u64 {
        let now = sim.now;
        for lane in [LaneRef::MIC, LaneRef::SHARE_AUDIO] {
            sim.nodes[1]
                .core
                .write_media(now, answerer, lane, k * 960, vec![0xf8, k as u8])
                .unwrap();
        }
        sim.nodes[0]
            .core
            .write_media(now, pc, LaneRef::SHARE, k * 3000, vp8_key(64, 48))
            .unwrap();
        let until = sim.now + Duration::from_millis(20);
        sim.run_until(Duration::from_secs(1), |s| s.now >= until);
    }
    sim.run_until(Duration::from_secs(2), |s| frames(s, 0).len() >= 16);
    let got = frames(&sim, 0);
    assert!(got.iter().any(|f| f.0 == LaneRef::SHARE_AUDIO));
    assert!(got.iter().any(|f| f.0 == LaneRef::MIC));
    sim.run_until(Duration::from_secs(2), |s| {
        frames(s, 1).iter().any(|f| f.0 == LaneRef::SHARE)
    });

    // ICE restart from the offerer, answered on the same pc; media keeps flowing.
    let now = sim.now;
    sim.nodes[0].core.media_restart_ice(now, pc).unwrap();
    // Glare: while our offer is pending, a remote offer is reported, not applied.
    let re = sim.nodes[0].events.iter().rev().find_map(|e| match e {
        Event::MediaSignal {
            signal: MediaSignal::Sdp { offer: true, sdp },
            ..
        } => Some(sdp.clone()),
        _ => None,
    });
    assert!(re.is_some());
    let before = sim.nodes[1].events.len();
    for _ in 0..100 {
        sim.drain();
        carry(&mut sim, &mut seen, &mut conns);
        let until = sim.now + Duration::from_millis(5);
        sim.run_until(Duration::from_secs(1), |s| s.now >= until);
    }
    assert_eq!(conns[1], Some(answerer), "re-offer answered on the same pc");
    let n1 = frames(&sim, 1).len();
    for k in 10..20u64 {
        let now = sim.now;
        sim.nodes[0]
            .core
            .write_media(now, pc, LaneRef::MIC, k * 960, vec![0xf8, k as u8])
            .unwrap();
        let until = sim.now + Duration::from_millis(20);
        sim.run_until(Duration::from_secs(1), |s| s.now >= until);
    }
    sim.run_until(Duration::from_secs(2), |s| frames(s, 1).len() >= n1 + 8);
    assert!(
        !sim.nodes[1].events[before..]
            .iter()
            .any(|e| matches!(e, Event::MediaClosed { .. }))
    );

    let now = sim.now;
    sim.nodes[0].core.media_restart_ice(now, pc).unwrap();
    let offer = MediaSignal::Sdp {
        offer: true,
        sdp: "v=0".into(),
    };
    assert_eq!(
        sim.nodes[0]
            .core
            .media_signal(now, Some(pc), "peer1", offer, MediaOptions::OWNED, false),
        Err(MediaError::Glare)
    );
    assert_eq!(sim.nodes[0].core.media_rollback(now, pc), Ok(true));
    assert_eq!(sim.nodes[0].core.media_rollback(now, pc), Ok(false));
}

#[test]
fn bad_media_input_is_refused_never_panics() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    let now = sim.now;
    let core = &mut sim.nodes[1].core;
    // Garbage SDP for a new owned pc; signals without a pc; unknown pcs.
    for sdp in [
        "",
        "v=0",
        "garbage\r\nm=audio x\r\n",
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
    ] {
        let r = core.media_signal(
            now,
            None,
            "peer0",
            MediaSignal::Sdp {
                offer: true,
                sdp: sdp.into(),
            },
            MediaOptions::OWNED,
            false,
        );
        assert!(matches!(r, Err(MediaError::Refused(_))), "{sdp:?}: {r:?}");
    }
    let cand = kibitz_rtc::CandidateInit {
        candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
        sdp_mid: None,
        sdp_m_line_index: None,
        username_fragment: None,
    };
    assert_eq!(
        core.media_signal(
            now,
            None,
            "peer0",
            MediaSignal::Candidate(cand.clone()),
            MediaOptions::OWNED,
            false
        ),
        Err(MediaError::NeedConnection)
    );
    let pc = core
        .media_offer(now, "peer0", MediaOptions::OWNED, false)
        .unwrap();
    assert_eq!(
        core.media_signal(
            now,
            Some(pc),
            "someone",
            MediaSignal::Candidate(cand.clone()),
            MediaOptions::OWNED,
            false
        ),
        Err(MediaError::NoConnection)
    );
    let bad = kibitz_rtc::CandidateInit {
        candidate: "candidate:garbage".into(),
        ..cand.clone()
    };
    assert!(matches!(
        core.media_signal(
            now,
            Some(pc),
            "peer0",
            MediaSignal::Candidate(bad),
            MediaOptions::OWNED,
            false
        ),
        Err(MediaError::Refused(_))
    ));
    // A candidate before the answer is queued.
    assert_eq!(
        core.media_signal(
            now,
            Some(pc),
            "peer0",
            MediaSignal::Candidate(cand),
            MediaOptions::OWNED,
            false
        ),
        Ok(pc)
    );
    assert!(matches!(
        core.media_signal(
            now,
            Some(pc),
            "peer0",
            MediaSignal::Sdp {
                offer: false,
                sdp: "x".into()
            },
            MediaOptions::OWNED,
            false
        ),
        Err(MediaError::Refused(_))
    ));
    // Broker frames: malformed media payloads, candidates for unknown calls.
    for f in [
        r#"{"type":"OFFER","src":"peer0","payload":{"type":"media"}}"#,
        r#"{"type":"OFFER","src":"peer0","payload":{"type":"media","connectionId":"mc_1","sdp":{"type":"answer","sdp":"v=0"}}}"#,
        r#"{"type":"ANSWER","src":"peer0","payload":{"type":"media","connectionId":"mc_nope","sdp":{"type":"answer","sdp":"v=0"}}}"#,
        r#"{"type":"CANDIDATE","src":"peer0","payload":{"type":"media","connectionId":"mc_nope","candidate":{"candidate":"x"}}}"#,
    ] {
        core.handle_input(now, Input::Signal(f));
    }
    // A call whose SDP is garbage, or has no audio/video: refused, never announced.
    for sdp in [
        "v=0\\r\\nbogus",
        "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\ns=-\\r\\nt=0 0\\r\\n",
    ] {
        let f = format!(
            r#"{{"type":"OFFER","src":"peer0","payload":{{"type":"media","connectionId":"mc_2","sdp":{{"type":"offer","sdp":"{sdp}"}}}}}}"#
        );
        core.handle_input(now, Input::Signal(&f));
    }
    sim.drain();
    assert!(
        !sim.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::Call { .. }))
    );
    let refused = sim.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::SignalError(_)))
        .count();
    // Two malformed OFFERs, the ANSWER for no call, the two bad SDPs (a candidate for no call
    // is dropped quietly, as for data connections).
    assert_eq!(refused, 5);
}

#[test]
fn a_new_call_from_the_same_peer_replaces_the_old() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    let (_, first) = open_call(&mut sim);
    let now = sim.now;
    sim.nodes[0]
        .core
        .call(now, "peer1", MediaOptions::LEGACY)
        .unwrap();
    sim.run_until(Duration::from_secs(5), |s| closed(s, 1).is_some());
    assert!(sim.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::MediaClosed { conn, reason: CloseReason::Replaced } if *conn == first
    )));
    let calls = sim.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Call { .. }))
        .count();
    assert_eq!(calls, 2);
}

/// Rewrites a relayed media OFFER so that it names only codecs nobody here speaks.
fn unknown_codecs(v: &mut serde_json::Value) {
    if v["type"] == "OFFER"
        && let Some(sdp) = v["payload"]["sdp"]["sdp"].as_str()
    {
        let s = sdp
            .replace("opus/48000/2", "x-foo/48000/2")
            .replace("VP8/90000", "x-bar/90000");
        v["payload"]["sdp"]["sdp"] = s.into();
    }
}

#[test]
fn a_call_with_no_common_codec_is_refused() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    sim.tamper = Some(unknown_codecs);
    let now = sim.now;
    sim.nodes[0]
        .core
        .call(now, "peer1", MediaOptions::LEGACY)
        .unwrap();
    sim.run_until(Duration::from_secs(5), |s| {
        s.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::Call { .. }))
    });
    let call = sim.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Call { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap();
    let now = sim.now;
    let r = sim.nodes[1]
        .core
        .answer_call(now, call, MediaOptions::LEGACY);
    assert!(matches!(r, Err(MediaError::Refused(_))), "{r:?}");
    sim.drain();
    assert!(matches!(closed(&sim, 1), Some(CloseReason::Failed(_))));
}

/// Opens a legacy call node 0 → node 1; returns (caller's id, callee's id).
fn open_call(sim: &mut Sim) -> (ConnId, ConnId) {
    let now = sim.now;
    let call = sim.nodes[0]
        .core
        .call(now, "peer1", MediaOptions::LEGACY)
        .unwrap();
    sim.run_until(Duration::from_secs(5), |s| {
        s.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::Call { .. }))
    });
    let incoming = sim.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Call { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap();
    let now = sim.now;
    sim.nodes[1]
        .core
        .answer_call(now, incoming, MediaOptions::LEGACY)
        .unwrap();
    sim.run_until(Duration::from_secs(10), |s| {
        media_open(s, 0).is_some() && media_open(s, 1).is_some()
    });
    (call, incoming)
}

fn states(sim: &Sim, i: usize) -> Vec<bool> {
    sim.nodes[i]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MediaState { connected, .. } => Some(*connected),
            _ => None,
        })
        .collect()
}

#[test]
fn garbage_datagrams_and_an_outage_do_not_end_a_call() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    let (call, incoming) = open_call(&mut sim);
    // Garbage and RTP/STUN/DTLS-looking floods at the callee's sockets, from the caller's
    // addresses and from strangers.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let from = sim.nodes[0].addrs.clone();
    let to = sim.nodes[1].addrs.clone();
    for k in 0..5000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 1400) as usize + 1;
        let mut b: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
        b[0] = [0x80, 0x90, 0x00, 0x01, 0x16, 0x17, 0x40][k % 7];
        let src = if k % 3 == 0 {
            "127.0.0.9:9".parse().unwrap()
        } else {
            from[k % from.len()]
        };
        sim.wire.push_back((1, to[k % to.len()], src, b));
    }
    sim.run_until(Duration::from_secs(2), |s| s.wire.is_empty());
    assert_eq!(closed(&sim, 1), None);
    // Media still flows.
    let n = frames(&sim, 1).len();
    for k in 0..10u64 {
        let now = sim.now;
        sim.nodes[0]
            .core
            .write_media(now, call, LaneRef::MIC, k * 960, vec![0xf8, 1, 2])
            .unwrap();
        let until = sim.now + Duration::from_millis(20);
        sim.run_until(Duration::from_secs(1), |s| s.now >= until);
    }
    sim.run_until(Duration::from_secs(2), |s| frames(s, 1).len() >= n + 8);

    // An outage: ICE says disconnected (reported once), the call stays.
    sim.blackhole = true;
    sim.run_until(Duration::from_secs(60), |s| !states(s, 1).is_empty());
    assert_eq!(states(&sim, 1), vec![false]);
    assert_eq!(closed(&sim, 1), None);
    // str0m does not come back by itself after ICE gave up (no checks run until an ICE
    // restart): the call stays, the application decides.
    sim.blackhole = false;
    let now = sim.now;
    assert!(sim.nodes[1].core.media_stats(incoming).is_some());
    let _ = sim.nodes[0]
        .core
        .request_keyframe(now, call, LaneRef::CAMERA);
}

#[test]
fn an_ice_restart_recovers_an_owned_connection_after_an_outage() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    let now = sim.now;
    let pc = sim.nodes[0]
        .core
        .media_offer(now, "peer1", MediaOptions::LEGACY, false)
        .unwrap();
    let mut seen = [0, 0];
    let mut conns = [Some(pc), None];
    let pump = |sim: &mut Sim,
                seen: &mut [usize; 2],
                conns: &mut [Option<ConnId>; 2],
                done: &dyn Fn(&Sim) -> bool| {
        for _ in 0..4000 {
            sim.drain();
            carry(sim, seen, conns);
            if done(sim) {
                return;
            }
            let until = sim.now + Duration::from_millis(10);
            sim.run_until(Duration::from_secs(1), |s| s.now >= until);
        }
        panic!("condition not reached");
    };
    pump(&mut sim, &mut seen, &mut conns, &|s| {
        media_open(s, 0).is_some() && media_open(s, 1).is_some()
    });
    sim.blackhole = true;
    pump(&mut sim, &mut seen, &mut conns, &|s| {
        states(s, 0) == [false] && states(s, 1) == [false]
    });
    sim.blackhole = false;
    let now = sim.now;
    sim.nodes[0].core.media_restart_ice(now, pc).unwrap();
    pump(&mut sim, &mut seen, &mut conns, &|s| {
        states(s, 0) == [false, true] && states(s, 1) == [false, true]
    });
    assert_eq!(closed(&sim, 0), None);
    assert_eq!(closed(&sim, 1), None);
}

/// Rewrites a relayed media ANSWER so that it rejects the video m-line (port 0).
fn reject_video(v: &mut serde_json::Value) {
    if v["type"] == "ANSWER"
        && let Some(sdp) = v["payload"]["sdp"]["sdp"].as_str()
    {
        let s = sdp.replace("m=video 9 ", "m=video 0 ");
        v["payload"]["sdp"]["sdp"] = s.into();
    }
}

#[test]
fn a_lane_the_remote_rejected_refuses_writes() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let mut sim = Sim::new(&ids);
    sim.tamper = Some(reject_video);
    let (call, _) = open_call(&mut sim);
    let (_, lanes) = media_open(&sim, 0).unwrap();
    assert_eq!(lanes, vec![LaneRef::MIC]);
    let now = sim.now;
    assert_eq!(
        sim.nodes[0]
            .core
            .write_media(now, call, LaneRef::CAMERA, 0, vec![1, 2, 3]),
        Err(MediaWriteError::Rejected)
    );
    assert_eq!(
        sim.nodes[0]
            .core
            .write_media(now, call, LaneRef::MIC, 0, vec![0xf8, 1]),
        Ok(())
    );
}

/// A relay-only peer is relay-only on owned media too, whatever `relay` the caller passed:
/// the offer and the answer advertise no host candidate (nothing leaks the address).
#[test]
fn a_relay_only_peer_never_advertises_a_host_candidate_on_owned_media() {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut cfg = CoreConfig::new("relayed".into(), Identity::generate().unwrap());
    cfg.relay = Some(kibitz_rtc::RelayConfig {
        server: "127.0.0.1:9".parse().unwrap(),
        username: "1:x".into(),
        credential: "y".into(),
    });
    let mut core = PeerCore::new(cfg);
    core.handle_input(now, Input::BrokerConnected);
    for p in 0..4 {
        core.add_socket(format!("127.0.0.1:{}", 41_000 + p).parse().unwrap());
    }
    core.media_offer(now, "bob", MediaOptions::OWNED, false)
        .unwrap();
    let mut sdps = Vec::new();
    loop {
        match core.poll_output() {
            Output::Event(Event::MediaSignal { signal, .. }) => sdps.push(signal),
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    assert!(!sdps.is_empty());
    for s in &sdps {
        let text = match s {
            MediaSignal::Sdp { sdp, .. } => sdp.clone(),
            MediaSignal::Candidate(c) => c.candidate.clone(),
        };
        assert!(!text.contains("typ host"), "leaks a host candidate: {text}");
    }
}
