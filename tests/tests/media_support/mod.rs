//! Drives `node/media-room.mjs`: one headless Chromium whose pages are Kibitz web-client room
//! members with media (MEDIA.md §1–5, either build), step by step over NDJSON. Shared by the
//! media tests: `mod media_support;` and [`MediaPages::start`].
//!
//! Each page exposes the controller `M` (see `node/media-page.js`): `join({host, port, room,
//! name, mode: "legacy"|"owned", meta, cryptoHost})`, `toggleMic`, `toggleCam`, `shareTrack`,
//! `stopShare`, `setCapabilityGrant(voiceId, grant|null)`, `chat(text, to?)`,
//! `receivedChats`, `stats`, `log`, `leave`.
#![allow(dead_code)] // each test binary uses its own part of the helper

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{Instant, sleep, timeout};

/// How long one request may take before the helper gives up on the script.
const REQUEST_WAIT: Duration = Duration::from_secs(90);
/// How often [`MediaPages::wait_stats`] polls.
const POLL: Duration = Duration::from_millis(250);

/// A running `media-room.mjs`; dropping it closes its stdin, which closes Chromium.
pub struct MediaPages {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    wav: PathBuf,
}

impl Drop for MediaPages {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.wav);
    }
}

/// A mono 16-bit PCM WAV of a `hz` sine at `rate`, `secs` long (Chromium loops it as the mic).
pub fn tone_wav(hz: f64, rate: u32, secs: u32) -> Vec<u8> {
    let n = rate * secs;
    let data_len = n * 2;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        let t = f64::from(i) / f64::from(rate);
        // Half scale: loud enough to dominate any noise, far from clipping.
        let s = (0.5 * f64::from(i16::MAX) * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16;
        w.extend_from_slice(&s.to_le_bytes());
    }
    w
}

impl MediaPages {
    /// Launches the script against the broker on 127.0.0.1:`port`, with a 440 Hz, 48 kHz mono
    /// tone as every page's microphone, and waits until Chromium is up.
    pub async fn start(port: u16) -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let wav = std::env::temp_dir().join(format!(
            "kibitz-tone440-{}-{}.wav",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&wav, tone_wav(440.0, 48_000, 4)).map_err(|e| format!("wav: {e}"))?;
        let script = format!("{}/node/media-room.mjs", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--wav"])
            .arg(&wav)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("node must be installed (scripts/test installs it): {e}"))?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut me = Self {
            child,
            stdin,
            lines,
            next_id: 0,
            wav,
        };
        let first = me.line().await?;
        if first.get("ready") != Some(&Value::Bool(true)) {
            return Err(format!("media-room.mjs did not start: {first}"));
        }
        Ok(me)
    }

    async fn line(&mut self) -> Result<Value, String> {
        let line = timeout(REQUEST_WAIT, self.lines.next_line())
            .await
            .map_err(|_| "media-room.mjs said nothing for 90 s".to_string())?
            .map_err(|e| format!("reading media-room.mjs: {e}"))?
            .ok_or("media-room.mjs exited")?;
        serde_json::from_str(&line)
            .map_err(|e| format!("bad line from media-room.mjs ({e}): {line}"))
    }

    /// Sends one request (`id` added) and waits for its answer: the value, or the error text.
    pub async fn request(&mut self, mut req: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(format!("{req}\n").as_bytes())
            .await
            .map_err(|e| format!("writing to media-room.mjs: {e}"))?;
        loop {
            let v = self.line().await?;
            if let Some(fatal) = v.get("fatal") {
                return Err(format!("media-room.mjs crashed: {fatal}"));
            }
            if v.get("id") != Some(&json!(id)) {
                continue; // an answer to a request we stopped waiting for
            }
            return if v.get("ok") == Some(&Value::Bool(true)) {
                Ok(v.get("value").cloned().unwrap_or(Value::Null))
            } else {
                Err(v
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned())
            };
        }
    }

