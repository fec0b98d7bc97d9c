//! An embedded TURN relay over UDP (RFC 8656, formerly 5766) for the LAN hub and
//! `kibitz serve --turn-embedded`.
//!
//! Model: [`core::Server`] is a sans-IO state machine (datagrams and time in, datagrams and
//! socket commands out; it never reads the clock or touches a socket). [`TurnServer::start`]
//! is the thin tokio driver: the listening UDP socket (one per runtime worker, sharing the port
//! with SO_REUSEPORT, so the relay is not capped at one core), one UDP socket per allocation
//! bound on [`TurnConfig::relay_ip`] port 0 and advertised as [`TurnConfig::advertised_ip`],
//! and one timer. Every task shares the core behind one mutex, held for microseconds. After any
//! input the driver drains [`core::Server::poll_output`] until it is empty.
//!
//! Use (the LAN hub's shape; `kibitz serve --turn-embedded` passes [`TurnAuth::RestSecrets`]):
//!
//! ```no_run
//! # async fn demo() -> Result<(), kibitz_turn::TurnError> {
//! use kibitz_turn::{Secret, TurnAuth, TurnConfig, TurnLimits, TurnServer};
//! let relay = TurnServer::start(TurnConfig {
//!     listen: "0.0.0.0:3478".parse().unwrap(),
//!     relay_ip: "0.0.0.0".parse().unwrap(),
//!     advertised_ip: "192.168.1.10".parse().unwrap(),
//!     realm: "kibitz".into(),
//!     auth: TurnAuth::Static { user: "wblan".into(), pass: Secret::new("Sp64SHsXMZOdzT6rgYcF") },
//!     limits: TurnLimits::default(),
//! })?;
//! println!("TURN on {}", relay.local_addr());
//! relay.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! What it speaks: Binding (plain STUN), Allocate (401 + REALM/NONCE challenge, long-term
//! credentials with key `MD5(user:realm:pass)`), Refresh (lifetime 0 deletes), CreatePermission
//! (300 s), ChannelBind (600 s; numbers 0x4000-0x7FFF as in RFC 5766, which coturn's clients
//! still use), Send and Data indications, ChannelData both ways; responses
//! carry MESSAGE-INTEGRITY and FINGERPRINT. Errors: 400, 401, 403 (forbidden peer), 420
//! (unknown comprehension-required attribute), 437, 438 (stale nonce), 440, 441, 442, 443,
//! 486, 508. Not supported: TCP/TLS transports, EVEN-PORT/RESERVATION-TOKEN (508),
//! DONT-FRAGMENT (420), IPv6 relaying next to IPv4 (one family, that of the advertised IP).
//!
//! Error policy: input never panics. Malformed datagrams, packets without an allocation,
//! permission or channel are dropped and counted ([`Stats::dropped`]); requests get the RFC
//! error answer. Resources are bounded by [`TurnLimits`].
//!
//! Content-blind: payloads are never logged; client addresses only at DEBUG; secrets print
//! masked.

#![forbid(unsafe_code)]

mod auth;
pub mod core;
mod stun;

#[cfg(test)]
mod core_tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinSet};

pub use crate::auth::{Secret, TurnAuth};
pub use crate::core::{AllocId, Stats, TurnLimits};
use crate::core::{CoreConfig, Output, Server};

/// Everything the relay needs.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// Where clients send STUN/TURN (UDP). Port 0 picks one.
    pub listen: SocketAddr,
    /// The IP relay sockets bind on (`0.0.0.0` for all interfaces).
    pub relay_ip: IpAddr,
    /// The IP put in XOR-RELAYED-ADDRESS: where peers can reach the relay sockets.
    pub advertised_ip: IpAddr,
    /// REALM (`kibitz` for the LAN hub; the TURN host name for `kibitz serve`).
    pub realm: String,
    /// Who may allocate.
    pub auth: TurnAuth,
    /// Resource bounds.
    pub limits: TurnLimits,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// The listening socket could not be bound.
    #[error("binding the TURN listener on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// Not inside a Tokio runtime, or the socket could not be registered with it.
    #[error("registering the TURN socket with the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Starts relays.
#[derive(Debug)]
pub struct TurnServer;

/// A running relay; stopped by [`TurnHandle::shutdown`] or when dropped.
#[derive(Debug)]
pub struct TurnHandle {
    local: SocketAddr,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Listening sockets, all on the same address (SO_REUSEPORT).
    listen: Vec<Arc<UdpSocket>>,
    relay_ip: IpAddr,
}

