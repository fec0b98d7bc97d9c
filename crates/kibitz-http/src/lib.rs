//! HTTP plumbing shared by every Kibitz Edge service: the accept loop (plain or TLS, with a
//! request-head timeout and a drain deadline), the ops routes (`/healthz`, `/readyz`,
//! `/metrics`), and TLS configuration from PEM files (re-readable), a self-signed certificate
//! or ACME ([`acme`]).
//!
//! Services build an `axum::Router`; the caller binds the listener and hands both to
//! [`serve`]. Each request carries `axum::extract::ConnectInfo<SocketAddr>` (the connection's
//! address: the TCP peer, or the PROXY protocol header's source) and [`ClientIp`] (what
//! per-IP limits use; see [`client_ip`]).

pub mod client_ip;
pub mod proxy_protocol;

pub use client_ip::{ClientIp, ProxyArgs, TrustedProxies};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub mod acme;
mod cert;

pub use cert::{CertSlot, PemTls};
pub use rustls::ServerConfig as TlsConfig;

/// How [`serve`] runs connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Terminate TLS with this configuration; plain HTTP when `None`.
    pub tls: Option<Arc<TlsConfig>>,
    /// Time allowed for the TLS handshake and for each HTTP request head.
    pub header_read_timeout: Duration,
    /// After shutdown is signalled, how long in-flight HTTP requests may take.
    pub drain_timeout: Duration,
    /// [`serve_with_ops`]: after shutdown is signalled, how long `/readyz` answers 503 while
    /// everything else is still served and the listener still accepts, so load balancers
    /// stop sending work before connections are refused. Zero by default, so embedders and
    /// tests stop at once; the `kibitz` binary sets it (`--drain-grace-ms`).
    pub drain_grace: Duration,
    /// Proxies in front: who may name the client in a forwarding header, and whether every
    /// connection starts with a PROXY protocol header. Default: neither.
    pub proxy: ProxyOptions,
}

/// How [`serve`] learns client addresses behind proxies.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Peers whose forwarding header names the client.
    pub trusted: TrustedProxies,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
}

impl From<&ProxyArgs> for ProxyOptions {
    fn from(a: &ProxyArgs) -> Self {
        Self {
            trusted: a.trusted(),
            proxy_protocol: a.proxy_protocol,
        }
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            drain_grace: Duration::ZERO,
            proxy: ProxyOptions::default(),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains HTTP connections for at
/// most `drain_timeout`. Upgraded connections (WebSockets) belong to their service, which
/// closes them on its own shutdown.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    // HTTP/1.1 only: browsers open WebSockets over it, and its head timeout also covers a
    // connection that never sends a byte (protocol sniffing for h2 would wait forever).
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    let draining = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let tls = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    let plain = tls.is_none();
    let mut shed = FdShed::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => {
                    shed.recovered();
                    v
                }
                Err(e) => {
                    if !shed.refuse_one(&listener, &e, plain) {
                        // Another failure, or no spare descriptor to shed with: back off
                        // instead of spinning (the listener stays readable while a
                        // connection waits); the listener stays up.
                        if !shed.exhausted() {
                            tracing::warn!(error = %e, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            builder: builder.clone(),
            draining: draining.clone(),
            app: app.clone(),
            trusted: opts.proxy.trusted.clone(),
            tls: tls.clone(),
            head_timeout: opts.header_read_timeout,
        };
        if opts.proxy.proxy_protocol {
            // Each connection reads its own header, off the accept loop.
            tracker.spawn(async move {
                match proxy_protocol::read_header(stream, conn.head_timeout).await {
                    Ok((stream, addr)) => conn.run(stream, addr.unwrap_or(peer)).await,
                    Err(e) => {
                        metrics::counter!("kibitz_proxy_protocol_rejected_total", "reason" => e.reason())
                            .increment(1);
                        tracing::debug!(%peer, error = %e, "PROXY header refused");
                    }
                }
            });
        } else {
            tracker.spawn(conn.run(stream, peer));
        }
    }
    drop(listener);
    draining.cancel();
    tracker.close();
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(opts.drain_timeout) => {
            tracing::warn!("drain deadline passed with HTTP requests still open");
        }
    }
    Ok(())
}

/// What the accept loop does when the process runs out of file descriptors: accepting fails
/// with EMFILE/ENFILE while the connection stays in the kernel's backlog, so the listener stays
/// readable and a naive loop spins, and the client waits for nothing. So one descriptor is held
/// in reserve: at the cap it is released, the waiting connection accepted and closed at once
/// (after a `503` on plain HTTP), and the reserve taken again. The client sees a prompt refusal
/// and the loop only wakes per arriving connection. Logged once per episode, not per attempt.
struct FdShed {
    /// The reserve (`/dev/null`); `None` if it could not be re-taken (then the loop backs off).
    spare: Option<std::fs::File>,
    /// Connections refused in the current episode; `None` while descriptors are available.
    refused: Option<u64>,
}

/// Linux errno values: the process (EMFILE) or the system (ENFILE) is out of descriptors.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

impl FdShed {
    fn new() -> Self {
        Self {
            spare: std::fs::File::open("/dev/null").ok(),
            refused: None,
        }
    }

    /// After `err` from accept: if it is descriptor exhaustion and the reserve is there,
    /// refuses one waiting connection and returns true.
    fn refuse_one(&mut self, listener: &TcpListener, err: &std::io::Error, plain: bool) -> bool {
        if !matches!(err.raw_os_error(), Some(EMFILE | ENFILE)) {
            return false;
        }
        let refused = self.refused.get_or_insert_with(|| {
            tracing::warn!(
                error = %err,
                "out of file descriptors: refusing new connections until some close"
            );
            0
        });
        if self.spare.take().is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
            return false;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(Ok((stream, _))) = listener.poll_accept(&mut cx) {
            if plain {
                // Best effort: if the request already arrived, closing resets instead.
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                );
            }
            drop(stream);
            *refused += 1;
            metrics::counter!("kibitz_accept_refused_total", "reason" => "fd_limit").increment(1);
        }
        self.spare = std::fs::File::open("/dev/null").ok();
        self.spare.is_some()
    }

    /// Whether an exhaustion episode is on (it was logged already).
    fn exhausted(&self) -> bool {
        self.refused.is_some()
    }

    /// An accept succeeded: ends an exhaustion episode (logged once).
    fn recovered(&mut self) {
        if let Some(n) = self.refused.take() {
            tracing::warn!(
                refused = n,
                "file descriptors available again: accepting connections"
            );
        }
        if self.spare.is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
        }
    }
}

