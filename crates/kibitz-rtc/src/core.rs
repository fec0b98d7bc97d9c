//! The peer as a sans-IO state machine: broker frames, UDP datagrams, commands and time go in;
//! frames to send to the broker, datagrams to send, events and a deadline come out.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{debug, trace, warn};

use crate::conn::{ConnConfig, ConnOut, DataConn, Sock};
use crate::media::{
    LaneRef, MediaCodec, MediaConn, MediaError, MediaOptions, MediaOut, MediaSignal, MediaStats,
    MediaWriteError,
};
use crate::signal::{self, CandidateInit, OfferMeta, Payload, ServerMsg, SignalError};
use crate::turn::RelayConfig;
use crate::{
    CloseReason, ConnError, ConnId, ConnInfo, ConnectOptions, Identity, Message, SendError,
    Serialization,
};

/// Something a peer reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The broker sent `OPEN`: the id is ours.
    Open {
        /// Our id.
        id: String,
    },
    /// A remote OFFER was accepted; [`Event::ConnOpen`] follows when the channel opens.
    Connection {
        /// The new connection.
        conn: ConnId,
        /// Who offered.
        remote: String,
        /// What the OFFER asked for.
        info: ConnInfo,
    },
    /// The data channel is open (both roles): [`crate::PeerHandle::send`] delivers now.
    ConnOpen {
        /// The connection.
        conn: ConnId,
        /// The remote id.
        remote: String,
        /// The remote's DTLS certificate fingerprint (SHA-256, colon-hex), from its SDP and
        /// verified by the DTLS handshake.
        remote_fingerprint: String,
    },
    /// A message arrived.
    Data {
        /// The connection.
        conn: ConnId,
        /// The message.
        value: Message,
    },
    /// Buffered data fell to the low-water mark after a [`SendError::Full`].
    BufferedLow {
        /// The connection.
        conn: ConnId,
    },
    /// The connection ended; its id is never used again.
    ConnClosed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A problem on a connection that did not close it (an undecodable message).
    ConnError {
        /// The connection.
        conn: ConnId,
        /// What.
        error: ConnError,
    },
    /// A frame from the broker, or a payload relayed from a remote, was refused (never fatal).
    SignalError(SignalError),
    /// The broker sent `ERROR` (bad key, limit reached, …); it closes the socket next.
    Error {
        /// The broker's message.
        message: String,
    },
    /// The broker sent `ID-TAKEN`: someone else holds our id.
    IdTaken,
    /// The broker could not deliver to `remote` (`EXPIRE`); unopened connections to it close.
    Expire {
        /// The unreachable id.
        remote: String,
    },
    /// `remote` left (`LEAVE`); every connection with it closes.
    Leave {
        /// Who left.
        remote: String,
    },
    /// A PeerJS media call arrived (legacy): answer it with [`PeerCore::answer_call`] or
    /// close it; [`Event::MediaOpen`] follows an answer once connected. A call neither
    /// answered nor open within [`CoreConfig::open_timeout`] closes
    /// ([`CloseReason::Timeout`]).
    Call {
        /// The new media connection.
        conn: ConnId,
        /// Who calls.
        remote: String,
        /// The PeerJS connectionId (`mc_…`).
        connection_id: String,
    },
    /// Signalling of an owned media connection for the application to carry to `remote`
    /// (as `m-sdp` / `m-ice`).
    MediaSignal {
        /// The media connection.
        conn: ConnId,
        /// Whom to send it to.
        remote: String,
        /// The offer, answer or candidate.
        signal: MediaSignal,
    },
    /// The media connection is connected (ICE + DTLS): frames flow both ways.
    MediaOpen {
        /// The media connection.
        conn: ConnId,
        /// The remote id.
        remote: String,
        /// The lanes negotiated (rejected ones left out).
        lanes: Vec<LaneRef>,
    },
    /// A media frame arrived (an Opus packet, a whole VP8 frame).
    MediaFrame {
        /// The media connection.
        conn: ConnId,
        /// Which m-line.
        lane: LaneRef,
        /// Its codec.
        codec: MediaCodec,
        /// RTP time (48 kHz audio, 90 kHz video), extended to 64 bits.
        rtp_time: u64,
        /// The frame.
        data: Vec<u8>,
    },
    /// ICE lost (`connected: false`) or regained the remote after [`Event::MediaOpen`].
    MediaState {
        /// The media connection.
        conn: ConnId,
        /// Whether it is connected now.
        connected: bool,
    },
    /// The remote asked for a keyframe (PLI/FIR) on `lane`.
    KeyframeRequest {
        /// The media connection.
        conn: ConnId,
        /// Which lane.
        lane: LaneRef,
    },
    /// The media connection ended; its id is never used again.
    MediaClosed {
        /// The media connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// The broker socket closed; open connections carry on. Call
    /// [`crate::PeerHandle::reconnect`] to come back with the same id and token.
    Disconnected,
}

/// Input to [`PeerCore::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// The time given by the last [`Output::Timeout`] has come (early calls are harmless).
    Timeout,
    /// One text frame from the broker.
    Signal(&'a str),
    /// One UDP datagram arrived on our socket bound at `local` from `source`.
    Datagram {
        /// The remote address.
        source: SocketAddr,
        /// The socket's address, as given to [`PeerCore::add_socket`].
        local: SocketAddr,
        /// The datagram.
        contents: &'a [u8],
    },
    /// The broker WebSocket is (re)connected: held frames go out, heartbeats start.
    BrokerConnected,
    /// The broker WebSocket closed: emits [`Event::Disconnected`]; connections carry on.
    BrokerDisconnected,
}

