//! Gating, multi-party and relay-only media of the Rust participant (MEDIA.md §4, §7, §8.3),
//! with the web client's media pages of `node/media-room.mjs`:
//! - a Rust agent receiving: a browser's mic and share reach it only as the key-tier host's
//!   grant allows (and stop again when revoked), while the lanes stay alive;
//! - a Rust sender gating: an agent page gets silence from it, a human page the tone, and a
//!   human re-announced as an agent is re-gated at once (the §8.3 race);
//! - three Rust participants hear each other (owned media between Rust peers);
//! - a relay-only Rust participant through a local coturn: media flows, no host candidate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;
mod media_support;

use std::time::Duration;

use kibitz_client::{Event, HostCommit, MediaLane, MediaMode, RoomConfig, Status};
use kibitz_e2e::{Config, start};
use kibitz_join::media::MediaConfig;
use kibitz_join::{RoomHandle, RoomOptions};
use kibitz_media::{AudioSource, dominant_frequency, peak, rms};
use kibitz_proto::grants::{Grant, Perceive};
use kibitz_rtc::{BrokerConfig, Identity, RelayConfig};
use media_support::{MediaPages, RustMember, audio_packets, energy, peer};
use p256::ecdsa::SigningKey;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

/// Energy a silent lane may show (digital silence is exactly 0).
const SILENT: f64 = 1e-4;
/// Energy that proves a tone arrived.
const TONE: f64 = 0.01;
const WAIT: Duration = Duration::from_secs(20);
/// How long a grant change may take to reach the media (about 1 s unloaded).
const REGATE: Duration = Duration::from_secs(3);

/// How a Rust participant starts.
#[derive(Default)]
struct Opts {
    agent: bool,
    /// Knows the room's committed host key (so it honours that host's `caps`).
    crypto_host: bool,
    /// Unmuted, playing this tone (muted, a 660 Hz tone, when `None`).
    tone: Option<f32>,
    relay: Option<RelayConfig>,
    /// A direct participant's TURN for relay-only rebuilds.
    media_relay: Option<RelayConfig>,
    seed: u64,
}

/// A Rust participant with media (the shared helper), and what it hears and sees.
type Rust = RustMember;

impl Rust {
    async fn start(port: u16, room: &str, name: &str, o: Opts) -> Self {
        let mut cfg = RoomConfig::new(room, name, &format!("tok-{name}"));
        cfg.seed = o.seed;
        if o.agent {
            cfg.agent = Some(kibitz_client::AgentIdentity {
                key: None,
                backend: None,
                egress: false,
            });
        }
        if o.crypto_host {
            cfg.host = HostCommit::Key(*host_key().verifying_key());
        }
        let media = MediaConfig {
            audio_in: AudioSource::tone(o.tone.unwrap_or(660.0)),
            muted: o.tone.is_none(),
            ..MediaConfig::default()
        };
        let tag = format!("media-gating-{room}-{name}");
        Self::launch(port, cfg, media, o.relay, o.media_relay, &tag).await
    }

    /// Waits until `from`'s mic plays `hz` (≥ 200 ms of it, loud); returns how long it took.
    async fn hears(&mut self, from: &str, hz: f32, wait: Duration) -> Duration {
        let t0 = Instant::now();
        let mut win: Vec<i16> = Vec::new();
        let r = timeout(wait, async {
            loop {
                let f = self.pcm.recv().await.expect("pcm channel open");
                if f.from != from || f.lane != MediaLane::Mic {
                    continue;
                }
                win.extend(f.samples);
                if win.len() > 9600 {
                    win.drain(..win.len() - 9600);
                    if rms(&win) > 0.02 && (dominant_frequency(&win) - hz).abs() < 15.0 {
                        return t0.elapsed();
                    }
                }
            }
        })
        .await;
        r.unwrap_or_else(|_| {
            panic!(
                "no {hz} Hz from {from} within {wait:?} (last: {} Hz, rms {})",
                dominant_frequency(&win),
                rms(&win)
            )
        })
    }

