//! Bad input of every kind: each gets a clear in-band answer or close code, never a crash,
//! a hang, or harm to others. An unrelated pair relays between every case.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kibitz_e2e::{Broker, Client, Config, Limits, Seen, start};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const MAX_FRAME: usize = 16 * 1024;
const PER_IP: usize = 24;

fn config() -> Config {
    Config {
        limits: Limits {
            max_frame_bytes: MAX_FRAME,
            msg_rate: 100,
            msg_burst: 300,
            per_ip_connections: PER_IP,
            handshake_timeout: Duration::from_millis(500),
            send_queue_bytes: 256 * 1024,
            ..Limits::default()
        },
        ..Config::default()
    }
}

/// The bystanders: alice and bob relay both ways, promptly.
async fn pair_still_relays(alice: &mut Client, bob: &mut Client, round: u32) {
    alice
        .send(&format!(
            r#"{{"type":"OFFER","dst":"bob","payload":{round}}}"#
        ))
        .await;
    bob.expect(&format!(
        r#"{{"type":"OFFER","src":"alice","dst":"bob","payload":{round}}}"#
    ))
    .await;
    bob.send(&format!(
        r#"{{"type":"ANSWER","dst":"alice","payload":{round}}}"#
    ))
    .await;
    alice
        .expect(&format!(
            r#"{{"type":"ANSWER","src":"bob","dst":"alice","payload":{round}}}"#
        ))
        .await;
}

/// The socket still works: a self-addressed OFFER comes straight back.
async fn still_open(c: &mut Client, id: &str) {
    c.send(&format!(
        r#"{{"type":"OFFER","dst":"{id}","payload":"probe"}}"#
    ))
    .await;
    c.expect(&format!(
        r#"{{"type":"OFFER","src":"{id}","dst":"{id}","payload":"probe"}}"#
    ))
    .await;
}