/// What [`PeerCore::poll_output`] gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A text frame for the broker WebSocket.
    Signal(String),
    /// A UDP datagram to send from the socket bound at `source`.
    Transmit {
        /// The local address (one of the host candidates).
        source: SocketAddr,
        /// Where to.
        destination: SocketAddr,
        /// The datagram.
        contents: Vec<u8>,
    },
    /// An event for the application.
    Event(Event),
    /// The connection on the socket bound at `local` is gone: close the socket.
    Release {
        /// The socket's address, as given to [`PeerCore::add_socket`].
        local: SocketAddr,
    },
    /// Nothing more for now: call [`PeerCore::handle_input`] with [`Input::Timeout`] at this
    /// time, or earlier on any input. `None`: nothing is scheduled, only input brings more.
    Timeout(Option<Instant>),
}

/// Tunables of a [`PeerCore`].
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Our id at the broker.
    pub id: String,
    /// The DTLS identity every connection presents.
    pub identity: Identity,
    /// The addresses advertised for a socket bound to an unspecified address (`0.0.0.0:p`
    /// advertises each of these with port `p`); a socket bound to a specific address
    /// advertises that address. Default `127.0.0.1`.
    pub host_ips: Vec<IpAddr>,
    /// `HEARTBEAT` interval (PeerJS: 5 s).
    pub heartbeat: Duration,
    /// Per-connection bound on buffered outgoing bytes (PeerJS: 8 MiB).
    pub max_buffered: usize,
    /// A connection not open this long after it was made is closed.
    pub open_timeout: Duration,
    /// Largest message accepted (also bounds chunk reassembly).
    pub max_message: usize,
    /// Most connections at once (each holds a socket and a WebRTC stack); OFFERs beyond are
    /// refused and [`PeerCore::connect`] fails. Default 256.
    pub max_connections: usize,
    /// Relay-only (`iceTransportPolicy: "relay"`): every connection allocates on this TURN
    /// server and advertises and uses only the relay address; no allocation, no connection.
    pub relay: Option<RelayConfig>,
    /// TURN for the media connections asked to be relay-only (owned media's relay rebuild,
    /// the web client's `m-recreate{relay:true}`) when the peer itself is not relay-only.
    pub media_relay: Option<RelayConfig>,
}

impl CoreConfig {
    /// Defaults for `id` and `identity`: heartbeat 5 s, 8 MiB buffers, 30 s open timeout,
    /// 16 MiB messages, no host candidates (add the socket's address).
    pub fn new(id: String, identity: Identity) -> Self {
        CoreConfig {
            id,
            identity,
            host_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            heartbeat: Duration::from_secs(5),
            max_buffered: 8 << 20,
            open_timeout: Duration::from_secs(30),
            max_message: 16 << 20,
            max_connections: 256,
            relay: None,
            media_relay: None,
        }
    }
}

/// Frames for the broker held while its socket is down, at most.
const MAX_HELD_SIGNALS: usize = 1024;

/// One PeerJS peer, sans-IO.
///
/// Feed it with [`PeerCore::handle_input`] and the commands; after any of them, drain
/// [`PeerCore::poll_output`] until [`Output::Timeout`], then sleep until the time it gives.
#[derive(Debug)]
pub struct PeerCore {
    cfg: CoreConfig,
    conn_cfg: ConnConfig,
    conns: BTreeMap<ConnId, DataConn>,
    media: BTreeMap<ConnId, MediaConn>,
    media_by_key: BTreeMap<(String, String), ConnId>,
    by_local: BTreeMap<SocketAddr, ConnId>,
    spares: VecDeque<SocketAddr>,
    by_key: BTreeMap<(String, String), ConnId>,
    next_conn: u64,
    out: VecDeque<Output>,
    broker_up: bool,
    held: VecDeque<String>,
    heartbeat_at: Option<Instant>,
}

impl PeerCore {
    /// A peer with no broker socket yet (feed [`Input::BrokerConnected`] when there is one).
    pub fn new(cfg: CoreConfig) -> Self {
        let conn_cfg = ConnConfig {
            max_buffered: cfg.max_buffered,
            open_timeout: cfg.open_timeout,
            max_message: cfg.max_message,
            low_water: cfg.max_buffered / 4,
        };
        PeerCore {
            cfg,
            conn_cfg,
            conns: BTreeMap::new(),
            media: BTreeMap::new(),
            media_by_key: BTreeMap::new(),
            by_local: BTreeMap::new(),
            spares: VecDeque::new(),
            by_key: BTreeMap::new(),
            next_conn: 1,
            out: VecDeque::new(),
            broker_up: false,
            held: VecDeque::new(),
            heartbeat_at: None,
        }
    }

    /// Our id.
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// Gives the core a freshly bound UDP socket's address for a future connection. Every
    /// connection takes one (each its own socket, as a browser's peer connections do);
    /// keep at least one spare so an incoming OFFER can be answered
    /// ([`PeerCore::spare_sockets`]). [`Output::Release`] hands it back.
    pub fn add_socket(&mut self, local: SocketAddr) {
        self.spares.push_back(local);
    }

    /// Sockets given and not yet used.
    pub fn spare_sockets(&self) -> usize {
        self.spares.len()
    }

