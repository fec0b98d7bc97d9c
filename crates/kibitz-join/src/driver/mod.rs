//! The thin async layer: one task owns the room [`Engine`], carries out its [`NetCmd`]s on
//! `kibitz-rtc` peers, feeds their events back, and keeps the engine's timer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kibitz_client::{
    ConnId, Engine, Event, HostError, Input, MeshLink, NetCmd, NetEvent, Now, Output, Participant,
    PeerFailure, PeerKey, RoomConfig, SendError,
};
use kibitz_client::{MediaLane, MediaLink, MediaMode, Plane};
use kibitz_media::AudioSource;
use kibitz_proto::binarypack::Value;
use kibitz_proto::content::Content;
use kibitz_proto::grants::Grant;
use kibitz_rtc::{
    BrokerConfig, CloseReason, ConnectOptions, Event as RtcEvent, Identity, LaneRef, MediaCodec,
    MediaStats, Message as RtcMessage, Peer, PeerHandle, PeerOptions, RelayConfig,
};

use crate::media::{MediaConfig, MediaPlane};

mod media;
use media::{MediaOp, from_rtc_signal, lane_ref, media_lane, run_media_op, to_rtc_signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// How a participant reaches the room.
#[derive(Debug, Clone)]
pub struct RoomOptions {
    /// The broker both peers register with.
    pub broker: BrokerConfig,
    /// Relay-only through this TURN server (fail-closed), or direct.
    pub relay: Option<RelayConfig>,
    /// A direct participant's TURN server for media connections the peer asks to rebuild
    /// relay-only (owned media's last recovery rung, `m-recreate{relay:true}`); without it
    /// that rung fails (the link closes and the engine's bounded re-make follows).
    pub media_relay: Option<RelayConfig>,
    /// The DTLS identity both peers share (host commands and assertions bind to it).
    pub identity: Identity,
}

/// A host action for [`RoomHandle::host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// Waiting room on or off.
    Lobby(bool),
    /// Let a knocker in.
    Admit(String),
    /// Turn a knocker away.
    Deny(String),
    /// Remove a member (voiceId).
    Remove(String),
    /// Lock or unlock.
    Lock(bool),
    /// Clear everyone's chat.
    Reset,
}

enum Command {
    Join,
    Leave(oneshot::Sender<()>),
    Chat(
        String,
        Option<String>,
        oneshot::Sender<Result<usize, SendError>>,
    ),
    Content(
        Content,
        Option<String>,
        oneshot::Sender<Result<usize, SendError>>,
    ),
    Host(HostAction, oneshot::Sender<Result<(), HostError>>),
    Grant(String, Grant, oneshot::Sender<Result<(), HostError>>),
    Credit(Option<String>),
    Participants(oneshot::Sender<Vec<Participant>>),
    VoiceId(oneshot::Sender<Option<String>>),
    MeshLinks(oneshot::Sender<Vec<MeshLink>>),
    MediaLinks(oneshot::Sender<Vec<MediaLink>>),
    Mute(bool),
    Play(AudioSource),
    Click,
    Camera(bool),
    Blackhole(Duration),
}

/// Commands a running room. Cheap to clone; the room stops when every handle is dropped.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    tx: mpsc::UnboundedSender<Command>,
    fingerprint: String,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print content.
        f.write_str(match self {
            Command::Join => "Join",
            Command::Leave(_) => "Leave",
            Command::Chat(..) => "Chat",
            Command::Content(..) => "Content",
            Command::Host(..) => "Host",
            Command::Grant(..) => "Grant",
            Command::Credit(_) => "Credit",
            Command::Participants(_) => "Participants",
            Command::VoiceId(_) => "VoiceId",
            Command::MeshLinks(_) => "MeshLinks",
            Command::MediaLinks(_) => "MediaLinks",
            Command::Mute(_) => "Mute",
            Command::Play(_) => "Play",
            Command::Click => "Click",
            Command::Camera(_) => "Camera",
            Command::Blackhole(_) => "Blackhole",
        })
    }
}

/// The room task has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the room has stopped")]
pub struct Stopped;

