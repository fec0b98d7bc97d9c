//! One media peer connection: a str0m `Rtc` with audio and video m-lines (Opus and VP8
//! only), either a PeerJS MediaConnection ("legacy": SDP through the broker, plus the
//! caller's unordered `undefined` data channel) or a bare peer connection whose SDP the
//! application carries itself ("owned"). Sans-IO: time in, transmits and events out.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaTime, Mid};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input, Output, Rtc};

use crate::ConnId;
use crate::conn::{CloseReason, Sock, receive};
use crate::identity::provider;
use crate::signal::{CandidateInit, sdp_attr, sdp_fingerprint};
use crate::turn::{TurnClient, TurnEvent, TurnInput};

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    /// An audio m-line (Opus).
    Audio,
    /// A video m-line (VP8).
    Video,
}

/// One m-line, named by its kind and its ordinal among the m-lines of that kind (0-based,
/// SDP order): audio 0 = mic, video 0 = camera, video 1 = share, audio 1 = share audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneRef {
    /// Audio or video.
    pub kind: MediaKind,
    /// Ordinal among the m-lines of `kind`.
    pub ordinal: u8,
}

impl LaneRef {
    /// The mic lane (audio 0).
    pub const MIC: LaneRef = LaneRef {
        kind: MediaKind::Audio,
        ordinal: 0,
    };
    /// The camera lane (video 0).
    pub const CAMERA: LaneRef = LaneRef {
        kind: MediaKind::Video,
        ordinal: 0,
    };
    /// The share lane (video 1, owned only).
    pub const SHARE: LaneRef = LaneRef {
        kind: MediaKind::Video,
        ordinal: 1,
    };
    /// The share-audio lane (audio 1, owned only).
    pub const SHARE_AUDIO: LaneRef = LaneRef {
        kind: MediaKind::Audio,
        ordinal: 1,
    };
}

/// How many m-lines of each kind an offer carries (an answer takes the offer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaOptions {
    /// Audio m-lines.
    pub audio_lanes: u8,
    /// Video m-lines.
    pub video_lanes: u8,
}

impl MediaOptions {
    /// A PeerJS call: one audio, one video.
    pub const LEGACY: MediaOptions = MediaOptions {
        audio_lanes: 1,
        video_lanes: 1,
    };
    /// The owned transport: mic, share audio, camera, share.
    pub const OWNED: MediaOptions = MediaOptions {
        audio_lanes: 2,
        video_lanes: 2,
    };
}

/// The codec of a received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCodec {
    /// Opus (48 kHz RTP clock).
    Opus,
    /// VP8 (90 kHz RTP clock).
    Vp8,
    /// Anything else (not negotiated by this crate; kept for completeness).
    Other(String),
}

/// Signalling of an owned media connection, carried by the application (over the data
/// mesh, as `m-sdp` / `m-ice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSignal {
    /// An offer (`offer: true`) or an answer.
    Sdp {
        /// Whether this is an offer.
        offer: bool,
        /// The SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate(CandidateInit),
}

/// Why a frame could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaWriteError {
    /// No such media connection.
    #[error("no such media connection")]
    NoConnection,
    /// Not connected yet (or no longer).
    #[error("media connection not open")]
    NotOpen,
    /// No such lane on this connection.
    #[error("no such lane")]
    NoLane,
    /// The remote rejected the lane, or negotiated no usable codec on it.
    #[error("lane rejected by the remote")]
    Rejected,
    /// WebRTC refused the frame.
    #[error("rtc: {0}")]
    Rtc(String),
    /// The peer's driver has stopped.
    #[error("peer stopped")]
    Stopped,
}

