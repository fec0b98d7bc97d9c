//! A bare WebRTC peer connection with one data channel and no PeerJS around it: the shape of
//! Kibitz's offline mode (LAN.md), where the application carries the SDP (to the hub, or over
//! the hub to another participant) and the channel carries UTF-8 text.
//!
//! Sans-IO like [`crate::PeerCore`]: after any call, drain [`Link::poll_output`] until it
//! returns [`LinkOutput::Timeout`], then call [`Link::handle_timeout`] at that time. It reuses
//! the data connection machinery of PeerJS connections (str0m `Rtc`, relay-only TURN, send
//! queue), with `raw` framing: text in, text out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::conn::{ConnConfig, ConnOut, DataConn, Sock};
use crate::{
    CandidateInit, CloseReason, ConnId, ConnInfo, Identity, Message, RelayConfig, SendError,
    Serialization,
};

/// How to build a [`Link`].
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The data channel's label (offering side; the answering side takes whatever arrives).
    pub label: String,
    /// The DTLS identity.
    pub identity: Identity,
    /// The UDP socket this link owns (one per link, as a browser's peer connections).
    pub local: SocketAddr,
    /// The host candidates advertised (the socket's address, or several IPs with its port
    /// when it is bound to an unspecified address); ignored when relay-only.
    pub hosts: Vec<SocketAddr>,
    /// Relay-only (`iceTransportPolicy: "relay"`) through this TURN server.
    pub relay: Option<RelayConfig>,
    /// Closed if not open this long after it was made.
    pub open_timeout: Duration,
    /// Most bytes buffered for sending.
    pub max_buffered: usize,
    /// Largest message accepted.
    pub max_message: usize,
}

impl LinkConfig {
    /// Defaults: 30 s open timeout, 8 MiB send buffer, 1 MiB messages, not relay-only, the
    /// socket's own address as the one host candidate.
    pub fn new(label: &str, identity: Identity, local: SocketAddr) -> Self {
        LinkConfig {
            label: label.to_owned(),
            identity,
            local,
            hosts: vec![local],
            relay: None,
            open_timeout: Duration::from_secs(30),
            max_buffered: 8 << 20,
            max_message: 1 << 20,
        }
    }
}

/// What a [`Link`] gives.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LinkOutput {
    /// A datagram to send from the link's socket.
    Transmit {
        /// Where to.
        destination: SocketAddr,
        /// The datagram.
        contents: Vec<u8>,
    },
    /// The channel is open: [`Link::send_text`] delivers now.
    Open,
    /// A text message arrived.
    Text(String),
    /// A binary message arrived.
    Binary(Vec<u8>),
    /// A local candidate learnt after the SDP went out (the relay address), to trickle.
    Candidate(CandidateInit),
    /// The link ended (nothing more comes but [`LinkOutput::Timeout`]`(None)`).
    Closed(CloseReason),
    /// Nothing more now: call [`Link::handle_timeout`] at this time (`None`: only input).
    Timeout(Option<Instant>),
}

/// Why a link could not be made or take a description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The SDP was refused.
    #[error("sdp: {0}")]
    Sdp(String),
    /// A candidate was refused.
    #[error("candidate: {0}")]
    Candidate(String),
}

/// One peer connection with one text data channel.
pub struct Link {
    conn: DataConn,
    out: VecDeque<LinkOutput>,
    scratch: Vec<ConnOut>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("local", &self.conn.local)
            .finish_non_exhaustive()
    }
}

fn parts(cfg: &LinkConfig) -> (ConnInfo, ConnConfig) {
    let info = ConnInfo {
        connection_id: String::new(),
        label: cfg.label.clone(),
        serialization: Serialization::Raw,
        reliable: true,
        metadata: None,
    };
    let cc = ConnConfig {
        max_buffered: cfg.max_buffered,
        open_timeout: cfg.open_timeout,
        max_message: cfg.max_message,
        low_water: cfg.max_buffered / 4,
    };
    (info, cc)
}

impl Link {
    /// The offering side: creates the channel (ordered, reliable); returns the offer SDP.
    pub fn offer(now: Instant, cfg: &LinkConfig) -> Result<(Link, String), LinkError> {
        let (info, cc) = parts(cfg);
        let sock = Sock {
            local: cfg.local,
            hosts: &cfg.hosts,
            identity: &cfg.identity,
            cfg: &cc,
            relay: cfg.relay.as_ref(),
        };
        let (conn, sdp) =
            DataConn::offer(now, ConnId(0), String::new(), info, sock).map_err(LinkError::Sdp)?;
        Ok((Link::wrap(conn), sdp))
    }