/// Why a host action (or grant) did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostActionError {
    /// The engine refused it.
    #[error(transparent)]
    Refused(#[from] HostError),
    /// The room task has stopped.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

impl RoomHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Our DTLS fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Joins the call.
    pub fn join(&self) {
        let _ = self.tx.send(Command::Join);
    }

    /// Leaves the room (sends `leave`, closes everything) and waits until that went out.
    pub async fn leave(&self) {
        let _ = self.ask(Command::Leave).await;
    }

    /// Chat to everyone, or directed to one voiceId.
    pub async fn chat(
        &self,
        text: &str,
        to: Option<&str>,
    ) -> Result<Result<usize, SendError>, Stopped> {
        let (text, to) = (text.to_owned(), to.map(str::to_owned));
        self.ask(|r| Command::Chat(text, to, r)).await
    }

    /// Any content envelope, to everyone or one voiceId.
    pub async fn send(
        &self,
        content: Content,
        to: Option<&str>,
    ) -> Result<Result<usize, SendError>, Stopped> {
        let to = to.map(str::to_owned);
        self.ask(|r| Command::Content(content, to, r)).await
    }

    /// An app payload (`{k:'app', data}`), to everyone or one voiceId.
    pub async fn app(
        &self,
        data: Value,
        to: Option<&str>,
    ) -> Result<Result<usize, SendError>, Stopped> {
        self.send(Content::App { data }, to).await
    }

    /// A host action.
    pub async fn host(&self, action: HostAction) -> Result<(), HostActionError> {
        Ok(self.ask(|r| Command::Host(action, r)).await??)
    }

    /// Host: set a member's grant.
    pub async fn set_grant(&self, voice_id: &str, grant: Grant) -> Result<(), HostActionError> {
        let id = voice_id.to_owned();
        Ok(self.ask(|r| Command::Grant(id, grant, r)).await??)
    }

    /// Presents a fresh agent credit.
    pub fn set_agent_credit(&self, credit: Option<String>) {
        let _ = self.tx.send(Command::Credit(credit));
    }

    /// The roster with grants.
    pub async fn participants(&self) -> Result<Vec<Participant>, Stopped> {
        self.ask(Command::Participants).await
    }

    /// Our voiceId, once the media peer is open.
    pub async fn voice_id(&self) -> Result<Option<String>, Stopped> {
        self.ask(Command::VoiceId).await
    }

    /// The data-mesh channels.
    pub async fn mesh_links(&self) -> Result<Vec<MeshLink>, Stopped> {
        self.ask(Command::MeshLinks).await
    }

    /// The media connections, one per peer, with their kbps figures.
    pub async fn media_links(&self) -> Result<Vec<MediaLink>, Stopped> {
        self.ask(Command::MediaLinks).await
    }

    /// Mutes (the mic lane keeps flowing, as real silence) or unmutes.
    pub fn set_muted(&self, muted: bool) {
        let _ = self.tx.send(Command::Mute(muted));
    }

    /// Plays this source into the mic lane from now on (unmuting is separate).
    pub fn play(&self, source: AudioSource) {
        let _ = self.tx.send(Command::Play(source));
    }

    /// Marks this moment in the outgoing audio with a full-scale click (latency benchmark).
    pub fn inject_click(&self) {
        let _ = self.tx.send(Command::Click);
    }

    /// Fault injection for tests only (the CLI never calls it): drops every datagram of our
    /// media connections, both ways, for `span` from now, as if their UDP path were cut
    /// (sig and the room's data channels keep going). See `kibitz_rtc::PeerHandle::blackhole_media`.
    #[doc(hidden)]
    pub fn blackhole_media(&self, span: Duration) {
        let _ = self.tx.send(Command::Blackhole(span));
    }

    /// Camera on (the test pattern of [`MediaConfig::video`], announced `cam:true`) or off.
    pub fn set_camera(&self, on: bool) {
        let _ = self.tx.send(Command::Camera(on));
    }
}

