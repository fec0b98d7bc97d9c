//! One PeerJS data connection: a str0m `Rtc` (one per connectionId), its single channel,
//! framing and a bounded send queue. Sans-IO: time in, transmits and events out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kibitz_proto::binarypack::chunk::{CHUNK_SIZE, CLOSE, Chunker, Reassembler, Received};
use kibitz_proto::binarypack::{self, Limits};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input, Output, Rtc};

use crate::identity::{Identity, provider};
use crate::signal::{CandidateInit, sdp_attr, sdp_fingerprint};
use crate::turn::{RelayConfig, TurnClient, TurnEvent, TurnInput};
use crate::{ConnId, ConnInfo, Message, Serialization};

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No such connection (never existed, or closed).
    #[error("no such connection")]
    NoConnection,
    /// The message does not fit the connection's serialization (e.g. `Text` on `binary`).
    #[error("a {message} message cannot go on a {serialization:?} connection")]
    WrongKind {
        /// The message variant.
        message: &'static str,
        /// The connection's serialization.
        serialization: Serialization,
    },
    /// A `json` message of 16 300 bytes or more (PeerJS refuses them too).
    #[error("json message of {0} bytes is too big (limit 16300)")]
    TooBig(usize),
    /// The value cannot be encoded (e.g. an infinite float in BinaryPack).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Buffered data would exceed the connection's bound; nothing was queued. Wait for
    /// [`crate::Event::BufferedLow`] and send again.
    #[error("send buffer full ({buffered} bytes buffered)")]
    Full {
        /// Bytes buffered now.
        buffered: usize,
    },
    /// The peer's driver has stopped.
    #[error("peer stopped")]
    Stopped,
}

/// Why a data or media connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Closed locally.
    Local,
    /// The remote closed the channel or the connection (`close` control, SCTP/DTLS close).
    Remote,
    /// ICE lost the remote.
    Disconnected,
    /// The remote left the broker (`LEAVE`) or was never there (`EXPIRE`).
    Left,
    /// Not open within the open timeout.
    Timeout,
    /// A new OFFER with the same connectionId replaced it.
    Replaced,
    /// WebRTC failed (SDP refused, DTLS failure, …).
    Failed(String),
}

/// A problem on an open connection that does not close it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// A received message could not be decoded; it was dropped.
    #[error("undecodable message dropped: {0}")]
    Decode(String),
}

/// Tunables of data connections.
#[derive(Debug, Clone)]
pub(crate) struct ConnConfig {
    pub max_buffered: usize,
    pub open_timeout: Duration,
    pub max_message: usize,
    pub low_water: usize,
}

pub(crate) enum ConnOut {
    Transmit {
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    Open {
        remote_fingerprint: String,
    },
    Data(Message),
    Error(ConnError),
    BufferedLow,
    Closed(CloseReason),
    /// A candidate learnt after the SDP went out (the relay address), to trickle.
    LocalCandidate(CandidateInit),
}

pub(crate) struct DataConn {
    pub id: ConnId,
    /// The UDP socket this connection owns (one per connection, as browsers do: two
    /// connections between the same peers would otherwise share a 5-tuple).
    pub local: SocketAddr,
    hosts: Vec<SocketAddr>,
    turn: Option<TurnClient>,
    pub remote: String,
    pub info: ConnInfo,
    rtc: Rtc,
    pending_offer: Option<SdpPendingOffer>,
    channel: Option<ChannelId>,
    closed: bool,
    chunker: Chunker,
    reassembler: Reassembler,
    queue: VecDeque<(bool, Vec<u8>)>,
    queued_bytes: usize,
    was_full: bool,
    remote_fingerprint: Option<String>,
    local_sdp: String,
    open_deadline: Option<Instant>,
    next_timeout: Option<Instant>,
    cfg: ConnConfig,
}

impl std::fmt::Debug for DataConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataConn")
            .field("id", &self.id)
            .field("remote", &self.remote)
            .field("connection_id", &self.info.connection_id)
            .finish_non_exhaustive()
    }
}

/// Bytes SCTP may hold unacknowledged per connection.
const SCTP_BUFFERED: usize = 1 << 20;

/// The socket a new connection gets, and what it needs to build its `Rtc`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sock<'a> {
    pub local: SocketAddr,
    pub hosts: &'a [SocketAddr],
    pub identity: &'a Identity,
    pub cfg: &'a ConnConfig,
    /// Relay-only: every datagram goes through this TURN server.
    pub relay: Option<&'a RelayConfig>,
}

