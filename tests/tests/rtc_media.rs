//! Media connections of `kibitz-rtc` against the official `peerjs@1.5.5` client in headless
//! Chromium (fake camera 320×240, a fake mic playing a 440 Hz WAV this test writes), through
//! our broker. The page side is `tests/node/rtc-media-browser.mjs`:
//! 1. the browser calls Rust (PeerJS MediaConnection); Rust answers, decodes the Opus it gets
//!    (440 Hz peak, by a Goertzel filter), reads the VP8 keyframe size (320×240), sends Opus
//!    of a 660 Hz tone and the page hears it (`totalAudioEnergy` rises); the page closes the
//!    call's `undefined` data channel and Rust's call ends;
//! 2. Rust calls the browser (asked over a JSON control DataConnection): same checks; Rust
//!    hangs up and the page's call closes;
//! 3. owned: the page's own RTCPeerConnection (mic + camera, one stream), its SDP and ICE as
//!    `{t:'m-sdp'}` / `{t:'m-ice'}` BinaryPack frames on a `binary` DataConnection; audio both
//!    ways, then a `restartIce()` re-offer answered on the same Rust connection;
//! 4. owned with Rust offering 2 audio + 2 video m-lines in one msid stream: same checks, then
//!    a Rust ICE restart (`media_restart_ice`) the page answers.
//!
//! The second test runs them all relay-only on both sides through a local coturn.
//! Needs Chromium, coturn and the npm packages that `scripts/test` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kibitz_e2e::{Config, start};
use kibitz_proto::binarypack::{from_value, to_value};
use kibitz_rtc::{
    BrokerConfig, CandidateInit, ConnId, Event, Events, Identity, LaneRef, MediaCodec, MediaKind,
    MediaOptions, MediaSignal, Message, Peer, PeerHandle, PeerOptions, RelayConfig,
};
use serde::{Deserialize, Serialize};

const RATE: u32 = 48_000;

/// A mono 16-bit 48 kHz WAV of `secs` seconds of a `freq` Hz sine (Chromium loops it).
fn tone_wav(freq: f64, secs: u32) -> Vec<u8> {
    let n = RATE * secs;
    let data_len = n * 2;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&RATE.to_le_bytes());
    w.extend_from_slice(&(RATE * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        let s = (2.0 * std::f64::consts::PI * freq * f64::from(i) / f64::from(RATE)).sin();
        w.extend_from_slice(&((s * 12_000.0) as i16).to_le_bytes());
    }
    w
}

/// Power of `freq` in `pcm` (Goertzel).
fn goertzel(pcm: &[i16], freq: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(RATE)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s = f64::from(x) + k * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2) / pcm.len().max(1) as f64
}

/// The 440 Hz power over the strongest of some other tones (> 1 means 440 Hz dominates).
fn peak_440(pcm: &[i16]) -> f64 {
    let p440 = goertzel(pcm, 440.0);
    let other = [220.0, 330.0, 550.0, 660.0, 880.0, 1000.0, 1500.0]
        .iter()
        .map(|f| goertzel(pcm, *f))
        .fold(0.0f64, f64::max);
    p440 / other.max(1e-9)
}

/// Width and height of a VP8 keyframe (the 14-bit fields after the `9d 01 2a` start code).
fn vp8_key_size(f: &[u8]) -> Option<(u16, u16)> {
    if f.len() < 10 || f[0] & 1 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
    Some((w, h))
}

/// What Rust learnt from one media connection's incoming media.
struct Inbound {
    decoder: opus::Decoder,
    pcm: Vec<i16>,
    sizes: BTreeSet<(u16, u16)>,
    video_frames: usize,
    verdict_sent: bool,
    /// Who to report to, and how the page names this call.
    kind: &'static str,
}

impl Inbound {
    fn new(kind: &'static str) -> Self {
        Inbound {
            decoder: opus::Decoder::new(RATE, opus::Channels::Mono).unwrap(),
            pcm: Vec::new(),
            sizes: BTreeSet::new(),
            video_frames: 0,
            verdict_sent: false,
            kind,
        }
    }