/// What a peer task reports.
enum PeerMsg {
    Failed(PeerFailure),
    Event(RtcEvent),
    Dialled(ConnId, Option<kibitz_rtc::ConnId>),
    /// A media connection the driver named got its rtc id (or could not be made).
    MediaDialled(ConnId, Option<kibitz_rtc::ConnId>),
    /// Cumulative figures of an open media connection (about once a second).
    MediaStats(kibitz_rtc::ConnId, MediaStats),
}

/// What a peer task is asked to do, in order.
enum PeerOp {
    Connect(ConnId, String, Option<String>),
    Send(kibitz_rtc::ConnId, Value),
    Close(kibitz_rtc::ConnId),
    Media(MediaOp),
    Blackhole(Duration),
}

/// A media connection as the driver knows it.
struct MediaSlot {
    peer: PeerKey,
}

struct PeerSlot {
    ops: mpsc::UnboundedSender<PeerOp>,
}

#[derive(Clone, Copy)]
struct ConnSlot {
    peer: PeerKey,
    rtc: kibitz_rtc::ConnId,
    incoming: bool,
    open: bool,
}

struct Driver {
    engine: Engine,
    opts: RoomOptions,
    start: Instant,
    peers: BTreeMap<PeerKey, PeerSlot>,
    conns: BTreeMap<ConnId, ConnSlot>,
    by_rtc: BTreeMap<(PeerKey, kibitz_rtc::ConnId), ConnId>,
    /// Engine connections closed before the peer task said which rtc connection they are.
    dropped: BTreeSet<ConnId>,
    /// The label of each incoming connection, until it opens.
    incoming_labels: BTreeMap<(PeerKey, kibitz_rtc::ConnId), String>,
    next_incoming: u64,
    peer_tx: mpsc::UnboundedSender<(PeerKey, PeerMsg)>,
    events: mpsc::UnboundedSender<Event>,
    deadline: u64,
    media: MediaPlane,
    media_on: bool,
    media_peer: Option<PeerKey>,
    media_slots: BTreeMap<ConnId, MediaSlot>,
    media_by_rtc: BTreeMap<(PeerKey, kibitz_rtc::ConnId), ConnId>,
    video: Option<crate::media::VideoFeed>,
}

/// The one audited clock read of this crate.
#[allow(clippy::disallowed_methods)]
fn wall() -> (Instant, u64) {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (Instant::now(), unix)
}

/// Starts a participant: the engine runs in its own task until every handle is dropped or it
/// leaves. Events arrive on the returned channel.
pub fn start(room: RoomConfig, opts: RoomOptions) -> (RoomHandle, mpsc::UnboundedReceiver<Event>) {
    start_with_media(room, opts, MediaConfig::default())
}

/// [`start`], with these media sources and sinks (the default: muted silence, no camera,
/// nothing recorded).
pub fn start_with_media(
    mut room: RoomConfig,
    opts: RoomOptions,
    mut media: MediaConfig,
) -> (RoomHandle, mpsc::UnboundedReceiver<Event>) {
    let fingerprint = opts.identity.fingerprint().to_owned();
    room.fingerprint = Some(fingerprint.clone());
    let (start, unix) = wall();
    let now = Now {
        ms: 0,
        unix_ms: unix,
    };
    let media_on = room.media;
    let video = media.video.take().map(crate::media::VideoFeed::start);
    if video.is_some() {
        room.cam = true;
    }
    let engine = Engine::new(room, now);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (peer_tx, peer_rx) = mpsc::unbounded_channel();
    let mut driver = Driver {
        engine,
        opts,
        start,
        peers: BTreeMap::new(),
        conns: BTreeMap::new(),
        by_rtc: BTreeMap::new(),
        dropped: BTreeSet::new(),
        incoming_labels: BTreeMap::new(),
        next_incoming: 0,
        peer_tx,
        events: ev_tx,
        deadline: u64::MAX,
        media: MediaPlane::new(media),
        media_on,
        media_peer: None,
        media_slots: BTreeMap::new(),
        media_by_rtc: BTreeMap::new(),
        video,
    };
    driver.media.set_camera(driver.video.is_some());
    tokio::spawn(driver.run(rx, peer_rx, unix));
    (RoomHandle { tx, fingerprint }, ev_rx)
}

