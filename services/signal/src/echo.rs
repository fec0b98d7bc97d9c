//! A WebSocket echo server on the broker's own handshake check, codec, outbox and connection
//! loop (`conn::run`), with only the application step swapped for an echo: what the
//! Autobahn|Testsuite conformance run (`bench/autobahn.sh`) talks to. Not part of the broker.

use crate::conn::{self, App, Message};
use crate::core::ConnId;
use crate::http::{Handshake, read_handshake, switching_protocols};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::ws;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

struct Echo {
    metrics: Metrics,
    max_message: usize,
    next_conn: AtomicU64,
}

impl App for Echo {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn max_message(&self) -> usize {
        self.max_message
    }

    fn messages<R>(
        &self,
        _conn: ConnId,
        outbox: &Outbox,
        f: impl FnOnce(&mut dyn FnMut(Message<'_>)) -> R,
    ) -> R {
        let r = f(&mut |m| {
            let queued = outbox.push(|buf| match m {
                Message::Text(t) => ws::encode_text(buf, t),
                Message::Binary(b) => ws::encode_binary(buf, b),
            });
            if !queued {
                self.metrics.rejected("slow_reader");
            }
        });
        outbox.flush();
        r
    }

    fn closed(&self, _conn: ConnId) {}
}

async fn upgrade(State(echo): State<Arc<Echo>>, mut req: Request) -> Response {
    let Handshake::Accept(accept) = read_handshake(req.headers()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let conn = ConnId(echo.next_conn.fetch_add(1, Ordering::Relaxed));
        // Room for the largest message's echo plus a few frames queued behind it.
        let outbox = Arc::new(Outbox::new(
            2 * echo.max_message + 4096,
            echo.metrics.bytes_out.clone(),
        ));
        conn::run(TokioIo::new(upgraded), echo, conn, outbox).await;
    });
    switching_protocols(&accept)
}

/// Serves the echo on every path of `listener` (plain HTTP) until `shutdown`, refusing
/// messages over `max_message` bytes with 1009 as the broker does past `--max-frame-bytes`.
#[doc(hidden)]
pub async fn serve_echo(
    listener: TcpListener,
    max_message: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let echo = Arc::new(Echo {
        metrics: Metrics::new(),
        max_message,
        next_conn: AtomicU64::new(1),
    });
    let app = Router::new().fallback(upgrade).with_state(echo);
    kibitz_http::serve(
        listener,
        app,
        kibitz_http::ServeOptions::default(),
        shutdown,
    )
    .await
}