/// What one accepted connection needs to be served.
struct Conn {
    builder: http1::Builder,
    draining: tokio_util::sync::CancellationToken,
    app: Router,
    trusted: TrustedProxies,
    tls: Option<tokio_rustls::TlsAcceptor>,
    head_timeout: Duration,
}

impl Conn {
    /// TLS if configured, then HTTP; `peer` is the connection's address.
    async fn run<S>(self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match self.tls.clone() {
            None => self.serve_http(stream, peer).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.head_timeout, acceptor.accept(stream)).await {
                    // A TLS-ALPN-01 validation: the handshake was the answer.
                    Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(acme::ACME_TLS_ALPN) => {}
                    Ok(Ok(s)) => self.serve_http(s, peer).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve_http<S>(self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Self {
            builder,
            draining,
            app,
            trusted,
            ..
        } = self;
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let client = trusted.client_ip(peer.ip(), req.headers());
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(ClientIp(client));
                tower::ServiceExt::oneshot(app.clone(), req)
            });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = draining.cancelled() => {
                // Finish the request in flight, then close; the caller bounds how long.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::trace!(error = %e, "connection ended with an error");
        }
    }
}

/// Serves one service's `app` with the ops routes added: what each service's own `serve`
/// does. When `shutdown` resolves the process is marked as draining (`/readyz` 503) and keeps
/// serving for [`ServeOptions::drain_grace`]; then the listener closes and HTTP requests drain
/// as in [`serve`].
pub async fn serve_with_ops(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let readiness = Readiness::ready();
    let app = app.merge(ops_router(install_metrics(), readiness.clone()));
    let grace = opts.drain_grace;
    serve(listener, app, opts, async move {
        shutdown.await;
        readiness.set_draining();
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "draining: /readyz answers 503"
        );
        tokio::time::sleep(grace).await;
    })
    .await
}

/// Binds a listener with a deep accept backlog: the default 128 overflows under connection
/// churn and the kernel then drops SYNs, costing clients a 1 s retransmit.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Readiness shared by the ops routes and the shutdown path.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready from the start.
    pub fn ready() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
    /// Marks the process as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
    fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `/healthz` (alive), `/readyz` (accepting work) and Prometheus `/metrics`.
pub fn ops_router(metrics: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        body,
                    )
                }
            }),
        )
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading {path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating a self-signed certificate failed.
    #[error("self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<TlsConfig>, TlsError> {
    tls_with_resolver(CertSlot::new(cert::certified_key(certs, key)?))
}

/// TLS whose certificate `resolver` picks at each handshake ([`CertSlot`], [`acme::Acme`]), so
/// it can change while serving.
pub fn tls_with_resolver(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<TlsConfig>, TlsError> {
    let mut cfg = TlsConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // HTTP/1.1 only: browsers open WebSockets over HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// TLS from a PEM certificate chain and a PEM private key ([`PemTls`] to re-read them later).
pub fn tls_from_pem(cert: &Path, key: &Path) -> Result<Arc<TlsConfig>, TlsError> {
    Ok(PemTls::load(cert, key)?.config())
}

/// TLS with a fresh self-signed certificate for `names` (for local https); also returns the
/// certificate as PEM so a caller can trust it.
pub fn tls_self_signed(names: &[String]) -> Result<(Arc<TlsConfig>, String), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())?;
    let pem = ck.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    Ok((server_config(vec![ck.cert.der().clone()], key)?, pem))
}
