//! A relay on 127.0.0.1 with one static user (`user`/`pass`, realm `kibitz`), for manual
//! checks with `turnutils_uclient`: `cargo run -p kibitz-turn --example turn_static [PORT]`.

use kibitz_turn::{Secret, TurnAuth, TurnConfig, TurnLimits, TurnServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    let turn = TurnServer::start(TurnConfig {
        listen: (local, port).into(),
        relay_ip: local,
        advertised_ip: local,
        realm: "kibitz".into(),
        auth: TurnAuth::Static {
            user: "user".into(),
            pass: Secret::new("pass"),
        },
        limits: TurnLimits {
            allow_loopback_peers: true,
            ..TurnLimits::default()
        },
    })?;
    println!("listening on {}", turn.local_addr());
    tokio::signal::ctrl_c().await?;
    println!("{:?}", turn.stats());
    turn.shutdown().await;
    Ok(())
}
