//! The thin tokio driver: owns the UDP socket and the broker WebSocket, feeds a [`PeerCore`]
//! and carries out what it outputs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, info, warn};

use crate::broker::{BrokerConfig, BrokerError, Ws, connect_ws, fetch_id};
use crate::core::{CoreConfig, Event, Input, Output, PeerCore};
use crate::{
    ConnId, ConnInfo, ConnectOptions, Identity, LaneRef, MediaError, MediaOptions, MediaSignal,
    MediaStats, MediaWriteError, Message, RelayConfig, SendError,
};

/// The one clock read of this crate: the driver passes it into the sans-IO core.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// How to start a [`Peer`].
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// The broker.
    pub broker: BrokerConfig,
    /// The DTLS identity; give the same one to every peer of a participant.
    pub identity: Identity,
    /// Our id; `None` asks the broker (`GET …/id`).
    pub id: Option<String>,
    /// The broker token; `None` draws one. [`PeerHandle::reconnect`] reuses it.
    pub token: Option<String>,
    /// Where to bind each connection's UDP socket (default `127.0.0.1:0`; every connection
    /// has its own socket, as a browser's peer connections do).
    pub bind: SocketAddr,
    /// The IPs advertised as host candidates when `bind` is an unspecified address
    /// (default `127.0.0.1`); a specific `bind` address is advertised as it is.
    pub host_ips: Vec<IpAddr>,
    /// `HEARTBEAT` interval (default 5 s).
    pub heartbeat: Duration,
    /// Per-connection bound on buffered outgoing bytes (default 8 MiB, as PeerJS).
    pub max_buffered: usize,
    /// Connections not open this long after being made are closed (default 30 s).
    pub open_timeout: Duration,
    /// Relay-only through this TURN server (see [`CoreConfig::relay`]).
    pub relay: Option<RelayConfig>,
    /// TURN for media connections asked to be relay-only (see [`CoreConfig::media_relay`]).
    pub media_relay: Option<RelayConfig>,
    /// Most connections at once (default 256; see [`CoreConfig::max_connections`]).
    pub max_connections: usize,
}

impl PeerOptions {
    /// Defaults for `broker` and `identity`.
    pub fn new(broker: BrokerConfig, identity: Identity) -> Self {
        let d = CoreConfig::new(String::new(), identity.clone());
        PeerOptions {
            broker,
            identity,
            id: None,
            token: None,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            host_ips: d.host_ips.clone(),
            heartbeat: d.heartbeat,
            max_buffered: d.max_buffered,
            open_timeout: d.open_timeout,
            relay: None,
            media_relay: None,
            max_connections: d.max_connections,
        }
    }
}

/// Why a peer could not start, or a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The UDP socket could not be bound.
    #[error("udp: {0}")]
    Udp(#[from] std::io::Error),
    /// The connection could not be made (bad id, connectionId in use, WebRTC refused).
    #[error("connect: {0}")]
    Connect(String),
    /// The peer's driver has stopped ([`PeerHandle::destroy`], or every handle dropped).
    #[error("peer stopped")]
    Stopped,
}

