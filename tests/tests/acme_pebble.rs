//! Automatic TLS against Pebble, Let's Encrypt's test CA (Debian package `pebble`, with its
//! mock DNS `pebble-challtestsrv` answering every name with 127.0.0.1): `kibitz serve
//! --acme-domain` obtains a certificate through TLS-ALPN-01 on its own port, serves `wss://`
//! that verifies against Pebble's root, renews before expiry while open WebSockets carry on,
//! and after a restart serves the cached certificate without a new order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../serve/proc.rs"]
mod proc;

use futures_util::{SinkExt, StreamExt};
use proc::Serve;
use rustls::pki_types::CertificateDer;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The certificate's name; the mock DNS resolves it to 127.0.0.1.
const DOMAIN: &str = "kibitz.test";

/// Distinct free ports on 127.0.0.1 (held together while picking, then released).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

fn temp_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kibitz-acme-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its mock DNS on 127.0.0.1, validating TLS-ALPN-01 on `validation_port`.
struct Pebble {
    _pebble: Proc,
    _dns: Proc,
    dir: PathBuf,
    acme_port: u16,
    mgmt_port: u16,
    /// Trusts Pebble's own HTTPS (a CA made here; passed as `--acme-ca-root`).
    https_client: Arc<rustls::ClientConfig>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `port` on 127.0.0.1 accepts TCP, while `child` runs.
async fn listening(child: &mut Child, port: u16, log: &std::path::Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("exited with {status}:\n{log}"));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("port {port} not listening after 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Pebble {
    async fn start(validation_port: u16, validity_secs: u64) -> Result<Self, String> {
        let dir = temp_dir();
        // Pebble's HTTPS certificate, from a CA of our own (a CA certificate cannot serve).
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();

        let [dns_port, dns_mgmt, acme_port, mgmt_port, http_port] = free_ports::<5>();
        let dns_log = dir.join("dns.log");
        let mut dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&dns_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv must be installed (Debian package `pebble`)");
        let dns_up = listening(&mut dns, dns_port, &dns_log).await;
        let dns = Proc(dns);
        dns_up.map_err(|e| format!("pebble-challtestsrv {e}"))?;

        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": validation_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("pebble.err")).unwrap())
            .spawn()
            .expect("pebble must be installed (Debian package `pebble`)");
        let mut up = listening(&mut pebble, acme_port, &log).await;
        if up.is_ok() {
            up = listening(&mut pebble, mgmt_port, &log).await;
        }
        let pebble = Proc(pebble);
        up.map_err(|e| format!("pebble {e}"))?;
        let ca_der = CertificateDer::from(ca.der().to_vec());
        Ok(Self {
            _pebble: pebble,
            _dns: dns,
            dir,
            acme_port,
            mgmt_port,
            https_client: proc::client_config(&[ca_der]),
        })
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Certificates Pebble has issued so far.
    fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }

    /// Pebble's issuing root (regenerated at every start), from its management interface.
    async fn root(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.mgmt_port));
        let s = proc::tls_connect(addr, "127.0.0.1", &self.https_client)
            .await
            .expect("pebble management interface");
        let (status, body) = proc::get(s, "127.0.0.1", "/roots/0").await.unwrap();
        assert_eq!(status, 200, "{body}");
        CertificateDer::from_pem_slice(body.as_bytes()).expect("a PEM root")
    }
}

/// Pebble, then `kibitz serve` with ACME on the port Pebble validates; retried on other ports
/// if a port picked as free was taken meanwhile.
async fn start(validity_secs: u64, cache: &std::path::Path) -> (Pebble, Serve) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let [port] = free_ports::<1>();
        let pebble = match Pebble::start(port, validity_secs).await {
            Ok(p) => p,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        match Serve::start(&serve_args(&pebble, port, cache)).await {
            Ok(s) => return (pebble, s),
            Err(log) => failures.push(format!("kibitz serve:\n{log}")),
        }
    }
    panic!(
        "could not start Pebble and kibitz:\n{}",
        failures.join("\n---\n")
    );
}