    /// Waits until no decoded mic PCM of `from` reaches the channel for `window` (frames decoded
    /// before a gate closed may still be queued); fails if that never happens.
    async fn no_pcm_for(&mut self, from: &str, window: Duration, what: &str) {
        let deadline = Instant::now() + WAIT;
        // Frames decoded before the gate closed may still be queued: wait for a quiet window.
        loop {
            let quiet = timeout(window, async {
                loop {
                    let f = self.pcm.recv().await.expect("pcm channel open");
                    if f.from == from && f.lane == MediaLane::Mic {
                        return;
                    }
                }
            })
            .await
            .is_err();
            if quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {from}'s mic still decoded"
            );
        }
    }

    /// The audio kbps arriving on the media link to `remote` (0 if none).
    async fn audio_in_kbps(&self, remote: &str) -> u64 {
        let links = self.handle.media_links().await.unwrap();
        links
            .iter()
            .find(|l| l.remote == remote)
            .map(|l| l.kbps[1])
            .unwrap_or(0)
    }

    /// Waits until the media link to `remote` carries audio in (`kbps a` > 0).
    async fn lane_alive(&self, remote: &str, what: &str) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let k = self.audio_in_kbps(remote).await;
            if k > 0 {
                return k;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no audio arrives from {remote}: {:?}",
                self.handle.media_links().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `pred` holds for the media links.
    async fn wait_links(&self, what: &str, pred: impl Fn(&[kibitz_client::MediaLink]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let links = self.handle.media_links().await.unwrap();
            if pred(&links) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {links:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The room's host key (committed by every member that knows the room's host tier).
fn host_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
}

/// The data-only coordinator of media_pages.rs, holding a committed host key: the room's
/// verified (cryptographic-tier) host, whose `caps` count.
async fn key_host(port: u16, room: &str) -> RoomHandle {
    let mut cfg = RoomConfig::new(room, "Host", "tok-host");
    cfg.seed = 7;
    cfg.media = false;
    let key = host_key();
    cfg.host = HostCommit::Key(*key.verifying_key());
    cfg.host_key = Some(key);
    let options = RoomOptions {
        media_relay: None,
        broker: BrokerConfig::plain("127.0.0.1", port),
        relay: None,
        identity: Identity::generate().unwrap(),
    };
    let (handle, mut events) = kibitz_join::start(cfg, options);
    handle.join();
    timeout(WAIT, async {
        while let Some(e) = events.recv().await {
            if matches!(e, Event::Status(Status::Authority)) {
                return;
            }
        }
        panic!("host stopped");
    })
    .await
    .expect("the host holds the room");
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    handle
}

/// Waits until `page` hears `from`'s mic lane (`n` more packets than now); returns the energy.
async fn energy_after(pages: &mut MediaPages, page: &str, from: &str, n: u64) -> f64 {
    let s = pages.stats(page).await.unwrap();
    let start = audio_packets(&s, from, "mic");
    let s = pages
        .wait_stats(page, WAIT, |s| audio_packets(s, from, "mic") >= start + n)
        .await
        .unwrap();
    energy(&s, from, "mic")
}

async fn stays_silent(pages: &mut MediaPages, page: &str, from: &str, what: &str) {
    let s = pages.stats(page).await.unwrap();
    let e0 = energy(&s, from, "mic");
    let e1 = energy_after(pages, page, from, 50).await;
    assert!(e1 - e0 < SILENT, "{what}: energy rose {e0} -> {e1}");
}

async fn hears_tone(pages: &mut MediaPages, page: &str, from: &str) -> Duration {
    let s = pages.stats(page).await.unwrap();
    let e0 = energy(&s, from, "mic");
    let t0 = Instant::now();
    pages
        .wait_stats(page, WAIT, |s| energy(s, from, "mic") - e0 > TONE)
        .await
        .unwrap();
    t0.elapsed()
}

/// The grant of an agent, with these extra perceive capabilities.
fn agent_grant(extra: &[Perceive]) -> Grant {
    let mut g = Grant::agent_default();
    g.perceive.extend_from_slice(extra);
    g
}

/// Every frame size in a recording's video frame log (`n rtp kind WxH len` lines).
fn logged_sizes(path: &std::path::Path) -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (w, h) = l.split_whitespace().nth(3)?.split_once('x')?;
            Some((w.parse().ok()?, h.parse().ok()?))
        })
        .collect()
}