    fn frame(&mut self, lane: LaneRef, codec: &MediaCodec, data: &[u8]) {
        match (lane.kind, codec) {
            (MediaKind::Audio, MediaCodec::Opus) if lane.ordinal == 0 => {
                let mut out = vec![0i16; 5760];
                if let Ok(n) = self.decoder.decode(data, &mut out, false) {
                    // Bounded: 4 s is plenty for the check.
                    if self.pcm.len() < RATE as usize * 4 {
                        self.pcm.extend_from_slice(&out[..n]);
                    }
                }
            }
            (MediaKind::Video, MediaCodec::Vp8) => {
                self.video_frames += 1;
                if let Some(s) = vp8_key_size(data) {
                    self.sizes.insert(s);
                }
            }
            _ => {}
        }
    }

    /// `Some(detail)` once 1 s of audio (after the first 0.5 s) shows the 440 Hz peak and,
    /// when video is expected, a 320×240 keyframe came.
    fn done(&self, want_video: bool) -> Option<String> {
        let skip = RATE as usize / 2;
        if self.pcm.len() < skip + RATE as usize {
            return None;
        }
        let ratio = peak_440(&self.pcm[skip..]);
        let video_ok = !want_video || self.sizes.contains(&(320, 240));
        (ratio > 10.0 && video_ok).then(|| {
            format!(
                "rust heard 440 Hz (ratio {ratio:.0}), vp8 keyframes {:?}, {} video frames",
                self.sizes, self.video_frames
            )
        })
    }
}

#[derive(Serialize, Deserialize, Debug)]
struct Desc {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

/// An owned-media control frame on the sig connection.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Sig {
    t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<Desc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<CandidateInit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// Opus of a 660 Hz tone, 20 ms frames, for every open media connection.
async fn send_tone(peer: PeerHandle, open: Arc<Mutex<BTreeSet<ConnId>>>) {
    let mut enc = opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio).unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let pcm: Vec<i16> = (0..960u64)
            .map(|i| {
                let t = (n * 960 + i) as f64 / f64::from(RATE);
                ((2.0 * std::f64::consts::PI * 660.0 * t).sin() * 10_000.0) as i16
            })
            .collect();
        let mut buf = vec![0u8; 1500];
        let len = enc.encode(&pcm, &mut buf).unwrap();
        buf.truncate(len);
        let conns: Vec<ConnId> = open.lock().unwrap().iter().copied().collect();
        for c in conns {
            peer.write_media_nowait(c, LaneRef::MIC, n * 960, buf.clone());
        }
        n += 1;
    }
}

fn json(v: serde_json::Value) -> Message {
    Message::Json(v)
}

