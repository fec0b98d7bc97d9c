//! The participant's media pipeline, sans-IO: what goes out on every media connection every
//! 20 ms (Opus from the audio source, or real silence where muted or withheld; VP8 from the
//! test pattern, or the 2×2 placeholder), and what comes in (jitter buffer, Opus decode,
//! speaking detection, recording). The driver owns the timer and the sockets; it calls
//! [`MediaPlane::tick`] every 20 ms and carries out the writes it returns.
//!
//! Gating (MEDIA.md §4): the engine says, per peer, which lanes may carry the real source;
//! a withheld lane gets the flowing placeholder from its first packet (silent Opus, 2×2 VP8),
//! never one frame of the real source. As receiver, a lane our own grant lacks is neither
//! decoded nor recorded nor forwarded (defence in depth: an honest sender already withholds
//! it); the recording gets zeros for it so its timeline stays whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use kibitz_client::MediaLane as Lane;
use kibitz_client::{ConnId, Event, LaneGates};
use kibitz_media::{
    AudioSource, FRAME_SAMPLES, IvfWriter, JitterBuffer, OpusDecoder, OpusEncoder, Playout,
    SpeakingDetector, WavRecorder, silence_payload, vp8,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long received audio waits for late packets before it plays: enough for a loaded
/// machine's scheduling jitter, little enough for mouth-to-ear under 80 ms (60 ms gave a p95 of
/// 117 ms in a 10-person room; bench/media.sh). Later packets play in the next slot, and a
/// backlog is skipped, so a slow network costs concealment, not growing delay.
const JITTER_TARGET: Duration = Duration::from_millis(30);
/// Packets one stream may hold (2 s).
const JITTER_PACKETS: usize = 100;
/// Audio frames made up at once after the driver was late (a stall is not replayed whole).
const MAX_CATCH_UP: u32 = 5;
/// Consecutive silence payloads decoded (to exact zeros) before further ones skip libopus:
/// 80 ms, more than the CELT decoder's 42 ms of history, so its state no longer changes.
const QUIET_AFTER: u32 = 4;
/// Lanes without a picture get a placeholder frame this often (ms): enough for the remote
/// decoder to know the lane's size, little enough to be nothing on the wire.
const PLACEHOLDER_EVERY_MS: u64 = 1000;

/// Decoded audio from one participant's lane, for library users
/// ([`crate::RoomHandle::audio_frames`]).
#[derive(Debug, Clone)]
pub struct PcmFrame {
    /// The sender's voiceId.
    pub from: String,
    /// Which lane.
    pub lane: Lane,
    /// 48 kHz mono samples (usually 960: 20 ms).
    pub samples: Vec<i16>,
}

/// One frame for a connection's lane.
#[derive(Debug)]
pub struct Write {
    /// The engine's connection.
    pub conn: ConnId,
    /// The lane.
    pub lane: Lane,
    /// RTP time (48 kHz audio, 90 kHz video).
    pub rtp_time: u64,
    /// The encoded frame.
    pub data: Vec<u8>,
}

/// The local sources.
#[derive(Debug)]
pub struct MediaConfig {
    /// What the microphone plays.
    pub audio_in: AudioSource,
    /// Start muted (a browser joins muted: real silence flows until unmute).
    pub muted: bool,
    /// Record every remote lane here (WAV per audio lane, a frame log and IVF per video lane).
    pub record: Option<PathBuf>,
    /// Decoded audio goes here too, when given (bounded: frames are dropped when full).
    pub pcm: Option<mpsc::Sender<PcmFrame>>,
    /// A camera: a synthetic VP8 test pattern of this size (announced `cam:true`).
    pub video: Option<(u16, u16)>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            audio_in: AudioSource::silence(),
            muted: true,
            record: None,
            pcm: None,
            video: None,
        }
    }
}

struct AudioRx {
    jitter: JitterBuffer,
    decoder: Option<OpusDecoder>,
    /// Silence payloads just decoded to exact zeros, in a row.
    quiet: u32,
    wav: Option<WavRecorder>,
    speaking: SpeakingDetector,
}

struct VideoRx {
    size: Option<(u16, u16)>,
    log: Option<std::io::BufWriter<std::fs::File>>,
    ivf: Option<IvfWriter>,
    frames: u64,
}