/// Item 1: a Rust agent receives a browser's mic and share as the key-tier host grants.
async fn an_agent_receives_by_grant(mode: &str) {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let room = format!("gate-agent-{mode}");
    let host = key_host(port, &room).await;
    let mut agent = Rust::start(
        port,
        &room,
        "Agent",
        Opts {
            agent: true,
            crypto_host: true,
            seed: 12,
            ..Opts::default()
        },
    )
    .await;
    let mut pages = MediaPages::start(port).await.unwrap();
    pages.open("a").await.unwrap();
    let a = pages
        .join_with(
            "a",
            json!({"room": room, "name": "a", "mode": mode, "cryptoHost": true}),
        )
        .await
        .unwrap();
    let g = agent.voice_id.clone();
    pages
        .wait_stats("a", WAIT, |s| {
            peer(s, &g)["state"] == "connected" && audio_packets(s, &g, "mic") > 10
        })
        .await
        .unwrap();
    assert_eq!(
        pages.call("a", "toggleMic", json!([])).await.unwrap(),
        json!(true)
    );

    // No grant: the lane flows (packets arrive), nothing of it is decoded.
    let k = agent.lane_alive(&a, "no grant").await;
    agent
        .no_pcm_for(&a, Duration::from_millis(1500), "before the grant")
        .await;
    let k2 = agent.lane_alive(&a, "no grant, later").await;
    eprintln!("{mode}: ungranted, the agent's lane from the page runs at {k}/{k2} kbps, no PCM");

    // hear-audio granted by the host: the page's tone reaches the agent's PCM.
    let t0 = Instant::now();
    host.set_grant(&g, agent_grant(&[Perceive::HearAudio]))
        .await
        .unwrap();
    let took = agent.hears(&a, 440.0, WAIT).await;
    eprintln!(
        "{mode}: the agent hears the page's 440 Hz {took:?} after the grant ({:?} incl. the call)",
        t0.elapsed()
    );
    assert!(took <= REGATE, "the grant took {took:?}");

    // Revoked: silent again, the lane still alive.
    let t0 = Instant::now();
    host.set_grant(&g, agent_grant(&[])).await.unwrap();
    agent
        .no_pcm_for(&a, Duration::from_millis(1000), "after the revoke")
        .await;
    let quiet = t0.elapsed().saturating_sub(Duration::from_millis(1000));
    eprintln!("{mode}: the agent's PCM of the page stops ≤ {quiet:?} after the revoke");
    assert!(quiet <= REGATE, "the revoke took {quiet:?}");
    let k = agent.lane_alive(&a, "revoked").await;
    eprintln!("{mode}: revoked, the lane still runs at {k} kbps");

    // A share without see-screen: nothing larger than the 2×2 placeholder reaches the agent.
    let lane = if mode == "owned" {
        MediaLane::Share
    } else {
        MediaLane::Camera
    };
    let share = pages.call("a", "shareTrack", json!([])).await.unwrap();
    let (w, h) = (
        share["width"].as_u64().unwrap() as u16,
        share["height"].as_u64().unwrap() as u16,
    );
    let sender = if mode == "owned" { "share" } else { "cam" };
    let s = pages
        .wait_stats("a", WAIT, |s| peer(s, &g)["senders"][sender] == "gate")
        .await
        .unwrap();
    assert_eq!(peer(&s, &g)["senders"][sender], "gate");
    // An observation window: whatever the agent sees of the lane meanwhile is 2×2 at most
    // (Chromium sends a frame or two of the still gate picture after a swap, then nothing).
    let watch = Instant::now();
    let mut seen = Vec::new();
    while watch.elapsed() < Duration::from_millis(2000) {
        if let Ok(Some(e)) = timeout(Duration::from_millis(200), agent.events.recv()).await
            && let Event::VideoSize {
                voice_id,
                lane: l,
                width,
                height,
            } = e
            && voice_id == a
            && l == lane
        {
            seen.push((width, height));
        }
    }
    assert!(
        seen.iter().all(|&(w, h)| w <= 2 && h <= 2),
        "ungranted share sizes: {seen:?}"
    );
    let log = agent.record.join(format!("a-{a}-{}.log", lane.as_str()));
    let sizes = logged_sizes(&log);
    assert!(
        sizes.iter().all(|&(w, h)| w <= 2 && h <= 2),
        "ungranted share frames: {sizes:?}"
    );
    eprintln!(
        "{mode}: ungranted share: sizes {seen:?}, {} frames logged, all ≤ 2×2",
        sizes.len()
    );

    // see-screen granted: the full-size share arrives.
    let t0 = Instant::now();
    host.set_grant(&g, agent_grant(&[Perceive::SeeScreen]))
        .await
        .unwrap();
    let a2 = a.clone();
    timeout(WAIT, async {
        loop {
            let e = agent.events.recv().await.expect("room events");
            if matches!(&e, Event::VideoSize { voice_id, lane: l, width, height }
                if *voice_id == a2 && *l == lane && *width == w && *height == h)
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {w}x{h} share within {WAIT:?}"));
    let took = t0.elapsed();
    eprintln!("{mode}: the agent sees the {w}x{h} share {took:?} after see-screen");
    assert!(took <= REGATE, "see-screen took {took:?}");
    let count_big = || {
        logged_sizes(&log)
            .into_iter()
            .filter(|&(fw, fh)| fw > 2 || fh > 2)
            .count()
    };
    // Let the share run (about 1 s at 15 fps), so that its stopping below means something.
    while count_big() < 15 {
        assert!(
            t0.elapsed() < WAIT,
            "the share does not flow: {}",
            count_big()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // see-screen revoked: the page swaps its gate back in (a still 2×2 picture Chromium
    // sends a frame or two of, then nothing): full-size frames stop reaching the agent.
    let (mut last, mut changed) = (count_big(), Duration::ZERO);
    let t0 = Instant::now();
    host.set_grant(&g, agent_grant(&[])).await.unwrap();
    // Stopped once the count holds still for 1 s (at 15 fps a live share adds 15).
    while t0.elapsed() < changed + Duration::from_millis(1000) {
        assert!(t0.elapsed() < WAIT, "full-size share frames keep coming");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = count_big();
        if n != last {
            (last, changed) = (n, t0.elapsed());
        }
    }
    eprintln!(
        "{mode}: full-size share frames stop ≤ {changed:?} after see-screen is revoked ({last} in all)"
    );
    assert!(changed <= REGATE, "revoking see-screen took {changed:?}");
    let s = pages.stats("a").await.unwrap();
    assert_eq!(peer(&s, &g)["senders"][sender], "gate", "{s}");

    // The agent's recording of the page's mic: zeros while ungranted (never decoded), the
    // tone while granted.
    agent.handle.leave().await;
    let wav = agent.record.join(format!("a-{a}-mic.wav"));
    let mut rd = hound::WavReader::open(&wav).unwrap_or_else(|e| panic!("{}: {e}", wav.display()));
    let samples: Vec<i16> = rd.samples::<i16>().map(Result::unwrap).collect();
    assert!(samples.len() > 48_000, "{} samples recorded", samples.len());
    assert_eq!(peak(&samples[..24_000]), 0, "ungranted audio was recorded");
    let toned = samples
        .chunks(9600)
        .filter(|c| rms(c) > 0.02 && (dominant_frequency(c) - 440.0).abs() < 15.0)
        .count();
    assert!(toned > 0, "no 440 Hz in the recording");
    eprintln!(
        "{mode}: the agent's WAV: {} samples, zeros first, {toned} × 200 ms of 440 Hz",
        samples.len()
    );
    host.leave().await;
    pages.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&agent.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_a_rust_agent_receives_as_granted() {
    an_agent_receives_by_grant("owned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_a_rust_agent_receives_as_granted() {
    an_agent_receives_by_grant("legacy").await;
}

/// Item 2: a Rust sender withholds its tone from an agent page and from a human page that
/// re-announces itself as an agent (MEDIA.md §8.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_sender_gates_agents_and_a_late_agent() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let room = "gate-sender";
    let rust = Rust::start(
        port,
        room,
        "Rusty",
        Opts {
            tone: Some(660.0),
            seed: 13,
            ..Opts::default()
        },
    )
    .await;
    let r = rust.voice_id.clone();
    let mut pages = MediaPages::start(port).await.unwrap();
    for (page, meta) in [("h", json!({})), ("g", json!({"role": "agent"}))] {
        pages.open(page).await.unwrap();
        pages.join(page, room, "owned", meta).await.unwrap();
    }
    for page in ["h", "g"] {
        pages
            .wait_stats(page, WAIT, |s| {
                peer(s, &r)["state"] == "connected" && audio_packets(s, &r, "mic") > 10
            })
            .await
            .unwrap();
    }
    let took = hears_tone(&mut pages, "h", &r).await;
    eprintln!("sender: the human page hears Rust's 660 Hz ({took:?})");
    stays_silent(&mut pages, "g", &r, "an agent page").await;
    let took = hears_tone(&mut pages, "h", &r).await;
    eprintln!("sender: the human page still hears it ({took:?}); the agent page is silent");

    // §8.3: the human re-announces as an agent; Rust's sender must re-gate at once.
    let t0 = Instant::now();
    pages
        .call("h", "setMeta", json!([{"role": "agent"}]))
        .await
        .unwrap();
    let quiet_from = loop {
        let at = t0.elapsed();
        let s = pages.stats("h").await.unwrap();
        let e0 = energy(&s, &r, "mic");
        let e1 = energy_after(&mut pages, "h", &r, 25).await;
        if e1 - e0 < SILENT {
            break at;
        }
        assert!(
            t0.elapsed() < WAIT,
            "the re-announced agent still hears Rust"
        );
    };
    eprintln!("sender: re-announced as an agent, the page's energy stops rising ≤ {quiet_from:?}");
    assert!(quiet_from <= REGATE, "re-gating took {quiet_from:?}");
    stays_silent(&mut pages, "h", &r, "the re-announced agent").await;
    let s = pages.stats("h").await.unwrap();
    assert!(
        s["roster"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "h" && m["meta"]["role"] == "agent"),
        "{}",
        s["roster"]
    );
    rust.handle.leave().await;
    pages.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&rust.record);
}

/// Item 3: three Rust participants in one room (owned media between them) each hear both
/// others' tones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rust_participants_hear_each_other() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let room = "gate-three";
    let tones = [330.0f32, 550.0, 770.0];
    let mut rs = Vec::new();
    for (i, hz) in tones.iter().enumerate() {
        rs.push(
            Rust::start(
                port,
                room,
                &format!("R{i}"),
                Opts {
                    tone: Some(*hz),
                    seed: 20 + i as u64,
                    ..Opts::default()
                },
            )
            .await,
        );
    }
    let ids: Vec<String> = rs.iter().map(|r| r.voice_id.clone()).collect();
    let t0 = Instant::now();
    for r in &rs {
        r.wait_links("two open owned links", |l| {
            l.len() == 2 && l.iter().all(|l| l.open && l.mode == Some(MediaMode::Owned))
        })
        .await;
    }
    eprintln!(
        "three: every participant has two open owned links after {:?}",
        t0.elapsed()
    );
    for (i, r) in rs.iter_mut().enumerate() {
        for (j, (from, hz)) in ids.iter().zip(tones).enumerate() {
            if i == j {
                continue;
            }
            let took = r.hears(from, hz, WAIT).await;
            let pcm = r.mic_pcm(from, 24_000).await;
            let f = dominant_frequency(&pcm);
            assert!((f - hz).abs() < 15.0, "R{i} hears R{j} at {f} Hz");
            eprintln!("three: R{i} hears R{j}'s {f:.0} Hz (within {took:?})");
        }
        // (kbps is measured each second: wait for a measurement.)
        r.wait_links("two open links carrying audio both ways", |l| {
            l.len() == 2 && l.iter().all(|l| l.open && l.kbps[1] > 0 && l.kbps[3] > 0)
        })
        .await;
        eprintln!("three: R{i}: {:?}", r.handle.media_links().await.unwrap());
    }
    for r in &rs {
        r.handle.leave().await;
        let _ = std::fs::remove_dir_all(&r.record);
    }
}

/// A local coturn and `/api/turn` credentials for it (shared `secret`): the server, the
/// credential (coturn logs its username), the Rust side's relay, and the page's `iceServers`.
async fn turn_server(secret: &str) -> (coturn::Coturn, api::Credential, RelayConfig, Value) {
    let turn = coturn::Coturn::start(&[secret]).await;
    let cred = api::start(&[secret], turn.port).await.fetch().await;
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
    let ice = json!([{"urls": url, "username": cred.username, "credential": cred.password}]);
    (turn, cred, relay, ice)
}

/// Item 4: a relay-only Rust participant (every connection through a local coturn) and a page:
/// the page hears the tone, and Rust never advertised a host candidate to it.
async fn relay_only(mode: &str) {
    let (turn, cred, relay, ice) = turn_server(&format!("kibitz-media-gating-{mode}")).await;
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let room = format!("gate-relay-{mode}");
    let rust = Rust::start(
        port,
        &room,
        "Relayed",
        Opts {
            tone: Some(660.0),
            relay: Some(relay),
            seed: 30,
            ..Opts::default()
        },
    )
    .await;
    let r = rust.voice_id.clone();
    let mut pages = MediaPages::start(port).await.unwrap();
    pages.open("a").await.unwrap();
    pages
        .join_with(
            "a",
            json!({"room": room, "name": "a", "mode": mode, "iceServers": ice}),
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    pages
        .wait_stats("a", WAIT, |s| {
            peer(s, &r)["state"] == "connected" && audio_packets(s, &r, "mic") > 10
        })
        .await
        .unwrap();
    hears_tone(&mut pages, "a", &r).await;
    eprintln!(
        "relay {mode}: the page hears Rust's tone through coturn {:?} after joining",
        t0.elapsed()
    );
    let c: Value = pages.call("a", "candidates", json!([r])).await.unwrap();
    eprintln!("relay {mode}: the page's candidates for Rust: {c}");
    let remote = c["remote"].as_array().unwrap();
    assert!(
        remote.iter().all(|x| x["type"] != "host"),
        "Rust advertised a host candidate: {c}"
    );
    assert!(remote.iter().any(|x| x["type"] == "relay"), "{c}");
    let sel = &c["selected"]["remote"];
    let relayed: Vec<&Value> = remote.iter().filter(|x| x["type"] == "relay").collect();
    assert!(
        relayed
            .iter()
            .any(|x| x["address"] == sel["address"] && x["port"] == sel["port"]),
        "the selected pair is not Rust's relay address: {c}"
    );
    assert!(
        turn.logged(
            &coturn::Coturn::allocated_line(&cred.username),
            Duration::from_secs(5)
        )
        .await,
        "coturn allocated nothing for Rust"
    );
    rust.handle.leave().await;
    pages.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&rust.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_relay_only_media_through_coturn() {
    relay_only("owned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_relay_only_media_through_coturn() {
    relay_only("legacy").await;
}

/// The owned ladder's last rung, `m-recreate{relay:true}` from the browser (the initiator
/// here), asks a direct Rust participant to rebuild its side relay-only. With a TURN server for
/// that (`RoomOptions::media_relay`) media flows again through coturn, and Rust's candidates
/// on the rebuilt connection are relay ones only. Without one the rung fails, and Rust keeps
/// asking at the heartbeat's pace (it once answered every failed offer at once: thousands of
/// `m-dial`/`mh-dead` a second with a browser that re-offers on `m-dial`).
async fn relay_rung(with_relay: bool) {
    let (turn, cred, relay, ice) =
        turn_server(&format!("kibitz-media-gating-rung-{with_relay}")).await;
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let room = format!("gate-relay-rung-{with_relay}");
    let rust = Rust::start(
        port,
        &room,
        "Direct",
        Opts {
            tone: Some(660.0),
            media_relay: with_relay.then_some(relay),
            seed: 31,
            ..Opts::default()
        },
    )
    .await;
    let r = rust.voice_id.clone();
    let mut pages = MediaPages::start(port).await.unwrap();
    pages.open("a").await.unwrap();
    // The smaller voiceId initiates: the page runs the ladder.
    pages
        .join_with(
            "a",
            json!({"room": room, "name": "a", "mode": "owned", "iceServers": ice, "id": "00000000lo"}),
        )
        .await
        .unwrap();
    pages
        .wait_stats("a", WAIT, |s| {
            peer(s, &r)["state"] == "connected" && audio_packets(s, &r, "mic") > 10
        })
        .await
        .unwrap();
    hears_tone(&mut pages, "a", &r).await;
    let c: Value = pages.call("a", "candidates", json!([r])).await.unwrap();
    assert!(
        c["remote"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == "host"),
        "a direct participant starts direct: {c}"
    );
    let step = pages.call("a", "recoverNow", json!([r, 2])).await.unwrap();
    assert_eq!(step, json!("m-recreate"));
    let t0 = Instant::now();
    if !with_relay {
        // Watch 10 s of the failing rung: Rust's asks stay at the 2 s heartbeat's pace.
        let asks = |s: &Value| {
            media_support::counter(s, &r, "recv", "m-dial")
                + media_support::counter(s, &r, "recv", "mh-dead")
        };
        let before = asks(&pages.stats("a").await.unwrap());
        let s = pages
            .wait_stats("a", WAIT, |_| t0.elapsed() >= Duration::from_secs(10))
            .await
            .unwrap();
        let n = asks(&s) - before;
        eprintln!("relay rung without a relay: {n} m-dial/mh-dead in 10 s");
        assert!(n <= 15, "{n} m-dial/mh-dead in 10 s: {s}");
        rust.handle.leave().await;
        pages.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&rust.record);
        return;
    }
    pages
        .wait_stats("a", WAIT, |s| {
            peer(s, &r)["pcs"] == 2 && peer(s, &r)["state"] == "connected"
        })
        .await
        .unwrap();
    hears_tone(&mut pages, "a", &r).await;
    eprintln!(
        "relay rung: media back through coturn {:?} after m-recreate{{relay:true}}",
        t0.elapsed()
    );
    let c: Value = pages.call("a", "candidates", json!([r])).await.unwrap();
    eprintln!("relay rung: the page's candidates for Rust: {c}");
    let remote = c["remote"].as_array().unwrap();
    assert!(
        remote.iter().all(|x| x["type"] != "host"),
        "the rebuilt connection leaks Rust's host address: {c}"
    );
    assert!(
        turn.logged(
            &coturn::Coturn::allocated_line(&cred.username),
            Duration::from_secs(5)
        )
        .await,
        "coturn allocated nothing for Rust"
    );
    rust.handle.leave().await;
    pages.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&rust.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_relay_rung_rebuilds_a_direct_participant_through_coturn() {
    relay_rung(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_relay_rung_without_a_relay_fails_calmly() {
    relay_rung(false).await;
}