/// The Rust side: answers calls, calls when asked, speaks owned media on `binary`
/// connections, and reports verdicts and hang-ups to the page.
async fn serve(peer: PeerHandle, mut ev: Events, relay: bool) {
    let open: Arc<Mutex<BTreeSet<ConnId>>> = Arc::default();
    tokio::spawn(send_tone(peer.clone(), open.clone()));
    // Data connections: the JSON control one and the binary sig ones, by remote.
    let mut ctrl: Option<ConnId> = None;
    let mut sig_of: BTreeMap<String, ConnId> = BTreeMap::new();
    let mut remote_of: BTreeMap<ConnId, String> = BTreeMap::new();
    // Owned pc per remote.
    let mut pc_of: BTreeMap<String, ConnId> = BTreeMap::new();
    let mut inbound: BTreeMap<ConnId, Inbound> = BTreeMap::new();
    let mut my_call: Option<ConnId> = None;
    while let Some(e) = ev.recv().await {
        match e {
            Event::Connection { conn, remote, info } => {
                println!(
                    "rust: data connection {} ({:?})",
                    info.label, info.serialization
                );
                if info.serialization == kibitz_rtc::Serialization::Json {
                    ctrl = Some(conn);
                } else {
                    sig_of.insert(remote.clone(), conn);
                }
                remote_of.insert(conn, remote);
            }
            Event::Data { conn, value } if Some(conn) == ctrl => {
                let cmd = match &value {
                    Message::Json(v) => v.get("cmd").and_then(|c| c.as_str()).map(str::to_owned),
                    _ => None,
                };
                let remote = remote_of[&conn].clone();
                match cmd.as_deref() {
                    Some("call") => {
                        let c = peer.call(&remote, MediaOptions::LEGACY).await.unwrap();
                        println!("rust: calling {remote}: {c}");
                        inbound.insert(c, Inbound::new("called"));
                        my_call = Some(c);
                    }
                    Some("hangup") => {
                        if let Some(c) = my_call.take() {
                            peer.close(c);
                        }
                    }
                    _ => {}
                }
            }
            Event::Data { conn, value } => {
                let Some(remote) = remote_of.get(&conn).cloned() else {
                    continue;
                };
                let Message::Pack(v) = value else { continue };
                let Ok(m) = from_value::<Sig>(v) else {
                    println!("rust: undecodable sig frame");
                    continue;
                };
                match m.t.as_str() {
                    "m-dial" => {
                        if let Some(old) = pc_of.remove(&remote) {
                            peer.close(old);
                        }
                        let pc = peer
                            .media_offer(&remote, MediaOptions::OWNED, relay)
                            .await
                            .unwrap();
                        println!("rust: owned offer to {remote}: {pc}");
                        inbound.insert(pc, Inbound::new("owned"));
                        pc_of.insert(remote.clone(), pc);
                        continue;
                    }
                    "restart" => {
                        if let Some(&pc) = pc_of.get(&remote) {
                            let r = peer.media_restart_ice(pc).await;
                            println!("rust: ICE restart on {pc}: {r:?}");
                        }
                        continue;
                    }
                    _ => {}
                }
                let signal = match (m.t.as_str(), m.d, m.c) {
                    ("m-sdp", Some(d), _) => MediaSignal::Sdp {
                        offer: d.kind == "offer",
                        sdp: d.sdp,
                    },
                    ("m-ice", _, Some(c)) => MediaSignal::Candidate(c),
                    _ => continue,
                };
                let had = pc_of.get(&remote).copied();
                let reoffer =
                    had.is_some() && matches!(signal, MediaSignal::Sdp { offer: true, .. });
                match peer
                    .media_signal(had, &remote, signal, MediaOptions::OWNED, relay)
                    .await
                {
                    Ok(pc) => {
                        if had.is_none() {
                            inbound.insert(pc, Inbound::new("owned"));
                        }
                        pc_of.insert(remote.clone(), pc);
                        if reoffer {
                            let detail =
                                format!("re-offer answered on the same pc: {}", had == Some(pc));
                            let msg = Sig {
                                t: "reoffered".into(),
                                detail: Some(detail),
                                ..Default::default()
                            };
                            let _ = peer
                                .send(conn, Message::Pack(to_value(&msg).unwrap()))
                                .await;
                        }
                    }
                    Err(e) => println!("rust: media_signal refused: {e}"),
                }
            }
            Event::MediaSignal { remote, signal, .. } => {
                let Some(&sig) = sig_of.get(&remote) else {
                    continue;
                };
                let msg = match signal {
                    MediaSignal::Sdp { offer, sdp } => Sig {
                        t: "m-sdp".into(),
                        d: Some(Desc {
                            kind: if offer { "offer" } else { "answer" }.into(),
                            sdp,
                        }),
                        ..Default::default()
                    },
                    MediaSignal::Candidate(c) => Sig {
                        t: "m-ice".into(),
                        c: Some(c),
                        ..Default::default()
                    },
                };
                let _ = peer.send(sig, Message::Pack(to_value(&msg).unwrap())).await;
            }
            Event::Call {
                conn,
                remote,
                connection_id,
            } => {
                println!("rust: call {connection_id} from {remote}");
                inbound.insert(conn, Inbound::new("answered"));
                // Answer late, as a callee does whose stream is not ready yet: relay-only,
                // the TURN allocation then completes before the answer exists, and its
                // candidate must still reach the browser (in and after the ANSWER).
                let peer = peer.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    if let Err(e) = peer.answer_call(conn, MediaOptions::LEGACY).await {
                        println!("rust: answer failed: {e}");
                    }
                });
            }
            Event::MediaOpen { conn, lanes, .. } => {
                println!("rust: media {conn} open, lanes {lanes:?}");
                open.lock().unwrap().insert(conn);
            }
            Event::MediaFrame {
                conn,
                lane,
                codec,
                data,
                ..
            } => {
                let Some(i) = inbound.get_mut(&conn) else {
                    continue;
                };
                i.frame(lane, &codec, &data);
                if i.verdict_sent {
                    continue;
                }
                if let Some(detail) = i.done(true) {
                    i.verdict_sent = true;
                    let kind = i.kind;
                    println!("rust: {kind} {conn}: {detail}");
                    if kind == "owned" {
                        let remote = pc_of
                            .iter()
                            .find(|(_, c)| **c == conn)
                            .map(|(r, _)| r.clone());
                        if let Some(sig) = remote.and_then(|r| sig_of.get(&r).copied()) {
                            let msg = Sig {
                                t: "verdict".into(),
                                detail: Some(detail),
                                ..Default::default()
                            };
                            let _ = peer.send(sig, Message::Pack(to_value(&msg).unwrap())).await;
                        }
                    } else if let Some(c) = ctrl {
                        let v = serde_json::json!({"kind": kind, "verdict": "ok", "conn": conn.to_string(), "detail": detail});
                        let _ = peer.send(c, json(v)).await;
                    }
                }
            }
            Event::MediaClosed { conn, reason } => {
                println!("rust: media {conn} closed: {reason:?}");
                open.lock().unwrap().remove(&conn);
                if let Some(c) = ctrl {
                    let v = serde_json::json!({"closed": conn.to_string(), "reason": format!("{reason:?}")});
                    let _ = peer.send(c, json(v)).await;
                }
            }
            Event::SignalError(e) => println!("rust: signal error {e}"),
            Event::ConnClosed { conn, reason } => println!("rust: data {conn} closed: {reason:?}"),
            _ => {}
        }
    }
}