    fn take_socket(&mut self) -> Option<(SocketAddr, Vec<SocketAddr>)> {
        let local = self.spares.pop_front()?;
        let hosts = if local.ip().is_unspecified() {
            self.cfg
                .host_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, local.port()))
                .collect()
        } else {
            vec![local]
        };
        Some((local, hosts))
    }

    /// Feeds time and one input. Drain [`PeerCore::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Timeout => self.on_timeout(now),
            Input::Signal(text) => self.on_signal(now, text),
            Input::Datagram {
                source,
                local,
                contents,
            } => self.on_datagram(now, source, local, contents),
            Input::BrokerConnected => self.on_broker_connected(now),
            Input::BrokerDisconnected => self.on_broker_disconnected(),
        }
    }

    fn on_broker_connected(&mut self, now: Instant) {
        self.broker_up = true;
        self.heartbeat_at = Some(now + self.cfg.heartbeat);
        while let Some(s) = self.held.pop_front() {
            self.out.push_back(Output::Signal(s));
        }
    }

    fn on_broker_disconnected(&mut self) {
        if self.broker_up {
            self.broker_up = false;
            self.heartbeat_at = None;
            self.event(Event::Disconnected);
        }
    }

    fn signal(&mut self, text: String) {
        if self.broker_up {
            self.out.push_back(Output::Signal(text));
        } else if self.held.len() < MAX_HELD_SIGNALS {
            self.held.push_back(text);
        } else {
            warn!("broker down and signal backlog full; frame dropped");
        }
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn reject_offer(&mut self, src: String, connection_id: String, why: impl Into<String>) {
        self.event(Event::SignalError(SignalError::Rejected {
            kind: "OFFER",
            src,
            connection_id,
            why: why.into(),
        }));
    }

    /// The next output; [`Output::Timeout`] once drained.
    pub fn poll_output(&mut self) -> Output {
        match self.out.pop_front() {
            Some(o) => o,
            None => Output::Timeout(self.next_timeout()),
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(DataConn::next_timeout)
            .chain(self.media.values().filter_map(MediaConn::next_timeout))
            .chain(self.heartbeat_at)
            .min()
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(at) = self.heartbeat_at
            && now >= at
        {
            self.out
                .push_back(Output::Signal(signal::HEARTBEAT.to_owned()));
            self.heartbeat_at = Some(now + self.cfg.heartbeat);
        }
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.next_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let mut outs = Vec::new();
            if let Some(c) = self.conns.get_mut(&id) {
                c.handle_timeout(now, &mut outs);
                c.poll(now, &mut outs);
            }
            self.absorb(id, outs);
        }
        let due: Vec<ConnId> = self
            .media
            .iter()
            .filter(|(_, c)| c.next_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let mut outs = Vec::new();
            if let Some(c) = self.media.get_mut(&id) {
                c.handle_timeout(now, &mut outs);
                c.poll(now, &mut outs);
            }
            self.absorb_media(id, outs);
        }
    }

    fn on_datagram(&mut self, now: Instant, source: SocketAddr, local: SocketAddr, buf: &[u8]) {
        let Some(id) = self.by_local.get(&local).copied() else {
            trace!("datagram for no connection ignored");
            return;
        };
        if let Some(c) = self.media.get_mut(&id) {
            let mut outs = Vec::new();
            c.handle_datagram(now, source, buf, &mut outs);
            c.poll(now, &mut outs);
            self.absorb_media(id, outs);
            return;
        }
        let mut outs = Vec::new();
        if let Some(c) = self.conns.get_mut(&id) {
            c.handle_datagram(now, source, buf, &mut outs);
            c.poll(now, &mut outs);
        }
        self.absorb(id, outs);
    }

    fn on_signal(&mut self, now: Instant, text: &str) {
        let msg = match signal::parse_server(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "broker frame refused");
                self.event(Event::SignalError(e));
                return;
            }
        };
        match msg {
            ServerMsg::Open => {
                let id = self.cfg.id.clone();
                self.event(Event::Open { id });
            }
            ServerMsg::Error(message) => self.event(Event::Error { message }),
            ServerMsg::IdTaken => self.event(Event::IdTaken),
            ServerMsg::Expire { src } => {
                self.event(Event::Expire {
                    remote: src.clone(),
                });
                self.close_remote(now, &src, true);
            }
            ServerMsg::Leave { src } => {
                self.event(Event::Leave {
                    remote: src.clone(),
                });
                self.close_remote(now, &src, false);
            }
            ServerMsg::Offer { src, payload } => self.on_offer(now, src, payload),
            ServerMsg::Answer { src, payload } => self.on_answer(now, src, payload),
            ServerMsg::Candidate { src, payload } => self.on_candidate(now, src, payload),
            ServerMsg::Other => {}
        }
    }

    fn close_remote(&mut self, now: Instant, remote: &str, only_unopened: bool) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.remote == remote && !(only_unopened && c.is_open()))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close_with(now, id, CloseReason::Left);
        }
        let ids: Vec<ConnId> = self
            .media
            .iter()
            .filter(|(_, c)| c.remote == remote && !(only_unopened && c.is_open()))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close_with(now, id, CloseReason::Left);
        }
    }

    fn bad(&mut self, kind: &'static str, src: &str, why: &str) {
        self.event(Event::SignalError(SignalError::BadPayload {
            kind,
            src: src.to_owned(),
            why: why.to_owned(),
        }));
    }

    fn on_offer(&mut self, now: Instant, src: String, p: Payload) {
        let kind = p.kind.clone().unwrap_or_default();
        if kind == "media" {
            return self.on_media_offer(now, src, p);
        }
        if kind != "data" {
            self.event(Event::SignalError(SignalError::Unsupported { src, kind }));
            return;
        }
        let (Some(connection_id), Some(sdp)) = (p.connection_id.clone(), p.sdp.as_ref()) else {
            return self.bad("OFFER", &src, "no connectionId or sdp");
        };
        if connection_id.is_empty() || sdp.kind != "offer" {
            return self.bad("OFFER", &src, "empty connectionId or sdp type not offer");
        }
        let wire = p.serialization.clone().unwrap_or_else(|| "default".into());
        let Some(serialization) = Serialization::from_wire(&wire) else {
            self.event(Event::SignalError(SignalError::UnsupportedSerialization {
                src,
                serialization: wire,
            }));
            return;
        };
        let key = (src.clone(), connection_id.clone());
        if let Some(old) = self.by_key.get(&key).copied() {
            self.close_with(now, old, CloseReason::Replaced);
        }
        if self.conns.len() >= self.cfg.max_connections {
            self.reject_offer(src, connection_id, "too many connections");
            return;
        }
        let info = ConnInfo {
            label: p.label.clone().unwrap_or_else(|| connection_id.clone()),
            connection_id: connection_id.clone(),
            serialization,
            reliable: p.reliable.unwrap_or(false),
            metadata: p.metadata.clone(),
        };
        let Some((local, hosts)) = self.take_socket() else {
            self.reject_offer(src, connection_id, "no spare UDP socket");
            return;
        };
        let id = self.alloc();
        let sock = Sock {
            local,
            hosts: &hosts,
            identity: &self.cfg.identity,
            cfg: &self.conn_cfg,
            relay: self.cfg.relay.as_ref(),
        };
        let made = DataConn::answer(now, id, src.clone(), info.clone(), &sdp.sdp, sock);
        let (conn, answer_sdp) = match made {
            Ok(x) => x,
            Err(why) => {
                self.spares.push_front(local);
                self.reject_offer(src, connection_id, why);
                return;
            }
        };
        debug!(%id, "accepted offer");
        let cands = conn.local_candidates();
        self.signal(signal::answer(&src, &connection_id, answer_sdp));
        for c in cands {
            self.signal(signal::candidate(&src, &connection_id, c));
        }
        self.conns.insert(id, conn);
        self.by_local.insert(local, id);
        self.by_key.insert(key, id);
        self.event(Event::Connection {
            conn: id,
            remote: src,
            info,
        });
        self.poll_conn(now, id);
    }

    fn find(&self, src: &str, p: &Payload) -> Option<ConnId> {
        let cid = p.connection_id.as_ref()?;
        self.by_key.get(&(src.to_owned(), cid.clone())).copied()
    }

    fn on_answer(&mut self, now: Instant, src: String, p: Payload) {
        if p.kind.as_deref() == Some("media") {
            return self.on_media_answer(now, src, p);
        }
        let Some(id) = self.find(&src, &p) else {
            return self.bad("ANSWER", &src, "unknown connectionId");
        };
        let Some(sdp) = p.sdp.as_ref().filter(|s| s.kind == "answer") else {
            return self.bad("ANSWER", &src, "no answer sdp");
        };
        let res = match self.conns.get_mut(&id) {
            // A stray ANSWER (we answered, or it already came) is refused; the connection
            // stays as it is.
            Some(c) if !c.awaiting_answer() => {
                return self.bad("ANSWER", &src, "no offer outstanding");
            }
            Some(c) => c.accept_answer(now, &sdp.sdp),
            None => return,
        };
        if let Err(why) = res {
            self.event(Event::SignalError(SignalError::Rejected {
                kind: "ANSWER",
                src,
                connection_id: p.connection_id.unwrap_or_default(),
                why: why.clone(),
            }));
            self.close_with(now, id, CloseReason::Failed(why));
            return;
        }
        self.poll_conn(now, id);
    }

    fn on_candidate(&mut self, now: Instant, src: String, p: Payload) {
        if p.kind.as_deref() == Some("media") {
            return self.on_media_candidate(now, src, p);
        }
        let Some(cand) = p.candidate.as_ref() else {
            return self.bad("CANDIDATE", &src, "no candidate");
        };
        let Some(id) = self.find(&src, &p) else {
            debug!("candidate for an unknown connection ignored");
            return;
        };
        let res = match self.conns.get_mut(&id) {
            Some(c) => c.add_remote_candidate(now, cand),
            None => return,
        };
        if let Err(why) = res {
            self.event(Event::SignalError(SignalError::Rejected {
                kind: "CANDIDATE",
                src,
                connection_id: p.connection_id.unwrap_or_default(),
                why,
            }));
            return;
        }
        self.poll_conn(now, id);
    }

    fn alloc(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    fn poll_conn(&mut self, now: Instant, id: ConnId) {
        let mut outs = Vec::new();
        if let Some(c) = self.conns.get_mut(&id) {
            c.poll(now, &mut outs);
        }
        self.absorb(id, outs);
    }

    fn absorb(&mut self, id: ConnId, outs: Vec<ConnOut>) {
        for o in outs {
            match o {
                ConnOut::Transmit {
                    source,
                    destination,
                    contents,
                } => self.out.push_back(Output::Transmit {
                    source,
                    destination,
                    contents,
                }),
                ConnOut::Open { remote_fingerprint } => {
                    let remote = self
                        .conns
                        .get(&id)
                        .map(|c| c.remote.clone())
                        .unwrap_or_default();
                    debug!(%id, "connection open");
                    self.event(Event::ConnOpen {
                        conn: id,
                        remote,
                        remote_fingerprint,
                    });
                }
                ConnOut::Data(value) => self.event(Event::Data { conn: id, value }),
                ConnOut::Error(error) => self.event(Event::ConnError { conn: id, error }),
                ConnOut::BufferedLow => self.event(Event::BufferedLow { conn: id }),
                ConnOut::LocalCandidate(cand) => {
                    if let Some(c) = self.conns.get(&id) {
                        let text = signal::candidate(&c.remote, &c.info.connection_id, cand);
                        self.signal(text);
                    }
                }
                ConnOut::Closed(reason) => {
                    debug!(%id, ?reason, "connection closed");
                    self.event(Event::ConnClosed { conn: id, reason });
                }
            }
        }
        if self.conns.get(&id).is_some_and(DataConn::is_closed) {
            self.forget(id);
        }
    }

    fn forget(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            self.by_key
                .remove(&(c.remote.clone(), c.info.connection_id.clone()));
            self.by_local.remove(&c.local);
            self.out.push_back(Output::Release { local: c.local });
        }
    }

    fn close_with(&mut self, now: Instant, id: ConnId, reason: CloseReason) {
        if let Some(c) = self.media.get_mut(&id) {
            let mut outs = Vec::new();
            c.close(now, reason, &mut outs);
            self.absorb_media(id, outs);
            return;
        }
        let mut outs = Vec::new();
        if let Some(c) = self.conns.get_mut(&id) {
            c.close(now, reason, &mut outs);
        }
        self.absorb(id, outs);
    }

    /// Opens a data connection to `remote` as the offerer, with `connection_id` (the driver
    /// draws one when the options leave it empty). The OFFER goes to the broker at once (or
    /// when the broker socket is back).
    pub fn connect(
        &mut self,
        now: Instant,
        remote: &str,
        connection_id: String,
        opts: ConnectOptions,
    ) -> Result<ConnId, String> {
        if remote.is_empty() || connection_id.is_empty() {
            return Err("empty remote id or connectionId".into());
        }
        if self.conns.len() >= self.cfg.max_connections {
            return Err("too many connections".into());
        }
        let key = (remote.to_owned(), connection_id.clone());
        if self.by_key.contains_key(&key) {
            return Err(format!("connectionId {connection_id} is in use"));
        }
        let info = ConnInfo {
            label: opts.label.unwrap_or_else(|| connection_id.clone()),
            connection_id: connection_id.clone(),
            serialization: opts.serialization,
            reliable: opts.reliable,
            metadata: opts.metadata,
        };
        let (local, hosts) = self.take_socket().ok_or("no spare UDP socket")?;
        let id = self.alloc();
        let sock = Sock {
            local,
            hosts: &hosts,
            identity: &self.cfg.identity,
            cfg: &self.conn_cfg,
            relay: self.cfg.relay.as_ref(),
        };
        let (conn, sdp) = match DataConn::offer(now, id, remote.to_owned(), info.clone(), sock) {
            Ok(x) => x,
            Err(e) => {
                self.spares.push_front(local);
                return Err(e);
            }
        };
        let meta = OfferMeta {
            connection_id: &info.connection_id,
            label: &info.label,
            reliable: info.reliable,
            serialization: info.serialization,
            metadata: info.metadata.as_ref(),
        };
        let offer = signal::offer(remote, sdp, &meta);
        let cands = conn.local_candidates();
        self.signal(offer);
        for c in cands {
            self.signal(signal::candidate(remote, &connection_id, c));
        }
        self.conns.insert(id, conn);
        self.by_local.insert(local, id);
        self.by_key.insert(key, id);
        self.poll_conn(now, id);
        Ok(id)
    }

    /// Sends one message; returns the bytes buffered on the connection after it. Messages
    /// sent before the channel opens wait for it (within the same bound).
    pub fn send(&mut self, now: Instant, conn: ConnId, msg: Message) -> Result<usize, SendError> {
        let res = match self.conns.get_mut(&conn) {
            Some(c) => c.send(now, msg),
            None => return Err(SendError::NoConnection),
        };
        self.poll_conn(now, conn);
        res
    }

    /// Bytes buffered on `conn` (queued here plus unacknowledged in SCTP).
    pub fn buffered(&mut self, conn: ConnId) -> Option<usize> {
        self.conns.get_mut(&conn).map(DataConn::buffered)
    }

    /// The remote's DTLS fingerprint for `conn` (colon-hex), once its SDP is known.
    pub fn remote_fingerprint(&self, conn: ConnId) -> Option<String> {
        self.conns
            .get(&conn)
            .and_then(|c| c.remote_fingerprint().map(str::to_owned))
    }

    /// What `conn` is: remote id and connection details.
    pub fn conn_info(&self, conn: ConnId) -> Option<(String, ConnInfo)> {
        self.conns
            .get(&conn)
            .map(|c| (c.remote.clone(), c.info.clone()))
    }

    /// Closes `conn` ([`Event::ConnClosed`] with [`CloseReason::Local`] follows).
    pub fn close(&mut self, now: Instant, conn: ConnId) {
        self.close_with(now, conn, CloseReason::Local);
    }

    /// Closes every connection.
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self
            .conns
            .keys()
            .chain(self.media.keys())
            .copied()
            .collect();
        for id in ids {
            self.close_with(now, id, CloseReason::Local);
        }
    }
}