fn new_rtc(now: Instant, identity: &Identity, hosts: &[SocketAddr]) -> Rtc {
    let mut rtc = Rtc::builder()
        .set_crypto_provider(provider())
        .set_dtls_cert(identity.cert())
        // str0m's default (128 KiB) caps a channel at 128 KiB per round trip.
        .set_sctp_max_buffered_amount(SCTP_BUFFERED)
        .build(now);
    for h in hosts {
        if let Ok(c) = Candidate::host(*h, "udp") {
            rtc.add_local_candidate(c);
        }
    }
    rtc
}

impl DataConn {
    fn new(now: Instant, id: ConnId, remote: String, info: ConnInfo, sock: Sock<'_>) -> Self {
        let cfg = sock.cfg;
        // Relay-only advertises no host address: the relay candidate comes when allocated.
        let hosts = if sock.relay.is_some() {
            Vec::new()
        } else {
            sock.hosts.to_vec()
        };
        DataConn {
            id,
            local: sock.local,
            turn: sock.relay.map(|r| TurnClient::new(now, r.clone())),
            remote,
            info,
            rtc: new_rtc(now, sock.identity, &hosts),
            hosts,
            pending_offer: None,
            channel: None,
            closed: false,
            chunker: Chunker::new(),
            reassembler: Reassembler::new(
                Limits {
                    max_size: cfg.max_message,
                    ..Limits::default()
                },
                cfg.max_message,
                Duration::from_secs(30),
            ),
            queue: VecDeque::new(),
            queued_bytes: 0,
            was_full: false,
            remote_fingerprint: None,
            local_sdp: String::new(),
            open_deadline: Some(now + cfg.open_timeout),
            next_timeout: Some(now),
            cfg: cfg.clone(),
        }
    }

    /// The offering side: creates the channel; returns the connection and its offer SDP.
    pub fn offer(
        now: Instant,
        id: ConnId,
        remote: String,
        info: ConnInfo,
        sock: Sock<'_>,
    ) -> Result<(Self, String), String> {
        let mut conn = DataConn::new(now, id, remote, info, sock);
        let mut api = conn.rtc.sdp_api();
        api.add_channel_with_config(ChannelConfig {
            label: conn.info.label.clone(),
            ordered: conn.info.reliable,
            reliability: Reliability::Reliable,
            negotiated: None,
            protocol: String::new(),
        });
        let (offer, pending) = api.apply().ok_or("no offer to make")?;
        conn.pending_offer = Some(pending);
        conn.local_sdp = offer.to_sdp_string();
        let sdp = conn.local_sdp.clone();
        Ok((conn, sdp))
    }