enum Command {
    Connect {
        remote: String,
        opts: ConnectOptions,
        reply: oneshot::Sender<Result<ConnId, PeerError>>,
    },
    Send {
        conn: ConnId,
        msg: Message,
        reply: oneshot::Sender<Result<usize, SendError>>,
    },
    Buffered {
        conn: ConnId,
        reply: oneshot::Sender<Option<usize>>,
    },
    Info {
        conn: ConnId,
        reply: oneshot::Sender<Option<(String, ConnInfo, Option<String>)>>,
    },
    Close {
        conn: ConnId,
    },
    Reconnect {
        reply: oneshot::Sender<Result<(), PeerError>>,
    },
    Call {
        remote: String,
        opts: MediaOptions,
        reply: oneshot::Sender<Result<ConnId, MediaError>>,
    },
    AnswerCall {
        conn: ConnId,
        opts: MediaOptions,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    MediaOffer {
        remote: String,
        opts: MediaOptions,
        relay: bool,
        reply: oneshot::Sender<Result<ConnId, MediaError>>,
    },
    MediaSignal {
        conn: Option<ConnId>,
        remote: String,
        signal: MediaSignal,
        opts: MediaOptions,
        relay: bool,
        reply: oneshot::Sender<Result<ConnId, MediaError>>,
    },
    MediaRestartIce {
        conn: ConnId,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    MediaRollback {
        conn: ConnId,
        reply: oneshot::Sender<Result<bool, MediaError>>,
    },
    WriteMedia {
        conn: ConnId,
        lane: LaneRef,
        rtp_time: u64,
        data: Vec<u8>,
        reply: Option<oneshot::Sender<Result<(), MediaWriteError>>>,
    },
    RequestKeyframe {
        conn: ConnId,
        lane: LaneRef,
        reply: oneshot::Sender<Result<(), MediaWriteError>>,
    },
    MediaStats {
        conn: ConnId,
        reply: oneshot::Sender<Option<MediaStats>>,
    },
    Disconnect,
    Destroy,
    BlackholeMedia(Duration),
}

/// The receiving end of a peer's events. Drain it: events are not bounded.
pub type Events = mpsc::UnboundedReceiver<Event>;

/// Starts peers.
#[derive(Debug)]
pub struct Peer;

impl Peer {
    /// Gets an id if none is given, binds the UDP socket, opens the broker WebSocket and
    /// starts the driver. `OPEN` (or `ID-TAKEN`/`ERROR`) arrives as the first broker event.
    pub async fn connect(opts: PeerOptions) -> Result<(PeerHandle, Events), PeerError> {
        let id = match opts.id.clone() {
            Some(id) => id,
            None => fetch_id(&opts.broker).await?,
        };
        let token = opts.token.clone().unwrap_or_else(|| random_base36(11));
        let ws = connect_ws(&opts.broker, &id, &token).await?;
        let mut cfg = CoreConfig::new(id.clone(), opts.identity.clone());
        cfg.host_ips = opts.host_ips.clone();
        cfg.heartbeat = opts.heartbeat;
        cfg.max_buffered = opts.max_buffered;
        cfg.open_timeout = opts.open_timeout;
        cfg.relay = opts.relay.clone();
        cfg.media_relay = opts.media_relay.clone();
        cfg.max_connections = opts.max_connections;
        let mut core = PeerCore::new(cfg);
        core.handle_input(now(), Input::BrokerConnected);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (dgram_tx, dgram_rx) = mpsc::channel(1024);
        let mut driver = Driver {
            core,
            bind: opts.bind,
            sockets: BTreeMap::new(),
            dgram_tx,
            dgram_rx,
            ws: Some(ws),
            broker: opts.broker.clone(),
            id: id.clone(),
            token,
            cmds: cmd_rx,
            events: ev_tx,
            reconnecting: None,
            blackhole: None,
        };
        driver.top_up()?;
        info!("peer started");
        tokio::spawn(driver.run());
        let handle = PeerHandle {
            id,
            fingerprint: opts.identity.fingerprint().to_owned(),
            cmd: cmd_tx,
        };
        Ok((handle, ev_rx))
    }
}

/// Commands a running peer. Cheap to clone; the peer stops when every handle is dropped.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    id: String,
    fingerprint: String,
    cmd: mpsc::UnboundedSender<Command>,
}

impl PeerHandle {
    /// Our id at the broker.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Our DTLS fingerprint (SHA-256, colon-hex): the [`Identity`]'s.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).ok()?;
        rx.await.ok()
    }

    /// Opens a data connection to `remote` (we offer). [`Event::ConnOpen`] follows.
    pub async fn connect(&self, remote: &str, opts: ConnectOptions) -> Result<ConnId, PeerError> {
        let remote = remote.to_owned();
        self.ask(|reply| Command::Connect {
            remote,
            opts,
            reply,
        })
        .await
        .unwrap_or(Err(PeerError::Stopped))
    }

