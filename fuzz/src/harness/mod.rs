//! The trust-boundary harnesses: one `check(&[u8])` per libFuzzer target of the same name in
//! `fuzz_targets/` (which includes just its file), the stable runner `mutate_boundary`, and the
//! CI smoke test `tests/tests/boundary_fuzz_smoke.rs` (which include this table). A check
//! panics on a broken invariant; anything else it returns from is a pass.

pub mod cluster_link;
pub mod lan_frame;
pub mod lan_gate;
pub mod peerjs_frame;
pub mod redis_reply;
pub mod stun_util;
pub mod turn_client;
pub mod turn_server;

/// A harness: its target name, its check, and words worth splicing into inputs.
pub type Target = (&'static str, fn(&[u8]), &'static [&'static [u8]]);

/// Every harness here.
pub const TARGETS: &[Target] = &[
    ("cluster_link", cluster_link::check, cluster_link::DICT),
    ("lan_frame", lan_frame::check, lan_frame::DICT),
    ("lan_gate", lan_gate::check, lan_gate::DICT),
    ("peerjs_frame", peerjs_frame::check, peerjs_frame::DICT),
    ("redis_reply", redis_reply::check, redis_reply::DICT),
    ("turn_client", turn_client::check, turn_client::DICT),
    ("turn_server", turn_server::check, turn_server::DICT),
];