    /// The answering side: accepts `offer_sdp`; returns the connection and its answer SDP.
    pub fn answer(
        now: Instant,
        id: ConnId,
        remote: String,
        info: ConnInfo,
        offer_sdp: &str,
        sock: Sock<'_>,
    ) -> Result<(Self, String), String> {
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(one_line)?;
        let mut conn = DataConn::new(now, id, remote, info, sock);
        conn.remote_fingerprint = sdp_fingerprint(offer_sdp);
        conn.permit_sdp(now, offer_sdp);
        let answer = conn
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| e.to_string())?;
        conn.local_sdp = answer.to_sdp_string();
        Ok((conn, answer.to_sdp_string()))
    }

    /// Whether an ANSWER is expected (offering side, before it came).
    pub fn awaiting_answer(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// Takes the remote ANSWER (offering side only).
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), String> {
        let pending = self
            .pending_offer
            .take()
            .ok_or("ANSWER without an outstanding offer")?;
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(one_line)?;
        self.remote_fingerprint = sdp_fingerprint(sdp);
        self.permit_sdp(now, sdp);
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())?;
        self.next_timeout = None;
        Ok(())
    }

    /// Takes a trickled remote candidate; an empty one (end of candidates) is ignored.
    pub fn add_remote_candidate(&mut self, now: Instant, c: &CandidateInit) -> Result<(), String> {
        let line = c.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return Ok(());
        }
        let cand = Candidate::from_sdp_string(line).map_err(|e| e.to_string())?;
        self.permit(now, cand.addr());
        self.rtc.add_remote_candidate(cand);
        self.next_timeout = None;
        Ok(())
    }

    /// The CANDIDATE payloads for this side's host candidates (also in the SDP; sent
    /// trickled too for peers that only read trickled ones).
    pub fn local_candidates(&self) -> Vec<CandidateInit> {
        let mid = sdp_attr(&self.local_sdp, "mid").map(str::to_owned);
        let ufrag = sdp_attr(&self.local_sdp, "ice-ufrag").map(str::to_owned);
        self.hosts
            .iter()
            .filter_map(|h| Candidate::host(*h, "udp").ok())
            .map(|c| CandidateInit {
                candidate: c.to_sdp_string(),
                sdp_mid: mid.clone(),
                sdp_m_line_index: Some(0),
                username_fragment: ufrag.clone(),
            })
            .collect()
    }

    /// The remote's DTLS fingerprint from its SDP (colon-hex); str0m checks the DTLS
    /// certificate against it before the connection opens.
    pub fn remote_fingerprint(&self) -> Option<&str> {
        self.remote_fingerprint.as_deref()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn is_open(&self) -> bool {
        self.channel.is_some() && !self.closed
    }

    /// The host candidate a datagram from `source` arrived at (the socket's address, or
    /// one of the advertised addresses when it is bound to an unspecified one).
    pub fn destination(&self, source: SocketAddr) -> SocketAddr {
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

    /// One datagram on this connection's socket. Relay-only connections take datagrams
    /// from their TURN server only.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        buf: &[u8],
        out: &mut Vec<ConnOut>,
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

    /// Relay-only: lets `peer` reach our relay address.
    fn permit(&mut self, now: Instant, peer: SocketAddr) {
        if let Some(t) = self.turn.as_mut() {
            t.permit(now, peer);
        }
    }

    /// Relay-only: permits every candidate a remote SDP lists.
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

    fn on_turn(&mut self, e: TurnEvent, out: &mut Vec<ConnOut>) {
        match e {
            TurnEvent::Allocated(relay) => {
                let Ok(c) = Candidate::relayed(relay, self.local, "udp") else {
                    return self.fail(format!("unusable relay address {relay}"), out);
                };
                let line = c.to_sdp_string();
                self.rtc.add_local_candidate(c);
                out.push(ConnOut::LocalCandidate(CandidateInit {
                    candidate: line,
                    sdp_mid: sdp_attr(&self.local_sdp, "mid").map(str::to_owned),
                    sdp_m_line_index: Some(0),
                    username_fragment: sdp_attr(&self.local_sdp, "ice-ufrag").map(str::to_owned),
                }));
            }
            TurnEvent::Failed(why) => self.fail(format!("turn: {why}"), out),
        }
    }

    fn handle_input(&mut self, input: Input<'_>, out: &mut Vec<ConnOut>) {
        if let Err(e) = self.rtc.handle_input(input) {
            self.fail(format!("rtc: {e}"), out);
        }
        self.next_timeout = None;
    }

    /// When this connection wants [`DataConn::handle_timeout`] (after [`DataConn::poll`]).
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let t = [
            self.next_timeout,
            self.open_deadline,
            self.reassembler.next_timeout(),
            self.turn.as_ref().and_then(TurnClient::next_timeout),
        ];
        t.into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<ConnOut>) {
        if self.closed {
            return;
        }
        if self.open_deadline.is_some_and(|d| now >= d) {
            self.finish(CloseReason::Timeout, out);
            return;
        }
        self.reassembler.expire(now);
        if let Some(e) = self.turn.as_mut().and_then(|t| t.handle_timeout(now)) {
            self.on_turn(e, out);
            if self.closed {
                return;
            }
        }
        if self.next_timeout.is_none_or(|t| now >= t) {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                self.fail(format!("rtc: {e}"), out);
            }
            self.next_timeout = None;
        }
    }

    fn fail(&mut self, why: String, out: &mut Vec<ConnOut>) {
        self.finish(CloseReason::Failed(why), out);
    }

    fn finish(&mut self, reason: CloseReason, out: &mut Vec<ConnOut>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.rtc.disconnect();
        self.queue.clear();
        self.queued_bytes = 0;
        out.push(ConnOut::Closed(reason));
    }

    /// Closes locally: a PeerJS `close` control (for framed serializations), then str0m's
    /// shutdown (SCTP abort, DTLS close_notify), drained into `out`.
    pub fn close(&mut self, now: Instant, reason: CloseReason, out: &mut Vec<ConnOut>) {
        if self.closed {
            return;
        }
        if let Some(ch) = self.channel
            && self.info.serialization != Serialization::Raw
            && let Some(mut c) = self.rtc.channel(ch)
        {
            let close = match self.info.serialization {
                Serialization::Json => br#"{"__peerData":{"type":"close"}}"#.as_slice(),
                _ => CLOSE,
            };
            let _ = c.write(true, close);
        }
        let _ = self.rtc.close();
        self.drain(now, out);
        if let Some(t) = self.turn.as_mut() {
            t.deallocate();
        }
        self.turn_out(out);
        self.finish(reason, out);
    }

    /// The bytes waiting: our queue plus what SCTP holds unacknowledged.
    pub fn buffered(&mut self) -> usize {
        let sctp = match self.channel.and_then(|ch| self.rtc.channel(ch)) {
            Some(mut c) => c.buffered_amount(),
            None => 0,
        };
        self.queued_bytes + sctp
    }

    /// Frames and queues one message; returns the bytes buffered after it.
    pub fn send(&mut self, now: Instant, msg: Message) -> Result<usize, SendError> {
        if self.closed {
            return Err(SendError::NoConnection);
        }
        let frames = self.frame(msg)?;
        let len: usize = frames.iter().map(|(_, f)| f.len()).sum();
        let buffered = self.buffered();
        if buffered > 0 && buffered + len > self.cfg.max_buffered {
            self.was_full = true;
            return Err(SendError::Full { buffered });
        }
        for f in frames {
            self.queued_bytes += f.1.len();
            self.queue.push_back(f);
        }
        self.flush();
        let _ = now;
        Ok(self.buffered())
    }

    fn frame(&mut self, msg: Message) -> Result<Vec<(bool, Vec<u8>)>, SendError> {
        let wrong = |message| SendError::WrongKind {
            message,
            serialization: self.info.serialization,
        };
        match (self.info.serialization, msg) {
            (Serialization::Binary, Message::Pack(v)) => {
                let packed =
                    binarypack::encode(&v).map_err(|e| SendError::Encode(e.to_string()))?;
                Ok(self
                    .chunker
                    .split(packed)
                    .into_iter()
                    .map(|f| (true, f))
                    .collect())
            }
            (Serialization::Json, Message::Json(v)) => {
                let bytes = serde_json::to_vec(&v).map_err(|e| SendError::Encode(e.to_string()))?;
                if bytes.len() >= CHUNK_SIZE {
                    return Err(SendError::TooBig(bytes.len()));
                }
                Ok(vec![(true, bytes)])
            }
            (Serialization::Raw, Message::Text(t)) => Ok(vec![(false, t.into_bytes())]),
            (Serialization::Raw, Message::Bytes(b)) => Ok(vec![(true, b)]),
            (_, m) => Err(wrong(match m {
                Message::Pack(_) => "Pack",
                Message::Json(_) => "Json",
                Message::Text(_) => "Text",
                Message::Bytes(_) => "Bytes",
            })),
        }
    }

    /// Writes queued frames while SCTP takes them.
    fn flush(&mut self) -> bool {
        let Some(ch) = self.channel else {
            return false;
        };
        let Some(mut c) = self.rtc.channel(ch) else {
            return false;
        };
        let mut wrote = false;
        while let Some((binary, frame)) = self.queue.front() {
            match c.write(*binary, frame) {
                Ok(true) => {
                    self.queued_bytes -= frame.len();
                    self.queue.pop_front();
                    wrote = true;
                }
                Ok(false) | Err(_) => break,
            }
        }
        if wrote {
            self.next_timeout = None;
        }
        wrote
    }

    /// Drains str0m until it only waits for time, turning its output into `out`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<ConnOut>) {
        if self.closed {
            return;
        }
        self.drain(now, out);
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<ConnOut>) {
        // Each round writes what SCTP accepts, then drains; acknowledgements processed while
        // draining may free room, so go again until a round writes nothing.
        for _ in 0..64 {
            self.flush();
            loop {
                match self.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        self.next_timeout = Some(t);
                        break;
                    }
                    Ok(Output::Transmit(t)) => match self.turn.as_mut() {
                        None => out.push(ConnOut::Transmit {
                            source: t.source,
                            destination: t.destination,
                            contents: t.contents.to_vec(),
                        }),
                        // Fail-closed: only what leaves from the relay address goes out,
                        // and only through the TURN server.
                        Some(turn) if Some(t.source) == turn.relay() => {
                            turn.send_to(now, t.destination, &t.contents);
                        }
                        Some(_) => {}
                    },
                    Ok(Output::Event(e)) => self.on_event(now, e, out),
                    Err(e) => {
                        self.fail(format!("rtc: {e}"), out);
                        return;
                    }
                }
                if self.closed {
                    return;
                }
            }
            if self.queue.is_empty() || !self.flush_would_write() {
                break;
            }
        }
        self.turn_out(out);
        if self.was_full && self.buffered() <= self.cfg.low_water {
            self.was_full = false;
            out.push(ConnOut::BufferedLow);
        }
    }

    /// Moves the TURN client's datagrams (to its server) into `out`.
    fn turn_out(&mut self, out: &mut Vec<ConnOut>) {
        let local = self.local;
        if let Some(t) = self.turn.as_mut() {
            let server = t.server();
            while let Some(contents) = t.poll_transmit() {
                out.push(ConnOut::Transmit {
                    source: local,
                    destination: server,
                    contents,
                });
            }
        }
    }

    fn flush_would_write(&mut self) -> bool {
        self.flush()
    }

    fn on_event(&mut self, now: Instant, e: RtcEvent, out: &mut Vec<ConnOut>) {
        match e {
            RtcEvent::ChannelOpen(id, _label) if self.channel.is_none() => self.opened(id, out),
            // str0m reads a stream's data whatever its DCEP state, so the remote's first
            // message can come before the ACK that opens our side (the ACK is resent after
            // a loss, the data overtook it). Data means the channel is open: dropping it
            // lost a peer's first frame.
            RtcEvent::ChannelData(d) if self.channel.is_none() => {
                self.opened(d.id, out);
                self.on_data(now, d.binary, d.data, out);
            }
            RtcEvent::ChannelData(d) if Some(d.id) == self.channel => {
                self.on_data(now, d.binary, d.data, out);
            }
            RtcEvent::ChannelClose(id) if Some(id) == self.channel => {
                self.finish(CloseReason::Remote, out);
            }
            RtcEvent::Closed => self.finish(CloseReason::Remote, out),
            RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.finish(CloseReason::Disconnected, out);
            }
            _ => {}
        }
    }

    fn opened(&mut self, id: ChannelId, out: &mut Vec<ConnOut>) {
        self.channel = Some(id);
        self.open_deadline = None;
        if let Some(mut c) = self.rtc.channel(id) {
            c.set_buffered_amount_low_threshold(self.cfg.low_water);
        }
        out.push(ConnOut::Open {
            remote_fingerprint: self.remote_fingerprint.clone().unwrap_or_default(),
        });
    }

    fn on_data(&mut self, now: Instant, binary: bool, data: Vec<u8>, out: &mut Vec<ConnOut>) {
        match self.info.serialization {
            Serialization::Binary => match self.reassembler.receive(now, &data) {
                Ok(Received::Data(v)) => out.push(ConnOut::Data(Message::Pack(v))),
                Ok(Received::Close) => self.finish(CloseReason::Remote, out),
                Ok(Received::Pending | Received::Control(_)) => {}
                Err(e) => out.push(ConnOut::Error(ConnError::Decode(e.to_string()))),
            },
            Serialization::Json => match serde_json::from_slice::<serde_json::Value>(&data) {
                Ok(v) => {
                    let control = v.get("__peerData").filter(|p| !is_falsy(p));
                    match control {
                        Some(p) if p.get("type").and_then(|t| t.as_str()) == Some("close") => {
                            self.finish(CloseReason::Remote, out);
                        }
                        Some(_) => {}
                        None => out.push(ConnOut::Data(Message::Json(v))),
                    }
                }
                Err(e) => out.push(ConnOut::Error(ConnError::Decode(e.to_string()))),
            },
            Serialization::Raw => {
                if binary {
                    out.push(ConnOut::Data(Message::Bytes(data)));
                } else {
                    match String::from_utf8(data) {
                        Ok(t) => out.push(ConnOut::Data(Message::Text(t))),
                        Err(e) => out.push(ConnOut::Error(ConnError::Decode(e.to_string()))),
                    }
                }
            }
        }
    }
}

/// str0m's SDP parse errors span lines and quote a pointer; keep the words.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn is_falsy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Builds the str0m input for one received UDP datagram.
pub(crate) fn receive<'a>(
    now: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    buf: &'a [u8],
) -> Option<Input<'a>> {
    Receive::new(Protocol::Udp, source, destination, buf)
        .ok()
        .map(|r| Input::Receive(now, r))
}