/// Media connections (see the crate docs): PeerJS calls through the broker, and owned
/// connections whose SDP the application carries.
impl PeerCore {
    fn media_sock(&mut self, relay: bool) -> Result<(SocketAddr, Vec<SocketAddr>), MediaError> {
        if relay && self.relay_for_media().is_none() {
            return Err(MediaError::NoRelay);
        }
        if self.conns.len() + self.media.len() >= self.cfg.max_connections {
            return Err(MediaError::Capacity("too many connections"));
        }
        self.take_socket()
            .ok_or(MediaError::Capacity("no spare UDP socket"))
    }

    /// The TURN server a relay-only media connection uses.
    fn relay_for_media(&self) -> Option<&RelayConfig> {
        self.cfg.relay.as_ref().or(self.cfg.media_relay.as_ref())
    }

    fn sock<'a>(&'a self, local: SocketAddr, hosts: &'a [SocketAddr], relay: bool) -> Sock<'a> {
        Sock {
            local,
            hosts,
            identity: &self.cfg.identity,
            cfg: &self.conn_cfg,
            relay: if relay { self.relay_for_media() } else { None },
        }
    }

    fn insert_media(&mut self, now: Instant, conn: MediaConn) {
        let id = conn.id;
        if let Some(cid) = conn.connection_id.clone() {
            self.media_by_key.insert((conn.remote.clone(), cid), id);
        }
        self.by_local.insert(conn.local, id);
        self.media.insert(id, conn);
        self.poll_media(now, id);
    }