#[derive(Default)]
struct Conn {
    remote: String,
    lanes: Vec<Lane>,
    /// When the placeholder keyframe last went out on each video lane.
    last_placeholder: BTreeMap<Lane, u64>,
}

/// A remote participant's lane, received. Kept across its connections (a rebuilt connection
/// goes on in the same recording).
type RxKey = (String, Lane);

/// The pipeline of one participant.
pub struct MediaPlane {
    cfg: MediaConfig,
    encoder: Option<OpusEncoder>,
    silence: Vec<u8>,
    placeholder: Option<Vec<u8>>,
    /// The real camera picture (keyframe flag), when a video source runs.
    camera: Option<(Vec<u8>, bool)>,
    camera_on: bool,
    conns: BTreeMap<ConnId, Conn>,
    names: BTreeMap<String, String>,
    audio: BTreeMap<RxKey, AudioRx>,
    video: BTreeMap<RxKey, VideoRx>,
    send_gates: BTreeMap<String, LaneGates>,
    receive_gates: LaneGates,
    start: Option<Instant>,
    frames_sent: u64,
    events: Vec<Event>,
    pcm_dropped: u64,
}

impl std::fmt::Debug for MediaPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaPlane")
            .field("conns", &self.conns.len())
            .field("muted", &self.cfg.muted)
            .finish_non_exhaustive()
    }
}

/// Every lane withheld (what an unknown peer gets).
fn closed_gates() -> LaneGates {
    LaneGates {
        mic: false,
        camera: true,
        share: false,
        share_audio: false,
    }
}

fn file_stem(name: &str, voice_id: &str, lane: Lane) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let vid: String = voice_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    format!(
        "{}-{}-{}",
        if clean.is_empty() { "anon" } else { &clean },
        vid,
        lane.as_str()
    )
}

impl MediaPlane {
    /// A pipeline with these sources. The Opus encoder is libopus; if it cannot start, the mic
    /// lane carries silence (logged once).
    pub fn new(cfg: MediaConfig) -> Self {
        let encoder = match OpusEncoder::new() {
            Ok(e) => Some(e),
            Err(e) => {
                warn!(error = %e, "no Opus encoder: the mic lane will carry silence");
                None
            }
        };
        let placeholder = kibitz_media::Vp8Source::placeholder()
            .and_then(|mut s| s.next_frame(0))
            .ok()
            .and_then(|f| f.into_iter().find(|(_, key)| *key).map(|(d, _)| d));
        Self {
            cfg,
            encoder,
            silence: silence_payload(),
            placeholder,
            camera: None,
            camera_on: false,
            conns: BTreeMap::new(),
            names: BTreeMap::new(),
            audio: BTreeMap::new(),
            video: BTreeMap::new(),
            send_gates: BTreeMap::new(),
            receive_gates: LaneGates {
                mic: true,
                camera: true,
                share: true,
                share_audio: true,
            },
            start: None,
            frames_sent: 0,
            events: Vec::new(),
            pcm_dropped: 0,
        }
    }

    /// Mute or unmute: muted, the mic lane carries real silence (it keeps flowing).
    pub fn set_muted(&mut self, muted: bool) {
        self.cfg.muted = muted;
    }

    /// Whether muted.
    pub fn muted(&self) -> bool {
        self.cfg.muted
    }

    /// Plays this source from now on (e.g. `/play FILE.wav`).
    pub fn set_source(&mut self, src: AudioSource) {
        self.cfg.audio_in = src;
    }

    /// Marks this moment in the outgoing audio (a full-scale click; the latency benchmark).
    pub fn inject_click(&mut self) {
        self.cfg.audio_in.inject_click();
    }

    /// Whether the camera lane carries a real picture.
    pub fn set_camera(&mut self, on: bool) {
        self.camera_on = on;
    }

    /// The newest frame of the video source (the driver's video thread calls this).
    pub fn push_camera_frame(&mut self, data: Vec<u8>, keyframe: bool) {
        self.camera = Some((data, keyframe));
    }

    /// Decoded frames a full PCM channel refused.
    pub fn pcm_dropped(&self) -> u64 {
        self.pcm_dropped
    }