async fn run(relay: Option<RelayConfig>, extra: &[&str]) {
    let dir = std::env::temp_dir().join(format!("kibitz-rtc-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("tone440.wav");
    std::fs::write(&wav, tone_wav(440.0, 10)).unwrap();
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let mut opts = PeerOptions::new(
        BrokerConfig::plain("127.0.0.1", port),
        Identity::generate().unwrap(),
    );
    opts.id = Some("rust-media".into());
    let relay_on = relay.is_some();
    opts.relay = relay;
    let (peer, ev) = Peer::connect(opts).await.unwrap();
    let server = tokio::spawn(serve(peer.clone(), ev, relay_on));
    let port = port.to_string();
    let wav = wav.to_string_lossy().into_owned();
    let mut args = vec![
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--rust",
        "rust-media",
        "--wav",
        &wav,
    ];
    args.extend_from_slice(extra);
    let res = kibitz_e2e::node_scenarios("node/rtc-media-browser.mjs", &args).await;
    peer.destroy();
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(out) = res {
        panic!("browser media scenarios failed:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_with_official_peerjs_in_chromium() {
    run(None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_media_through_coturn() {
    const SECRET: &str = "kibitz-rtc-media-relay";
    let turn = coturn::Coturn::start(&[SECRET]).await;
    let api = api::start(&[SECRET], turn.port).await;
    let cred = api.fetch().await;
    let url = cred
        .turn_urls
        .iter()
        .find(|u| u.ends_with("transport=udp"))
        .expect("a turn: URI over udp")
        .clone();
    let relay = RelayConfig {
        server: turn.addr(),
        username: cred.username.clone(),
        credential: cred.password.clone(),
    };
    let extra = [
        "--turn-url",
        url.as_str(),
        "--turn-user",
        cred.username.as_str(),
        "--turn-pass",
        cred.password.as_str(),
    ];
    run(Some(relay), &extra).await;
    let line = format!(
        "user <{}>: incoming packet CHANNEL_BIND processed, success",
        cred.username
    );
    assert!(turn.log().contains(&line), "coturn saw no channel binding");
}