    fn poll_media(&mut self, now: Instant, id: ConnId) {
        let mut outs = Vec::new();
        if let Some(c) = self.media.get_mut(&id) {
            c.poll(now, &mut outs);
        }
        self.absorb_media(id, outs);
    }

    fn absorb_media(&mut self, id: ConnId, outs: Vec<MediaOut>) {
        for o in outs {
            match o {
                MediaOut::Transmit {
                    source,
                    destination,
                    contents,
                } => self.out.push_back(Output::Transmit {
                    source,
                    destination,
                    contents,
                }),
                MediaOut::Open(lanes) => {
                    let remote = self
                        .media
                        .get(&id)
                        .map(|c| c.remote.clone())
                        .unwrap_or_default();
                    debug!(%id, "media open");
                    self.event(Event::MediaOpen {
                        conn: id,
                        remote,
                        lanes,
                    });
                }
                MediaOut::Frame {
                    lane,
                    codec,
                    rtp_time,
                    data,
                } => self.event(Event::MediaFrame {
                    conn: id,
                    lane,
                    codec,
                    rtp_time,
                    data,
                }),
                MediaOut::State(connected) => {
                    self.event(Event::MediaState {
                        conn: id,
                        connected,
                    });
                }
                MediaOut::Keyframe(lane) => self.event(Event::KeyframeRequest { conn: id, lane }),
                MediaOut::LocalCandidate(cand) => self.media_candidate_out(id, cand),
                MediaOut::Closed(reason) => {
                    debug!(%id, ?reason, "media closed");
                    self.event(Event::MediaClosed { conn: id, reason });
                }
            }
        }
        if self.media.get(&id).is_some_and(MediaConn::is_closed)
            && let Some(c) = self.media.remove(&id)
        {
            if let Some(cid) = c.connection_id.clone() {
                self.media_by_key.remove(&(c.remote.clone(), cid));
            }
            self.by_local.remove(&c.local);
            self.out.push_back(Output::Release { local: c.local });
        }
    }