    /// Sends one message; returns the bytes now buffered on the connection (backpressure:
    /// [`SendError::Full`] past [`PeerOptions::max_buffered`], then wait for
    /// [`Event::BufferedLow`]).
    pub async fn send(&self, conn: ConnId, msg: Message) -> Result<usize, SendError> {
        self.ask(|reply| Command::Send { conn, msg, reply })
            .await
            .unwrap_or(Err(SendError::Stopped))
    }

    /// Bytes buffered on `conn`; `None` if it is gone.
    pub async fn buffered(&self, conn: ConnId) -> Option<usize> {
        self.ask(|reply| Command::Buffered { conn, reply })
            .await
            .flatten()
    }

    /// The remote id, the connection details and the remote DTLS fingerprint (colon-hex,
    /// once its SDP is known) of `conn`.
    pub async fn conn_info(&self, conn: ConnId) -> Option<(String, ConnInfo, Option<String>)> {
        self.ask(|reply| Command::Info { conn, reply })
            .await
            .flatten()
    }

    /// Calls `remote` as a PeerJS MediaConnection (legacy; see [`PeerCore::call`]), on its
    /// own UDP socket; relay-only when [`PeerOptions::relay`] is set.
    pub async fn call(&self, remote: &str, opts: MediaOptions) -> Result<ConnId, MediaError> {
        let remote = remote.to_owned();
        self.ask(|reply| Command::Call {
            remote,
            opts,
            reply,
        })
        .await
        .unwrap_or(Err(MediaError::Stopped))
    }

    /// Answers a call announced by [`Event::Call`] (see [`PeerCore::answer_call`]).
    pub async fn answer_call(&self, conn: ConnId, opts: MediaOptions) -> Result<(), MediaError> {
        self.ask(|reply| Command::AnswerCall { conn, opts, reply })
            .await
            .unwrap_or(Err(MediaError::Stopped))
    }

    /// Opens an owned media connection (see [`PeerCore::media_offer`]); its signalling
    /// comes as [`Event::MediaSignal`].
    pub async fn media_offer(
        &self,
        remote: &str,
        opts: MediaOptions,
        relay: bool,
    ) -> Result<ConnId, MediaError> {
        let remote = remote.to_owned();
        self.ask(|reply| Command::MediaOffer {
            remote,
            opts,
            relay,
            reply,
        })
        .await
        .unwrap_or(Err(MediaError::Stopped))
    }

    /// Feeds owned-media signalling from `remote` (see [`PeerCore::media_signal`]).
    pub async fn media_signal(
        &self,
        conn: Option<ConnId>,
        remote: &str,
        signal: MediaSignal,
        opts: MediaOptions,
        relay: bool,
    ) -> Result<ConnId, MediaError> {
        let remote = remote.to_owned();
        self.ask(|reply| Command::MediaSignal {
            conn,
            remote,
            signal,
            opts,
            relay,
            reply,
        })
        .await
        .unwrap_or(Err(MediaError::Stopped))
    }

    /// ICE restart on an owned media connection (see [`PeerCore::media_restart_ice`]).
    pub async fn media_restart_ice(&self, conn: ConnId) -> Result<(), MediaError> {
        self.ask(|reply| Command::MediaRestartIce { conn, reply })
            .await
            .unwrap_or(Err(MediaError::Stopped))
    }

    /// Drops our pending offer (see [`PeerCore::media_rollback`]).
    pub async fn media_rollback(&self, conn: ConnId) -> Result<bool, MediaError> {
        self.ask(|reply| Command::MediaRollback { conn, reply })
            .await
            .unwrap_or(Err(MediaError::Stopped))
    }

    /// Writes one frame (see [`PeerCore::write_media`]) and waits for the verdict.
    pub async fn write_media(
        &self,
        conn: ConnId,
        lane: LaneRef,
        rtp_time: u64,
        data: Vec<u8>,
    ) -> Result<(), MediaWriteError> {
        self.ask(|reply| Command::WriteMedia {
            conn,
            lane,
            rtp_time,
            data,
            reply: Some(reply),
        })
        .await
        .unwrap_or(Err(MediaWriteError::Stopped))
    }