/// Frames that are not PeerJS JSON are ignored; the socket keeps working.
async fn ignored_frames(b: &Broker) {
    let mut m = b.peer("mallory").await;
    let frames: Vec<Message> = vec![
        Message::text("this is not json"),
        Message::text("null"),
        Message::text("[\"OFFER\",\"bob\",{}]"),
        Message::text("{\"type\":\"OFFER\""),
        Message::text(r#"{"type":"NOT-A-TYPE","dst":"bob"}"#),
        Message::text(r#"{"type":["OFFER"],"dst":"bob"}"#),
        Message::text(r#"{"type":"OFFER"}"#),
        Message::text(r#"{"type":"OFFER","dst":""}"#),
        Message::text(r#"{"type":"OFFER","dst":12345}"#),
        Message::text(r#"{"type":"OFFER","dst":{"id":"bob"}}"#),
        Message::binary(vec![0xff, 0xfe, 0x00, 0x80]),
        Message::Ping(vec![1, 2, 3].into()),
    ];
    for f in frames {
        assert!(m.try_send(f).await);
    }
    still_open(&mut m, "mallory").await;
}

async fn spoofed_src(b: &Broker, bob: &mut Client) {
    let mut m = b.peer("mallory2").await;
    m.send(r#"{"type":"OFFER","src":"alice","dst":"bob","payload":{}}"#)
        .await;
    bob.expect(r#"{"type":"OFFER","src":"mallory2","dst":"bob","payload":{}}"#)
        .await;
}

async fn oversized_frame(b: &Broker) {
    let mut m = b.peer("big").await;
    let payload = "x".repeat(MAX_FRAME + 1);
    m.try_send(Message::text(format!(
        r#"{{"type":"OFFER","dst":"bob","payload":"{payload}"}}"#
    )))
    .await;
    m.expect_closed(Some(1009)).await;
}

async fn invalid_utf8_text(b: &Broker) {
    let mut raw = raw_ws(b, "utf8").await;
    // A masked text frame whose payload is not UTF-8 (mask of zeros keeps it readable).
    raw.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28])
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut raw).await, Some(1007));
}

async fn unmasked_frame(b: &Broker) {
    let mut raw = raw_ws(b, "unmasked").await;
    raw.write_all(&[0x81, 0x02, b'{', b'}']).await.unwrap();
    assert_eq!(read_close_code(&mut raw).await, Some(1002));
}

async fn garbage_flood(b: &Broker) {
    let mut m = b.peer("garbage").await;
    for _ in 0..40 {
        if !m.try_send(Message::binary(vec![0xc0, 0xff])).await {
            break;
        }
    }
    m.expect_closed(Some(1007)).await;
}

async fn rate_flood(b: &Broker) {
    let mut m = b.peer("flood").await;
    for _ in 0..400 {
        if !m.try_send(Message::text(r#"{"type":"HEARTBEAT"}"#)).await {
            break;
        }
    }
    m.expect_closed(Some(1008)).await;
}

/// A reader that never reads is cut off once its bounded send queue fills; its sender is not.
async fn slow_reader(b: &Broker) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(b.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(b.ws_url("sloth", "t"), stream)
        .await
        .unwrap();
    use futures_util::StreamExt;
    let _open = slow.next().await;
    let chunk = "y".repeat(MAX_FRAME - 100);
    // 3 x 250 x 16 KiB = 12 MiB: past the kernel's socket buffers (up to 4 MiB here) and the
    // 256 KiB queue bound. Three senders, so no one trips the rate limit.
    for s in 0..3 {
        let id = format!("hurry{s}");
        let mut sender = b.peer(&id).await;
        for _ in 0..250 {
            sender
                .send(&format!(
                    r#"{{"type":"OFFER","dst":"sloth","payload":"{chunk}"}}"#
                ))
                .await;
        }
        still_open(&mut sender, &id).await;
    }
    // The id is freed once the server drops the sloth.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = b.connect("sloth", "someone-else").await;
        match again.next_within(Duration::from_secs(2)).await {
            Seen::Text(t) if t == r#"{"type":"OPEN"}"# => break,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("slow reader still holds its id: {other:?}"),
        }
    }
    drop(slow);
}

/// A connection that never finishes its HTTP request head is dropped after the timeout.
async fn stalled_handshakes(b: &Broker) {
    let mut silent = TcpStream::connect(b.addr).await.unwrap();
    let mut partial = TcpStream::connect(b.addr).await.unwrap();
    partial
        .write_all(b"GET /peerjs?key=peerjs&id=x&token=y HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut partial] {
        let mut buf = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        match r {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            // hyper may answer 408 before closing.
            Ok(Ok(n)) => assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "unexpected answer"
            ),
            Err(_) => panic!("stalled handshake still open after 3 s"),
        }
    }
}

async fn too_many_sockets(b: &Broker) {
    let mut held = Vec::new();
    let mut rejected = false;
    for i in 0..PER_IP + 1 {
        let mut c = b.connect(&format!("many{i}"), "t").await;
        match c.next_within(Duration::from_secs(5)).await {
            Seen::Text(t) if t == r#"{"type":"OPEN"}"# => held.push(c),
            Seen::Text(t) => {
                assert_eq!(
                    t,
                    r#"{"type":"ERROR","payload":{"msg":"Too many connections from this address"}}"#
                );
                c.expect_closed(Some(1005)).await;
                rejected = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(rejected, "the per-IP cap never applied");
    drop(held);
}

async fn raw_ws(b: &Broker, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let req = format!(
        "GET /peerjs?key=peerjs&id={id}&token=t HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    // OPEN: 0x81, len, body.
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).await.unwrap();
    let mut body = vec![0u8; usize::from(hdr[1])];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(body, br#"{"type":"OPEN"}"#);
    s
}

async fn read_close_code(s: &mut TcpStream) -> Option<u16> {
    let mut hdr = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hdr))
        .await
        .ok()?
        .ok()?;
    assert_eq!(hdr[0], 0x88, "expected a close frame");
    let mut body = vec![0u8; usize::from(hdr[1] & 0x7f)];
    s.read_exact(&mut body).await.ok()?;
    (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]))
}

#[tokio::test]
async fn bad_input_table() {
    let b = start(config()).await;
    let mut alice = b.peer("alice").await;
    let mut bob = b.peer("bob").await;
    pair_still_relays(&mut alice, &mut bob, 0).await;

    ignored_frames(&b).await;
    pair_still_relays(&mut alice, &mut bob, 1).await;
    spoofed_src(&b, &mut bob).await;
    pair_still_relays(&mut alice, &mut bob, 2).await;
    oversized_frame(&b).await;
    pair_still_relays(&mut alice, &mut bob, 3).await;
    invalid_utf8_text(&b).await;
    unmasked_frame(&b).await;
    pair_still_relays(&mut alice, &mut bob, 4).await;
    garbage_flood(&b).await;
    pair_still_relays(&mut alice, &mut bob, 5).await;
    rate_flood(&b).await;
    pair_still_relays(&mut alice, &mut bob, 6).await;
    slow_reader(&b).await;
    pair_still_relays(&mut alice, &mut bob, 7).await;
    stalled_handshakes(&b).await;
    pair_still_relays(&mut alice, &mut bob, 8).await;
    too_many_sockets(&b).await;
    pair_still_relays(&mut alice, &mut bob, 9).await;
}
