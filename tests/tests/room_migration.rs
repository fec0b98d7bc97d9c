//! Coordinator migration with three `kibitz join` processes: the coordinator is killed
//! (SIGKILL: no `leave`, no channel close) and the time until a survivor holds the room and
//! the other sees it is measured, with the broker's room leave notices off and on, in the
//! same run. Off, the survivors wait out 12 s of silence; on, the broker's LEAVE for the room
//! id sends them straight to reclaim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kibitz_e2e::{Config, KibitzProc, start};
use kibitz_signal::core::RoomNotices;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

async fn migration(config: Config, room: &str) -> Duration {
    let broker = start(config).await;
    let signal = format!("ws://127.0.0.1:{}", broker.addr.port());
    let join = |name: &str| {
        KibitzProc::spawn(
            name,
            &["join", room, "--name", name, "--signal-host", &signal],
        )
    };
    let mut alice = join("Alice");
    alice
        .expect(WAIT, |l| l == "* connected (you coordinate the room)")
        .await;
    let mut bob = join("Bob");
    let mut carol = join("Carol");
    let all = |l: &str| {
        l.starts_with("* in the room:") && ["Alice", "Bob", "Carol"].iter().all(|n| l.contains(n))
    };
    bob.expect(WAIT, all).await;
    carol.expect(WAIT, all).await;
    // Let the mesh and heartbeats settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    alice.child.kill().await.unwrap();
    let moved = |l: &str| {
        l.starts_with("* in the room:")
            && !l.contains("Alice")
            && l.contains("Bob")
            && l.contains("Carol")
    };
    tokio::join!(
        bob.expect(Duration::from_secs(40), moved),
        carol.expect(Duration::from_secs(40), moved)
    );
    let took = t.elapsed();
    let holders = [&bob, &carol]
        .iter()
        .filter(|p| {
            p.seen
                .iter()
                .any(|l| l == "* connected (you coordinate the room)")
        })
        .count();
    assert_eq!(holders, 1, "exactly one survivor coordinates");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_with_and_without_room_leave_notices() {
    let off = migration(Config::default(), "migrate-off").await;
    let on = migration(
        Config {
            room_notices: Some(RoomNotices {
                grace: Duration::from_millis(1_000),
                expire: Duration::from_millis(1_000),
            }),
            ..Config::default()
        },
        "migrate-on",
    )
    .await;
    println!("migration after the coordinator was killed: notices off {off:?}, on {on:?}");
    // Behaviour, not a benchmark: off takes the silence path (> 12 s), on does not.
    assert!(off > Duration::from_secs(12), "off: {off:?}");
    assert!(on < Duration::from_secs(6), "on: {on:?}");
}