    /// Opens a page called `page` (a fresh browser context, as a separate tab would be).
    pub async fn open(&mut self, page: &str) -> Result<(), String> {
        self.request(json!({"op": "open", "page": page}))
            .await
            .map(drop)
    }

    /// Leaves the room in `page` and closes it.
    pub async fn close(&mut self, page: &str) -> Result<(), String> {
        self.request(json!({"op": "close", "page": page}))
            .await
            .map(drop)
    }

    /// `M.<method>(...args)` in `page`, awaited; `args` is a JSON array.
    pub async fn call(&mut self, page: &str, method: &str, args: Value) -> Result<Value, String> {
        self.request(json!({"page": page, "call": method, "args": args}))
            .await
            .map_err(|e| format!("{page}.{method}: {e}"))
    }

    /// Joins `page` to `room` in `mode` ("legacy" or "owned") as `name` = the page's name, with
    /// `meta` in its voice announce; returns its voiceId.
    pub async fn join(
        &mut self,
        page: &str,
        room: &str,
        mode: &str,
        meta: Value,
    ) -> Result<String, String> {
        self.join_with(
            page,
            json!({"room": room, "name": page, "mode": mode, "meta": meta}),
        )
        .await
    }

    /// `M.join(opts)` with every option spelt out (`host`/`port` default to the broker the
    /// script was started with; `cryptoHost`, `iceServers`, `name`, `meta`, `mode`, `room`);
    /// returns the page's voiceId.
    pub async fn join_with(&mut self, page: &str, opts: Value) -> Result<String, String> {
        let v = self.call(page, "join", json!([opts])).await?;
        v["voiceId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("join answered {v}"))
    }

    /// Polls `M.<method>(...args)` in `page` until `pred` holds for its value (returned) or
    /// `wait` passes (an error with the last value and the page's log).
    pub async fn wait_call(
        &mut self,
        page: &str,
        method: &str,
        args: Value,
        wait: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + wait;
        loop {
            let v = self.call(page, method, args.clone()).await?;
            if pred(&v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                let log = self.console(page).await;
                return Err(format!(
                    "{page}.{method}: condition not met within {wait:?}; last {v}\n{page} log: {log}"
                ));
            }
            sleep(POLL).await;
        }
    }

    /// `M.stats()` of `page`.
    pub async fn stats(&mut self, page: &str) -> Result<Value, String> {
        self.call(page, "stats", json!([])).await
    }

    /// What `page` logged: console errors and its own event log (for failure messages).
    pub async fn console(&mut self, page: &str) -> Value {
        self.request(json!({"op": "console", "page": page}))
            .await
            .unwrap_or_else(|e| json!(e))
    }

    /// Polls `M.stats()` of `page` until `pred` holds (returns those stats) or `wait` passes
    /// (returns the last stats in the error, with the page's log).
    pub async fn wait_stats(
        &mut self,
        page: &str,
        wait: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, String> {
        self.wait_call(page, "stats", json!([]), wait, pred).await
    }

    /// Closes stdin and waits for the script to close Chromium and exit.
    pub async fn shutdown(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let status = timeout(Duration::from_secs(30), self.child.wait())
            .await
            .map_err(|_| "media-room.mjs did not exit after stdin closed".to_string())?
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("media-room.mjs exited with {status}"))
        }
    }
}

/// The stats of `page`'s view of peer `id` (`Value::Null` if it has none).
pub fn peer<'a>(stats: &'a Value, id: &str) -> &'a Value {
    &stats["peers"][id]
}

/// `totalAudioEnergy` of `lane` ("mic", "shareAudio") received from `id`.
pub fn energy(stats: &Value, id: &str, lane: &str) -> f64 {
    peer(stats, id)["audio"][lane]["totalAudioEnergy"]
        .as_f64()
        .unwrap_or(0.0)
}

