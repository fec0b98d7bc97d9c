//! The hub's UDP front door on a real socket (127.0.0.1:0): junk, unsigned or wrongly signed
//! STUN and unknown-source DTLS allocate nothing and get no answer; a Binding Request signed
//! with the hub's pwd is answered (same transaction, XOR-MAPPED-ADDRESS = source, integrity
//! with the hub's pwd); an admitted source that never finishes the handshake is dropped; the
//! session cap holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use kibitz_lan_hub::{Hub, HubConfig, HubHandle, HubIdentity, HubStats};
use sha1::Sha1;
use str0m::ice::{StunMessage, TransId};
use tokio::net::UdpSocket;

fn sha1_hmac(key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
    for p in payloads {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn binding(username: &str, pwd: &str) -> (TransId, Vec<u8>) {
    let tid = TransId::new();
    let msg = StunMessage::binding_request(username, tid, true, 42, 2_130_706_431, true);
    let mut buf = vec![0u8; 1500];
    let n = msg
        .to_bytes(Some(pwd.as_bytes()), &mut buf, sha1_hmac)
        .unwrap();
    buf.truncate(n);
    (tid, buf)
}

async fn hub(max_sessions: usize, handshake: Duration) -> (HubHandle, HubIdentity) {
    let id = HubIdentity::generate().unwrap();
    let mut config = HubConfig::new(id.clone(), "127.0.0.1:0".parse().unwrap());
    config.advertise = vec!["127.0.0.1".into()];
    config.max_sessions = max_sessions;
    config.handshake = handshake;
    (Hub::start(config).await.unwrap(), id)
}

/// A plain non-blocking socket: `recv_from` asks the kernel every time, so "nothing arrived"
/// is a real check (tokio's `try_recv_from` may answer WouldBlock from cached readiness).
fn raw_client() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

fn nothing_arrived(s: &std::net::UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    matches!(s.recv_from(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn client() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Sends a signed Binding Request as browser `browser1` and checks the hub's Binding Success.
async fn expect_answer(sock: &UdpSocket, hub: SocketAddr, id: &HubIdentity) {
    expect_answer_as(sock, hub, id, "browser1").await;
}

async fn expect_answer_as(sock: &UdpSocket, hub: SocketAddr, id: &HubIdentity, browser: &str) {
    let (tid, req) = binding(&format!("{}:{browser}", id.ufrag()), id.pwd());
    sock.send_to(&req, hub).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("no Binding answer within 10 s")
        .unwrap();
    assert_eq!(from, hub);
    let msg = StunMessage::parse(&buf[..n]).unwrap();
    assert!(msg.is_successful_binding_response());
    assert_eq!(msg.trans_id(), tid);
    assert_eq!(msg.mapped_address(), Some(sock.local_addr().unwrap()));
    assert!(msg.verify(id.pwd().as_bytes(), sha1_hmac));
}

async fn wait_stats(hub: &HubHandle, what: &str, pred: impl Fn(&HubStats) -> bool) -> HubStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = hub.stats();
        if pred(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn junk_allocates_nothing_and_signed_stun_is_answered() {
    let (hub, id) = hub(8, Duration::from_secs(60)).await;
    let addr = hub.local_addr();
    let junk = raw_client();
    let mut sent = 0u64;
    let ufrag = id.ufrag().to_owned();
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 1],
        vec![0xff; 1200],
        // A DTLS ClientHello-looking record from a source that never did STUN.
        [vec![0x16, 0xfe, 0xfd], vec![0; 100]].concat(),
        binding(&format!("{ufrag}:b"), "wrong-password-wrong-pwd").1,
        binding("otherufrag:b", id.pwd()).1,
        binding(&format!("{ufrag}:"), id.pwd()).1,
    ];
    // An unsigned request: valid STUN, no MESSAGE-INTEGRITY.
    let tid = TransId::new();
    let mut buf = vec![0u8; 1500];
    let user = format!("{ufrag}:b");
    let msg = StunMessage::binding_request(&user, tid, true, 1, 1, false);
    let n = msg.to_bytes(None, &mut buf, sha1_hmac).unwrap();
    datagrams.push(buf[..n].to_vec());
    for round in 0..20u8 {
        for d in &datagrams {
            let mut d = d.clone();
            if let Some(b) = d.get_mut(30) {
                *b ^= round;
            }
            junk.send_to(&d, addr).unwrap();
            sent += 1;
        }
    }
    // One datagram socket, one hub task: the junk was handled before this request.
    let (good, _) = client().await;
    expect_answer(&good, addr, &id).await;
    let s = hub.stats();
    assert_eq!(s.sources, 1, "{s:?}");
    assert!(
        s.datagrams_dropped >= sent,
        "{s:?} after {sent} junk datagrams"
    );
    assert!(nothing_arrived(&junk), "junk got an answer");
    hub.shutdown().await;
}

#[tokio::test]
async fn an_abandoned_handshake_is_dropped() {
    let (hub, id) = hub(8, Duration::from_millis(300)).await;
    let (sock, _) = client().await;
    expect_answer(&sock, hub.local_addr(), &id).await;
    let s = wait_stats(&hub, "abandoned source dropped", |s| {
        s.sources == 0 && s.sources_expired == 1
    })
    .await;
    assert_eq!(s.sessions_total, 0);
    // The ended browser's checks are refused for a while (it must notice and reconnect); a
    // new peer connection (new ufrag) from the same address is welcome.
    let raw = raw_client();
    let (_, req) = binding(&format!("{}:browser1", id.ufrag()), id.pwd());
    raw.send_to(&req, hub.local_addr()).unwrap();
    let (fresh, _) = client().await;
    expect_answer_as(&fresh, hub.local_addr(), &id, "browser2").await;
    assert!(nothing_arrived(&raw), "an ended browser was answered");
    assert_eq!(hub.stats().sources, 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn the_session_cap_holds() {
    let (hub, id) = hub(1, Duration::from_secs(60)).await;
    let addr = hub.local_addr();
    let (first, _) = client().await;
    let second = raw_client();
    expect_answer(&first, addr, &id).await;
    let (_, req) = binding(&format!("{}:browser2", id.ufrag()), id.pwd());
    second.send_to(&req, addr).unwrap();
    // The admitted source is still answered, after the refused one was handled.
    expect_answer(&first, addr, &id).await;
    let s = hub.stats();
    assert_eq!(s.sources, 1);
    assert_eq!(s.datagrams_dropped, 1, "the refused request: {s:?}");
    assert!(nothing_arrived(&second), "refused source got an answer");
    hub.shutdown().await;
}

#[tokio::test]
async fn one_browser_from_several_sources_is_one_session() {
    let (hub, id) = hub(8, Duration::from_secs(60)).await;
    let addr = hub.local_addr();
    let (a, _) = client().await;
    let (b, _) = client().await;
    expect_answer_as(&a, addr, &id, "multihomed").await;
    expect_answer_as(&b, addr, &id, "multihomed").await;
    assert_eq!(hub.stats().sources, 1);
    let (c, _) = client().await;
    expect_answer_as(&c, addr, &id, "another").await;
    assert_eq!(hub.stats().sources, 2);
    hub.shutdown().await;
}
