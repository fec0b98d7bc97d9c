//! The browser media members of `node/media-room.mjs`, proved browser↔browser before any Rust
//! media exists: two pages in a room a Rust participant (kibitz-join, data only) holds, in each
//! build's media plane (MEDIA.md §1–4). The Rust coordinator is a member with no media: the
//! pages must leave it be (legacy: its call never answers; owned: `cap`+`mh` zeros, no `m-sdp`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod media_support;

use std::time::Duration;

use kibitz_client::{Event, HostCommit, RoomConfig, Status};
use kibitz_e2e::{Config, start};
use kibitz_join::{RoomHandle, RoomOptions};
use kibitz_proto::grants::{Grant, Perceive};
use kibitz_rtc::{BrokerConfig, Identity};
use media_support::{MediaPages, audio_packets, counter, energy, peer, video};
use p256::ecdsa::SigningKey;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

/// Energy a silent lane may show (it is exactly 0 for digital silence).
const SILENT: f64 = 1e-4;
/// Energy that proves the tone arrived (half-scale 440 Hz: ≈0.12 per second of audio).
const TONE: f64 = 0.01;
const WAIT: Duration = Duration::from_secs(20);

/// The room's coordinator: a Rust participant holding `kbz-v1-<room>`, data only.
async fn coordinator(port: u16, room: &str) -> RoomHandle {
    coordinator_with(port, room, false).await
}

/// The coordinator; with `host_key`, a committed host key it holds, so it is the room's
/// verified (cryptographic-tier) host and its `caps` count.
async fn coordinator_with(port: u16, room: &str, host_key: bool) -> RoomHandle {
    let mut cfg = RoomConfig::new(room, "Coordinator", "tok-coordinator");
    cfg.seed = 7;
    // Data only: these tests are about the pages (tests/tests/media_rust.rs has Rust media).
    cfg.media = false;
    if host_key {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        cfg.host = HostCommit::Key(*key.verifying_key());
        cfg.host_key = Some(key);
    }
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
        panic!("coordinator stopped");
    })
    .await
    .expect("the Rust member holds the room");
    // Keep draining its events so the driver never blocks on them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    handle
}

/// Two pages, "a" (a human) and "b" (`b_meta`), joined to `room` in `mode`, and their voiceIds,
/// once each receives the other's audio lane.
async fn pair(pages: &mut MediaPages, room: &str, mode: &str, b_meta: Value) -> (String, String) {
    pages.open("a").await.unwrap();
    pages.open("b").await.unwrap();
    let a = pages.join("a", room, mode, json!({})).await.unwrap();
    let b = pages.join("b", room, mode, b_meta).await.unwrap();
    let t0 = Instant::now();
    for (page, other) in [("a", &b), ("b", &a)] {
        pages
            .wait_stats(page, WAIT, |s| {
                peer(s, other)["state"] == "connected" && audio_packets(s, other, "mic") > 10
            })
            .await
            .unwrap();
    }
    eprintln!(
        "{mode}: media both ways {:?} after the second join",
        t0.elapsed()
    );
    (a, b)
}

/// Waits until `page`'s audio lane from `from` has carried `n` more packets than now; returns
/// the energy then.
async fn energy_after(pages: &mut MediaPages, page: &str, from: &str, n: u64) -> f64 {
    let s = pages.stats(page).await.unwrap();
    let start = audio_packets(&s, from, "mic");
    let s = pages
        .wait_stats(page, WAIT, |s| audio_packets(s, from, "mic") >= start + n)
        .await
        .unwrap();
    energy(&s, from, "mic")
}

/// Asserts the audio `page` hears from `from` stays silent over ~`n` packets (20 ms each).
async fn stays_silent(pages: &mut MediaPages, page: &str, from: &str, n: u64, what: &str) {
    let s = pages.stats(page).await.unwrap();
    let (e0, p0) = (energy(&s, from, "mic"), audio_packets(&s, from, "mic"));
    let e1 = energy_after(pages, page, from, n).await;
    assert!(
        e1 - e0 < SILENT,
        "{what}: energy rose {e0} -> {e1} over {n} packets (from {p0})"
    );
}

/// Waits until the tone from `from` arrives at `page`; returns how long it took.
async fn hears_tone(pages: &mut MediaPages, page: &str, from: &str, wait: Duration) -> Duration {
    let s = pages.stats(page).await.unwrap();
    let e0 = energy(&s, from, "mic");
    let t0 = Instant::now();
    pages
        .wait_stats(page, wait, |s| energy(s, from, "mic") - e0 > TONE)
        .await
        .unwrap();
    t0.elapsed()
}