    /// What the engine decided: per peer, the lanes its real sources may reach; and the
    /// lanes our own grant lets us perceive.
    pub fn set_gates(&mut self, send: BTreeMap<String, LaneGates>, receive: LaneGates) {
        self.send_gates = send;
        self.receive_gates = receive;
    }

    /// A media connection to `remote` opened with these lanes.
    pub fn open(&mut self, conn: ConnId, remote: &str, name: &str, lanes: Vec<Lane>) {
        self.conns.insert(
            conn,
            Conn {
                remote: remote.to_owned(),
                lanes,
                ..Conn::default()
            },
        );
        self.names.insert(remote.to_owned(), name.to_owned());
    }

    /// A media connection ended (its participant's recordings go on if it comes back).
    pub fn close(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// A participant left: its recordings are finished.
    pub fn forget(&mut self, remote: &str) {
        self.names.remove(remote);
        let gone: Vec<RxKey> = self
            .audio
            .keys()
            .filter(|k| k.0 == remote)
            .cloned()
            .collect();
        for k in gone {
            if let Some(rx) = self.audio.remove(&k)
                && let Some(w) = rx.wav
                && let Err(e) = w.finish()
            {
                warn!(error = %e, "recording not finished");
            }
        }
        let gone: Vec<RxKey> = self
            .video
            .keys()
            .filter(|k| k.0 == remote)
            .cloned()
            .collect();
        for k in gone {
            if let Some(rx) = self.video.remove(&k)
                && let Some(w) = rx.ivf
                && let Err(e) = w.finish()
            {
                warn!(error = %e, "video recording not finished");
            }
        }
    }

    /// Finishes every recording (the participant is leaving).
    pub fn finish(&mut self) {
        let remotes: Vec<String> = self
            .audio
            .keys()
            .chain(self.video.keys())
            .map(|k| k.0.clone())
            .collect();
        for r in remotes {
            self.forget(&r);
        }
    }

    /// Open connections.
    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Every 20 ms: the frames due on every connection, and received audio played out.
    pub fn tick(&mut self, now: Instant) -> Vec<Write> {
        let start = *self.start.get_or_insert(now);
        let elapsed_ms = now.saturating_duration_since(start).as_millis() as u64;
        let due = (elapsed_ms / 20 + 1).saturating_sub(self.frames_sent);
        let mut out = Vec::new();
        if due > u64::from(MAX_CATCH_UP) {
            // A stall: skip ahead rather than burst (the remote jitter buffer resyncs).
            self.frames_sent = elapsed_ms / 20 + 1 - u64::from(MAX_CATCH_UP);
        }
        while self.frames_sent <= elapsed_ms / 20 {
            let rtp = self.frames_sent * FRAME_SAMPLES as u64;
            self.frames_sent += 1;
            let pcm = self.cfg.audio_in.next_frame();
            let real = if self.cfg.muted {
                None
            } else {
                self.encoder.as_mut().and_then(|e| match e.encode(&pcm) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        debug!(error = %e, "encode failed");
                        None
                    }
                })
            };
            for (id, c) in &self.conns {
                let gates = self
                    .send_gates
                    .get(&c.remote)
                    .copied()
                    .unwrap_or_else(closed_gates);
                for lane in &c.lanes {
                    let data = match lane {
                        Lane::Mic => match (&real, gates.mic) {
                            (Some(p), true) => p.clone(),
                            _ => self.silence.clone(),
                        },
                        // We never share a tab's sound: it flows silent.
                        Lane::ShareAudio => self.silence.clone(),
                        _ => continue,
                    };
                    out.push(Write {
                        conn: *id,
                        lane: *lane,
                        rtp_time: rtp,
                        data,
                    });
                }
            }
        }
        self.video(elapsed_ms, &mut out);
        self.play_out(now, elapsed_ms);
        out
    }

    fn video(&mut self, elapsed_ms: u64, out: &mut Vec<Write>) {
        let rtp = elapsed_ms * 90;
        let camera = if self.camera_on {
            self.camera.take()
        } else {
            None
        };
        for (id, c) in &mut self.conns {
            let gates = self
                .send_gates
                .get(&c.remote)
                .copied()
                .unwrap_or_else(closed_gates);
            for lane in c.lanes.iter().copied().filter(|l| !l.is_audio()) {
                let real = match (lane, &camera) {
                    (Lane::Camera, Some(f)) if gates.allows(lane) => Some(f.0.clone()),
                    _ => None,
                };
                let data = match real {
                    Some(d) => d,
                    None => {
                        // The camera lane keeps its placeholder only while no picture flows.
                        if lane == Lane::Camera && self.camera_on && gates.allows(lane) {
                            continue;
                        }
                        let last = c.last_placeholder.get(&lane).copied();
                        if last.is_some_and(|t| elapsed_ms < t + PLACEHOLDER_EVERY_MS) {
                            continue;
                        }
                        c.last_placeholder.insert(lane, elapsed_ms);
                        match &self.placeholder {
                            Some(p) => p.clone(),
                            None => continue,
                        }
                    }
                };
                out.push(Write {
                    conn: *id,
                    lane,
                    rtp_time: rtp,
                    data,
                });
            }
        }
    }

    /// A frame arrived on a connection's lane.
    pub fn receive(
        &mut self,
        now: Instant,
        conn: ConnId,
        lane: Lane,
        rtp_time: u64,
        data: Vec<u8>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // A video lane our own grant lacks (the share without `see-screen`) is neither shown
        // nor recorded, whatever the sender does (MEDIA.md §6c; audio decodes to zeros below).
        if !lane.is_audio() && !self.receive_gates.allows(lane) {
            return;
        }
        if !c.lanes.contains(&lane) {
            c.lanes.push(lane);
        }
        let key = (c.remote.clone(), lane);
        let name = self.names.get(&key.0).cloned().unwrap_or_default();
        let stem = file_stem(&name, &key.0, lane);
        let record = self.cfg.record.as_deref();
        let first = if lane.is_audio() {
            !self.audio.contains_key(&key)
        } else {
            !self.video.contains_key(&key)
        };
        if first {
            self.events.push(Event::Track {
                voice_id: key.0.clone(),
                lane,
            });
        }
        if lane.is_audio() {
            let rx = self.audio.entry(key).or_insert_with(|| AudioRx {
                jitter: JitterBuffer::new(JITTER_TARGET, JITTER_PACKETS),
                decoder: OpusDecoder::new().ok(),
                quiet: 0,
                wav: record.and_then(|dir| open_wav(dir, &stem)),
                speaking: SpeakingDetector::new(),
            });
            rx.jitter.push(now, rtp_time, data);
            return;
        }
        let from = key.0.clone();
        let rx = self.video.entry(key).or_insert_with(|| VideoRx {
            size: None,
            log: record.and_then(|dir| {
                std::fs::File::create(dir.join(format!("{stem}.log")))
                    .ok()
                    .map(std::io::BufWriter::new)
            }),
            ivf: None,
            frames: 0,
        });
        rx.frames += 1;
        let info = vp8::frame_info(&data);
        if let Some(i) = info.filter(|i| i.keyframe)
            && rx.size != Some((i.width, i.height))
        {
            rx.size = Some((i.width, i.height));
            self.events.push(Event::VideoSize {
                voice_id: from,
                lane,
                width: i.width,
                height: i.height,
            });
            // One IVF per size run: the first keyframe fixes the header.
            if let Some(dir) = record {
                let p = dir.join(format!("{stem}-{}x{}.ivf", i.width, i.height));
                rx.ivf = IvfWriter::create(p, i.width, i.height).ok();
            }
        }
        if let Some(log) = rx.log.as_mut() {
            use std::io::Write as _;
            let (w, h) = rx.size.unwrap_or((0, 0));
            let kind = if info.is_some_and(|i| i.keyframe) {
                "key"
            } else {
                "delta"
            };
            let _ = writeln!(
                log,
                "{} {rtp_time} {kind} {w}x{h} {}",
                rx.frames,
                data.len()
            );
            let _ = log.flush();
        }
        if let Some(ivf) = rx.ivf.as_mut() {
            let _ = ivf.write_frame(rtp_time / 90, &data);
        }
    }

    fn play_out(&mut self, now: Instant, elapsed_ms: u64) {
        let gates = self.receive_gates;
        {
            for ((from, lane), rx) in &mut self.audio {
                for p in rx.jitter.pop(now) {
                    let pcm = if gates.allows(*lane) {
                        let Some(dec) = rx.decoder.as_mut() else {
                            continue;
                        };
                        let silence = matches!(&p, Playout::Packet(d) if *d == self.silence);
                        let r = match &p {
                            // A muted or withheld lane (and every Rust sender's share audio):
                            // once the decoder is quiet, the next silence decodes to exact
                            // zeros and leaves its state as is, so libopus is skipped.
                            Playout::Packet(_) if silence && rx.quiet >= QUIET_AFTER => {
                                Ok(vec![0; FRAME_SAMPLES])
                            }
                            Playout::Packet(d) => dec.decode(Some(d)),
                            Playout::Lost => dec.decode(None),
                        };
                        rx.quiet = match &r {
                            Ok(pcm) if silence && pcm.iter().all(|s| *s == 0) => {
                                rx.quiet.saturating_add(1)
                            }
                            _ => 0,
                        };
                        match r {
                            Ok(pcm) => pcm,
                            Err(e) => {
                                debug!(error = %e, "undecodable audio frame");
                                continue;
                            }
                        }
                    } else {
                        // Our grant lacks this lane: never decoded, recorded as silence.
                        vec![0; FRAME_SAMPLES]
                    };
                    if let Some(w) = rx.wav.as_mut()
                        && let Err(e) = w.write(&pcm)
                    {
                        warn!(error = %e, "recording stopped");
                        rx.wav = None;
                    }
                    if !gates.allows(*lane) {
                        continue;
                    }
                    if let Some(s) = rx.speaking.push(elapsed_ms, &pcm) {
                        self.events.push(Event::Speaking {
                            voice_id: from.clone(),
                            speaking: s.speaking,
                            level: s.level,
                        });
                    }
                    if let Some(tx) = &self.cfg.pcm {
                        let f = PcmFrame {
                            from: from.clone(),
                            lane: *lane,
                            samples: pcm,
                        };
                        if tx.try_send(f).is_err() {
                            self.pcm_dropped += 1;
                        }
                    }
                }
            }
        }
    }
}

