//! A Rust participant's media with browser members (MEDIA.md §7), in both transports: the
//! pages of `node/media-room.mjs` (the web client's media plane, legacy and owned) in a room a
//! Rust participant (kibitz-join, with media) holds. What the browser sends arrives in the
//! Rust participant's decoded PCM, recordings and video events; what Rust sends shows in the
//! browser's `inbound-rtp` stats; grants gate both directions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod media_support;

use std::time::Duration;

use kibitz_client::{Event, HostCommit, MediaLane, RoomConfig};
use kibitz_e2e::{Config, start};
use kibitz_join::media::MediaConfig;
use kibitz_media::{AudioSource, dominant_frequency, peak, rms};
use media_support::{MediaPages, RustMember, audio_packets, energy, peer, video};
use p256::ecdsa::SigningKey;
use serde_json::json;
use tokio::time::{Instant, timeout};

/// Energy a silent lane may show (digital silence is exactly 0).
const SILENT: f64 = 1e-4;
/// Energy that proves a tone arrived.
const TONE: f64 = 0.01;
const WAIT: Duration = Duration::from_secs(20);

/// A Rust participant with media (the shared helper), and what it hears and sees.
type Rust = RustMember;

impl Rust {
    async fn start(port: u16, room: &str, name: &str, agent: bool, host_key: bool) -> Self {
        let mut cfg = RoomConfig::new(room, name, &format!("tok-{name}"));
        cfg.seed = 11;
        if agent {
            cfg.agent = Some(kibitz_client::AgentIdentity {
                key: None,
                backend: None,
                egress: false,
            });
        }
        if host_key {
            let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
            cfg.host = HostCommit::Key(*key.verifying_key());
            cfg.host_key = Some(key);
        }
        let media = MediaConfig {
            audio_in: AudioSource::tone(660.0),
            muted: true,
            video: Some((320, 240)),
            ..MediaConfig::default()
        };
        let tag = format!("media-rust-{room}-{name}");
        Self::launch(port, cfg, media, None, None, &tag).await
    }

