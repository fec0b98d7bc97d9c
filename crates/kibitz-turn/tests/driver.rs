//! The tokio driver on 127.0.0.1:0 with raw datagrams: Binding answers, an unauthenticated
//! Allocate gets the 401 challenge, garbage floods change nothing, and shutdown frees the port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kibitz_turn::{Secret, TurnAuth, TurnConfig, TurnLimits, TurnServer};
use tokio::net::UdpSocket;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn config() -> TurnConfig {
    TurnConfig {
        listen: (LOCAL, 0).into(),
        relay_ip: LOCAL,
        advertised_ip: LOCAL,
        realm: "kibitz".into(),
        auth: TurnAuth::Static {
            user: "u".into(),
            pass: Secret::new("p"),
        },
        limits: TurnLimits::default(),
    }
}

/// A STUN request (no attributes but `extra`) with transaction id `txid`.
fn request(method: u16, txid: [u8; 12], extra: &[u8]) -> Vec<u8> {
    let mut b = method.to_be_bytes().to_vec();
    b.extend_from_slice(&u16::try_from(extra.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    b.extend_from_slice(&txid);
    b.extend_from_slice(extra);
    b
}

async fn ask(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    // UDP on loopback does not lose a lone datagram, but a retry costs nothing.
    for _ in 0..5 {
        sock.send_to(req, to).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
        {
            return buf[..n].to_vec();
        }
    }
    panic!("no answer from {to}");
}

fn attr(msg: &[u8], t: u16) -> Option<&[u8]> {
    let mut at = 20;
    while at + 4 <= msg.len() {
        let ty = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
        if ty == t {
            return msg.get(at + 4..at + 4 + len);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_challenge_garbage_and_shutdown() {
    let turn = TurnServer::start(config()).unwrap();
    let server = turn.local_addr();
    assert_ne!(server.port(), 0);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();

    // Binding: XOR-MAPPED-ADDRESS is our own address.
    let txid = *b"driver-test1";
    let answer = ask(&sock, server, &request(0x0001, txid, &[])).await;
    assert_eq!(&answer[..2], &[0x01, 0x01]);
    assert_eq!(&answer[8..20], &txid);
    let x = attr(&answer, 0x0020).unwrap();
    let port = u16::from_be_bytes([x[2], x[3]]) ^ 0x2112;
    assert_eq!(port, me.port());

    // Allocate without credentials: 401 with REALM "kibitz" and a NONCE.
    let transport = [0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0];
    let answer = ask(
        &sock,
        server,
        &request(0x0003, *b"driver-test2", &transport),
    )
    .await;
    assert_eq!(&answer[..2], &[0x01, 0x13]);
    let code = attr(&answer, 0x0009).unwrap();
    assert_eq!((code[2], code[3]), (4, 1));
    assert_eq!(attr(&answer, 0x0014), Some(&b"kibitz"[..]));
    assert!(attr(&answer, 0x0015).is_some_and(|n| !n.is_empty()));

    // A flood of garbage and ChannelData without an allocation: dropped, counted, no answer.
    for i in 0..2_000u32 {
        let junk: Vec<u8> = (0..(i % 200)).map(|j| (i * 31 + j) as u8).collect();
        sock.send_to(&junk, server).await.unwrap();
        sock.send_to(&[0x40, 0x00, 0x00, 0x02, 1, 2], server)
            .await
            .unwrap();
    }
    // Still answering, and the drops were counted.
    let answer = ask(&sock, server, &request(0x0001, *b"driver-test3", &[])).await;
    assert_eq!(&answer[..2], &[0x01, 0x01]);
    let stats = turn.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.allocations, 0);

    // Shutdown closes the listening sockets: the port can be bound again.
    turn.shutdown().await;
    std::net::UdpSocket::bind(server).expect("port free after shutdown");
}

#[tokio::test(flavor = "current_thread")]
async fn start_on_a_busy_port_fails_cleanly() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = config();
    c.listen = taken.local_addr().unwrap();
    let err = TurnServer::start(c).unwrap_err();
    assert!(
        err.to_string().contains("binding the TURN listener"),
        "{err}"
    );
}
