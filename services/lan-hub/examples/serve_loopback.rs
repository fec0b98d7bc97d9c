//! A loopback hub with a fresh identity for manual checks: prints `BLOB <blob>`, runs until
//! Ctrl-C.

use kibitz_lan_hub::{Hub, HubConfig, HubIdentity};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = HubConfig::new(HubIdentity::generate()?, "127.0.0.1:0".parse()?);
    config.advertise = vec!["127.0.0.1".into()];
    let hub = Hub::start(config).await?;
    println!("BLOB {}", hub.blob());
    tokio::signal::ctrl_c().await?;
    println!("{:?}", hub.stats());
    hub.shutdown().await;
    Ok(())
}