fn serve_args(pebble: &Pebble, port: u16, cache: &std::path::Path) -> Vec<String> {
    [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--acme-domain",
        DOMAIN,
        "--acme-email",
        "ops@kibitz.test",
        "--acme-cache",
        cache.to_str().unwrap(),
        "--acme-directory",
        &pebble.directory(),
        "--acme-ca-root",
        pebble.ca_file().to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// A broker socket over `wss://DOMAIN` verified against `client`'s roots, past its OPEN.
async fn wss_peer(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = proc::tls_connect(addr, DOMAIN, client)
        .await
        .expect("TLS with Pebble's root");
    let url = format!("wss://{DOMAIN}/peerjs?key=peerjs&id={id}&token=t");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let open = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no OPEN")
        .unwrap()
        .unwrap();
    assert_eq!(open.into_text().unwrap().as_str(), r#"{"type":"OPEN"}"#);
    ws
}

const DEPLOYED: &str = "ACME: new certificate deployed";
const FROM_CACHE: &str = "ACME: certificate loaded from the cache";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_issued_serves_wss_and_a_restart_reuses_the_cache() {
    let cache = temp_dir().join("acme-cache");
    let (pebble, serve) = start(86_400, &cache).await;
    assert!(
        serve.logged(DEPLOYED, 1, Duration::from_secs(60)).await,
        "no certificate within 60 s:\n{}\n--- pebble:\n{}",
        serve.log().join("\n"),
        pebble.log()
    );
    let client = proc::client_config(&[pebble.root().await]);
    let addr = serve.addr;
    let issued = proc::leaf(addr, DOMAIN, &client)
        .await
        .expect("the ACME certificate verifies against Pebble's root");
    let mut ws = wss_peer(addr, &client, "a").await;
    ws.send(Message::text(r#"{"type":"HEARTBEAT"}"#))
        .await
        .unwrap();
    assert_eq!(pebble.issued(), 1);
    // The cache holds owner-only files in an owner-only directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "cache directory mode {mode:o}");
    }
    drop(ws);

    // Restart on the same port with the same cache: the same certificate, no new order.
    serve.stop().await;
    let serve = Serve::start(&serve_args(&pebble, addr.port(), &cache))
        .await
        .expect("restart");
    assert!(
        serve.logged(FROM_CACHE, 1, Duration::from_secs(20)).await,
        "{}",
        serve.log().join("\n")
    );
    assert_eq!(proc::leaf(addr, DOMAIN, &client).await.unwrap(), issued);
    let _ws = wss_peer(addr, &client, "b").await;
    assert_eq!(serve.count(DEPLOYED), 0, "ordered again after a restart");
    assert_eq!(pebble.issued(), 1, "Pebble issued again:\n{}", pebble.log());
    serve.stop().await;
    let _ = std::fs::remove_dir_all(cache.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_before_expiry_swaps_the_certificate_while_websockets_stay_open() {
    // 30 s certificates: renewed once two thirds have passed, ~20 s in.
    let cache = temp_dir().join("acme-cache");
    let (pebble, serve) = start(30, &cache).await;
    assert!(
        serve.logged(DEPLOYED, 1, Duration::from_secs(60)).await,
        "no certificate within 60 s:\n{}\n--- pebble:\n{}",
        serve.log().join("\n"),
        pebble.log()
    );
    let client = proc::client_config(&[pebble.root().await]);
    let addr = serve.addr;
    let first = proc::leaf(addr, DOMAIN, &client).await.unwrap();
    let mut a = wss_peer(addr, &client, "a").await;
    let mut b = wss_peer(addr, &client, "b").await;

    // New handshakes get a new certificate before the first one expires.
    let deadline = Instant::now() + Duration::from_secs(90);
    let renewed = loop {
        // Until the renewal lands a handshake shows the first certificate (or, should the
        // renewal be late, fails on its expiry).
        if let Ok(leaf) = proc::leaf(addr, DOMAIN, &client).await
            && leaf != first
        {
            break leaf;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal:\n{}\n--- pebble:\n{}",
            serve.log().join("\n"),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(renewed, first);
    assert!(serve.count(DEPLOYED) >= 2);
    assert!(pebble.issued() >= 2);

    // Both sockets opened on the first certificate still relay.
    a.send(Message::text(r#"{"type":"OFFER","dst":"b","payload":1}"#))
        .await
        .unwrap();
    let relayed = tokio::time::timeout(Duration::from_secs(5), b.next())
        .await
        .expect("nothing relayed after the renewal")
        .unwrap()
        .unwrap();
    assert_eq!(
        relayed.into_text().unwrap().as_str(),
        r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#
    );
    serve.stop().await;
    let _ = std::fs::remove_dir_all(cache.parent().unwrap());
}