#[derive(Debug)]
struct State {
    core: Server,
    relays: HashMap<AllocId, Relay>,
    stopped: bool,
}

#[derive(Debug)]
struct Relay {
    sock: Arc<UdpSocket>,
    task: AbortHandle,
}

/// The largest UDP payload, plus ChannelData headroom.
const BUF: usize = 65_536 + 4;
/// Socket buffer sizes asked for (the kernel caps them at `net.core.rmem_max`/`wmem_max`).
/// The listening socket takes every client's traffic: a burst beyond the default ~200 KiB is
/// dropped before the driver runs (coturn asks for 4 MiB as well); relay sockets carry one
/// allocation each.
const LISTEN_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 256 << 10;

/// A non-blocking UDP socket on `addr` with `buffer` bytes of send and receive buffer (best
/// effort).
fn bind_udp(
    addr: SocketAddr,
    buffer: usize,
    shared_port: bool,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    #[cfg(unix)]
    if shared_port {
        s.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = shared_port;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Binds tried for an even port before giving up (508).
const EVEN_PORT_TRIES: usize = 16;
/// Longest wait between expiry sweeps (permissions and channels expire lazily; this frees
/// their memory).
const SWEEP: Duration = Duration::from_secs(1);

// The driver owns the clock: the core never reads it.
#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TurnServer {
    /// Binds the listening socket and spawns the relay's tasks. Call inside a Tokio runtime.
    pub fn start(config: TurnConfig) -> Result<TurnHandle, TurnError> {
        let workers = tokio::runtime::Handle::try_current()
            .map_err(|e| TurnError::Runtime(std::io::Error::other(e)))?
            .metrics()
            .num_workers()
            .max(1);
        // One listening socket per runtime worker (SO_REUSEPORT; the kernel spreads clients
        // by address), as coturn runs one per relay thread: one socket and task would cap the
        // relay at one core.
        let shared_port = workers > 1;
        let first = bind_udp(config.listen, LISTEN_BUFFER, shared_port)
            .map_err(|e| TurnError::Bind(config.listen, e))?;
        let local = first.local_addr().map_err(TurnError::Runtime)?;
        let mut listen = vec![Arc::new(
            UdpSocket::from_std(first).map_err(TurnError::Runtime)?,
        )];
        for _ in 1..workers {
            let more =
                bind_udp(local, LISTEN_BUFFER, true).map_err(|e| TurnError::Bind(local, e))?;
            listen.push(Arc::new(
                UdpSocket::from_std(more).map_err(TurnError::Runtime)?,
            ));
        }
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        let core = Server::new(
            CoreConfig {
                realm: config.realm,
                auth: config.auth,
                advertised_ip: config.advertised_ip,
                limits: config.limits,
            },
            seed,
            now(),
            unix_now(),
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                core,
                relays: HashMap::new(),
                stopped: false,
            }),
            listen,
            relay_ip: config.relay_ip,
        });
        let mut tasks = JoinSet::new();
        for i in 0..shared.listen.len() {
            tasks.spawn(listen_loop(shared.clone(), i));
        }
        tasks.spawn(timer_loop(shared.clone()));
        tracing::info!(listen = %local, advertised = %config.advertised_ip, sockets = workers, "TURN relay (UDP)");
        Ok(TurnHandle {
            local,
            shared,
            tasks,
        })
    }
}

impl TurnHandle {
    /// The bound listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Counters (live allocations, relayed and dropped datagrams, refused credentials).
    pub fn stats(&self) -> Stats {
        self.shared.lock().core.stats()
    }

    /// Replaces who may allocate (secret rotation): every request from now on, including
    /// refreshes of existing allocations, is checked against `auth`.
    pub fn set_auth(&self, auth: TurnAuth) {
        self.shared.lock().core.set_auth(auth);
    }

    /// Stops every task and closes every socket.
    pub async fn shutdown(mut self) {
        self.stop();
        while self.tasks.join_next().await.is_some() {}
    }

    fn stop(&mut self) {
        let mut st = self.shared.lock();
        st.stopped = true;
        for (_, r) in st.relays.drain() {
            r.task.abort();
        }
        drop(st);
        self.tasks.abort_all();
    }
}