fn open_wav(dir: &Path, stem: &str) -> Option<WavRecorder> {
    match WavRecorder::create(dir.join(format!("{stem}.wav"))) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot record");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // an anchor for virtual time
mod tests {
    use super::*;

    fn gates(mic: bool) -> LaneGates {
        LaneGates {
            mic,
            camera: true,
            share: mic,
            share_audio: mic,
        }
    }

    /// Runs `a` → `b` for `ms` of virtual time; returns b's decoded mic PCM.
    fn run(a: &mut MediaPlane, b: &mut MediaPlane, t0: Instant, from_ms: u64, ms: u64) {
        for step in (from_ms..from_ms + ms).step_by(20) {
            let now = t0 + Duration::from_millis(step);
            for w in a.tick(now) {
                b.receive(now, ConnId(1), w.lane, w.rtp_time, w.data);
            }
            b.tick(now);
        }
    }

    fn pair(src: AudioSource, muted: bool) -> (MediaPlane, MediaPlane, mpsc::Receiver<PcmFrame>) {
        let mut a = MediaPlane::new(MediaConfig {
            audio_in: src,
            muted,
            ..MediaConfig::default()
        });
        let (tx, rx) = mpsc::channel(10_000);
        let mut b = MediaPlane::new(MediaConfig {
            pcm: Some(tx),
            ..MediaConfig::default()
        });
        let lanes = vec![Lane::Mic, Lane::Camera, Lane::Share, Lane::ShareAudio];
        a.open(ConnId(1), "bob", "Bob", lanes.clone());
        b.open(ConnId(1), "alice", "Alice", lanes);
        (a, b, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<PcmFrame>) -> Vec<i16> {
        let mut pcm = Vec::new();
        while let Ok(f) = rx.try_recv() {
            if f.lane == Lane::Mic {
                pcm.extend(f.samples);
            }
        }
        pcm
    }

    #[test]
    fn a_tone_arrives_only_where_the_gate_allows_and_unmuted() {
        let t0 = Instant::now();
        let (mut a, mut b, mut rx) = pair(AudioSource::tone(440.0), true);
        let mut open = BTreeMap::new();
        open.insert("bob".to_owned(), gates(true));
        a.set_gates(open.clone(), gates(true));
        // Muted: real silence flows, decoded to exact zeros.
        run(&mut a, &mut b, t0, 0, 1000);
        let pcm = drain(&mut rx);
        assert!(pcm.len() >= 40 * FRAME_SAMPLES, "{} samples", pcm.len());
        assert_eq!(kibitz_media::peak(&pcm), 0);
        // Unmuted: the tone.
        a.set_muted(false);
        run(&mut a, &mut b, t0, 1000, 1000);
        let pcm = drain(&mut rx);
        let tail = &pcm[pcm.len() - 20 * FRAME_SAMPLES..];
        let f = kibitz_media::dominant_frequency(tail);
        assert!((f - 440.0).abs() < 10.0, "{f} Hz");
        // Withheld from bob: silence again, from the next frame on.
        let mut shut = open.clone();
        shut.insert("bob".to_owned(), gates(false));
        a.set_gates(shut, gates(true));
        run(&mut a, &mut b, t0, 2000, 1000);
        let pcm = drain(&mut rx);
        assert_eq!(kibitz_media::peak(&pcm[10 * FRAME_SAMPLES..]), 0);
        // Speaking came and went.
        let ev = b.take_events();
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Speaking { speaking: true, .. }))
        );
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Speaking {
                speaking: false,
                ..
            }
        )));
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Track {
                lane: Lane::Mic,
                ..
            }
        )));
    }

    #[test]
    fn skipping_repeated_silence_changes_nothing_decoded() {
        // Tone, a run of silence, tone and a loss: every sample is the same whether libopus
        // decodes each silence payload or the plane skips them once the decoder is quiet.
        let mut src = AudioSource::tone(440.0);
        let mut enc = OpusEncoder::new().unwrap();
        let silence = silence_payload();
        for run in [1, 4, 5, 12] {
            let mut packets: Vec<Option<Vec<u8>>> = Vec::new();
            for _ in 0..20 {
                packets.push(Some(enc.encode(&src.next_frame()).unwrap()));
            }
            packets.extend(std::iter::repeat_n(Some(silence.clone()), run));
            for _ in 0..10 {
                packets.push(Some(enc.encode(&src.next_frame()).unwrap()));
            }
            packets.extend(std::iter::repeat_n(Some(silence.clone()), run));
            packets.push(None);
            packets.push(Some(enc.encode(&src.next_frame()).unwrap()));
            let mut full = OpusDecoder::new().unwrap();
            let mut skip = OpusDecoder::new().unwrap();
            let mut quiet = 0;
            let mut skipped = 0;
            for (i, p) in packets.iter().enumerate() {
                let want = full.decode(p.as_deref()).unwrap();
                let is_silence = p.as_ref() == Some(&silence);
                let got = if is_silence && quiet >= QUIET_AFTER {
                    skipped += 1;
                    vec![0; FRAME_SAMPLES]
                } else {
                    skip.decode(p.as_deref()).unwrap()
                };
                quiet = if is_silence && got.iter().all(|s| *s == 0) {
                    quiet + 1
                } else {
                    0
                };
                assert_eq!(want, got, "run {run}, packet {i}");
            }
            assert!(run < 12 || skipped > 0, "run {run}: nothing skipped");
        }
    }

    #[test]
    fn a_lane_our_grant_lacks_is_never_decoded() {
        let t0 = Instant::now();
        let (mut a, mut b, mut rx) = pair(AudioSource::tone(440.0), false);
        let mut open = BTreeMap::new();
        open.insert("bob".to_owned(), gates(true));
        a.set_gates(open, gates(true));
        b.set_gates(BTreeMap::new(), gates(false));
        run(&mut a, &mut b, t0, 0, 1000);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_share_our_grant_lacks_is_neither_shown_nor_recorded() {
        let dir = std::env::temp_dir().join(format!("kibitz-media-gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = MediaPlane::new(MediaConfig {
            record: Some(dir.clone()),
            ..MediaConfig::default()
        });
        b.open(ConnId(1), "alice", "Alice", vec![Lane::Camera, Lane::Share]);
        b.set_gates(BTreeMap::new(), gates(false));
        // A VP8 keyframe header: 320x240.
        let key = vec![
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 0, 0,
        ];
        let now = Instant::now();
        b.receive(now, ConnId(1), Lane::Share, 0, key.clone());
        b.receive(now, ConnId(1), Lane::Camera, 0, key);
        let lanes: Vec<_> = b
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::VideoSize { lane, .. } => Some(lane),
                _ => None,
            })
            .collect();
        assert_eq!(lanes, vec![Lane::Camera]);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(files.iter().all(|f| !f.contains("share")), "{files:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_peers_get_placeholders_and_video_lanes_stay_tiny() {
        let t0 = Instant::now();
        let (mut a, mut b, mut rx) = pair(AudioSource::tone(440.0), false);
        run(&mut a, &mut b, t0, 0, 2500);
        assert_eq!(kibitz_media::peak(&drain(&mut rx)), 0);
        let sizes: Vec<_> = b
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::VideoSize { width, height, .. } => Some((width, height)),
                _ => None,
            })
            .collect();
        assert!(!sizes.is_empty());
        assert!(sizes.iter().all(|&(w, h)| w <= 2 && h <= 2), "{sizes:?}");
    }

    #[test]
    fn recordings_are_named_by_participant_and_lane() {
        let dir = std::env::temp_dir().join(format!("kibitz-media-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = Instant::now();
        let mut a = MediaPlane::new(MediaConfig {
            audio_in: AudioSource::tone(660.0),
            muted: false,
            ..MediaConfig::default()
        });
        let mut b = MediaPlane::new(MediaConfig {
            record: Some(dir.clone()),
            ..MediaConfig::default()
        });
        let mut open = BTreeMap::new();
        open.insert("bob".to_owned(), gates(true));
        a.set_gates(open, gates(true));
        a.open(ConnId(1), "bob", "Bob", vec![Lane::Mic, Lane::Camera]);
        b.open(
            ConnId(1),
            "kbz-alice",
            "Alice Q",
            vec![Lane::Mic, Lane::Camera],
        );
        run(&mut a, &mut b, t0, 0, 1500);
        b.finish();
        let wav = dir.join("Alice_Q-kbz-alice-mic.wav");
        let r = hound::WavReader::open(&wav).unwrap();
        assert_eq!(r.spec().sample_rate, 48_000);
        assert!(r.len() > 48_000, "{} samples", r.len());
        assert!(dir.join("Alice_Q-kbz-alice-camera.log").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Frames per second of the test-pattern camera.
const CAMERA_FPS: u64 = 15;

/// The camera: a thread running the libvpx test pattern (encoding blocks ~15 ms a frame, so
/// it stays off the async runtime), its frames on a channel.
#[derive(Debug)]
pub struct VideoFeed {
    /// Encoded frames (and whether each is a keyframe); taken by the driver's loop.
    pub frames: Option<mpsc::Receiver<(Vec<u8>, bool)>>,
    keyframe: std::sync::mpsc::Sender<()>,
}

impl VideoFeed {
    /// Starts the pattern at `(width, height)`. The thread ends when the receiver is dropped.
    #[allow(clippy::disallowed_methods)] // a real-time source paces itself by the clock
    pub fn start((width, height): (u16, u16)) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let (key_tx, key_rx) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("kibitz-camera".into())
            .spawn(move || {
                let mut src = match kibitz_media::Vp8Source::test_pattern(width, height) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "no camera: the VP8 encoder did not start");
                        return;
                    }
                };
                let t0 = Instant::now();
                for n in 0u64.. {
                    if key_rx.try_iter().count() > 0 {
                        src.request_keyframe();
                    }
                    let pts = n * 1000 / CAMERA_FPS;
                    let frames = match src.next_frame(pts) {
                        Ok(f) => f,
                        Err(e) => {
                            warn!(error = %e, "camera stopped");
                            return;
                        }
                    };
                    for f in frames {
                        // Full channel: the driver is behind; drop the frame (never block it).
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(f) {
                            return;
                        }
                    }
                    // Pace to the frame clock (a real-time source, not a test wait).
                    let next = t0 + Duration::from_millis((n + 1) * 1000 / CAMERA_FPS);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "no camera thread");
        }
        Self {
            frames: Some(rx),
            keyframe: key_tx,
        }
    }

    /// Asks for a keyframe next (a peer joined, or asked with PLI).
    pub fn request_keyframe(&self) {
        let _ = self.keyframe.send(());
    }
}
