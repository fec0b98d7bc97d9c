//! Kibitz's offline mode from Rust (LAN.md): one participant of a LAN room on a `kibitz hub`.
//!
//! [`start`] runs a task that owns the sans-IO room ([`kibitz_client::lan::LanRoom`]), the
//! hub connection and one peer connection per linked member ([`kibitz_rtc::Link`], each its
//! own UDP socket, as a browser's peer connections), and one timer.
//!
//! - The hub: we offer one data channel `hub` as the controlling ICE agent and take the answer
//!   the blob describes ([`kibitz_proto::lan::synthesize_answer`]; the hub is ICE-lite, DTLS
//!   passive). Its IPv4 endpoints are the remote candidates (`.local` names are skipped). The
//!   hub's first frame is `id`; without it in [`LanOptions::hub_timeout`] the attempt failed.
//! - Peers: data channel `content`, JSON text frames (a ContentMsg each, as the web's
//!   lanMesh), offer/answer/candidates over the hub's `sig`. An offer from a browser also
//!   carries audio and video; we answer them with no tracks of ours.
//! - TURN (g2 blob): peer connections are relay-only through the hub's relay at its first
//!   IPv4 endpoint (the web lists one per endpoint; ours takes one). g1: host candidates.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kibitz_client::lan::{LanConfig, LanEvent, LanInput, LanMember, LanOutput, LanRoom};
use kibitz_proto::content::{Chat, Content};
use kibitz_proto::lan::{self, Blob, Description, HubFrame, SigPayload};
use kibitz_rtc::{Identity, Link, LinkConfig, LinkOutput, RelayConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// The one clock read of the LAN driver.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How to join a LAN room.
#[derive(Debug, Clone)]
pub struct LanOptions {
    /// The hub.
    pub blob: Blob,
    /// The room (normalised before `join`).
    pub room: String,
    /// Display name.
    pub name: String,
    /// The DTLS identity of every connection.
    pub identity: Identity,
    /// The IP advertised as our host candidate; default: the one the OS routes to the hub's
    /// first IPv4 endpoint from.
    pub host_ip: Option<IpAddr>,
    /// How long the hub has to send `id` (6 s, as the web client).
    pub hub_timeout: Duration,
}

impl LanOptions {
    /// Defaults for the rest.
    pub fn new(blob: Blob, room: &str, name: &str, identity: Identity) -> Self {
        LanOptions {
            blob,
            room: room.to_owned(),
            name: name.to_owned(),
            identity,
            host_ip: None,
            hub_timeout: Duration::from_secs(6),
        }
    }
}

/// What happens in the room, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LanRoomEvent {
    /// On the hub and in the room with this id.
    Connected {
        /// Our id (hub id, decimal).
        id: String,
    },
    /// The hub was lost; reconnecting.
    Reconnecting,
    /// A member appeared.
    Joined(LanMember),
    /// A member left (`bye`) or went silent.
    Left {
        /// Who.
        member: LanMember,
        /// Reaped for silence rather than `bye`.
        silent: bool,
    },
    /// The content channel with a member is open.
    LinkOpen {
        /// The member id.
        peer: String,
    },
    /// A chat line.
    Chat {
        /// The sender's id.
        from: String,
        /// The sender's name, as its presence says (or its id).
        name: String,
        /// The text.
        text: String,
    },
    /// We left; the task has ended.
    Done,
}

/// The task stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the LAN room has stopped")]
pub struct LanStopped;

enum Cmd {
    Chat(String, oneshot::Sender<usize>),
    Members(oneshot::Sender<Vec<LanMember>>),
    Leave(oneshot::Sender<()>),
}