impl Drop for TurnHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in the core; keep serving regardless.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the core's outputs: binds and closes relay sockets, returns datagrams to send from
    /// the listening socket (sent after the lock is released).
    fn drain(self: &Arc<Self>, st: &mut State, sends: &mut Vec<(SocketAddr, Vec<u8>)>) {
        while let Some(out) = st.core.poll_output() {
            match out {
                Output::Transmit { to, data } => sends.push((to, data)),
                Output::BindRelay { alloc, even } => {
                    let bound = if st.stopped {
                        Err(())
                    } else {
                        self.bind_relay(alloc, even)
                    };
                    let port = match bound {
                        Ok((port, relay)) => {
                            st.relays.insert(alloc, relay);
                            Ok(port)
                        }
                        Err(()) => Err(()),
                    };
                    st.core.relay_bound(now(), alloc, port);
                }
                Output::CloseRelay { alloc } => {
                    if let Some(r) = st.relays.remove(&alloc) {
                        r.task.abort();
                    }
                }
            }
        }
    }

    fn bind_relay(self: &Arc<Self>, alloc: AllocId, even: bool) -> Result<(u16, Relay), ()> {
        let bind = || -> std::io::Result<(u16, UdpSocket)> {
            // The OS picks ports; for EVEN-PORT keep asking (half of them are even).
            for _ in 0..EVEN_PORT_TRIES {
                let s = bind_udp(SocketAddr::new(self.relay_ip, 0), RELAY_BUFFER, false)?;
                let port = s.local_addr()?.port();
                if even && port % 2 == 1 {
                    continue;
                }
                return Ok((port, UdpSocket::from_std(s)?));
            }
            Err(std::io::Error::other("no even port"))
        };
        let (port, sock) = bind().map_err(|e| tracing::warn!(error = %e, "relay socket"))?;
        let sock = Arc::new(sock);
        let task = tokio::spawn(relay_loop(self.clone(), alloc, sock.clone())).abort_handle();
        Ok((port, Relay { sock, task }))
    }

    /// The listening socket a task sends to clients from (any of them has the same address).
    fn out(&self, i: usize) -> &UdpSocket {
        &self.listen[i % self.listen.len()]
    }

    fn send_all(&self, i: usize, sends: &mut Vec<(SocketAddr, Vec<u8>)>) {
        for (to, data) in sends.drain(..) {
            // UDP: a full socket buffer drops the datagram, as a router would.
            let _ = self.out(i).try_send_to(&data, to);
        }
    }
}

async fn listen_loop(shared: Arc<Shared>, i: usize) {
    let mut buf = vec![0u8; BUF];
    let mut sends = Vec::new();
    let sock = shared.listen[i].clone();
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors (e.g. port unreachable) surface here on some systems: not fatal.
            Err(e) => {
                tracing::trace!(error = %e, "listen recv");
                continue;
            }
        };
        let forward = {
            let mut st = shared.lock();
            let fwd = st.core.handle_client(now(), from, &buf[..n]);
            let via = fwd
                .as_ref()
                .and_then(|f| st.relays.get(&f.alloc).map(|r| r.sock.clone()));
            shared.drain(&mut st, &mut sends);
            fwd.zip(via)
        };
        if let Some((f, relay)) = forward {
            let _ = relay.try_send_to(&buf[f.range], f.to);
        }
        shared.send_all(i, &mut sends);
    }
}

async fn relay_loop(shared: Arc<Shared>, alloc: AllocId, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; BUF];
    let mut sends = Vec::new();
    loop {
        let (n, from) = match sock.recv_from(&mut buf[4..]).await {
            Ok(r) => r,
            Err(e) => {
                tracing::trace!(error = %e, "relay recv");
                continue;
            }
        };
        let to_client = {
            let mut st = shared.lock();
            let t = st.core.handle_peer(now(), alloc, from, &mut buf, n);
            shared.drain(&mut st, &mut sends);
            t
        };
        // Spread relay tasks over the listening sockets.
        let i = alloc as usize;
        if let Some(t) = to_client {
            let _ = shared.out(i).try_send_to(&buf[t.range], t.to);
        }
        shared.send_all(i, &mut sends);
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    let mut sends = Vec::new();
    loop {
        let at = {
            let st = shared.lock();
            let cap = now() + SWEEP;
            st.core.poll_timeout().map_or(cap, |t| t.min(cap))
        };
        tokio::time::sleep_until(at.into()).await;
        {
            let mut st = shared.lock();
            st.core.handle_timeout(now());
            shared.drain(&mut st, &mut sends);
        }
        shared.send_all(0, &mut sends);
    }
}
