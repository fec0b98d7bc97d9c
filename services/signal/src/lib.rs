//! A PeerJS-compatible signaling broker: the unmodified `peerjs` client and the Kibitz
//! widget use it as they would the reference `peer` server, with limits, metrics and a
//! content-blind relay.
//!
//! # Run loop
//! [`core::Broker`] is a sans-IO state machine: inputs go in through its `handle_*` methods
//! with `now` passed in, and after each one the driver drains [`core::Broker::poll_output`]
//! until it returns [`core::Output::Timeout`], carrying out every other output in order.
//! The driver calls `handle_timeout` at that time, or earlier on any input (an early call is
//! harmless); the core never reads the clock and never touches a socket.
//!
//! # Layout
//! [`core`] is the broker's logic (peer table, offline queues, liveness, limits, room leave
//! notices, and its side of cluster mode). `hub` is its driver: the core behind one lock, the
//! outbox of every socket, and the one timer; it routes each output to a socket's outbox or,
//! in cluster mode, to the registry driver in `cluster`, and it is what connection tasks,
//! HTTP handlers and `cluster` call with their inputs. `outbox` is a socket's bounded send
//! side; `conn` runs a socket, taking turns at `fair`'s gate while it floods; `ws` is the
//! WebSocket codec; `http` is the HTTP surface.
//! Payloads are relayed as opaque bytes and never logged.

mod cluster;
pub mod config;
mod conn;
mod connect_rate;
pub mod core;
mod echo;
mod fair;
mod http;
mod hub;
pub mod metrics;
mod outbox;
mod table;
mod ws;

pub use cluster::{MSG_RECOVERING, MSG_UNAVAILABLE, registry_shard, registry_slot};
#[doc(hidden)]
pub use echo::serve_echo;

/// What the broker parses from outside before and after the upgrade, exposed for the fuzz
/// targets (`fuzz/`); not a stable API. The Redis reply parsers need the `fuzzing` feature.
#[doc(hidden)]
pub mod fuzzing {
    #[cfg(feature = "fuzzing")]
    pub use crate::cluster::fuzzing::{cluster_link, redis_reply};
    pub use crate::core::OpenParams;
    pub use crate::http::{Handshake, open_params, origin_allowed, read_handshake};
    pub use crate::ws::{
        Decoder, Event, Violation, accept_key, encode_binary, encode_close, encode_pong,
        encode_text,
    };
    pub use axum::http;
}
pub use config::{ClusterConfig, Config, ConfigError, Limits, RedisUrl, SignalArgs};

use hub::Hub;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running broker: cheap to clone, shared by its router and its shutdown.
#[derive(Debug, Clone)]
pub struct SignalState {
    hub: Arc<Hub>,
    stop: CancellationToken,
}

impl SignalState {
    /// Starts the broker's timer on the current Tokio runtime.
    pub fn start(config: Config) -> Self {
        let hub = Arc::new(Hub::new(config));
        let stop = CancellationToken::new();
        tokio::spawn(hub.clone().run_timer(stop.clone()));
        if hub.cluster.is_some() {
            tokio::spawn(cluster::run(hub.clone(), stop.clone()));
        }
        Self { hub, stop }
    }

    /// Whether the broker is serving (false once shutdown began, and in cluster mode while
    /// the registry cannot be reached): the in-process health check `/api/signal` uses when
    /// the broker runs in the same process.
    pub fn is_healthy(&self) -> bool {
        !self.stop.is_cancelled()
            && !self.hub.is_closing()
            && self.hub.cluster.as_ref().is_none_or(|c| c.is_up())
    }

    /// Cluster mode: this node's id and whether it reaches the registry (`None` on one node).
    pub fn cluster_status(&self) -> Option<(String, bool)> {
        self.hub
            .cluster
            .as_ref()
            .map(|c| (c.node.clone(), c.is_up()))
    }

    /// Shutdown has begun: [`SignalState::is_healthy`] answers false from now on, while the
    /// broker keeps serving until [`SignalState::shutdown`].
    pub fn begin_drain(&self) {
        self.hub.begin_drain();
    }

    /// Closes every broker socket with 1001 at once, then waits up to `deadline` for them to
    /// finish their close handshakes.
    pub async fn shutdown(&self, deadline: Duration) {
        self.hub.close_all();
        let wait = async {
            while self.hub.open_sockets() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(deadline, wait).await.is_err() {
            tracing::warn!(
                open = self.hub.open_sockets(),
                "drain deadline passed with sockets open"
            );
        }
        self.stop.cancel();
    }
}

/// The broker's routes: `{path}`, `{path}{key}/id`, `{path}{key}/peers`, `{path}peerjs`
/// (WebSocket) and `/id`. Ops routes (`/healthz`, `/metrics`) are the host's to add.
pub fn router(state: SignalState) -> axum::Router {
    http::router(state.hub)
}

/// Runs the broker alone on `listener` (plain HTTP) until `shutdown`, with ops routes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Resolve metric handles against the recorder before the broker creates them.
    kibitz_http::install_metrics();
    let opts = kibitz_http::ServeOptions {
        header_read_timeout: config.limits.handshake_timeout,
        ..Default::default()
    };
    let state = SignalState::start(config);
    let draining = state.clone();
    let shutdown = async move {
        shutdown.await;
        draining.begin_drain();
    };
    kibitz_http::serve_with_ops(listener, router(state.clone()), opts, shutdown).await?;
    state.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
