//! `hello-server`: the baseline for `bench/turn.sh`, an axum app that only answers
//! `GET /hello` with 200 `text/plain` "hello".
//!
//! It runs like one of our services: a default multi-thread tokio runtime, the listener from
//! `kibitz_http::bind` (4096 backlog) and `kibitz_http::serve` (TCP_NODELAY, HTTP/1.1 with a
//! head timeout, `ConnectInfo` per request). So a service compared against it pays for its
//! handler and middleware, not for a different accept loop. `--plain` uses `axum::serve`
//! instead, to see what that loop itself costs.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use clap::Args;

#[derive(Debug, Args)]
pub struct HelloArgs {
    /// Listen on 127.0.0.1:PORT (0 = any free port; the bound address is printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Serve with `axum::serve` instead of the services' `kibitz_http::serve`.
    #[arg(long)]
    pub plain: bool,
}

async fn hello() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain")], "hello")
}

/// Runs until Ctrl-C / SIGTERM kills the process.
pub fn run(args: &HelloArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
        let listener = kibitz_http::bind(addr).with_context(|| format!("bind {addr}"))?;
        let local = listener.local_addr().context("local_addr")?;
        println!("hello-server listening on http://{local}/hello");
        let app = Router::new().route("/hello", get(hello));
        if args.plain {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let listener = listener.tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
            axum::serve(listener, app).await.context("serve")
        } else {
            let opts = kibitz_http::ServeOptions::default();
            kibitz_http::serve(listener, app, opts, std::future::pending())
                .await
                .context("serve")
        }
    })
}