    /// Writes one frame without waiting (errors are dropped): for a steady 50 frames/s.
    pub fn write_media_nowait(&self, conn: ConnId, lane: LaneRef, rtp_time: u64, data: Vec<u8>) {
        let _ = self.cmd.send(Command::WriteMedia {
            conn,
            lane,
            rtp_time,
            data,
            reply: None,
        });
    }

    /// Asks the remote for a keyframe on `lane` (PLI).
    pub async fn request_keyframe(
        &self,
        conn: ConnId,
        lane: LaneRef,
    ) -> Result<(), MediaWriteError> {
        self.ask(|reply| Command::RequestKeyframe { conn, lane, reply })
            .await
            .unwrap_or(Err(MediaWriteError::Stopped))
    }

    /// Cumulative payload bytes of a media connection.
    pub async fn media_stats(&self, conn: ConnId) -> Option<MediaStats> {
        self.ask(|reply| Command::MediaStats { conn, reply })
            .await
            .flatten()
    }

    /// Closes `conn` (a data or a media connection).
    pub fn close(&self, conn: ConnId) {
        let _ = self.cmd.send(Command::Close { conn });
    }

    /// Reopens the broker WebSocket with the same id and token (after
    /// [`Event::Disconnected`]); connections stay up meanwhile.
    pub async fn reconnect(&self) -> Result<(), PeerError> {
        self.ask(|reply| Command::Reconnect { reply })
            .await
            .unwrap_or(Err(PeerError::Stopped))
    }

    /// Closes the broker WebSocket (as peerjs `disconnect()`); connections stay up.
    pub fn disconnect(&self) {
        let _ = self.cmd.send(Command::Disconnect);
    }

    /// Fault injection for tests only (no CLI or room API reaches it): for `span` from now,
    /// every datagram of this peer's media connections, in and out, is dropped, as if their
    /// UDP path were cut; data connections and the broker are untouched. A media connection
    /// made meanwhile is cut too.
    #[doc(hidden)]
    pub fn blackhole_media(&self, span: Duration) {
        let _ = self.cmd.send(Command::BlackholeMedia(span));
    }

    /// Closes every connection and the broker socket and stops the driver.
    pub fn destroy(&self) {
        let _ = self.cmd.send(Command::Destroy);
    }
}

/// `n` random base-36 characters.
pub(crate) fn random_base36(n: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut x = uuid::Uuid::new_v4().as_u128();
    let mut s = String::with_capacity(n);
    for _ in 0..n {
        s.push(char::from(DIGITS[(x % 36) as usize]));
        x /= 36;
    }
    s
}

type Reconnecting = (
    oneshot::Receiver<Result<Ws, BrokerError>>,
    oneshot::Sender<Result<(), PeerError>>,
);

/// A datagram read by a socket's reader task: (socket, source, bytes).
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

/// Spare sockets kept bound so that OFFERs are answered without waiting.
const SPARE_SOCKETS: usize = 2;

struct Socket {
    udp: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
}

struct Driver {
    core: PeerCore,
    bind: SocketAddr,
    sockets: BTreeMap<SocketAddr, Socket>,
    dgram_tx: mpsc::Sender<Datagram>,
    dgram_rx: mpsc::Receiver<Datagram>,
    ws: Option<Ws>,
    broker: BrokerConfig,
    id: String,
    token: String,
    cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    reconnecting: Option<Reconnecting>,
    /// Test-only media cut ([`PeerHandle::blackhole_media`]): until when.
    blackhole: Option<Instant>,
}

