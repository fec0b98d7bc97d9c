//! Fuzzing entry points (cargo feature `fuzzing`, used by `fuzz/`): the registry-answer
//! parsers on whatever Redis sends, and node-link frames on whatever a link sends. Not an API.

use super::wire::{self, Seen};
use redis::Value;

/// Runs every reply parser on `v`: none may panic, and what they keep is bounded by `v`.
pub fn redis_reply(v: Value) {
    let mut seen = Seen::default();
    let _ = wire::text_tag(&v);
    let _ = wire::int(&v);
    let _ = wire::text(v.clone());
    let (_claim, _from) = wire::parse_claim(v.clone(), &mut seen);
    let (_last, entries) = wire::inbox_entries(v.clone());
    let _ = entries.len();
    let _ = wire::queued(wire::items(v).into_iter(), &mut seen);
}

/// Node-link bytes: split into frames whole and in pieces (the same frames or the same
/// error), each frame round-trips, and every message goes through the receiving side's
/// checks (`direct_in`, then delivered) of a 2-shard registry with links, whose first
/// message's predecessor counts as delivered. Returns how many passed.
pub fn cluster_link(data: &[u8]) -> usize {
    use super::direct::DirectMsg;
    use super::link::{encode, split_frames};
    use super::protocol::Settings;
    use super::sharded::Sharded;
    let whole = split_frames(&mut data.to_vec());
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut buf = data[..cut].to_vec();
    let mut pieces: Vec<DirectMsg> = Vec::new();
    let mut failed = split_frames(&mut buf).map(|m| pieces.extend(m)).is_err();
    if !failed {
        buf.extend_from_slice(&data[cut..]);
        match split_frames(&mut buf) {
            Ok(m) => pieces.extend(m),
            Err(_) => failed = true,
        }
    }
    match &whole {
        Ok(m) if !failed => assert_eq!(m, &pieces, "split reads disagree"),
        Ok(_) => panic!("a split read failed where one read did not"),
        Err(_) => {}
    }
    let Ok(msgs) = whole else { return 0 };
    for m in &msgs {
        let mut wire = Vec::new();
        if encode(m, &mut wire).is_some() {
            let again = split_frames(&mut wire);
            assert_eq!(again, Ok(vec![m.clone()]), "round trip");
        }
    }
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let cfg = Settings {
        node: "me@127.0.0.1:1".into(),
        shard: 0,
        shards: 2,
        lease: std::time::Duration::from_secs(10),
        concurrent_limit: 10,
        max_queued_per_dst: 10,
        max_queued_total: 100,
    };
    let mut reg = Sharded::new(now, &cfg, 2, crate::metrics::Metrics::new());
    let from = "peer@127.0.0.1:2";
    if let Some(first) = msgs.first() {
        let before = DirectMsg {
            n: first.prev,
            ..first.clone()
        };
        reg.direct_delivered(from, &before);
    }
    let n = msgs.len();
    let ok = reg.direct_in(from, msgs);
    assert!(ok.len() <= n);
    for m in &ok {
        reg.direct_delivered(from, m);
    }
    ok.len()
}