/// Controls a running LAN participant.
#[derive(Debug, Clone)]
pub struct LanHandle {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl LanHandle {
    /// Sends a chat line to every member whose content channel is open; returns how many.
    pub async fn chat(&self, text: &str) -> Result<usize, LanStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Chat(text.to_owned(), tx))
            .map_err(|_| LanStopped)?;
        rx.await.map_err(|_| LanStopped)
    }

    /// The members we hear (us excluded).
    pub async fn members(&self) -> Result<Vec<LanMember>, LanStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Members(tx)).map_err(|_| LanStopped)?;
        rx.await.map_err(|_| LanStopped)
    }

    /// Leaves (`bye` to everyone) and waits until it went out.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Leave(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the participant; events come on the receiver until [`LanRoomEvent::Done`].
pub fn start(opts: LanOptions) -> (LanHandle, mpsc::UnboundedReceiver<LanRoomEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut d = Driver::new(opts, ev_tx);
        d.run(rx).await;
    });
    (LanHandle { tx }, ev_rx)
}

/// A UDP socket and the task reading it.
struct Sock {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct HubConn {
    generation: u64,
    link: Link,
    sock: Sock,
    id: Option<u64>,
    deadline: Option<Instant>,
}

struct PeerConn {
    generation: u64,
    link: Link,
    sock: Sock,
}

struct Datagram {
    generation: u64,
    source: SocketAddr,
    contents: Vec<u8>,
}

struct Driver {
    opts: LanOptions,
    room: LanRoom,
    hub: Option<HubConn>,
    peers: BTreeMap<String, PeerConn>,
    next_generation: u64,
    dgram_tx: mpsc::UnboundedSender<Datagram>,
    dgram_rx: mpsc::UnboundedReceiver<Datagram>,
    events: mpsc::UnboundedSender<LanRoomEvent>,
    relay: Option<RelayConfig>,
    host_ip: IpAddr,
    seq: u64,
    leaving: Vec<oneshot::Sender<()>>,
    done: bool,
}

/// The hub's IPv4 endpoints (`.local` names skipped).
fn hub_addrs(blob: &Blob) -> Vec<SocketAddr> {
    blob.endpoints
        .iter()
        .filter_map(|e| {
            e.addr
                .parse::<Ipv4Addr>()
                .ok()
                .map(|ip| SocketAddr::new(IpAddr::V4(ip), e.port))
        })
        .collect()
}

/// The address the OS would send from to reach `to` (no packet is sent).
fn route_ip(to: SocketAddr) -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect(to).ok()?;
    Some(s.local_addr().ok()?.ip())
}

fn to_rtc(c: lan::CandidateInit) -> kibitz_rtc::CandidateInit {
    kibitz_rtc::CandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_m_line_index: c.sdp_mline_index,
        username_fragment: c.username_fragment,
    }
}

fn to_lan(c: kibitz_rtc::CandidateInit) -> lan::CandidateInit {
    lan::CandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_m_line_index,
        username_fragment: c.username_fragment,
    }
}

/// The `content` frame of one chat line (a ContentMsg as JSON text).
pub fn chat_frame(text: &str, mid: Option<String>, ts: Option<u64>) -> Option<String> {
    serde_json::to_string(&Content::Chat(Chat {
        text: text.to_owned(),
        mid,
        ts,
        ..Chat::default()
    }))
    .ok()
}

impl Driver {
    fn new(opts: LanOptions, events: mpsc::UnboundedSender<LanRoomEvent>) -> Self {
        let (dgram_tx, dgram_rx) = mpsc::unbounded_channel();
        let addrs = hub_addrs(&opts.blob);
        let host_ip = opts
            .host_ip
            .or_else(|| addrs.first().and_then(|a| route_ip(*a)))
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let relay = match (&opts.blob.turn, addrs.first()) {
            (Some(t), Some(a)) => Some(RelayConfig {
                server: SocketAddr::new(a.ip(), t.port),
                username: t.user.clone(),
                credential: t.pass.clone(),
            }),
            _ => None,
        };
        let room = LanRoom::new(LanConfig::new(&opts.room, &opts.name));
        Driver {
            opts,
            room,
            hub: None,
            peers: BTreeMap::new(),
            next_generation: 1,
            dgram_tx,
            dgram_rx,
            events,
            relay,
            host_ip,
            seq: 0,
            leaving: Vec::new(),
            done: false,
        }
    }