    /// The answering side: accepts `offer_sdp` (media m-lines in it are answered with no
    /// tracks of ours); returns the answer SDP.
    pub fn answer(
        now: Instant,
        cfg: &LinkConfig,
        offer_sdp: &str,
    ) -> Result<(Link, String), LinkError> {
        let (info, cc) = parts(cfg);
        let sock = Sock {
            local: cfg.local,
            hosts: &cfg.hosts,
            identity: &cfg.identity,
            cfg: &cc,
            relay: cfg.relay.as_ref(),
        };
        let (conn, sdp) = DataConn::answer(now, ConnId(0), String::new(), info, offer_sdp, sock)
            .map_err(LinkError::Sdp)?;
        Ok((Link::wrap(conn), sdp))
    }

    fn wrap(conn: DataConn) -> Link {
        Link {
            conn,
            out: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// The socket this link owns.
    pub fn local(&self) -> SocketAddr {
        self.conn.local
    }

    /// Whether the channel is open.
    pub fn is_open(&self) -> bool {
        self.conn.is_open()
    }

    /// Whether the link has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Whether the offer still waits for its answer.
    pub fn awaiting_answer(&self) -> bool {
        self.conn.awaiting_answer()
    }

    /// Takes the remote answer (offering side).
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), LinkError> {
        let r = self.conn.accept_answer(now, sdp).map_err(LinkError::Sdp);
        self.poll(now);
        r
    }

    fn poll(&mut self, now: Instant) {
        let mut out = std::mem::take(&mut self.scratch);
        self.conn.poll(now, &mut out);
        self.absorb(out);
    }

    /// Takes a trickled remote candidate (an empty one is ignored).
    pub fn add_remote_candidate(
        &mut self,
        now: Instant,
        c: &CandidateInit,
    ) -> Result<(), LinkError> {
        let r = self
            .conn
            .add_remote_candidate(now, c)
            .map_err(LinkError::Candidate);
        self.poll(now);
        r
    }

    /// Our host candidates (also in the SDP), for peers that read trickled ones only.
    pub fn local_candidates(&self) -> Vec<CandidateInit> {
        self.conn.local_candidates()
    }

    /// The remote's DTLS fingerprint from its SDP (colon-hex), checked by DTLS before open.
    pub fn remote_fingerprint(&self) -> Option<&str> {
        self.conn.remote_fingerprint()
    }

    /// One datagram that arrived on this link's socket.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, contents: &[u8]) {
        let mut out = std::mem::take(&mut self.scratch);
        self.conn.handle_datagram(now, source, contents, &mut out);
        self.conn.poll(now, &mut out);
        self.absorb(out);
    }

    /// Time passes.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut out = std::mem::take(&mut self.scratch);
        self.conn.handle_timeout(now, &mut out);
        self.conn.poll(now, &mut out);
        self.absorb(out);
    }

    /// Queues one text message; returns the bytes buffered after it.
    pub fn send_text(&mut self, now: Instant, text: String) -> Result<usize, SendError> {
        let r = self.conn.send(now, Message::Text(text));
        let mut out = std::mem::take(&mut self.scratch);
        self.conn.poll(now, &mut out);
        self.absorb(out);
        r
    }

    /// Closes (SCTP abort, DTLS close_notify); [`LinkOutput::Closed`] follows.
    pub fn close(&mut self, now: Instant) {
        let mut out = std::mem::take(&mut self.scratch);
        self.conn.close(now, CloseReason::Local, &mut out);
        self.absorb(out);
    }

    fn absorb(&mut self, mut out: Vec<ConnOut>) {
        for o in out.drain(..) {
            let o = match o {
                ConnOut::Transmit {
                    destination,
                    contents,
                    ..
                } => LinkOutput::Transmit {
                    destination,
                    contents,
                },
                ConnOut::Open { .. } => LinkOutput::Open,
                ConnOut::Data(Message::Text(t)) => LinkOutput::Text(t),
                ConnOut::Data(Message::Bytes(b)) => LinkOutput::Binary(b),
                // Raw framing gives text or bytes only.
                ConnOut::Data(_) | ConnOut::Error(_) | ConnOut::BufferedLow => continue,
                ConnOut::Closed(r) => LinkOutput::Closed(r),
                ConnOut::LocalCandidate(c) => LinkOutput::Candidate(c),
            };
            self.out.push_back(o);
        }
        self.scratch = out;
    }

    /// The next output; [`LinkOutput::Timeout`] once drained.
    pub fn poll_output(&mut self) -> LinkOutput {
        self.out
            .pop_front()
            .unwrap_or_else(|| LinkOutput::Timeout(self.conn.next_timeout()))
    }
}