impl Driver {
    fn now(&self, unix0: u64) -> Now {
        let (instant, _) = wall();
        let ms = instant.saturating_duration_since(self.start).as_millis() as u64;
        Now {
            ms,
            unix_ms: unix0 + ms,
        }
    }

    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut peer_rx: mpsc::UnboundedReceiver<(PeerKey, PeerMsg)>,
        unix0: u64,
    ) {
        let now = self.now(unix0);
        self.engine.start(now);
        self.drain();
        // The media clock: 20 ms frames go out by elapsed time (the plane catches up on its own
        // when a tick is late); ticking twice per frame halves the wait of received audio
        // for its playout slot (mouth-to-ear: see bench/media.sh).
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut frames = self.video.as_mut().and_then(|v| v.frames.take());
        loop {
            let sleep_for = {
                let now = self.now(unix0).ms;
                Duration::from_millis(self.deadline.saturating_sub(now).min(3_600_000))
            };
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    let now = self.now(unix0);
                    let stop = self.command(now, cmd);
                    self.drain();
                    if stop {
                        break;
                    }
                }
                msg = peer_rx.recv() => {
                    let Some((key, msg)) = msg else { break };
                    let now = self.now(unix0);
                    for ev in self.translate(key, msg) {
                        self.engine.handle_input(now, Input::Net(ev));
                        self.drain();
                    }
                }
                () = tokio::time::sleep(sleep_for) => {
                    let now = self.now(unix0);
                    self.engine.handle_input(now, Input::Timeout);
                    self.drain();
                }
                _ = tick.tick(), if self.media_on => self.media_tick(),
                f = async { match frames.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    match f {
                        Some((data, key)) => self.media.push_camera_frame(data, key),
                        None => frames = None,
                    }
                }
            }
        }
        // Whatever is still open goes with the peers.
        self.media.finish();
        self.peers.clear();
    }

    /// Returns whether the room should stop.
    fn command(&mut self, now: Now, cmd: Command) -> bool {
        let e = &mut self.engine;
        match cmd {
            Command::Join => {
                e.join(now);
            }
            Command::Leave(done) => {
                e.leave(now);
                self.drain();
                let _ = done.send(());
                return true;
            }
            Command::Chat(text, to, r) => {
                let _ = r.send(e.chat(now, &text, to.as_deref()));
            }
            Command::Content(c, to, r) => {
                let _ = r.send(e.send_content(now, &c, to.as_deref()));
            }
            Command::Host(a, r) => {
                let res = match a {
                    HostAction::Lobby(on) => e.set_lobby(now, on),
                    HostAction::Admit(id) => e.admit(now, &id),
                    HostAction::Deny(id) => e.deny(now, &id),
                    HostAction::Remove(id) => e.remove(now, &id),
                    HostAction::Lock(on) => e.set_locked(now, on),
                    HostAction::Reset => e.reset(now),
                };
                let _ = r.send(res);
            }
            Command::Grant(id, g, r) => {
                let _ = r.send(e.set_capability_grant(now, &id, g));
            }
            Command::Credit(c) => e.set_agent_credit(now, c),
            Command::Participants(r) => {
                let _ = r.send(e.participants());
            }
            Command::VoiceId(r) => {
                let _ = r.send(e.voice_id().map(str::to_owned));
            }
            Command::MeshLinks(r) => {
                let _ = r.send(e.mesh_links());
            }
            Command::MediaLinks(r) => {
                let _ = r.send(e.media_links());
            }
            Command::Mute(m) => self.media.set_muted(m),
            Command::Play(src) => self.media.set_source(src),
            Command::Click => self.media.inject_click(),
            Command::Camera(on) => {
                let on = on && self.video.is_some();
                e.set_cam(now, on);
                self.media.set_camera(on);
            }
            Command::Blackhole(span) => {
                if let Some(p) = self.media_peer.and_then(|k| self.peers.get(&k)) {
                    let _ = p.ops.send(PeerOp::Blackhole(span));
                }
            }
        }
        false
    }

    fn drain(&mut self) {
        loop {
            match self.engine.poll_output() {
                Output::Timeout(t) => {
                    self.deadline = t;
                    return;
                }
                Output::Event(ev) => {
                    if let Event::Leave(id) = &ev {
                        self.media.forget(id);
                    }
                    let _ = self.events.send(ev);
                }
                Output::Net(cmd) => self.net(cmd),
            }
        }
    }

    fn net(&mut self, cmd: NetCmd) {
        match cmd {
            NetCmd::OpenPeer { key, id, plane } => self.open_peer(key, plane, id),
            NetCmd::ClosePeer { key } => {
                // Dropping the op sender ends the peer task, which destroys the peer.
                self.peers.remove(&key);
                for (c, _) in self.media_slots.extract_if(.., |_, m| m.peer == key) {
                    self.media.close(c);
                }
                self.media_by_rtc.retain(|(k, _), _| *k != key);
                self.conns.retain(|_, c| c.peer != key);
                self.by_rtc.retain(|(k, _), _| *k != key);
                self.incoming_labels.retain(|(k, _), _| *k != key);
            }
            NetCmd::Connect {
                peer,
                conn,
                remote,
                label,
            } => {
                if let Some(p) = self.peers.get(&peer) {
                    let _ = p.ops.send(PeerOp::Connect(conn, remote, label));
                }
            }
            NetCmd::Send { conn, frame } => {
                if let Some(c) = self.conns.get(&conn)
                    && let Some(p) = self.peers.get(&c.peer)
                {
                    let _ = p.ops.send(PeerOp::Send(c.rtc, frame));
                }
            }
            NetCmd::Close { conn } => match self.conns.remove(&conn) {
                Some(c) => {
                    self.by_rtc.remove(&(c.peer, c.rtc));
                    if let Some(p) = self.peers.get(&c.peer) {
                        let _ = p.ops.send(PeerOp::Close(c.rtc));
                    }
                }
                None => {
                    self.dropped.insert(conn);
                }
            },
            NetCmd::MediaGates { send, receive } => self.media.set_gates(send, receive),
            NetCmd::MediaCall {
                conn,
                remote,
                mode,
                relay,
            } => {
                let Some(peer) = self.media_peer else {
                    return;
                };
                self.media_slots.insert(conn, MediaSlot { peer });
                let op = match mode {
                    MediaMode::Legacy => MediaOp::Call { conn, remote },
                    MediaMode::Owned => MediaOp::Offer {
                        conn,
                        remote,
                        relay,
                    },
                };
                self.media_op(conn, op);
            }
            NetCmd::MediaAnswerCall { conn } => self.media_op(conn, MediaOp::Answer { conn }),
            NetCmd::MediaSignal {
                conn,
                remote,
                signal,
                relay,
            } => {
                let conn = conn.unwrap_or_else(|| {
                    self.next_incoming += 1;
                    ConnId::incoming(self.next_incoming)
                });
                if !self.media_slots.contains_key(&conn) {
                    let Some(peer) = self.media_peer else {
                        return;
                    };
                    self.media_slots.insert(conn, MediaSlot { peer });
                }
                let signal = to_rtc_signal(signal);
                self.media_op(
                    conn,
                    MediaOp::Signal {
                        conn,
                        remote,
                        signal,
                        relay,
                    },
                );
            }
            NetCmd::MediaRestartIce { conn } => self.media_op(conn, MediaOp::RestartIce { conn }),
            NetCmd::MediaClose { conn } => {
                self.media_op(conn, MediaOp::Close { conn });
                self.media_slots.remove(&conn);
                self.media_by_rtc.retain(|_, c| *c != conn);
                self.media.close(conn);
            }
        }
    }

    fn media_op(&self, conn: ConnId, op: MediaOp) {
        if let Some(slot) = self.media_slots.get(&conn)
            && let Some(p) = self.peers.get(&slot.peer)
        {
            let _ = p.ops.send(PeerOp::Media(op));
        }
    }

    /// Every 20 ms: frames out on every open media connection, media events to the app.
    fn media_tick(&mut self) {
        let (now, _) = wall();
        for w in self.media.tick(now) {
            let lane = lane_ref(w.lane);
            self.media_op(
                w.conn,
                MediaOp::Write {
                    conn: w.conn,
                    lane,
                    rtp_time: w.rtp_time,
                    data: w.data,
                },
            );
        }
        for ev in self.media.take_events() {
            let _ = self.events.send(ev);
        }
    }

    fn name_of(&self, voice_id: &str) -> String {
        self.engine
            .participants()
            .into_iter()
            .find(|p| p.id == voice_id)
            .map(|p| p.name)
            .unwrap_or_default()
    }

    fn open_peer(&mut self, key: PeerKey, plane: Plane, id: Option<String>) {
        if plane == Plane::Media {
            self.media_peer = Some(key);
        }
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        self.peers.insert(key, PeerSlot { ops: ops_tx });
        let mut o = PeerOptions::new(self.opts.broker.clone(), self.opts.identity.clone());
        o.id = id;
        o.relay = self.opts.relay.clone();
        o.media_relay = self.opts.media_relay.clone();
        tokio::spawn(peer_task(key, o, ops_rx, self.peer_tx.clone()));
    }

    /// Turns what a peer task reported into engine input.
    fn translate(&mut self, key: PeerKey, msg: PeerMsg) -> Vec<NetEvent> {
        if !self.peers.contains_key(&key) {
            return Vec::new();
        }
        match msg {
            PeerMsg::Failed(failure) => {
                self.peers.remove(&key);
                vec![NetEvent::PeerFailed { key, failure }]
            }
            PeerMsg::Dialled(conn, rtc) => {
                let closed = self.dropped.remove(&conn);
                match rtc {
                    Some(rtc) if !closed => {
                        self.conns.insert(
                            conn,
                            ConnSlot {
                                peer: key,
                                rtc,
                                incoming: false,
                                open: false,
                            },
                        );
                        self.by_rtc.insert((key, rtc), conn);
                        Vec::new()
                    }
                    Some(rtc) => {
                        if let Some(p) = self.peers.get(&key) {
                            let _ = p.ops.send(PeerOp::Close(rtc));
                        }
                        Vec::new()
                    }
                    None => vec![NetEvent::ConnFailed { conn }],
                }
            }
            PeerMsg::Event(ev) => self.rtc_event(key, ev),
            PeerMsg::MediaDialled(conn, rtc) => match (rtc, self.media_slots.contains_key(&conn)) {
                (Some(rtc), true) => {
                    self.media_by_rtc.insert((key, rtc), conn);
                    Vec::new()
                }
                // Closed meanwhile: the task already forgot it, or will on this close.
                (Some(_), false) => Vec::new(),
                (None, true) => {
                    self.media_slots.remove(&conn);
                    vec![NetEvent::MediaClosed { conn, failed: true }]
                }
                (None, false) => Vec::new(),
            },
            PeerMsg::MediaStats(rtc, st) => match self.media_by_rtc.get(&(key, rtc)) {
                Some(&conn) => vec![NetEvent::MediaStats {
                    conn,
                    audio_in_bytes: st.audio_in_bytes,
                    video_in_bytes: st.video_in_bytes,
                    audio_out_bytes: st.audio_out_bytes,
                    video_out_bytes: st.video_out_bytes,
                }],
                None => Vec::new(),
            },
        }
    }

    fn rtc_event(&mut self, key: PeerKey, ev: RtcEvent) -> Vec<NetEvent> {
        match ev {
            RtcEvent::Open { id } => vec![NetEvent::PeerOpen { key, id }],
            RtcEvent::IdTaken => {
                self.peers.remove(&key);
                vec![NetEvent::PeerFailed {
                    key,
                    failure: PeerFailure::IdTaken,
                }]
            }
            RtcEvent::Error { .. } | RtcEvent::Disconnected => {
                // The broker is gone for this peer: the engine decides what to rebuild.
                self.peers.remove(&key);
                vec![NetEvent::PeerFailed {
                    key,
                    failure: PeerFailure::Lost,
                }]
            }
            RtcEvent::Connection { conn, info, .. } => {
                self.incoming_labels.insert((key, conn), info.label);
                Vec::new()
            }
            RtcEvent::ConnOpen {
                conn,
                remote,
                remote_fingerprint,
            } => match self.by_rtc.get(&(key, conn)).copied() {
                Some(c) => {
                    if let Some(slot) = self.conns.get_mut(&c) {
                        slot.open = true;
                    }
                    vec![NetEvent::Open {
                        conn: c,
                        fingerprint: Some(remote_fingerprint),
                    }]
                }
                None => {
                    let Some(label) = self.incoming_labels.remove(&(key, conn)) else {
                        return Vec::new();
                    };
                    self.next_incoming += 1;
                    let c = ConnId::incoming(self.next_incoming);
                    self.conns.insert(
                        c,
                        ConnSlot {
                            peer: key,
                            rtc: conn,
                            incoming: true,
                            open: true,
                        },
                    );
                    self.by_rtc.insert((key, conn), c);
                    vec![NetEvent::Incoming {
                        peer: key,
                        conn: c,
                        remote,
                        fingerprint: Some(remote_fingerprint),
                        label: Some(label),
                    }]
                }
            },
            RtcEvent::Data { conn, value } => {
                let Some(c) = self.by_rtc.get(&(key, conn)).copied() else {
                    return Vec::new();
                };
                match value {
                    RtcMessage::Pack(frame) => vec![NetEvent::Data { conn: c, frame }],
                    // The room speaks BinaryPack only; anything else on its channels is noise.
                    _ => Vec::new(),
                }
            }
            RtcEvent::ConnClosed { conn, .. } => {
                self.incoming_labels.remove(&(key, conn));
                let Some(c) = self.by_rtc.remove(&(key, conn)) else {
                    return Vec::new();
                };
                match self.conns.remove(&c) {
                    Some(slot) if slot.open || slot.incoming => vec![NetEvent::Closed { conn: c }],
                    Some(_) => vec![NetEvent::ConnFailed { conn: c }],
                    None => Vec::new(),
                }
            }
            RtcEvent::Call { conn, remote, .. } => {
                if Some(key) != self.media_peer {
                    return Vec::new();
                }
                self.next_incoming += 1;
                let c = ConnId::incoming(self.next_incoming);
                self.media_slots.insert(c, MediaSlot { peer: key });
                self.media_by_rtc.insert((key, conn), c);
                self.media_op(c, MediaOp::Adopt { conn: c, rtc: conn });
                vec![NetEvent::MediaIncomingCall { conn: c, remote }]
            }
            RtcEvent::MediaSignal { conn, signal, .. } => {
                match self.media_by_rtc.get(&(key, conn)) {
                    Some(&c) => vec![NetEvent::MediaLocalSignal {
                        conn: c,
                        signal: from_rtc_signal(signal),
                    }],
                    None => Vec::new(),
                }
            }
            RtcEvent::MediaOpen {
                conn,
                remote,
                lanes,
            } => {
                let Some(&c) = self.media_by_rtc.get(&(key, conn)) else {
                    return Vec::new();
                };
                let lanes = lanes.into_iter().filter_map(media_lane).collect();
                let name = self.name_of(&remote);
                self.media.open(c, &remote, &name, lanes);
                // A newcomer needs a keyframe to see the camera at once.
                if let Some(v) = &self.video {
                    v.request_keyframe();
                }
                // And we want theirs, to learn the picture's size without waiting.
                self.media_op(
                    c,
                    MediaOp::Keyframe {
                        conn: c,
                        lane: LaneRef::CAMERA,
                    },
                );
                vec![NetEvent::MediaOpen { conn: c }]
            }
            RtcEvent::MediaFrame {
                conn,
                lane,
                codec,
                rtp_time,
                data,
            } => {
                if let (Some(&c), Some(lane)) =
                    (self.media_by_rtc.get(&(key, conn)), media_lane(lane))
                    && matches!(codec, MediaCodec::Opus | MediaCodec::Vp8)
                {
                    let (now, _) = wall();
                    self.media.receive(now, c, lane, rtp_time, data);
                }
                Vec::new()
            }
            RtcEvent::KeyframeRequest { lane, .. } => {
                if media_lane(lane) == Some(MediaLane::Camera)
                    && let Some(v) = &self.video
                {
                    v.request_keyframe();
                }
                Vec::new()
            }
            RtcEvent::MediaClosed { conn, reason } => {
                let Some(c) = self.media_by_rtc.remove(&(key, conn)) else {
                    return Vec::new();
                };
                self.media_slots.remove(&c);
                self.media.close(c);
                let failed = !matches!(
                    reason,
                    CloseReason::Local
                        | CloseReason::Remote
                        | CloseReason::Replaced
                        | CloseReason::Left
                );
                vec![NetEvent::MediaClosed { conn: c, failed }]
            }
            // LEAVE, or EXPIRE for an id we signalled: either way that peer is gone from the
            // broker (for the room id: the authority is, so claim at once).
            RtcEvent::Leave { remote } | RtcEvent::Expire { remote } => {
                vec![NetEvent::Left { peer: key, remote }]
            }
            // Nothing the room acts on.
            _ => Vec::new(),
        }
    }
}