/// A chat from "a" reaches "b" (and the Rust member: two sends) on the data mesh.
async fn chat_arrives(pages: &mut MediaPages, a: &str) {
    let sent = pages
        .call("a", "chat", json!(["hello from a"]))
        .await
        .unwrap();
    assert_eq!(sent, 2, "a chat to b and to the Rust member");
    pages
        .wait_call("b", "receivedChats", json!([]), WAIT, |v| {
            v.as_array().is_some_and(|c| {
                c.iter()
                    .any(|m| m["from"] == a && m["text"] == "hello from a")
            })
        })
        .await
        .unwrap();
}

/// Silence before the mic, the tone after it, the fake camera's 320×240 after the camera.
async fn mic_and_camera(pages: &mut MediaPages, a: &str, mode: &str) {
    stays_silent(pages, "b", a, 50, "placeholder mic before toggleMic").await;
    assert_eq!(
        pages.call("a", "toggleMic", json!([])).await.unwrap(),
        json!(true)
    );
    let took = hears_tone(pages, "b", a, Duration::from_secs(10)).await;
    eprintln!("{mode}: B hears A's tone {took:?} after toggleMic");
    assert_eq!(
        pages.call("a", "toggleCam", json!([])).await.unwrap(),
        json!(true)
    );
    let t0 = Instant::now();
    let s = pages
        .wait_stats("b", WAIT, |s| {
            let (frames, w, h) = video(s, a, "cam");
            frames > 10 && w == 320 && h == 240
        })
        .await
        .unwrap();
    eprintln!(
        "{mode}: B decodes A's camera at 320x240 {:?} after toggleCam ({:?})",
        t0.elapsed(),
        video(&s, a, "cam")
    );
    // The roster says so too.
    pages
        .wait_stats("b", WAIT, |s| {
            s["roster"]
                .as_array()
                .is_some_and(|r| r.iter().any(|m| m["id"] == a && m["cam"] == true))
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_pages_hear_and_see_each_other() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let _room = coordinator(port, "media-legacy").await;
    let mut pages = MediaPages::start(port).await.unwrap();
    let (a, b) = pair(&mut pages, "media-legacy", "legacy", json!({})).await;
    mic_and_camera(&mut pages, &a, "legacy").await;
    chat_arrives(&mut pages, &a).await;
    // The 0.1.0 bundle sends no `t` frames on sig (MEDIA.md §6 tells it by that): neither page
    // received any from the other, while both did from the Rust member (`cap`, `mh`).
    for (page, other) in [("a", &b), ("b", &a)] {
        let s = pages.stats(page).await.unwrap();
        let p = peer(&s, other);
        assert_eq!(p["sig"], true, "{page}: {p}");
        assert_eq!(p["ctlReceived"], 0, "{page}: {p}");
        assert_eq!(p["pcs"], 1, "{page} made one call: {p}");
        let rust = s["peers"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(id, _)| id != &other)
            .map(|(_, p)| p["ctlReceived"].as_u64().unwrap_or(0));
        assert!(
            rust > Some(0),
            "{page} heard no t frames from the Rust member: {s}"
        );
    }
    pages.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_pages_hear_and_see_each_other_on_one_steady_pc() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let _room = coordinator(port, "media-owned").await;
    let mut pages = MediaPages::start(port).await.unwrap();
    let (a, b) = pair(&mut pages, "media-owned", "owned", json!({})).await;
    let steady_from = Instant::now();
    mic_and_camera(&mut pages, &a, "owned").await;
    chat_arrives(&mut pages, &a).await;
    // Stability: 20 s on the first pc, with no recovery asked for or made on either side.
    let left = Duration::from_secs(20).saturating_sub(steady_from.elapsed());
    let s = pages
        .wait_stats("a", left + Duration::from_secs(5), |_| {
            steady_from.elapsed() >= Duration::from_secs(20)
        })
        .await
        .unwrap();
    let sb = pages.stats("b").await.unwrap();
    for (page, s, other) in [("a", &s, &b), ("b", &sb, &a)] {
        let p = peer(s, other);
        assert_eq!(p["pcs"], 1, "{page} made one pc for the pair: {p}");
        assert_eq!(p["state"], "connected", "{page}: {p}");
        for t in ["m-recreate", "mh-dead"] {
            for dir in ["sent", "recv"] {
                assert_eq!(counter(s, other, dir, t), 0, "{page} {dir} {t}: {p}");
            }
        }
        assert!(p["bulk"] == true && p["sig"] == true, "{page}: {p}");
        assert_eq!(p["sigRedials"], 0, "{page}: {p}");
        assert!(p["remoteMh"]["a"].as_u64().unwrap() > 1, "{page}: {p}");
    }
    eprintln!(
        "owned: one pc each way, no m-recreate/mh-dead for {:?}",
        steady_from.elapsed()
    );
    if std::env::var("MEDIA_DEBUG").is_ok() {
        for page in ["a", "b"] {
            eprintln!("{page} stats {}", pages.stats(page).await.unwrap());
            eprintln!("{page} console {}", pages.console(page).await);
        }
    }
    pages.shutdown().await.unwrap();
}

/// B announces itself as an agent: A withholds its mic and its share from B (the lanes stay
/// alive, silent or 2×2), a grant from A's own page lets the tone and the share through within
/// ~1 s, and revoking withholds them again. `share_lane` is where A's share travels: "share"
/// (owned), or the single video lane "cam" (legacy).
async fn gating(mode: &str, room: &str, share_lane: &str) {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let _room = coordinator(port, room).await;
    let mut pages = MediaPages::start(port).await.unwrap();
    let (a, b) = pair(&mut pages, room, mode, json!({"role": "agent"})).await;
    assert_eq!(
        pages.call("a", "toggleMic", json!([])).await.unwrap(),
        json!(true)
    );
    pages.call("a", "shareTrack", json!([])).await.unwrap();
    let s = pages.stats("a").await.unwrap();
    assert_eq!(peer(&s, &b)["senders"]["mic"], "gate", "{s}");
    assert_eq!(peer(&s, &b)["senders"][share_lane], "gate", "{s}");
    stays_silent(&mut pages, "b", &a, 75, "an agent, after A unmuted").await;
    let s = pages.stats("b").await.unwrap();
    let (_, w, h) = video(&s, &a, share_lane);
    assert!(w <= 2 && h <= 2, "the agent saw a {w}x{h} share: {s}");

    let grant = json!({
        "perceive": ["hear-audio", "see-screen", "read-chat", "read-roster", "receive-directed"],
        "act": []
    });
    pages
        .call("a", "setCapabilityGrant", json!([b, grant]))
        .await
        .unwrap();
    let took = hears_tone(&mut pages, "b", &a, Duration::from_secs(3)).await;
    eprintln!("{mode} gating: the tone reached the agent {took:?} after the grant");
    let s = pages
        .wait_stats("b", Duration::from_secs(10), |s| {
            let (_, w, h) = video(s, &a, share_lane);
            w > 2 && h > 2
        })
        .await
        .unwrap();
    eprintln!(
        "{mode} gating: share frames reached the agent: {:?}",
        video(&s, &a, share_lane)
    );

    pages
        .call("a", "setCapabilityGrant", json!([b, null]))
        .await
        .unwrap();
    // Let what was in flight play out, then the lanes must be flat again.
    energy_after(&mut pages, "b", &a, 50).await;
    let (frames, ..) = video(&pages.stats("b").await.unwrap(), &a, share_lane);
    stays_silent(&mut pages, "b", &a, 75, "after the grant was revoked").await;
    let s = pages.stats("b").await.unwrap();
    let (later, ..) = video(&s, &a, share_lane);
    assert!(
        later <= frames + 2,
        "share frames kept coming after the revoke: {frames} -> {later}"
    );
    assert!(
        audio_packets(&s, &a, "mic") > 200,
        "the lane stayed alive: {s}"
    );
    pages.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_pages_gate_an_agent_by_grant() {
    gating("owned", "media-gate-owned", "share").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_pages_gate_an_agent_by_grant() {
    gating("legacy", "media-gate-legacy", "cam").await;
}

/// Caps from the room's verified host (the Rust coordinator, key tier) reach a page's gate only
/// when the page was told the room has a cryptographic host: "a" (cryptoHost) lets an agent hear
/// its tone once the host grants hear-audio, "c" (no cryptoHost) keeps it withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_pages_honour_caps_from_a_crypto_host_only() {
    let room = "media-caps";
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let host = coordinator_with(port, room, true).await;
    // Its voiceId comes with its media peer, a moment after it holds the room.
    let deadline = Instant::now() + WAIT;
    let host_id = loop {
        if let Some(id) = host.voice_id().await.unwrap() {
            break id;
        }
        assert!(Instant::now() < deadline, "the host never had a voiceId");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut pages = MediaPages::start(port).await.unwrap();
    let mut ids = Vec::new();
    for (page, crypto, meta) in [
        ("a", true, json!({})),
        ("c", false, json!({})),
        ("b", false, json!({"role": "agent"})),
    ] {
        pages.open(page).await.unwrap();
        let v = pages
            .call(
                page,
                "join",
                json!([{"room": room, "name": page, "mode": "owned", "meta": meta, "cryptoHost": crypto}]),
            )
            .await
            .unwrap();
        ids.push(v["voiceId"].as_str().unwrap().to_owned());
    }
    let (a, c, b) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    for from in [&a, &c] {
        pages
            .wait_stats("b", WAIT, |s| audio_packets(s, from, "mic") > 10)
            .await
            .unwrap();
    }
    pages
        .wait_stats("a", WAIT, |s| s["host"] == host_id.as_str())
        .await
        .unwrap();
    for page in ["a", "c"] {
        assert_eq!(
            pages.call(page, "toggleMic", json!([])).await.unwrap(),
            json!(true)
        );
    }
    stays_silent(&mut pages, "b", &a, 50, "an agent, before the host's grant").await;

    let mut grant = Grant::agent_default();
    grant.perceive.push(Perceive::HearAudio);
    host.set_grant(&b, grant).await.unwrap();
    let took = hears_tone(&mut pages, "b", &a, Duration::from_secs(5)).await;
    eprintln!("caps: the agent hears the cryptoHost page {took:?} after the host's grant");
    stays_silent(&mut pages, "b", &c, 50, "a page that does not honour caps").await;
    let s = pages.stats("c").await.unwrap();
    assert_eq!(peer(&s, &b)["senders"]["mic"], "gate", "{s}");
    pages.shutdown().await.unwrap();
}

/// The owned recovery ladder's wire, forced with the page's test hook `recoverNow`: the
/// answerer's `mh-dead` makes the initiator restart ICE on the same pc; the initiator's
/// `m-recreate` makes both sides build a new pc; the tone flows again after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_pages_recover_by_restart_and_recreate() {
    let room = "media-recover";
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let _room = coordinator(port, room).await;
    let mut pages = MediaPages::start(port).await.unwrap();
    let (a, b) = pair(&mut pages, room, "owned", json!({})).await;
    for page in ["a", "b"] {
        pages.call(page, "toggleMic", json!([])).await.unwrap();
    }
    // The smaller voiceId initiates.
    let (init, init_id, ans, ans_id) = if a < b {
        ("a", &a, "b", &b)
    } else {
        ("b", &b, "a", &a)
    };
    hears_tone(&mut pages, ans, init_id, Duration::from_secs(10)).await;

    let asked = pages
        .call(ans, "recoverNow", json!([init_id]))
        .await
        .unwrap();
    assert_eq!(asked, "mh-dead");
    let s = pages
        .wait_stats(init, WAIT, |s| counter(s, ans_id, "recv", "mh-dead") == 1)
        .await
        .unwrap();
    assert_eq!(peer(&s, ans_id)["pcs"], 1, "restartIce keeps the pc: {s}");
    hears_tone(&mut pages, ans, init_id, Duration::from_secs(10)).await;
    hears_tone(&mut pages, init, ans_id, Duration::from_secs(10)).await;

    let step = pages
        .call(init, "recoverNow", json!([ans_id, 1]))
        .await
        .unwrap();
    assert_eq!(step, "m-recreate");
    let t0 = Instant::now();
    let s = pages
        .wait_stats(ans, WAIT, |s| {
            let p = peer(s, init_id);
            counter(s, init_id, "recv", "m-recreate") == 1
                && p["pcs"] == 2
                && p["state"] == "connected"
                && energy(s, init_id, "mic") > TONE
        })
        .await
        .unwrap();
    eprintln!(
        "recover: after m-recreate the answerer's new pc carries the tone again in {:?}",
        t0.elapsed()
    );
    assert_eq!(peer(&s, init_id)["relay"], false, "{s}");
    pages
        .wait_stats(init, WAIT, |s| {
            peer(s, ans_id)["pcs"] == 2 && energy(s, ans_id, "mic") > TONE
        })
        .await
        .unwrap();
    pages.shutdown().await.unwrap();
}