async fn next_ws(ws: &mut Option<Ws>) -> Option<Result<WsMessage, String>> {
    match ws {
        Some(ws) => ws.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

async fn reconnect_done(r: &mut Option<Reconnecting>) -> Result<Ws, BrokerError> {
    match r {
        Some((rx, _)) => rx
            .await
            .unwrap_or_else(|_| Err(BrokerError::Connect("reconnect task ended".into()))),
        None => std::future::pending().await,
    }
}

/// Kernel buffer asked for on each UDP socket: SCTP bursts up to a megabyte, and the
/// Linux default (about 200 KB) drops part of such a burst on loopback, which costs SCTP a
/// retransmission timeout. The kernel caps it at `net.core.rmem_max`/`wmem_max`.
const UDP_BUFFER: usize = 4 << 20;

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, std::io::Error> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

async fn read_socket(udp: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match udp.recv_from(&mut buf).await {
            Ok((n, source)) => {
                if tx.send((local, source, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "udp receive failed"),
        }
    }
}

impl Driver {
    /// Binds sockets until the core has [`SPARE_SOCKETS`] spares.
    fn top_up(&mut self) -> Result<(), std::io::Error> {
        while self.core.spare_sockets() < SPARE_SOCKETS {
            let std = bind_udp(self.bind)?;
            let udp = Arc::new(UdpSocket::from_std(std)?);
            let local = udp.local_addr()?;
            let reader = tokio::spawn(read_socket(udp.clone(), local, self.dgram_tx.clone()));
            self.sockets.insert(local, Socket { udp, reader });
            self.core.add_socket(local);
        }
        Ok(())
    }

    /// Carries out the core's outputs until it is drained; returns when it next wants time.
    async fn flush(&mut self) -> Option<Instant> {
        loop {
            match self.core.poll_output() {
                Output::Signal(text) => {
                    let sent = match self.ws.as_mut() {
                        Some(ws) => ws.send(WsMessage::text(text)).await.is_ok(),
                        None => false,
                    };
                    if !sent && self.ws.take().is_some() {
                        self.core.handle_input(now(), Input::BrokerDisconnected);
                    }
                }
                Output::Transmit {
                    source,
                    destination,
                    contents,
                } => {
                    if self.cut(source) {
                        continue;
                    }
                    let sock = self.sockets.get(&source).or_else(|| {
                        // Bound to an unspecified address: `source` is an advertised one.
                        self.sockets
                            .iter()
                            .find(|(a, _)| a.ip().is_unspecified() && a.port() == source.port())
                            .map(|(_, s)| s)
                    });
                    if let Some(s) = sock
                        && let Err(e) = s.udp.send_to(&contents, destination).await
                    {
                        debug!(error = %e, "udp send failed");
                    }
                }
                Output::Release { local } => {
                    if let Some(s) = self.sockets.remove(&local) {
                        s.reader.abort();
                    }
                }
                Output::Event(e) => {
                    let _ = self.events.send(e);
                }
                Output::Timeout(at) => return at,
            }
        }
    }

    async fn run(mut self) {
        loop {
            let deadline = self.flush().await;
            if let Err(e) = self.top_up() {
                warn!(error = %e, "could not bind a UDP socket");
            }
            let deadline = deadline.unwrap_or_else(|| now() + Duration::from_secs(3600));
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
            tokio::select! {
                Some((local, source, bytes)) = self.dgram_rx.recv() => {
                    if !self.cut(local) {
                        let contents = &bytes;
                        self.core.handle_input(now(), Input::Datagram { source, local, contents });
                    }
                }
                m = next_ws(&mut self.ws) => match m {
                    Some(Ok(WsMessage::Text(t))) => {
                        self.core.handle_input(now(), Input::Signal(t.as_str()));
                    }
                    Some(Ok(WsMessage::Binary(b))) => {
                        let t = std::str::from_utf8(&b).unwrap_or("");
                        self.core.handle_input(now(), Input::Signal(t));
                    }
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                        self.ws = None;
                        self.core.handle_input(now(), Input::BrokerDisconnected);
                    }
                    Some(Ok(_)) => {}
                },
                r = reconnect_done(&mut self.reconnecting) => {
                    if let Some((_, reply)) = self.reconnecting.take() {
                        match r {
                            Ok(ws) => {
                                self.ws = Some(ws);
                                self.core.handle_input(now(), Input::BrokerConnected);
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.into()));
                            }
                        }
                    }
                }
                c = self.cmds.recv() => match c {
                    Some(Command::Destroy) | None => break,
                    Some(c) => self.command(c),
                },
                () = sleep => self.core.handle_input(now(), Input::Timeout),
            }
        }
        self.core.close_all(now());
        self.flush().await;
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
        for s in self.sockets.values() {
            s.reader.abort();
        }
        debug!("peer stopped");
    }

    /// Whether the test-only media cut drops a datagram of the socket at `local`.
    fn cut(&mut self, local: SocketAddr) -> bool {
        match self.blackhole {
            None => false,
            Some(until) if now() >= until => {
                self.blackhole = None;
                false
            }
            Some(_) => self.core.is_media_socket(local),
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Connect {
                remote,
                opts,
                reply,
            } => {
                let cid = opts
                    .connection_id
                    .clone()
                    .unwrap_or_else(|| format!("dc_{}", random_base36(11)));
                let r = self
                    .core
                    .connect(now(), &remote, cid, opts)
                    .map_err(PeerError::Connect);
                let _ = reply.send(r);
            }
            Command::Send { conn, msg, reply } => {
                let _ = reply.send(self.core.send(now(), conn, msg));
            }
            Command::Buffered { conn, reply } => {
                let _ = reply.send(self.core.buffered(conn));
            }
            Command::Info { conn, reply } => {
                let info = self
                    .core
                    .conn_info(conn)
                    .map(|(r, i)| (r, i, self.core.remote_fingerprint(conn)));
                let _ = reply.send(info);
            }
            Command::Close { conn } => self.core.close(now(), conn),
            Command::Reconnect { reply } => {
                if self.ws.is_some() {
                    let _ = reply.send(Ok(()));
                    return;
                }
                if self.reconnecting.is_some() {
                    let _ = reply.send(Err(PeerError::Connect("reconnect in progress".into())));
                    return;
                }
                let (tx, rx) = oneshot::channel();
                let (broker, id, token) =
                    (self.broker.clone(), self.id.clone(), self.token.clone());
                tokio::spawn(async move {
                    let _ = tx.send(connect_ws(&broker, &id, &token).await);
                });
                self.reconnecting = Some((rx, reply));
            }
            Command::Call {
                remote,
                opts,
                reply,
            } => {
                let _ = reply.send(self.core.call(now(), &remote, opts));
            }
            Command::AnswerCall { conn, opts, reply } => {
                let _ = reply.send(self.core.answer_call(now(), conn, opts));
            }
            Command::MediaOffer {
                remote,
                opts,
                relay,
                reply,
            } => {
                let _ = reply.send(self.core.media_offer(now(), &remote, opts, relay));
            }
            Command::MediaSignal {
                conn,
                remote,
                signal,
                opts,
                relay,
                reply,
            } => {
                let r = self
                    .core
                    .media_signal(now(), conn, &remote, signal, opts, relay);
                let _ = reply.send(r);
            }
            Command::MediaRestartIce { conn, reply } => {
                let _ = reply.send(self.core.media_restart_ice(now(), conn));
            }
            Command::MediaRollback { conn, reply } => {
                let _ = reply.send(self.core.media_rollback(now(), conn));
            }
            Command::WriteMedia {
                conn,
                lane,
                rtp_time,
                data,
                reply,
            } => {
                let r = self.core.write_media(now(), conn, lane, rtp_time, data);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Command::RequestKeyframe { conn, lane, reply } => {
                let _ = reply.send(self.core.request_keyframe(now(), conn, lane));
            }
            Command::MediaStats { conn, reply } => {
                let _ = reply.send(self.core.media_stats(conn));
            }
            Command::Disconnect => {
                if let Some(mut ws) = self.ws.take() {
                    tokio::spawn(async move {
                        let _ = ws.close(None).await;
                    });
                    self.core.handle_input(now(), Input::BrokerDisconnected);
                } else {
                    warn!("disconnect while not connected");
                }
            }
            Command::BlackholeMedia(span) => {
                warn!(?span, "test fault injection: media datagrams dropped");
                self.blackhole = Some(now() + span);
            }
            Command::Destroy => {}
        }
    }
}