    /// A local candidate of a media connection: a CANDIDATE through the broker for a call,
    /// a [`MediaSignal::Candidate`] event for an owned connection.
    fn media_candidate_out(&mut self, id: ConnId, cand: CandidateInit) {
        let Some(c) = self.media.get(&id) else {
            return;
        };
        match c.connection_id.clone() {
            Some(cid) => {
                let text = signal::candidate_of("media", &c.remote, &cid, cand);
                self.signal(text);
            }
            None => {
                let remote = c.remote.clone();
                self.event(Event::MediaSignal {
                    conn: id,
                    remote,
                    signal: MediaSignal::Candidate(cand),
                });
            }
        }
    }

    fn on_media_offer(&mut self, now: Instant, src: String, p: Payload) {
        let (Some(connection_id), Some(sdp)) = (p.connection_id.clone(), p.sdp.as_ref()) else {
            return self.bad("OFFER", &src, "no connectionId or sdp");
        };
        if connection_id.is_empty() || sdp.kind != "offer" {
            return self.bad("OFFER", &src, "empty connectionId or sdp type not offer");
        }
        if let Err(why) = crate::media::check_offer(&sdp.sdp) {
            return self.reject_offer(src, connection_id, why);
        }
        // PeerJS: a new call from the same peer replaces the old one (a re-OFFER with the
        // same connectionId too: PeerJS never renegotiates a call).
        let old: Vec<ConnId> = self
            .media
            .iter()
            .filter(|(_, c)| c.remote == src && c.connection_id.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.close_with(now, id, CloseReason::Replaced);
        }
        let relay = self.cfg.relay.is_some();
        let (local, hosts) = match self.media_sock(relay) {
            Ok(x) => x,
            Err(e) => return self.reject_offer(src, connection_id, e.to_string()),
        };
        let id = self.alloc();
        let sock = self.sock(local, &hosts, relay);
        let conn = MediaConn::incoming(
            now,
            id,
            src.clone(),
            Some(connection_id.clone()),
            sdp.sdp.clone(),
            sock,
        );
        debug!(%id, "media call offered");
        self.insert_media(now, conn);
        self.event(Event::Call {
            conn: id,
            remote: src,
            connection_id,
        });
    }

    fn find_media(&self, src: &str, p: &Payload) -> Option<ConnId> {
        let cid = p.connection_id.as_ref()?;
        self.media_by_key
            .get(&(src.to_owned(), cid.clone()))
            .copied()
    }

    fn on_media_answer(&mut self, now: Instant, src: String, p: Payload) {
        let Some(id) = self.find_media(&src, &p) else {
            return self.bad("ANSWER", &src, "unknown connectionId");
        };
        let Some(sdp) = p.sdp.as_ref().filter(|s| s.kind == "answer") else {
            return self.bad("ANSWER", &src, "no answer sdp");
        };
        let res = match self.media.get_mut(&id) {
            Some(c) if !c.awaiting_answer() => {
                return self.bad("ANSWER", &src, "no offer outstanding");
            }
            Some(c) => c.accept_answer(now, &sdp.sdp),
            None => return,
        };
        if let Err(why) = res {
            self.event(Event::SignalError(SignalError::Rejected {
                kind: "ANSWER",
                src,
                connection_id: p.connection_id.unwrap_or_default(),
                why: why.clone(),
            }));
            self.close_with(now, id, CloseReason::Failed(why));
            return;
        }
        self.poll_media(now, id);
    }