/// Why a media command or signal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// No such media connection (or not one of the right kind).
    #[error("no such media connection")]
    NoConnection,
    /// An offer arrived while our own offer is outstanding (glare): roll back
    /// ([`crate::PeerCore::media_rollback`]) and feed it again, or ignore it.
    #[error("offer collides with our pending offer")]
    Glare,
    /// An answer arrived with no offer of ours outstanding.
    #[error("answer without a pending offer")]
    NoPendingOffer,
    /// A candidate or answer came before any offer created the connection.
    #[error("signal needs an existing connection")]
    NeedConnection,
    /// Relay-only asked, but the peer has no TURN server configured (fail-closed).
    #[error("relay asked but no TURN server configured")]
    NoRelay,
    /// Too many connections, or no spare UDP socket.
    #[error("no capacity: {0}")]
    Capacity(&'static str),
    /// The SDP or candidate was refused (malformed, no common codec, …).
    #[error("refused: {0}")]
    Refused(String),
    /// Nothing to do (ICE restart on a connection that cannot offer now, …).
    #[error("not possible now: {0}")]
    NotNow(&'static str),
    /// The peer's driver has stopped.
    #[error("peer stopped")]
    Stopped,
}

/// Cumulative payload bytes of a media connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaStats {
    /// Audio payload bytes received.
    pub audio_in_bytes: u64,
    /// Video payload bytes received.
    pub video_in_bytes: u64,
    /// Audio payload bytes written.
    pub audio_out_bytes: u64,
    /// Video payload bytes written.
    pub video_out_bytes: u64,
    /// When the last frame arrived.
    pub last_in: Option<Instant>,
}

pub(crate) enum MediaOut {
    Transmit {
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    Open(Vec<LaneRef>),
    Frame {
        lane: LaneRef,
        codec: MediaCodec,
        rtp_time: u64,
        data: Vec<u8>,
    },
    State(bool),
    Keyframe(LaneRef),
    Closed(CloseReason),
    LocalCandidate(CandidateInit),
}

/// An m-line of ours, in SDP order.
#[derive(Debug, Clone)]
struct Lane {
    mid: Mid,
    lane: LaneRef,
    rejected: bool,
}

/// One media peer connection.
pub(crate) struct MediaConn {
    pub id: ConnId,
    pub local: SocketAddr,
    hosts: Vec<SocketAddr>,
    turn: Option<TurnClient>,
    /// Our relay candidate (`a=candidate` text) once allocated.
    relay_cand: Option<String>,
    pub remote: String,
    /// The PeerJS connectionId of a legacy call; `None` for an owned connection.
    pub connection_id: Option<String>,
    rtc: Rtc,
    pending_offer: Option<SdpPendingOffer>,
    /// A legacy call's offer, waiting for [`crate::PeerCore::answer_call`].
    pub unanswered: Option<String>,
    queued_cands: Vec<CandidateInit>,
    remote_set: bool,
    lanes: Vec<Lane>,
    channel: Option<ChannelId>,
    connected: bool,
    open_sent: bool,
    /// The call's channel closed: hang up once this drain has sent what str0m queued (the
    /// stream-reset response the far end waits for to call its channel closed).
    hangup: bool,
    /// ICE said disconnected after the connection opened (reported once until it recovers).
    ice_down: bool,
    closed: bool,
    local_sdp: String,
    remote_fingerprint: Option<String>,
    stats: MediaStats,
    open_deadline: Option<Instant>,
    next_timeout: Option<Instant>,
    /// Frames delivered since the last timeout tick; beyond the cap they are dropped.
    frames_in_tick: usize,
}

impl std::fmt::Debug for MediaConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaConn")
            .field("id", &self.id)
            .field("remote", &self.remote)
            .field("connection_id", &self.connection_id)
            .finish_non_exhaustive()
    }
}

/// The msid stream all our tracks share (browsers group tracks by it).
const STREAM_ID: &str = "kibitz";

/// Frames accepted per connection between timer ticks: a flood beyond it is dropped rather
/// than queued without bound in the event stream.
const MAX_FRAMES_PER_TICK: usize = 2048;

fn new_rtc(now: Instant, sock: &Sock<'_>, hosts: &[SocketAddr]) -> Rtc {
    // Opus and VP8 only: a browser offers many more, and we answer these two.
    let mut rtc = Rtc::builder()
        .set_crypto_provider(provider())
        .set_dtls_cert(sock.identity.cert())
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(now);
    for h in hosts {
        if let Ok(c) = Candidate::host(*h, "udp") {
            rtc.add_local_candidate(c);
        }
    }
    rtc
}

/// `(kind, mid, rejected)` of each audio/video m-line of an SDP, in order.
fn sdp_media_lines(sdp: &str) -> Vec<(MediaKind, String, bool)> {
    let mut out: Vec<(MediaKind, String, bool)> = Vec::new();
    let mut cur: Option<(MediaKind, Option<String>, bool)> = None;
    let mut flush = |cur: &mut Option<(MediaKind, Option<String>, bool)>| {
        if let Some((k, Some(mid), rej)) = cur.take() {
            out.push((k, mid, rej));
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            flush(&mut cur);
            let mut parts = m.split_whitespace();
            let kind = match parts.next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
            let rejected = parts.next() == Some("0");
            cur = kind.map(|k| (k, None, rejected));
        } else if let Some(mid) = line.strip_prefix("a=mid:")
            && let Some(c) = cur.as_mut()
        {
            c.1 = Some(mid.to_owned());
        } else if line == "a=inactive"
            && let Some(c) = cur.as_mut()
        {
            c.2 = true;
        }
    }
    flush(&mut cur);
    out
}

