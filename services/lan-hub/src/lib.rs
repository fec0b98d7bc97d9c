//! Kibitz's LAN hub (offline mode, LAN.md): a WebRTC responder with a permanent identity on
//! one UDP port. Browsers on the same Wi-Fi build the hub's SDP answer from a static blob
//! ([`kibitz_proto::lan::synthesize_answer`]), connect over ICE-lite + DTLS + SCTP, open one
//! data channel, and the hub routes JSON frames between them by room.
//!
//! Layers:
//! - [`core`]: the router, sans-IO (sessions, rooms, `id`/`peers`/`to`→`from`/`echo`).
//! - [`gate`]: who may allocate per-source state (signed STUN only) and for how long
//!   (handshake and liveness windows), sans-IO with injected time.
//! - the driver: one tokio task owning one UDP socket and one str0m `Rtc` per browser source
//!   address; it feeds datagrams and timeouts in and drains output until each `Rtc` reports its
//!   next timeout.
//! - [`HubIdentity`]: ufrag/pwd/certificate, the state file, upstream's fixed identity.

pub mod core;
mod driver;
pub mod gate;
mod identity;
pub mod mdns;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kibitz_proto::lan::{Blob, Endpoint, TurnInfo};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use identity::{HubIdentity, random_alnum};

/// Why the hub could not start or its identity could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The identity or state file is unusable.
    #[error("hub identity: {0}")]
    Identity(&'static str),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("could not bind UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// No address to advertise in the blob.
    #[error("no address to advertise: pass one, or bind a specific IPv4")]
    NoAddress,
}

/// What [`Hub::start`] needs.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// ufrag, pwd and certificate.
    pub identity: HubIdentity,
    /// The UDP address to bind (`127.0.0.1:0` in tests).
    pub bind: SocketAddr,
    /// Endpoint addresses for the blob (IPv4 literals or `.local` names), in preference order;
    /// each gets the bound port. Empty: the bound IP, if it is a specific one.
    pub advertise: Vec<String>,
    /// The embedded TURN relay the blob names (g2 when `Some`, else g1).
    pub turn: Option<TurnInfo>,
    /// A session without valid STUN from its source for this long ends (browsers send consent
    /// checks every ~5 s).
    pub liveness: Duration,
    /// An admitted source whose data channel is not open after this long is dropped.
    pub handshake: Duration,
    /// At most this many browsers (open or handshaking) at once; more are not admitted.
    pub max_sessions: usize,
}

impl HubConfig {
    /// Defaults: no advertised names, no TURN, 30 s liveness, 15 s handshake, 256 sessions.
    pub fn new(identity: HubIdentity, bind: SocketAddr) -> Self {
        HubConfig {
            identity,
            bind,
            advertise: Vec::new(),
            turn: None,
            liveness: Duration::from_secs(30),
            handshake: Duration::from_secs(15),
            max_sessions: 256,
        }
    }
}

/// A snapshot of the hub's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Sessions with an open channel now.
    pub sessions: u64,
    /// Sessions ever opened.
    pub sessions_total: u64,
    /// `from` frames delivered.
    pub frames_routed: u64,
    /// Frames dropped: `to` an absent or other-room id, or a send queue that was full.
    pub frames_dropped: u64,
    /// Frames ignored: bad JSON, unknown `t`, binary.
    pub bad_frames: u64,
    /// Browsers holding state now (open sessions and handshakes).
    pub sources: u64,
    /// Datagrams dropped before any state: junk, unsigned STUN, unknown sources, over capacity,
    /// a recently ended browser's checks.
    pub datagrams_dropped: u64,
    /// Browsers dropped for not finishing the handshake or going silent.
    pub sources_expired: u64,
}

#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    sessions: AtomicU64,
    sessions_total: AtomicU64,
    frames_routed: AtomicU64,
    frames_dropped: AtomicU64,
    bad_frames: AtomicU64,
    sources: AtomicU64,
    datagrams_dropped: AtomicU64,
    sources_expired: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> HubStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HubStats {
            sessions: g(&self.sessions),
            sessions_total: g(&self.sessions_total),
            frames_routed: g(&self.frames_routed),
            frames_dropped: g(&self.frames_dropped),
            bad_frames: g(&self.bad_frames),
            sources: g(&self.sources),
            datagrams_dropped: g(&self.datagrams_dropped),
            sources_expired: g(&self.sources_expired),
        }
    }
}

/// The hub.
#[derive(Debug)]
pub struct Hub;

impl Hub {
    /// Binds the UDP socket and starts the hub task.
    pub async fn start(config: HubConfig) -> Result<HubHandle, HubError> {
        let socket = tokio::net::UdpSocket::bind(config.bind)
            .await
            .map_err(|source| HubError::Bind {
                addr: config.bind,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| HubError::Bind {
            addr: config.bind,
            source,
        })?;
        let mut names = config.advertise.clone();
        if names.is_empty() {
            if local_addr.ip().is_unspecified() {
                return Err(HubError::NoAddress);
            }
            names.push(local_addr.ip().to_string());
        }
        let blob = Blob {
            ufrag: config.identity.ufrag().to_owned(),
            pwd: config.identity.pwd().to_owned(),
            fingerprint: config.identity.fingerprint(),
            turn: config.turn.clone(),
            endpoints: names
                .into_iter()
                .map(|addr| Endpoint {
                    addr,
                    port: local_addr.port(),
                })
                .collect(),
        };
        let stats = Arc::new(SharedStats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let driver = driver::Driver::new(socket, local_addr, &config, stats.clone());
        let task = tokio::spawn(driver.run(stop_rx));
        tracing::info!(%local_addr, "lan hub listening");
        Ok(HubHandle {
            local_addr,
            blob,
            stats,
            stop: stop_tx,
            task,
        })
    }
}

/// A running hub. Dropping it stops the hub too (without waiting).
#[derive(Debug)]
pub struct HubHandle {
    local_addr: SocketAddr,
    blob: Blob,
    stats: Arc<SharedStats>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HubHandle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The blob browsers connect with.
    pub fn blob(&self) -> Blob {
        self.blob.clone()
    }

    /// Counters now.
    pub fn stats(&self) -> HubStats {
        self.stats.snapshot()
    }

    /// Closes every session (browsers get SCTP/DTLS close) and stops the task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "lan hub task ended abnormally");
        }
    }
}