    fn on_media_candidate(&mut self, now: Instant, src: String, p: Payload) {
        let Some(cand) = p.candidate.clone() else {
            return self.bad("CANDIDATE", &src, "no candidate");
        };
        let Some(id) = self.find_media(&src, &p) else {
            debug!("candidate for an unknown media connection ignored");
            return;
        };
        let res = match self.media.get_mut(&id) {
            Some(c) => c.add_remote_candidate(now, cand),
            None => return,
        };
        if let Err(why) = res {
            self.event(Event::SignalError(SignalError::Rejected {
                kind: "CANDIDATE",
                src,
                connection_id: p.connection_id.unwrap_or_default(),
                why,
            }));
            return;
        }
        self.poll_media(now, id);
    }

    /// Calls `remote` as a PeerJS MediaConnection (legacy): an OFFER of `opts` audio and
    /// video m-lines, sendrecv in one msid stream, plus the unordered `undefined` channel,
    /// through the broker. Relay-only when [`CoreConfig::relay`] is set.
    /// [`Event::MediaOpen`] follows the remote's answer.
    pub fn call(
        &mut self,
        now: Instant,
        remote: &str,
        opts: MediaOptions,
    ) -> Result<ConnId, MediaError> {
        let cid = format!("mc_{}", crate::driver::random_base36(11));
        self.call_with_id(now, remote, cid, opts)
    }

    /// [`PeerCore::call`] with the connectionId given (deterministic tests, replays).
    pub fn call_with_id(
        &mut self,
        now: Instant,
        remote: &str,
        cid: String,
        opts: MediaOptions,
    ) -> Result<ConnId, MediaError> {
        if remote.is_empty() || cid.is_empty() {
            return Err(MediaError::Refused(
                "empty remote id or connectionId".into(),
            ));
        }
        if self
            .media_by_key
            .contains_key(&(remote.to_owned(), cid.clone()))
        {
            return Err(MediaError::Refused("connectionId in use".into()));
        }
        let relay = self.cfg.relay.is_some();
        let (local, hosts) = self.media_sock(relay)?;
        let id = self.alloc();
        let sock = self.sock(local, &hosts, relay);
        let made = MediaConn::offer(now, id, remote.to_owned(), Some(cid.clone()), opts, sock);
        let (conn, sdp) = match made {
            Ok(x) => x,
            Err(e) => {
                self.spares.push_front(local);
                return Err(MediaError::Refused(e));
            }
        };
        let cands = conn.local_candidates();
        self.signal(signal::media_offer(remote, &cid, sdp));
        for c in cands {
            self.signal(signal::candidate_of("media", remote, &cid, c));
        }
        self.insert_media(now, conn);
        Ok(id)
    }

    /// Answers the call [`Event::Call`] announced. The lanes are the offer's (`opts` is
    /// kept for symmetry; PeerJS offers one audio and one video). A call with no common
    /// codec is refused: [`Event::SignalError`], then [`Event::MediaClosed`].
    pub fn answer_call(
        &mut self,
        now: Instant,
        conn: ConnId,
        opts: MediaOptions,
    ) -> Result<(), MediaError> {
        let _ = opts;
        let Some(c) = self.media.get_mut(&conn) else {
            return Err(MediaError::NoConnection);
        };
        let (Some(offer), Some(cid)) = (c.unanswered.clone(), c.connection_id.clone()) else {
            return Err(MediaError::NotNow("not an unanswered call"));
        };
        let remote = c.remote.clone();
        match c.accept_offer(now, &offer) {
            Ok(answer) => {
                let cands = c.local_candidates();
                self.signal(signal::answer_of("media", &remote, &cid, answer));
                for cand in cands {
                    self.signal(signal::candidate_of("media", &remote, &cid, cand));
                }
                self.poll_media(now, conn);
                Ok(())
            }
            Err(why) => {
                self.event(Event::SignalError(SignalError::Rejected {
                    kind: "OFFER",
                    src: remote,
                    connection_id: cid,
                    why: why.clone(),
                }));
                self.close_with(now, conn, CloseReason::Failed(why.clone()));
                Err(MediaError::Refused(why))
            }
        }
    }

    /// Opens an owned media connection to `remote` (no data channel): the offer comes out
    /// as [`Event::MediaSignal`] for the application to carry, then candidates. `relay`:
    /// relay-only through [`CoreConfig::relay`] (fail-closed; refused when none is set).
    pub fn media_offer(
        &mut self,
        now: Instant,
        remote: &str,
        opts: MediaOptions,
        relay: bool,
    ) -> Result<ConnId, MediaError> {
        if remote.is_empty() {
            return Err(MediaError::Refused("empty remote id".into()));
        }
        // A relay-only peer is relay-only for every connection (fail-closed).
        let relay = relay || self.cfg.relay.is_some();
        let (local, hosts) = self.media_sock(relay)?;
        let id = self.alloc();
        let sock = self.sock(local, &hosts, relay);
        let (conn, sdp) = match MediaConn::offer(now, id, remote.to_owned(), None, opts, sock) {
            Ok(x) => x,
            Err(e) => {
                self.spares.push_front(local);
                return Err(MediaError::Refused(e));
            }
        };
        let cands = conn.local_candidates();
        self.owned_signal_out(id, remote, MediaSignal::Sdp { offer: true, sdp });
        for c in cands {
            self.owned_signal_out(id, remote, MediaSignal::Candidate(c));
        }
        self.insert_media(now, conn);
        Ok(id)
    }

    fn owned_signal_out(&mut self, conn: ConnId, remote: &str, signal: MediaSignal) {
        self.event(Event::MediaSignal {
            conn,
            remote: remote.to_owned(),
            signal,
        });
    }