/// `packetsReceived` of audio `lane` from `id`.
pub fn audio_packets(stats: &Value, id: &str, lane: &str) -> u64 {
    peer(stats, id)["audio"][lane]["packetsReceived"]
        .as_u64()
        .unwrap_or(0)
}

/// (framesDecoded, frameWidth, frameHeight) of video `lane` ("cam", "share") from `id`.
pub fn video(stats: &Value, id: &str, lane: &str) -> (u64, u64, u64) {
    let v = &peer(stats, id)["video"][lane];
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    (n("framesDecoded"), n("frameWidth"), n("frameHeight"))
}

/// A counter of control frames `dir` ("sent"/"recv") of type `t` for peer `id`.
pub fn counter(stats: &Value, id: &str, dir: &str, t: &str) -> u64 {
    peer(stats, id)[dir][t].as_u64().unwrap_or(0)
}

/// A Rust participant with media (kibitz-join), and what it hears and sees; the media test
/// files add their own checks in `impl` blocks of their own.
pub struct RustMember {
    pub handle: kibitz_join::RoomHandle,
    pub events: tokio::sync::mpsc::UnboundedReceiver<kibitz_client::Event>,
    pub pcm: tokio::sync::mpsc::Receiver<kibitz_join::media::PcmFrame>,
    pub voice_id: String,
    /// Its recordings: a fresh directory.
    pub record: PathBuf,
}

/// How long a Rust member may take to be in the room, or a collection to fill.
const MEMBER_WAIT: Duration = Duration::from_secs(20);

impl RustMember {
    /// Starts `cfg` with `media` on the broker at `port` (its `record` and `pcm` are set here:
    /// a fresh directory named by `tag`, a 4096-frame channel) and waits until it is in the
    /// room with a voiceId.
    pub async fn launch(
        port: u16,
        cfg: kibitz_client::RoomConfig,
        mut media: kibitz_join::media::MediaConfig,
        relay: Option<kibitz_rtc::RelayConfig>,
        media_relay: Option<kibitz_rtc::RelayConfig>,
        tag: &str,
    ) -> Self {
        use kibitz_client::{Event, Status};
        let record = std::env::temp_dir().join(format!("kibitz-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&record);
        std::fs::create_dir_all(&record).unwrap();
        let (tx, pcm) = tokio::sync::mpsc::channel(4096);
        media.record = Some(record.clone());
        media.pcm = Some(tx);
        let options = kibitz_join::RoomOptions {
            broker: kibitz_rtc::BrokerConfig::plain("127.0.0.1", port),
            relay,
            media_relay,
            identity: kibitz_rtc::Identity::generate().unwrap(),
        };
        let (handle, mut events) = kibitz_join::start_with_media(cfg, options, media);
        handle.join();
        timeout(MEMBER_WAIT, async {
            while let Some(e) = events.recv().await {
                if matches!(e, Event::Status(Status::Authority | Status::Connected)) {
                    return;
                }
            }
            panic!("{tag} stopped");
        })
        .await
        .expect("the Rust member is in the room");
        // The voiceId is the media peer's, registered a moment after the room is joined.
        let voice_id = timeout(MEMBER_WAIT, async {
            loop {
                if let Some(v) = handle.voice_id().await.unwrap() {
                    return v;
                }
                let _ = events.recv().await;
            }
        })
        .await
        .expect("a voiceId");
        Self {
            handle,
            events,
            pcm,
            voice_id,
            record,
        }
    }

    /// The mic PCM `from` sends, collected until `samples` arrived (older frames dropped).
    pub async fn mic_pcm(&mut self, from: &str, samples: usize) -> Vec<i16> {
        while self.pcm.try_recv().is_ok() {}
        let mut got = Vec::new();
        timeout(MEMBER_WAIT, async {
            while got.len() < samples {
                let f = self.pcm.recv().await.expect("pcm channel open");
                if f.from == from && f.lane == kibitz_client::MediaLane::Mic {
                    got.extend(f.samples);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} samples of {from}'s mic arrived", got.len()));
        got
    }
}
