//! `kibitz join` and `kibitz agent` driven as a person or a program would: lines typed on a
//! pipe, output read line by line. Our broker runs in-process on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use kibitz_e2e::{Config, KibitzProc as Proc, kibitz_bin, start};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_agent_in_one_room_then_the_coordinator_is_killed() {
    let broker = start(Config::default()).await;
    let signal = format!("ws://127.0.0.1:{}", broker.addr.port());
    let room = "cli-room";
    let mut alice = Proc::spawn(
        "alice",
        &["join", room, "--name", "Alice", "--signal-host", &signal],
    );
    alice
        .expect(WAIT, |l| l == "* connected (you coordinate the room)")
        .await;
    let mut bot = Proc::spawn(
        "bot",
        &[
            "agent",
            room,
            "--name",
            "Bot",
            "--backend",
            "local model",
            "--signal-host",
            &signal,
        ],
    );
    let mut bob = Proc::spawn(
        "bob",
        &["join", room, "--name", "Bob", "--signal-host", &signal],
    );
    bob.expect(WAIT, |l| l == "* connected").await;
    for p in [&mut alice, &mut bob] {
        p.expect(WAIT, |l| {
            l.starts_with("* in the room:")
                && l.contains("Bot (agent)")
                && l.contains("Bob")
                && l.contains("Alice")
        })
        .await;
    }
    let roster = bot
        .expect(WAIT, |l| {
            l.contains("\"participants\"")
                && l.contains("Alice")
                && l.contains("Bob")
                && l.contains("\"self\":true")
        })
        .await;
    let v: serde_json::Value = serde_json::from_str(&roster).unwrap();
    let me = v["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["self"] == true)
        .unwrap();
    assert_eq!(
        me["grant"]["act"],
        serde_json::json!([]),
        "agents start read-only"
    );

    // Typed lines are chat; the mesh may need a moment, so retry until someone heard it.
    let deadline = Instant::now() + WAIT;
    loop {
        alice.line("hello everyone").await;
        let heard = timeout(
            Duration::from_secs(2),
            bob.expect(WAIT, |l| l == "<Alice> hello everyone"),
        )
        .await;
        if heard.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "Bob never heard Alice");
    }
    bot.expect(WAIT, |l| {
        l.contains("\"kind\":\"chat\"") && l.contains("hello everyone")
    })
    .await;
    // The agent may not speak until a host grants it.
    bot.line(r#"{"op":"chat","text":"beep"}"#).await;
    bot.expect(WAIT, |l| {
        l.contains("\"event\":\"error\"") && l.contains("not permitted")
    })
    .await;
    bot.line("not json").await;
    bot.expect(WAIT, |l| l.contains("not a JSON object")).await;
    // A direct message reaches only its addressee.
    bob.line("/dm alice psst").await;
    alice.expect(WAIT, |l| l == "<Bob → you> psst").await;
    bob.line("/lock").await;
    bob.expect(WAIT, |l| l == "* the room has no host").await;

    // Kill the coordinator outright: a survivor takes over within the protocol's timings
    // (12 s of silence, 1.5 s before claiming).
    let t = Instant::now();
    alice.child.kill().await.unwrap();
    let (b, a) = tokio::join!(
        bob.expect(Duration::from_secs(30), |l| l.starts_with("* in the room:")
            && !l.contains("Alice")),
        bot.expect(Duration::from_secs(30), |l| l.contains("\"participants\"")
            && !l.contains("Alice")),
    );
    let took = t.elapsed();
    eprintln!("room moved on {took:?} after the coordinator was killed: {b} / {a}");
    assert!(took < Duration::from_secs(25), "{took:?}");
    bob.line("/quit").await;
    let status = timeout(WAIT, bob.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    drop(bot.stdin);
    let status = timeout(WAIT, bot.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_the_password_kicks_from_the_terminal() {
    let broker = start(Config::default()).await;
    let signal = format!("ws://127.0.0.1:{}", broker.addr.port());
    let dir = std::env::temp_dir().join(format!("kibitz-cli-join-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("password");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let out = std::process::Command::new(kibitz_bin())
        .args(["link", "new", "--room", "hosted", "--host-password-file"])
        .arg(&pw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut alice = Proc::spawn(
        "alice",
        &["join", &link, "--name", "Alice", "--signal-host", &signal],
    );
    alice.expect(WAIT, |l| l.starts_with("* connected")).await;
    let pw_arg = pw.to_string_lossy().into_owned();
    let mut hana = Proc::spawn(
        "hana",
        &[
            "join",
            &link,
            "--name",
            "Hana",
            "--signal-host",
            &signal,
            "--host-password-file",
            &pw_arg,
        ],
    );
    let mut bob = Proc::spawn(
        "bob",
        &["join", &link, "--name", "Bob", "--signal-host", &signal],
    );
    alice
        .expect(WAIT, |l| l.contains("Hana (host)") && l.contains("Bob"))
        .await;
    // Hana names Bob from her own roster.
    hana.expect(WAIT, |l| {
        l.starts_with("* in the room:") && l.contains("Bob")
    })
    .await;
    hana.line("/kick bob").await;
    bob.expect(WAIT, |l| l == "* left the room (kicked)").await;
    let status = timeout(WAIT, bob.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    alice
        .expect(WAIT, |l| {
            l.starts_with("* in the room:") && !l.contains("Bob")
        })
        .await;
    // A wrong password is refused before joining.
    std::fs::write(&pw, "wrong").unwrap();
    let out = std::process::Command::new(kibitz_bin())
        .args([
            "join",
            &link,
            "--signal-host",
            &signal,
            "--host-password-file",
            &pw_arg,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("host password"));
    drop(hana);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest `secs` of a recording being written (its header is kept valid while it grows),
/// once it exists.
fn recording_tail(dir: &std::path::Path, prefix: &str, secs: f32) -> Option<Vec<i16>> {
    let path = std::fs::read_dir(dir).ok()?.find_map(|e| {
        let p = e.ok()?.path();
        let name = p.file_name()?.to_str()?.to_owned();
        (name.starts_with(prefix) && name.ends_with("-mic.wav")).then_some(p)
    })?;
    let mut r = hound::WavReader::open(path).ok()?;
    let samples: Vec<i16> = r.samples::<i16>().filter_map(Result::ok).collect();
    let n = (48_000.0 * secs) as usize;
    (samples.len() >= n).then(|| samples[samples.len() - n..].to_vec())
}

/// Polls `dir` until `prefix`'s mic recording ends on `hz`.
async fn recording_ends_on(dir: &std::path::Path, prefix: &str, hz: f32) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(tail) = recording_tail(dir, prefix, 0.5) {
            let f = kibitz_media::dominant_frequency(&tail);
            if (f - hz).abs() < 10.0 && kibitz_media::rms(&tail) > 0.02 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}'s recording never ended on {hz} Hz"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_hear_and_see_each_other_from_the_command_line() {
    let broker = start(Config::default()).await;
    let signal = format!("ws://127.0.0.1:{}", broker.addr.port());
    let room = "cli-media";
    let dir = std::env::temp_dir().join(format!("kibitz-cli-media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let record = dir.to_str().unwrap();
    let mut alice = Proc::spawn(
        "alice",
        &[
            "join",
            room,
            "--name",
            "Alice",
            "--signal-host",
            &signal,
            "--audio-in",
            "tone:660",
            "--video-in",
            "pattern",
        ],
    );
    alice
        .expect(WAIT, |l| l == "* connected (you coordinate the room)")
        .await;
    let mut bob = Proc::spawn(
        "bob",
        &[
            "join",
            room,
            "--name",
            "Bob",
            "--signal-host",
            &signal,
            "--record",
            record,
        ],
    );
    let mut bot = Proc::spawn(
        "bot",
        &["agent", room, "--name", "Bot", "--signal-host", &signal],
    );
    bob.expect(WAIT, |l| l == "* audio and video with Alice")
        .await;
    bob.expect(WAIT, |l| l == "* Alice's camera is 320x240")
        .await;
    // Bob hears Alice's tone, and records it under her name.
    recording_ends_on(&dir, "Alice-", 660.0).await;
    // The agent sees Alice's lanes open (what it may perceive is another matter: its grant).
    bot.expect(WAIT, |l| {
        l.contains(r#""event":"track""#) && l.contains(r#""lane":"mic""#)
    })
    .await;
    // An agent speaks into the call on request; humans hear it.
    bot.line(r#"{"op":"play","file":"tone:500"}"#).await;
    recording_ends_on(&dir, "Bot-", 500.0).await;
    bot.line(r#"{"op":"play","file":"/no/such.wav"}"#).await;
    bot.expect(WAIT, |l| l.contains("cannot play")).await;
    // Muted: silence flows, the recording goes quiet.
    alice.line("/mute").await;
    alice.expect(WAIT, |l| l == "* muted (silence flows)").await;
    let deadline = Instant::now() + WAIT;
    while recording_tail(&dir, "Alice-", 0.5).is_none_or(|t| kibitz_media::peak(&t) > 0) {
        assert!(
            Instant::now() < deadline,
            "Alice's recording never went quiet"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in [&mut alice, &mut bob] {
        p.line("/quit").await;
        let status = timeout(WAIT, p.child.wait()).await.unwrap().unwrap();
        assert!(status.success());
    }
    drop(bot.stdin);
    let status = timeout(WAIT, bot.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