/// One peer: registers, then carries out ops in order and forwards events.
async fn peer_task(
    key: PeerKey,
    opts: PeerOptions,
    mut ops: mpsc::UnboundedReceiver<PeerOp>,
    out: mpsc::UnboundedSender<(PeerKey, PeerMsg)>,
) {
    let (peer, mut events) = match Peer::connect(opts).await {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "peer could not start");
            let _ = out.send((key, PeerMsg::Failed(PeerFailure::Error)));
            return;
        }
    };
    let mut media: BTreeMap<ConnId, kibitz_rtc::ConnId> = BTreeMap::new();
    let mut stats = tokio::time::interval(Duration::from_secs(1));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { break };
                let ok = match op {
                    PeerOp::Media(m) => run_media_op(&peer, key, m, &mut media, &out).await,
                    op => run_op(&peer, key, op, &out).await,
                };
                if !ok {
                    break;
                }
            }
            _ = stats.tick(), if !media.is_empty() => {
                for &rtc in media.values() {
                    if let Some(st) = peer.media_stats(rtc).await
                        && out.send((key, PeerMsg::MediaStats(rtc, st))).is_err()
                    {
                        break;
                    }
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else {
                    let _ = out.send((key, PeerMsg::Failed(PeerFailure::Lost)));
                    break;
                };
                if let RtcEvent::MediaClosed { conn, .. } = &ev {
                    media.retain(|_, r| r != conn);
                }
                if out.send((key, PeerMsg::Event(ev))).is_err() {
                    break;
                }
            }
        }
    }
    // A `leave` queued just before may still be in flight: give it a moment on the wire.
    tokio::time::sleep(Duration::from_millis(200)).await;
    peer.destroy();
}

async fn run_op(
    peer: &PeerHandle,
    key: PeerKey,
    op: PeerOp,
    out: &mpsc::UnboundedSender<(PeerKey, PeerMsg)>,
) -> bool {
    match op {
        PeerOp::Connect(conn, remote, label) => {
            let opts = ConnectOptions {
                reliable: true,
                label,
                ..ConnectOptions::default()
            };
            let rtc = match peer.connect(&remote, opts).await {
                Ok(c) => Some(c),
                Err(e) => {
                    debug!(error = %e, "dial failed");
                    None
                }
            };
            out.send((key, PeerMsg::Dialled(conn, rtc))).is_ok()
        }
        PeerOp::Send(conn, frame) => {
            if let Err(e) = peer.send(conn, RtcMessage::Pack(frame)).await {
                debug!(error = %e, "send refused");
            }
            true
        }
        PeerOp::Close(conn) => {
            peer.close(conn);
            true
        }
        PeerOp::Blackhole(span) => {
            peer.blackhole_media(span);
            true
        }
        // The peer task routes these to run_media_op.
        PeerOp::Media(_) => true,
    }
}