    /// Waits for a media event matching `pred`.
    async fn event(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        timeout(WAIT, async {
            loop {
                let e = self.events.recv().await.expect("room events");
                if pred(&e) {
                    return e;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
    }
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

/// Waits until 12 packets in a row from `from` carry no energy (the sender went silent).
async fn goes_quiet(pages: &mut MediaPages, page: &str, from: &str) {
    let t0 = Instant::now();
    loop {
        let s = pages.stats(page).await.unwrap();
        let e0 = energy(&s, from, "mic");
        if energy_after(pages, page, from, 12).await - e0 < SILENT {
            return;
        }
        assert!(
            t0.elapsed() < WAIT,
            "{from}'s audio never went quiet at {page}"
        );
    }
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

/// One page and one Rust participant, both ways, in `mode`.
async fn rust_and_a_page(mode: &str) {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let room = format!("media-rust-{mode}");
    let mut rust = Rust::start(port, &room, "Rusty", false, false).await;
    let mut pages = MediaPages::start(port).await.unwrap();
    pages.open("a").await.unwrap();
    let a = pages.join("a", &room, mode, json!({})).await.unwrap();
    let r = rust.voice_id.clone();
    // A line typed the moment the page shows up in the roster waits for its mesh link to
    // open (it used to be dropped), then arrives once.
    timeout(WAIT, async {
        while !rust
            .handle
            .participants()
            .await
            .unwrap()
            .iter()
            .any(|p| p.id == a)
        {
            let _ = rust.events.recv().await;
        }
    })
    .await
    .expect("the page in Rust's roster");
    let sent = rust.handle.chat("first words", None).await.unwrap();
    assert_eq!(sent, Ok(1), "queued for the page's opening link");
    let t0 = Instant::now();
    pages
        .wait_stats("a", WAIT, |s| {
            peer(s, &r)["state"] == "connected" && audio_packets(s, &r, "mic") > 10
        })
        .await
        .unwrap();
    eprintln!(
        "{mode}: the page hears Rust's lane {:?} after joining",
        t0.elapsed()
    );
    let chats = pages
        .wait_call("a", "receivedChats", json!([]), WAIT, |v| {
            v.as_array().is_some_and(|c| {
                c.iter()
                    .any(|m| m["from"] == r && m["text"] == "first words")
            })
        })
        .await
        .unwrap();
    let n = chats
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "first words")
        .count();
    assert_eq!(n, 1, "{chats}");
    let links = rust.handle.media_links().await.unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    eprintln!("{mode}: {links:?}");

    // Rust → browser: silence while muted, the 660 Hz tone when unmuted, the camera's size.
    stays_silent(&mut pages, "a", &r, "Rust muted").await;
    rust.handle.set_muted(false);
    let took = hears_tone(&mut pages, "a", &r).await;
    eprintln!("{mode}: the page hears Rust's tone {took:?} after unmute");
    let s = pages
        .wait_stats("a", WAIT, |s| {
            let (frames, w, h) = video(s, &r, "cam");
            frames > 10 && w == 320 && h == 240
        })
        .await
        .unwrap();
    eprintln!(
        "{mode}: the page decodes Rust's camera: {:?}",
        video(&s, &r, "cam")
    );
    rust.handle.set_muted(true);
    // The tone's tail may still be in flight (a loaded machine grows the browser's jitter
    // buffer): wait until a quarter second carries no energy, then hold it to silence.
    goes_quiet(&mut pages, "a", &r).await;
    stays_silent(&mut pages, "a", &r, "Rust muted again").await;

    // Browser → Rust: real silence before the browser unmutes, 440 Hz after.
    let before = rust.mic_pcm(&a, 48_000).await;
    assert!(
        rms(&before) < 0.001,
        "rms {} before the browser unmuted",
        rms(&before)
    );
    assert!(
        peak(&before) <= 4,
        "peak {} before the browser unmuted",
        peak(&before)
    );
    assert_eq!(
        pages.call("a", "toggleMic", json!([])).await.unwrap(),
        json!(true)
    );
    let t0 = Instant::now();
    let f = loop {
        let pcm = rust.mic_pcm(&a, 24_000).await;
        let f = dominant_frequency(&pcm);
        if rms(&pcm) > 0.02 && (f - 440.0).abs() < 10.0 {
            break f;
        }
        assert!(t0.elapsed() < WAIT, "no 440 Hz from the browser: {f} Hz");
    };
    eprintln!(
        "{mode}: Rust hears the browser's {f:.0} Hz {:?} after toggleMic",
        t0.elapsed()
    );

    // The browser's camera: its size at the Rust side.
    assert_eq!(
        pages.call("a", "toggleCam", json!([])).await.unwrap(),
        json!(true)
    );
    let a2 = a.clone();
    rust.event("the browser camera's 320x240", move |e| {
        matches!(e, Event::VideoSize { voice_id, lane: MediaLane::Camera, width: 320, height: 240 } if *voice_id == a2)
    })
    .await;

    // The recording: one WAV for the browser's mic, named by participant and voiceId.
    rust.handle.leave().await;
    let wav = rust.record.join(format!("a-{a}-mic.wav"));
    let mut r = hound::WavReader::open(&wav).unwrap_or_else(|e| panic!("{}: {e}", wav.display()));
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let tail = &samples[samples.len().saturating_sub(24_000)..];
    let f = dominant_frequency(tail);
    assert!((f - 440.0).abs() < 10.0, "the recording ends at {f} Hz");
    assert!(rust.record.join(format!("a-{a}-camera.log")).exists());
    pages.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&rust.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_a_browser_and_rust_hear_and_see_each_other() {
    rust_and_a_page("legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_a_browser_and_rust_hear_and_see_each_other() {
    rust_and_a_page("owned").await;
}