    async fn run(&mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        self.room.start(now());
        let mut cmds_open = true;
        loop {
            let deadline = self.pump().await;
            if self.done {
                break;
            }
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = cmds.recv(), if cmds_open => match cmd {
                    Some(c) => self.on_cmd(c),
                    // Every handle is gone: leave.
                    None => {
                        cmds_open = false;
                        self.room.leave(now());
                    }
                },
                Some(d) = self.dgram_rx.recv() => {
                    self.on_datagram(d);
                    // Take whatever else already arrived before pumping.
                    while let Ok(d) = self.dgram_rx.try_recv() {
                        self.on_datagram(d);
                    }
                }
                () = sleep => self.on_timeout(),
            }
        }
        for tx in self.leaving.drain(..) {
            let _ = tx.send(());
        }
    }

    fn emit(&self, ev: LanRoomEvent) {
        let _ = self.events.send(ev);
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let t = now();
        match cmd {
            Cmd::Chat(text, reply) => {
                self.seq += 1;
                let mid = self.room.id().map(|id| format!("{id}#{}", self.seq));
                let mut sent = 0;
                if let Some(frame) = chat_frame(&text, mid, Some(unix_ms())) {
                    for p in self.peers.values_mut() {
                        if p.link.is_open() && p.link.send_text(t, frame.clone()).is_ok() {
                            sent += 1;
                        }
                    }
                }
                let _ = reply.send(sent);
            }
            Cmd::Members(reply) => {
                let _ = reply.send(self.room.members());
            }
            Cmd::Leave(reply) => {
                self.leaving.push(reply);
                self.room.leave(t);
            }
        }
    }

    fn on_datagram(&mut self, d: Datagram) {
        let t = now();
        if let Some(h) = self.hub.as_mut()
            && h.generation == d.generation
        {
            h.link.handle_datagram(t, d.source, &d.contents);
            return;
        }
        if let Some(p) = self
            .peers
            .values_mut()
            .find(|p| p.generation == d.generation)
        {
            p.link.handle_datagram(t, d.source, &d.contents);
        }
    }

    fn on_timeout(&mut self) {
        let t = now();
        self.room.handle_input(t, LanInput::Timeout);
        if let Some(h) = self.hub.as_mut() {
            if h.deadline.is_some_and(|d| t >= d) {
                debug!("hub sent no id in time");
                self.hub = None;
                self.room.handle_input(t, LanInput::HubFailed);
            } else {
                h.link.handle_timeout(t);
            }
        }
        for p in self.peers.values_mut() {
            p.link.handle_timeout(t);
        }
    }

    /// Binds a socket for a new link and starts reading it.
    async fn bind(&mut self) -> std::io::Result<(u64, Sock, SocketAddr)> {
        let socket = Arc::new(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?);
        let port = socket.local_addr()?.port();
        let generation = self.next_generation;
        self.next_generation += 1;
        let (reader_sock, tx) = (socket.clone(), self.dgram_tx.clone());
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, source)) = reader_sock.recv_from(&mut buf).await {
                let d = Datagram {
                    generation,
                    source,
                    contents: buf[..n].to_vec(),
                };
                if tx.send(d).is_err() {
                    break;
                }
            }
        });
        let local = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
        Ok((generation, Sock { socket, reader }, local))
    }

    fn link_config(&self, label: &str, local: SocketAddr, relay: bool) -> LinkConfig {
        let mut cfg = LinkConfig::new(label, self.opts.identity.clone(), local);
        cfg.hosts = vec![SocketAddr::new(self.host_ip, local.port())];
        if relay {
            cfg.relay = self.relay.clone();
        }
        cfg
    }

    async fn connect_hub(&mut self) {
        self.hub = None;
        let t = now();
        let addrs = hub_addrs(&self.opts.blob);
        let result = async {
            if addrs.is_empty() {
                return Err("the blob has no IPv4 endpoint".to_owned());
            }
            let (generation, sock, local) = self.bind().await.map_err(|e| e.to_string())?;
            let cfg = self.link_config("hub", local, false);
            let (mut link, offer) = Link::offer(t, &cfg).map_err(|e| e.to_string())?;
            let mut blob = self.opts.blob.clone();
            blob.endpoints
                .retain(|e| e.addr.parse::<Ipv4Addr>().is_ok());
            let answer = lan::synthesize_answer(&offer, &blob);
            link.accept_answer(t, &answer).map_err(|e| e.to_string())?;
            Ok(HubConn {
                generation,
                link,
                sock,
                id: None,
                deadline: Some(t + self.opts.hub_timeout),
            })
        }
        .await;
        match result {
            Ok(h) => self.hub = Some(h),
            Err(e) => {
                warn!(error = %e, "cannot connect to the hub");
                self.room.handle_input(t, LanInput::HubFailed);
            }
        }
    }

    async fn dial(&mut self, peer: String) {
        let t = now();
        self.close_peer(&peer);
        let made = async {
            let (generation, sock, local) = self.bind().await.map_err(|e| e.to_string())?;
            let cfg = self.link_config("content", local, true);
            let (link, offer) = Link::offer(t, &cfg).map_err(|e| e.to_string())?;
            Ok::<_, String>((
                PeerConn {
                    generation,
                    link,
                    sock,
                },
                offer,
            ))
        }
        .await;
        match made {
            Ok((conn, offer)) => {
                let cands = conn.link.local_candidates();
                self.peers.insert(peer.clone(), conn);
                self.sig_description(&peer, "offer", offer);
                for c in cands {
                    self.sig_candidate(&peer, c);
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot dial");
                self.room
                    .handle_input(t, LanInput::LinkClosed { peer: &peer });
            }
        }
    }

    async fn accept(&mut self, peer: String, sdp: String) {
        let t = now();
        self.close_peer(&peer);
        let made = async {
            let (generation, sock, local) = self.bind().await.map_err(|e| e.to_string())?;
            let cfg = self.link_config("content", local, true);
            let (link, answer) = Link::answer(t, &cfg, &sdp).map_err(|e| e.to_string())?;
            Ok::<_, String>((
                PeerConn {
                    generation,
                    link,
                    sock,
                },
                answer,
            ))
        }
        .await;
        match made {
            Ok((conn, answer)) => {
                let cands = conn.link.local_candidates();
                self.peers.insert(peer.clone(), conn);
                self.sig_description(&peer, "answer", answer);
                for c in cands {
                    self.sig_candidate(&peer, c);
                }
            }
            Err(e) => {
                debug!(error = %e, "offer refused");
                self.room
                    .handle_input(t, LanInput::LinkClosed { peer: &peer });
            }
        }
    }

    fn sig_description(&mut self, peer: &str, kind: &str, sdp: String) {
        let d = Description {
            kind: kind.to_owned(),
            sdp,
        };
        self.room.signal(peer, SigPayload::Description { d });
    }

    fn sig_candidate(&mut self, peer: &str, c: kibitz_rtc::CandidateInit) {
        self.room
            .signal(peer, SigPayload::Candidate { c: to_lan(c) });
    }

    fn close_peer(&mut self, peer: &str) {
        if let Some(mut p) = self.peers.remove(peer) {
            p.link.close(now());
            // The close's datagrams (SCTP abort, close_notify) are best effort.
            flush_link(&mut p.link, &p.sock);
        }
    }

    /// Carries out everything pending until nothing moves; returns the next deadline.
    async fn pump(&mut self) -> Option<Instant> {
        loop {
            let mut moved = false;
            loop {
                match self.room.poll_output() {
                    LanOutput::Timeout(_) => break,
                    o => {
                        moved = true;
                        self.on_room_output(o).await;
                    }
                }
            }
            moved |= self.drain_hub();
            moved |= self.drain_peers();
            if !moved {
                break;
            }
        }
        let mut at = match self.room.poll_output() {
            LanOutput::Timeout(t) => t,
            // Drained just above; nothing can have been queued since.
            _ => None,
        };
        let mut min = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        if let Some(h) = self.hub.as_mut() {
            min(h.deadline);
            if let LinkOutput::Timeout(t) = h.link.poll_output() {
                min(t);
            }
        }
        for p in self.peers.values_mut() {
            if let LinkOutput::Timeout(t) = p.link.poll_output() {
                min(t);
            }
        }
        at
    }

    async fn on_room_output(&mut self, o: LanOutput) {
        let t = now();
        match o {
            LanOutput::Hub(text) => {
                if let Some(h) = self.hub.as_mut()
                    && let Err(e) = h.link.send_text(t, text)
                {
                    debug!(error = %e, "hub frame not sent");
                }
            }
            LanOutput::ConnectHub => self.connect_hub().await,
            LanOutput::DisconnectHub => {
                if let Some(mut h) = self.hub.take() {
                    h.link.close(t);
                    flush_link(&mut h.link, &h.sock);
                }
            }
            LanOutput::Dial { peer } => self.dial(peer).await,
            LanOutput::Accept { peer, sdp } => self.accept(peer, sdp).await,
            LanOutput::Answer { peer, sdp } => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.link.awaiting_answer()
                    && let Err(e) = p.link.accept_answer(t, &sdp)
                {
                    debug!(error = %e, "answer refused");
                    self.close_peer(&peer);
                    self.room
                        .handle_input(t, LanInput::LinkClosed { peer: &peer });
                }
            }
            LanOutput::Candidate { peer, candidate } => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && let Err(e) = p.link.add_remote_candidate(t, &to_rtc(candidate))
                {
                    // An mDNS name or TCP candidate we cannot use: others may do.
                    debug!(error = %e, "candidate ignored");
                }
            }
            LanOutput::CloseLink { peer } => self.close_peer(&peer),
            LanOutput::Event(e) => self.on_room_event(e),
            LanOutput::Timeout(_) => {}
            _ => {}
        }
    }

    fn on_room_event(&mut self, e: LanEvent) {
        match e {
            LanEvent::Connected { id } => {
                info!(%id, "in the LAN room");
                self.emit(LanRoomEvent::Connected { id });
            }
            LanEvent::Reconnecting => self.emit(LanRoomEvent::Reconnecting),
            LanEvent::Joined(m) => self.emit(LanRoomEvent::Joined(m)),
            LanEvent::Left { member, silent } => self.emit(LanRoomEvent::Left { member, silent }),
            LanEvent::Done => {
                self.done = true;
                for (_, mut p) in std::mem::take(&mut self.peers) {
                    p.link.close(now());
                    flush_link(&mut p.link, &p.sock);
                }
                self.emit(LanRoomEvent::Done);
            }
            _ => {}
        }
    }

    /// Moves the hub link's output along; whether anything moved.
    fn drain_hub(&mut self) -> bool {
        let t = now();
        let mut moved = false;
        let mut lost = None;
        let mut frames = Vec::new();
        if let Some(h) = self.hub.as_mut() {
            loop {
                match h.link.poll_output() {
                    LinkOutput::Timeout(_) => break,
                    LinkOutput::Transmit {
                        destination,
                        contents,
                    } => {
                        let _ = h.sock.socket.try_send_to(&contents, destination);
                    }
                    LinkOutput::Text(text) => {
                        moved = true;
                        if h.id.is_none() {
                            if let Ok(HubFrame::Id { id }) = serde_json::from_str(&text) {
                                h.id = Some(id);
                                h.deadline = None;
                                frames.push(Err(id));
                            }
                        } else {
                            frames.push(Ok(text));
                        }
                    }
                    LinkOutput::Closed(reason) => {
                        moved = true;
                        debug!(?reason, "hub connection closed");
                        lost = Some(h.id.is_some());
                        break;
                    }
                    _ => {}
                }
            }
        }
        for f in frames {
            match f {
                Err(id) => self.room.handle_input(t, LanInput::HubUp { id }),
                Ok(text) => self.room.handle_input(t, LanInput::HubFrame(&text)),
            }
        }
        if let Some(was_up) = lost {
            self.hub = None;
            let input = if was_up {
                LanInput::HubDown
            } else {
                LanInput::HubFailed
            };
            self.room.handle_input(t, input);
        }
        moved
    }

    fn drain_peers(&mut self) -> bool {
        let t = now();
        let mut moved = false;
        let mut closed = Vec::new();
        let mut cands = Vec::new();
        for (peer, p) in self.peers.iter_mut() {
            loop {
                match p.link.poll_output() {
                    LinkOutput::Timeout(_) => break,
                    LinkOutput::Transmit {
                        destination,
                        contents,
                    } => {
                        let _ = p.sock.socket.try_send_to(&contents, destination);
                    }
                    LinkOutput::Open => {
                        moved = true;
                        let _ = self
                            .events
                            .send(LanRoomEvent::LinkOpen { peer: peer.clone() });
                    }
                    LinkOutput::Text(text) => {
                        moved = true;
                        if let Ok(Content::Chat(c)) = serde_json::from_str::<Content>(&text) {
                            let name = self
                                .room
                                .members()
                                .into_iter()
                                .find(|m| &m.id == peer)
                                .map_or_else(|| peer.clone(), |m| m.name);
                            let _ = self.events.send(LanRoomEvent::Chat {
                                from: peer.clone(),
                                name,
                                text: c.text,
                            });
                        }
                    }
                    LinkOutput::Candidate(c) => {
                        moved = true;
                        cands.push((peer.clone(), c));
                    }
                    LinkOutput::Closed(reason) => {
                        moved = true;
                        debug!(?reason, "link closed");
                        closed.push(peer.clone());
                        break;
                    }
                    _ => {}
                }
            }
        }
        for (peer, c) in cands {
            self.sig_candidate(&peer, c);
        }
        for peer in closed {
            self.peers.remove(&peer);
            self.room
                .handle_input(t, LanInput::LinkClosed { peer: &peer });
        }
        moved
    }
}

