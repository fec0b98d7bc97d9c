//! Opt-in room leave notices over real sockets: when the socket holding a `kbz-v1-` id closes
//! and nobody takes the id back within the grace, the peers that signalled with it get a LEAVE
//! from the room id; a blip under the grace sends nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kibitz_e2e::{Config, Seen, start};
use kibitz_signal::core::RoomNotices;
use std::time::Duration;
use tokio::time::Instant;

const ROOM: &str = "kbz-v1-standup";

#[tokio::test]
async fn survivors_hear_that_the_room_authority_left() {
    let b = start(Config {
        room_notices: Some(RoomNotices {
            grace: Duration::from_millis(300),
            expire: Duration::from_millis(300),
        }),
        ..Config::default()
    })
    .await;
    let mut member = b.peer("member").await;
    let authority = {
        let mut a = b.peer(ROOM).await;
        member
            .send(r#"{"type":"OFFER","dst":"kbz-v1-standup","payload":{}}"#)
            .await;
        a.expect(r#"{"type":"OFFER","src":"member","dst":"kbz-v1-standup","payload":{}}"#)
            .await;
        a
    };

    // A blip: the same client is back within the grace, so nothing is said.
    // (Back after the broker saw the close, or it would be a silent same-token re-attach.)
    drop(authority);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut back = b.connect(ROOM, &format!("tok-{ROOM}")).await;
    back.expect(r#"{"type":"OPEN"}"#).await;
    assert_eq!(
        member.next_within(Duration::from_millis(600)).await,
        Seen::Nothing
    );

    // Gone for good: the member hears within the grace (plus slack).
    let closed = Instant::now();
    drop(back);
    member
        .expect(r#"{"type":"LEAVE","src":"kbz-v1-standup","dst":"member"}"#)
        .await;
    let waited = closed.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}