/// Whether an audio m-line offers Opus or a video m-line VP8 (the codecs we answer).
fn offers_our_codecs(sdp: &str) -> bool {
    let mut kind = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            kind = match (parts.next(), parts.next()) {
                (_, Some("0")) => None,
                (Some("audio"), _) => Some("opus"),
                (Some("video"), _) => Some("vp8"),
                _ => None,
            };
        } else if let (Some(want), Some(map)) = (kind, line.strip_prefix("a=rtpmap:"))
            && let Some((_, codec)) = map.split_once(' ')
            && codec
                .split('/')
                .next()
                .is_some_and(|c| c.eq_ignore_ascii_case(want))
        {
            return true;
        }
    }
    false
}

/// Refuses an offer that does not parse or has no audio or video m-line (before a call is
/// announced).
pub(crate) fn check_offer(sdp: &str) -> Result<(), String> {
    SdpOffer::from_sdp_string(sdp).map_err(one_line)?;
    if sdp_media_lines(sdp).is_empty() {
        return Err("offer has no audio or video".into());
    }
    Ok(())
}

/// Puts every `a=msid` of ours in one stream ([`STREAM_ID`]): an answer inherits the
/// offer's stream ids, one per track when the offerer had several.
fn one_stream(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let end = &line[body.len()..];
        if let Some(rest) = body.strip_prefix("a=msid:")
            && let Some((_, track)) = rest.split_once(' ')
        {
            out.push_str(&format!("a=msid:{STREAM_ID} {track}{end}"));
        } else if let Some((ssrc, rest)) = body
            .strip_prefix("a=ssrc:")
            .and_then(|r| r.split_once(" msid:"))
            && let Some((_, track)) = rest.split_once(' ')
        {
            out.push_str(&format!("a=ssrc:{ssrc} msid:{STREAM_ID} {track}{end}"));
        } else if body.starts_with("a=msid-semantic:") {
            out.push_str(&format!("a=msid-semantic: WMS {STREAM_ID}{end}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// str0m's SDP parse errors span lines; keep the words.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl MediaConn {
    fn new(
        now: Instant,
        id: ConnId,
        remote: String,
        connection_id: Option<String>,
        sock: Sock<'_>,
    ) -> Self {
        // Relay-only advertises no host address: the relay candidate comes when allocated.
        let hosts = if sock.relay.is_some() {
            Vec::new()
        } else {
            sock.hosts.to_vec()
        };
        MediaConn {
            id,
            local: sock.local,
            turn: sock.relay.map(|r| TurnClient::new(now, r.clone())),
            relay_cand: None,
            remote,
            connection_id,
            rtc: new_rtc(now, &sock, &hosts),
            hosts,
            pending_offer: None,
            unanswered: None,
            queued_cands: Vec::new(),
            remote_set: false,
            lanes: Vec::new(),
            channel: None,
            connected: false,
            open_sent: false,
            hangup: false,
            ice_down: false,
            closed: false,
            local_sdp: String::new(),
            remote_fingerprint: None,
            stats: MediaStats::default(),
            open_deadline: Some(now + sock.cfg.open_timeout),
            next_timeout: Some(now),
            frames_in_tick: 0,
        }
    }

    /// The offering side: `opts` m-lines of each kind, all sendrecv in one msid stream,
    /// audio first; a legacy call (`connection_id`) adds the unordered `undefined` channel.
    pub fn offer(
        now: Instant,
        id: ConnId,
        remote: String,
        connection_id: Option<String>,
        opts: MediaOptions,
        sock: Sock<'_>,
    ) -> Result<(Self, String), String> {
        if opts.audio_lanes == 0 && opts.video_lanes == 0 {
            return Err("no lanes asked".into());
        }
        let legacy = connection_id.is_some();
        let mut conn = MediaConn::new(now, id, remote, connection_id, sock);
        let mut api = conn.rtc.sdp_api();
        let mut lanes = Vec::new();
        for (kind, n) in [
            (MediaKind::Audio, opts.audio_lanes),
            (MediaKind::Video, opts.video_lanes),
        ] {
            for ordinal in 0..n {
                let k = match kind {
                    MediaKind::Audio => str0m::media::MediaKind::Audio,
                    MediaKind::Video => str0m::media::MediaKind::Video,
                };
                // Track ids unique within the connection: a0, v0, a1, v1.
                let track = match kind {
                    MediaKind::Audio => format!("a{ordinal}"),
                    MediaKind::Video => format!("v{ordinal}"),
                };
                let mid = api.add_media(
                    k,
                    Direction::SendRecv,
                    Some(STREAM_ID.to_owned()),
                    Some(track),
                    None,
                );
                lanes.push(Lane {
                    mid,
                    lane: LaneRef { kind, ordinal },
                    rejected: false,
                });
            }
        }
        if legacy {
            // PeerJS: the caller opens an unordered channel labelled "undefined"; its close
            // hangs up the call on both ends.
            api.add_channel_with_config(ChannelConfig {
                label: "undefined".into(),
                ordered: false,
                reliability: Reliability::Reliable,
                negotiated: None,
                protocol: String::new(),
            });
        }
        let (offer, pending) = api.apply().ok_or("no offer to make")?;
        conn.lanes = lanes;
        conn.pending_offer = Some(pending);
        conn.local_sdp = offer.to_sdp_string();
        let sdp = conn.local_sdp.clone();
        Ok((conn, sdp))
    }

    /// A connection for an incoming offer that is not accepted yet (a legacy call waits for
    /// [`crate::PeerCore::answer_call`]); candidates are queued meanwhile.
    pub fn incoming(
        now: Instant,
        id: ConnId,
        remote: String,
        connection_id: Option<String>,
        offer_sdp: String,
        sock: Sock<'_>,
    ) -> Self {
        let mut conn = MediaConn::new(now, id, remote, connection_id, sock);
        conn.unanswered = Some(offer_sdp);
        conn
    }

    /// Whether our offer waits for an answer.
    pub fn awaiting_answer(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// Accepts a remote offer (the first, or a re-offer on this connection); returns the
    /// answer SDP. Refuses when no audio/video lane has a common codec.
    pub fn accept_offer(&mut self, now: Instant, sdp: &str) -> Result<String, String> {
        if self.pending_offer.is_some() {
            return Err("offer while our own offer is pending".into());
        }
        let offer = SdpOffer::from_sdp_string(sdp).map_err(one_line)?;
        let lines = sdp_media_lines(sdp);
        if lines.is_empty() && self.lanes.is_empty() {
            return Err("offer has no audio or video".into());
        }
        // Checked before str0m sees it: str0m applies a re-offer's ICE credentials (an ICE
        // restart) before it finds no codec in common, which would leave a live connection
        // answering nobody.
        if !lines.is_empty() && !offers_our_codecs(sdp) {
            return Err("no common codec (Opus/VP8) on any lane".into());
        }
        // A re-offer on a negotiated connection comes from the same remote pc (JSEP): same
        // DTLS certificate, no m-line dropped. Anything else would get its ICE credentials
        // applied by str0m, even when str0m then refuses it, and leave us answering a pc
        // that does not exist.
        if self.remote_set {
            let new = sdp_fingerprint(sdp);
            if self.remote_fingerprint.is_some() && new != self.remote_fingerprint {
                return Err("a re-offer may not change the DTLS fingerprint".into());
            }
            if lines.len() < self.lanes.len() {
                return Err("a re-offer may not drop m-lines".into());
            }
        }
        self.remote_fingerprint = sdp_fingerprint(sdp).or(self.remote_fingerprint.take());
        self.permit_sdp(now, sdp);
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(one_line)?;
        let answer = one_stream(&answer.to_sdp_string());
        // Lanes in the offer's order; an m-line we answered with port 0 (no common codec)
        // or that the offer disabled is rejected.
        let ours = sdp_media_lines(&answer);
        let mut lanes = Vec::new();
        let (mut na, mut nv) = (0u8, 0u8);
        for (kind, mid, rej) in &lines {
            let n = match kind {
                MediaKind::Audio => &mut na,
                MediaKind::Video => &mut nv,
            };
            let ordinal = *n;
            *n = n.saturating_add(1);
            let answered_rej = ours.iter().find(|(_, m, _)| m == mid).is_none_or(|o| o.2);
            let mid_s = Mid::from(mid.as_str());
            let no_codec = self
                .rtc
                .media(mid_s)
                .is_none_or(|m| m.remote_pts().is_empty());
            lanes.push(Lane {
                mid: mid_s,
                lane: LaneRef {
                    kind: *kind,
                    ordinal,
                },
                rejected: *rej || answered_rej || no_codec,
            });
        }
        if !lanes.is_empty() && lanes.iter().all(|l| l.rejected) {
            return Err("no common codec (Opus/VP8) on any lane".into());
        }
        self.lanes = lanes;
        self.unanswered = None;
        self.remote_set = true;
        self.local_sdp = answer.clone();
        self.next_timeout = None;
        self.flush_candidates(now);
        Ok(answer)
    }

    /// Takes the remote answer to our offer.
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), String> {
        let pending = self
            .pending_offer
            .take()
            .ok_or("answer without an outstanding offer")?;
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(one_line)?;
        self.remote_fingerprint = sdp_fingerprint(sdp).or(self.remote_fingerprint.take());
        self.permit_sdp(now, sdp);
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(one_line)?;
        let theirs = sdp_media_lines(sdp);
        for l in &mut self.lanes {
            let mid = l.mid.to_string();
            let rej = theirs
                .iter()
                .find(|(_, m, _)| *m == mid)
                .is_none_or(|o| o.2);
            let no_codec = self
                .rtc
                .media(l.mid)
                .is_none_or(|m| m.remote_pts().is_empty());
            l.rejected = rej || no_codec;
        }
        self.remote_set = true;
        self.next_timeout = None;
        self.flush_candidates(now);
        Ok(())
    }

    /// Drops our pending offer (perfect negotiation's rollback). str0m applies nothing
    /// before the answer, so dropping the pending token is the whole rollback.
    pub fn rollback(&mut self) -> bool {
        self.pending_offer.take().is_some()
    }

    /// A new offer with fresh ICE credentials (str0m `SdpApi::ice_restart`).
    pub fn restart_ice(&mut self) -> Result<String, String> {
        if self.pending_offer.is_some() {
            return Err("an offer is already pending".into());
        }
        if !self.remote_set {
            return Err("not negotiated yet".into());
        }
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api.apply().ok_or("no offer to make")?;
        self.pending_offer = Some(pending);
        self.local_sdp = offer.to_sdp_string();
        self.next_timeout = None;
        Ok(self.local_sdp.clone())
    }

    /// Takes a trickled remote candidate; queued until the remote description is set.
    pub fn add_remote_candidate(&mut self, now: Instant, c: CandidateInit) -> Result<(), String> {
        let line = c.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return Ok(());
        }
        // Parse now so that garbage is refused at once, queued or not.
        let cand = Candidate::from_sdp_string(line).map_err(|e| e.to_string())?;
        if !self.remote_set {
            // Bounded: a remote that trickles forever before its offer is cut off.
            if self.queued_cands.len() >= 64 {
                return Err("too many candidates before the remote description".into());
            }
            self.queued_cands.push(c);
            return Ok(());
        }
        self.permit(now, cand.addr());
        self.rtc.add_remote_candidate(cand);
        self.next_timeout = None;
        Ok(())
    }

    fn flush_candidates(&mut self, now: Instant) {
        for c in std::mem::take(&mut self.queued_cands) {
            let _ = self.add_remote_candidate(now, c);
        }
    }

    /// Our host candidates, and the relay one once allocated, as trickle payloads (also in
    /// the SDP).
    pub fn local_candidates(&self) -> Vec<CandidateInit> {
        let mid = sdp_attr(&self.local_sdp, "mid").map(str::to_owned);
        let ufrag = sdp_attr(&self.local_sdp, "ice-ufrag").map(str::to_owned);
        self.hosts
            .iter()
            .filter_map(|h| Candidate::host(*h, "udp").ok())
            .map(|c| c.to_sdp_string())
            .chain(self.relay_cand.clone())
            .map(|candidate| CandidateInit {
                candidate,
                sdp_mid: mid.clone(),
                sdp_m_line_index: Some(0),
                username_fragment: ufrag.clone(),
            })
            .collect()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn is_open(&self) -> bool {
        self.open_sent && !self.closed
    }

    pub fn stats(&self) -> MediaStats {
        self.stats
    }

    fn lane_of(&self, mid: Mid) -> Option<&Lane> {
        self.lanes.iter().find(|l| l.mid == mid)
    }

    /// Writes one frame (Opus packet or VP8 frame) on `lane`; str0m packetizes it.
    pub fn write(
        &mut self,
        now: Instant,
        lane: LaneRef,
        rtp_time: u64,
        data: Vec<u8>,
    ) -> Result<(), MediaWriteError> {
        if self.closed {
            return Err(MediaWriteError::NoConnection);
        }
        if !self.connected {
            return Err(MediaWriteError::NotOpen);
        }
        let l = self
            .lanes
            .iter()
            .find(|l| l.lane == lane)
            .ok_or(MediaWriteError::NoLane)?;
        if l.rejected {
            return Err(MediaWriteError::Rejected);
        }
        let mid = l.mid;
        let (want, freq) = match lane.kind {
            MediaKind::Audio => (Codec::Opus, Frequency::FORTY_EIGHT_KHZ),
            MediaKind::Video => (Codec::Vp8, Frequency::NINETY_KHZ),
        };
        let len = data.len() as u64;
        let writer = self.rtc.writer(mid).ok_or(MediaWriteError::Rejected)?;
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == want)
            .map(|p| p.pt())
            .ok_or(MediaWriteError::Rejected)?;
        writer
            .write(pt, now, MediaTime::new(rtp_time, freq), data)
            .map_err(|e| MediaWriteError::Rtc(e.to_string()))?;
        match lane.kind {
            MediaKind::Audio => self.stats.audio_out_bytes += len,
            MediaKind::Video => self.stats.video_out_bytes += len,
        }
        self.next_timeout = None;
        Ok(())
    }

    /// Asks the remote for a keyframe on `lane` (PLI).
    pub fn request_keyframe(&mut self, lane: LaneRef) -> Result<(), MediaWriteError> {
        let mid = self
            .lanes
            .iter()
            .find(|l| l.lane == lane && !l.rejected)
            .map(|l| l.mid)
            .ok_or(MediaWriteError::NoLane)?;
        if !self.connected {
            return Err(MediaWriteError::NotOpen);
        }
        let mut w = self.rtc.writer(mid).ok_or(MediaWriteError::NoLane)?;
        w.request_keyframe(None, KeyframeRequestKind::Pli)
            .map_err(|e| MediaWriteError::Rtc(e.to_string()))?;
        self.next_timeout = None;
        Ok(())
    }

    /// The host candidate a datagram from `source` arrived at.
    fn destination(&self, source: SocketAddr) -> SocketAddr {
        if !self.local.ip().is_unspecified() {
            return self.local;
        }
        self.hosts
            .iter()
            .find(|h| h.ip().is_loopback() == source.ip().is_loopback())
            .or(self.hosts.first())
            .copied()
            .unwrap_or(self.local)
    }

    /// One datagram on this connection's socket (relay-only: from the TURN server only).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        buf: &[u8],
        out: &mut Vec<MediaOut>,
    ) {
        if self.closed {
            return;
        }
        let Some(turn) = self.turn.as_mut() else {
            let destination = self.destination(source);
            if let Some(input) = receive(now, source, destination, buf)
                && self.rtc.accepts(&input)
            {
                self.handle_input(input, out);
            }
            return;
        };
        if source != turn.server() {
            return;
        }
        match turn.handle(now, buf) {
            TurnInput::Data { peer, data } => {
                if let Some(relay) = turn.relay()
                    && let Some(input) = receive(now, peer, relay, &data)
                    && self.rtc.accepts(&input)
                {
                    self.handle_input(input, out);
                }
            }
            TurnInput::Event(e) => self.on_turn(e, out),
            TurnInput::Nothing => {}
        }
        self.next_timeout = None;
    }

    fn permit(&mut self, now: Instant, peer: SocketAddr) {
        if let Some(t) = self.turn.as_mut() {
            t.permit(now, peer);
        }
    }

    fn permit_sdp(&mut self, now: Instant, sdp: &str) {
        for line in sdp.lines() {
            if let Some(c) = line.trim_end().strip_prefix("a=")
                && c.starts_with("candidate:")
                && let Ok(c) = Candidate::from_sdp_string(c)
            {
                self.permit(now, c.addr());
            }
        }
    }

    fn on_turn(&mut self, e: TurnEvent, out: &mut Vec<MediaOut>) {
        match e {
            TurnEvent::Allocated(relay) => {
                let Ok(c) = Candidate::relayed(relay, self.local, "udp") else {
                    return self.finish(
                        CloseReason::Failed(format!("unusable relay address {relay}")),
                        out,
                    );
                };
                let line = c.to_sdp_string();
                self.rtc.add_local_candidate(c);
                // A call not answered yet has no local description: a candidate trickled now
                // would reach a browser before our ANSWER and be dropped there. It goes in
                // the answer and with its candidates instead (`local_candidates`).
                if !self.local_sdp.is_empty() {
                    out.push(MediaOut::LocalCandidate(CandidateInit {
                        candidate: line.clone(),
                        sdp_mid: sdp_attr(&self.local_sdp, "mid").map(str::to_owned),
                        sdp_m_line_index: Some(0),
                        username_fragment: sdp_attr(&self.local_sdp, "ice-ufrag")
                            .map(str::to_owned),
                    }));
                }
                self.relay_cand = Some(line);
            }
            TurnEvent::Failed(why) => self.finish(CloseReason::Failed(format!("turn: {why}")), out),
        }
    }

    fn handle_input(&mut self, input: Input<'_>, out: &mut Vec<MediaOut>) {
        if let Err(e) = self.rtc.handle_input(input) {
            self.finish(CloseReason::Failed(format!("rtc: {e}")), out);
        }
        self.next_timeout = None;
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        [
            self.next_timeout,
            self.open_deadline,
            self.turn.as_ref().and_then(TurnClient::next_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<MediaOut>) {
        if self.closed {
            return;
        }
        self.frames_in_tick = 0;
        if self.open_deadline.is_some_and(|d| now >= d) {
            self.finish(CloseReason::Timeout, out);
            return;
        }
        if let Some(e) = self.turn.as_mut().and_then(|t| t.handle_timeout(now)) {
            self.on_turn(e, out);
            if self.closed {
                return;
            }
        }
        // An unanswered call has no negotiated Rtc to tick.
        if self.unanswered.is_none() && self.next_timeout.is_none_or(|t| now >= t) {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                self.finish(CloseReason::Failed(format!("rtc: {e}")), out);
            }
            self.next_timeout = None;
        }
    }

    pub fn finish(&mut self, reason: CloseReason, out: &mut Vec<MediaOut>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.rtc.disconnect();
        out.push(MediaOut::Closed(reason));
    }

    /// Closes locally: str0m's shutdown (the `undefined` channel's SCTP goes, which hangs
    /// up a PeerJS call on the far end), drained into `out`.
    pub fn close(&mut self, now: Instant, reason: CloseReason, out: &mut Vec<MediaOut>) {
        if self.closed {
            return;
        }
        if self.unanswered.is_none() {
            let _ = self.rtc.close();
            self.drain(now, out);
        }
        if let Some(t) = self.turn.as_mut() {
            t.deallocate();
        }
        self.turn_out(out);
        self.finish(reason, out);
    }

    pub fn poll(&mut self, now: Instant, out: &mut Vec<MediaOut>) {
        if self.closed {
            return;
        }
        if self.unanswered.is_some() {
            // Only the TURN allocation runs before the call is answered.
            self.turn_out(out);
            return;
        }
        self.drain(now, out);
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<MediaOut>) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = Some(t);
                    break;
                }
                Ok(Output::Transmit(t)) => match self.turn.as_mut() {
                    None => out.push(MediaOut::Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.to_vec(),
                    }),
                    // Fail-closed: only what leaves from the relay address goes out, and
                    // only through the TURN server.
                    Some(turn) if Some(t.source) == turn.relay() => {
                        turn.send_to(now, t.destination, &t.contents);
                    }
                    Some(_) => {}
                },
                Ok(Output::Event(e)) => self.on_event(now, e, out),
                Err(e) => {
                    self.finish(CloseReason::Failed(format!("rtc: {e}")), out);
                    return;
                }
            }
            if self.closed {
                return;
            }
        }
        self.turn_out(out);
        if self.hangup {
            self.hangup = false;
            let _ = self.rtc.close();
            self.drain(now, out);
            self.finish(CloseReason::Remote, out);
        }
    }

    fn turn_out(&mut self, out: &mut Vec<MediaOut>) {
        let local = self.local;
        if let Some(t) = self.turn.as_mut() {
            let server = t.server();
            while let Some(contents) = t.poll_transmit() {
                out.push(MediaOut::Transmit {
                    source: local,
                    destination: server,
                    contents,
                });
            }
        }
    }

    fn on_event(&mut self, now: Instant, e: RtcEvent, out: &mut Vec<MediaOut>) {
        match e {
            RtcEvent::Connected => {
                self.connected = true;
                self.open_deadline = None;
                if !self.open_sent {
                    self.open_sent = true;
                    let lanes = self
                        .lanes
                        .iter()
                        .filter(|l| !l.rejected)
                        .map(|l| l.lane)
                        .collect();
                    out.push(MediaOut::Open(lanes));
                }
            }
            RtcEvent::MediaData(d) => {
                let Some(lane) = self.lane_of(d.mid).filter(|l| !l.rejected).map(|l| l.lane) else {
                    return;
                };
                if self.frames_in_tick >= MAX_FRAMES_PER_TICK {
                    return;
                }
                self.frames_in_tick += 1;
                let codec = match d.params.spec().codec {
                    Codec::Opus => MediaCodec::Opus,
                    Codec::Vp8 => MediaCodec::Vp8,
                    other => MediaCodec::Other(format!("{other:?}")),
                };
                let len = d.data.len() as u64;
                match lane.kind {
                    MediaKind::Audio => self.stats.audio_in_bytes += len,
                    MediaKind::Video => self.stats.video_in_bytes += len,
                }
                self.stats.last_in = Some(now);
                out.push(MediaOut::Frame {
                    lane,
                    codec,
                    rtp_time: d.time.numer(),
                    data: d.data.to_vec(),
                });
            }
            RtcEvent::KeyframeRequest(k) => {
                if let Some(l) = self.lane_of(k.mid) {
                    out.push(MediaOut::Keyframe(l.lane));
                }
            }
            RtcEvent::ChannelOpen(id, _)
                if self.connection_id.is_some() && self.channel.is_none() =>
            {
                self.channel = Some(id);
            }
            RtcEvent::ChannelClose(id) if Some(id) == self.channel => {
                // PeerJS: the call's channel closing hangs up the call.
                self.hangup = true;
            }
            RtcEvent::Closed => self.finish(CloseReason::Remote, out),
            RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected)
                if self.connected && !self.ice_down =>
            {
                self.ice_down = true;
                out.push(MediaOut::State(false));
            }
            RtcEvent::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) if self.ice_down => {
                self.ice_down = false;
                out.push(MediaOut::State(true));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn media_lines_in_order() {
        let sdp = "v=0\r\nm=audio 9 UDP 111\r\na=mid:0\r\nm=audio 0 UDP 111\r\na=mid:1\r\nm=video 9 UDP 96\r\na=mid:2\r\nm=application 9 x\r\na=mid:3\r\n";
        let l = sdp_media_lines(sdp);
        assert_eq!(
            l,
            vec![
                (MediaKind::Audio, "0".into(), false),
                (MediaKind::Audio, "1".into(), true),
                (MediaKind::Video, "2".into(), false),
            ]
        );
    }

    #[test]
    fn our_codecs_in_an_offer() {
        let ok = "m=audio 9 UDP 111 0\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP 96\r\na=rtpmap:96 AV1/90000\r\n";
        assert!(offers_our_codecs(ok));
        let v = "m=audio 9 UDP 0\r\na=rtpmap:0 PCMU/8000\r\nm=video 9 UDP 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(offers_our_codecs(v));
        let none = "m=audio 9 UDP 111\r\na=rtpmap:111 X-NOPE-111/48000/2\r\nm=video 9 UDP 96\r\na=rtpmap:96 X-NOPE-96/90000\r\n";
        assert!(!offers_our_codecs(none));
        // Opus on a video line, or on a disabled line, does not count.
        let odd = "m=video 9 UDP 111\r\na=rtpmap:111 opus/48000/2\r\nm=audio 0 UDP 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(!offers_our_codecs(odd));
    }

    #[test]
    fn one_stream_rewrites_msid() {
        let sdp = "a=msid-semantic: WMS a b\r\na=msid:a t1\r\na=ssrc:5 msid:b t2\r\na=mid:0\r\n";
        assert_eq!(
            one_stream(sdp),
            "a=msid-semantic: WMS kibitz\r\na=msid:kibitz t1\r\na=ssrc:5 msid:kibitz t2\r\na=mid:0\r\n"
        );
    }
}