    /// Feeds signalling of an owned media connection from `remote`: an offer (with
    /// `conn: None` it creates the answering connection, `opts`/`relay` as for
    /// [`PeerCore::media_offer`]; on an existing one it is a re-offer, e.g. an ICE restart,
    /// answered on the same connection), an answer to our offer, or a candidate (queued
    /// until the remote description is set). Answers come out as [`Event::MediaSignal`].
    /// An offer while ours is pending is [`MediaError::Glare`]: nothing changes.
    pub fn media_signal(
        &mut self,
        now: Instant,
        conn: Option<ConnId>,
        remote: &str,
        sig: MediaSignal,
        opts: MediaOptions,
        relay: bool,
    ) -> Result<ConnId, MediaError> {
        let _ = opts;
        let Some(id) = conn else {
            let MediaSignal::Sdp { offer: true, sdp } = sig else {
                return Err(MediaError::NeedConnection);
            };
            let relay = relay || self.cfg.relay.is_some();
            let (local, hosts) = self.media_sock(relay)?;
            let id = self.alloc();
            let sock = self.sock(local, &hosts, relay);
            let mut c = MediaConn::incoming(now, id, remote.to_owned(), None, sdp.clone(), sock);
            let answer = match c.accept_offer(now, &sdp) {
                Ok(a) => a,
                Err(why) => {
                    self.spares.push_front(local);
                    return Err(MediaError::Refused(why));
                }
            };
            let cands = c.local_candidates();
            self.owned_signal_out(
                id,
                remote,
                MediaSignal::Sdp {
                    offer: false,
                    sdp: answer,
                },
            );
            for cand in cands {
                self.owned_signal_out(id, remote, MediaSignal::Candidate(cand));
            }
            self.insert_media(now, c);
            return Ok(id);
        };
        let Some(c) = self
            .media
            .get_mut(&id)
            .filter(|c| c.connection_id.is_none() && c.remote == remote)
        else {
            return Err(MediaError::NoConnection);
        };
        let res = match sig {
            MediaSignal::Sdp { offer: true, sdp } => {
                if c.awaiting_answer() {
                    return Err(MediaError::Glare);
                }
                let answer = c.accept_offer(now, &sdp).map_err(MediaError::Refused)?;
                self.owned_signal_out(
                    id,
                    remote,
                    MediaSignal::Sdp {
                        offer: false,
                        sdp: answer,
                    },
                );
                Ok(id)
            }
            MediaSignal::Sdp { offer: false, sdp } => {
                if !c.awaiting_answer() {
                    return Err(MediaError::NoPendingOffer);
                }
                match c.accept_answer(now, &sdp) {
                    Ok(()) => Ok(id),
                    Err(why) => {
                        self.close_with(now, id, CloseReason::Failed(why.clone()));
                        Err(MediaError::Refused(why))
                    }
                }
            }
            MediaSignal::Candidate(cand) => c
                .add_remote_candidate(now, cand)
                .map(|()| id)
                .map_err(MediaError::Refused),
        };
        self.poll_media(now, id);
        res
    }

    /// A new offer with fresh ICE credentials on an owned connection (str0m
    /// `SdpApi::ice_restart`), out as [`Event::MediaSignal`].
    pub fn media_restart_ice(&mut self, now: Instant, conn: ConnId) -> Result<(), MediaError> {
        let Some(c) = self
            .media
            .get_mut(&conn)
            .filter(|c| c.connection_id.is_none())
        else {
            return Err(MediaError::NoConnection);
        };
        let sdp = c.restart_ice().map_err(MediaError::Refused)?;
        let remote = c.remote.clone();
        self.owned_signal_out(conn, &remote, MediaSignal::Sdp { offer: true, sdp });
        self.poll_media(now, conn);
        Ok(())
    }

    /// Drops our pending offer on an owned connection (perfect negotiation's rollback);
    /// `Ok(false)` when none was pending.
    pub fn media_rollback(&mut self, now: Instant, conn: ConnId) -> Result<bool, MediaError> {
        let Some(c) = self
            .media
            .get_mut(&conn)
            .filter(|c| c.connection_id.is_none())
        else {
            return Err(MediaError::NoConnection);
        };
        let dropped = c.rollback();
        self.poll_media(now, conn);
        Ok(dropped)
    }

    /// Writes one frame on `lane` of a media connection: an Opus packet (`rtp_time` at
    /// 48 kHz) or a whole VP8 frame (90 kHz); str0m packetizes it.
    pub fn write_media(
        &mut self,
        now: Instant,
        conn: ConnId,
        lane: LaneRef,
        rtp_time: u64,
        data: Vec<u8>,
    ) -> Result<(), MediaWriteError> {
        let res = match self.media.get_mut(&conn) {
            Some(c) => c.write(now, lane, rtp_time, data),
            None => return Err(MediaWriteError::NoConnection),
        };
        self.poll_media(now, conn);
        res
    }

    /// Asks the remote for a keyframe on `lane` (PLI).
    pub fn request_keyframe(
        &mut self,
        now: Instant,
        conn: ConnId,
        lane: LaneRef,
    ) -> Result<(), MediaWriteError> {
        let res = match self.media.get_mut(&conn) {
            Some(c) => c.request_keyframe(lane),
            None => return Err(MediaWriteError::NoConnection),
        };
        self.poll_media(now, conn);
        res
    }

    /// Whether the socket bound at `local` (or advertised as `local`, for a socket bound to
    /// an unspecified address) carries a media connection.
    pub fn is_media_socket(&self, local: SocketAddr) -> bool {
        let id = self.by_local.get(&local).or_else(|| {
            self.by_local
                .iter()
                .find(|(a, _)| a.ip().is_unspecified() && a.port() == local.port())
                .map(|(_, id)| id)
        });
        id.is_some_and(|id| self.media.contains_key(id))
    }

    /// Cumulative payload bytes of a media connection.
    pub fn media_stats(&self, conn: ConnId) -> Option<MediaStats> {
        self.media.get(&conn).map(MediaConn::stats)
    }
}
