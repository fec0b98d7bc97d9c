//! The conformance echo (`bench/autobahn.sh`): a WebSocket echo on the broker's own codec
//! and connection loop. Prints its address, serves until stdin closes or Ctrl-C.
//!
//!   cargo run --release -p kibitz-signal --example ws_echo -- [ADDR] [MAX_MESSAGE_BYTES]

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = match args.next() {
        Some(a) => a
            .parse()
            .map_err(|e| std::io::Error::other(format!("address {a:?}: {e}")))?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let max: usize = match args.next() {
        Some(a) => a
            .parse()
            .map_err(|e| std::io::Error::other(format!("max message {a:?}: {e}")))?,
        // Autobahn's section 9 sends messages up to 16 MiB.
        None => 64 << 20,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("ws://{}", listener.local_addr()?);
    kibitz_signal::serve_echo(listener, max, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
