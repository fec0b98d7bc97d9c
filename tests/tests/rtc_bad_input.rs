//! Bad input to a Rust peer (`kibitz-rtc`) through our broker: malformed payloads, garbage
//! SDP and candidates from a hand-driven WebSocket "remote" give `SignalError`s and failed
//! connections, never a panic, and the peer keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kibitz_e2e::{Config, start};
use kibitz_rtc::{
    BrokerConfig, CloseReason, ConnectOptions, Event, Events, Identity, Message, Peer, PeerOptions,
    SignalError,
};

/// The first event matching `want` within 10 s (others are skipped).
async fn next(ev: &mut Events, want: impl FnMut(&Event) -> bool) -> Event {
    kibitz_e2e::next_matching(ev, Duration::from_secs(10), want).await
}

fn offer(payload: &str) -> String {
    format!(r#"{{"type":"OFFER","dst":"victim","payload":{payload}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_signalling_is_refused_and_the_peer_carries_on() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let connect = |id: &str| {
        let mut o = PeerOptions::new(
            BrokerConfig::plain("127.0.0.1", port),
            Identity::generate().unwrap(),
        );
        o.id = Some(id.into());
        Peer::connect(o)
    };
    let (victim, mut ev) = connect("victim").await.unwrap();
    next(&mut ev, |e| matches!(e, Event::Open { .. })).await;
    let mut mallory = broker.peer("mallory").await;

    let partial_sdp = r#"{"sdp":{"type":"offer","sdp":"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"},"type":"data","connectionId":"dc_3","serialization":"binary"}"#;
    let bad = [
        offer(r#""nope""#),
        offer("[1,2]"),
        offer(r#"{"sdp":7}"#),
        offer(r#"{"type":"data","connectionId":"dc_1","sdp":{"type":"offer","sdp":"garbage"}}"#),
        offer(r#"{"type":"data","connectionId":"dc_1b","sdp":{"type":"offer","sdp":""}}"#),
        offer(r#"{"type":"media","connectionId":"mc_1","sdp":{"type":"offer","sdp":"v=0"}}"#),
        offer(
            r#"{"type":"data","connectionId":"dc_2","sdp":{"type":"offer","sdp":"v=0"},"serialization":"MsgPack"}"#,
        ),
        offer(r#"{"type":"data","sdp":{"type":"offer","sdp":"v=0"}}"#),
        offer(r#"{"type":"data","connectionId":"dc_4","sdp":{"type":"answer","sdp":"v=0"}}"#),
        offer(partial_sdp),
        r#"{"type":"ANSWER","dst":"victim","payload":{"type":"data","connectionId":"dc_x","sdp":{"type":"answer","sdp":"v=0"}}}"#.into(),
        r#"{"type":"ANSWER","dst":"victim"}"#.into(),
        r#"{"type":"CANDIDATE","dst":"victim","payload":{"type":"data","connectionId":"dc_x"}}"#.into(),
        r#"{"type":"CANDIDATE","dst":"victim","payload":{"candidate":{"candidate":7}}}"#.into(),
    ];
    for frame in &bad {
        mallory.send(frame).await;
    }
    let mut errors = 0;
    while errors < bad.len() {
        match next(&mut ev, |e| matches!(e, Event::SignalError(_))).await {
            Event::SignalError(e) => {
                println!("refused: {e}");
                errors += 1;
            }
            _ => unreachable!(),
        }
    }

    // The victim offers to mallory, who answers with garbage SDP: refused, connection failed.
    let c = victim
        .connect("mallory", ConnectOptions::default())
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&mallory.recv().await).unwrap();
    assert_eq!(got["type"], "OFFER");
    let cid = got["payload"]["connectionId"].as_str().unwrap().to_owned();
    mallory
        .send(&format!(
            r#"{{"type":"CANDIDATE","dst":"victim","payload":{{"type":"data","connectionId":"{cid}","candidate":{{"candidate":"candidate:garbage","sdpMid":"0"}}}}}}"#
        ))
        .await;
    assert!(matches!(
        next(&mut ev, |e| matches!(e, Event::SignalError(_))).await,
        Event::SignalError(SignalError::Rejected {
            kind: "CANDIDATE",
            ..
        })
    ));
    mallory
        .send(&format!(
            r#"{{"type":"ANSWER","dst":"victim","payload":{{"type":"data","connectionId":"{cid}","sdp":{{"type":"answer","sdp":"v=0\r\ngarbage"}}}}}}"#
        ))
        .await;
    assert!(matches!(
        next(&mut ev, |e| matches!(e, Event::SignalError(_))).await,
        Event::SignalError(SignalError::Rejected { kind: "ANSWER", .. })
    ));
    assert!(matches!(
        next(&mut ev, |e| matches!(e, Event::ConnClosed { .. })).await,
        Event::ConnClosed { conn, reason: CloseReason::Failed(_) } if conn == c
    ));

    // A LEAVE from mallory closes nothing that is not there, and the victim still works.
    mallory.send(r#"{"type":"LEAVE","dst":"victim"}"#).await;
    next(&mut ev, |e| matches!(e, Event::Leave { .. })).await;
    let (friend, mut f_ev) = connect("friend").await.unwrap();
    next(&mut f_ev, |e| matches!(e, Event::Open { .. })).await;
    let fc = friend
        .connect("victim", ConnectOptions::default())
        .await
        .unwrap();
    next(&mut f_ev, |e| matches!(e, Event::ConnOpen { .. })).await;
    friend
        .send(fc, Message::Pack("still fine".into()))
        .await
        .unwrap();
    let Event::Data { value, .. } = next(&mut ev, |e| matches!(e, Event::Data { .. })).await else {
        unreachable!()
    };
    assert_eq!(value, Message::Pack("still fine".into()));
    victim.destroy();
    friend.destroy();
}