/// Sends what a closing link still has to say.
fn flush_link(link: &mut Link, sock: &Sock) {
    loop {
        match link.poll_output() {
            LinkOutput::Timeout(_) => break,
            LinkOutput::Transmit {
                destination,
                contents,
            } => {
                let _ = sock.socket.try_send_to(&contents, destination);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_line_is_a_content_msg_in_json_text() {
        let f = chat_frame("hi there", Some("3#1".into()), Some(1_700_000_000_000)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"k": "chat", "text": "hi there", "mid": "3#1", "ts": 1_700_000_000_000u64})
        );
        // And what the web sends reads back as chat.
        let web = r#"{"k":"chat","text":"yo","mid":"1#4","ts":1}"#;
        assert!(
            matches!(serde_json::from_str::<Content>(web), Ok(Content::Chat(c)) if c.text == "yo")
        );
    }

    #[test]
    fn the_hub_is_reached_at_its_ipv4_endpoints_only() {
        let blob = lan::parse_blob(
            "g2|uf|pw|AAcOFRwjKjE4P0ZNVFtiaXB3foWMk5qhqK-2vcTL0tk|3478,u,p|kbz-ab.local~4711|10.0.0.2~4711",
        )
        .unwrap();
        assert_eq!(
            hub_addrs(&blob),
            ["10.0.0.2:4711".parse::<SocketAddr>().unwrap()]
        );
    }
}
