//! A stable-Rust mutation fuzzer for the BinaryPack decoder and the chunk reassembler, shared
//! by `src/bin/mutate.rs` (long runs) and the CI smoke test
//! (`tests/tests/binarypack_fuzz_smoke.rs`). libFuzzer (`cargo fuzz`, nightly) runs
//! `fuzz_targets/binarypack_decode.rs`, which calls [`check`] too.
//!
//! Inputs are valid encodings (spec vectors, captured frames, random values) mutated by bit
//! flips, byte and length-field overwrites, inserts, deletes and splices, plus plain random
//! bytes. [`check`] panics on a broken invariant; the shared runner (`stable.rs`) counts
//! panics as crashes.

use std::time::{Duration, Instant};

// Each harness uses part of the shared runner.
#[allow(dead_code)]
#[path = "stable.rs"]
pub mod stable;

use stable::{
    Harness, Keep, delete_run, flip_bit, insert_byte, random_bytes, run_loop, set_byte,
    splice_tail, write_at,
};
pub use stable::{Outcome, Rng, Stats};

use kibitz_proto::binarypack::chunk::{CLOSE, Chunker, Reassembler};
use kibitz_proto::binarypack::{Limits, Value, decode, encode};

/// The limits every input is decoded with.
pub const LIMITS: Limits = Limits {
    max_size: 1 << 20,
    max_depth: 64,
    max_values: 1 << 16,
};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 4 { 7 } else { 10 }) {
        0 => Value::Nil,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::Int(rng.next() as i64 >> rng.below(64)),
        3 => Value::Float(f64::from_bits(rng.next()) % 1e9),
        4 => Value::Str("ké☕𝄞".chars().cycle().take(rng.below(40)).collect()),
        5 => Value::Bin((0..rng.below(300)).map(|i| i as u8).collect()),
        6 => Value::UInt(u64::MAX - rng.below(1000) as u64),
        7 | 8 => Value::Array(
            (0..rng.below(20))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Map(
            (0..rng.below(20))
                .map(|i| (Value::Str(format!("k{i}")), random_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

/// Valid encodings to start from.
pub fn seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        "b26869",
        "89b568656c6c6fb5776f726c64b16e01b36e6567fbb3626967ce00011170b166cb4004000000000000b174c3b36e756cc0b36172729201b178b362696ea3010203",
        "87b174b56b6e6f636bb46e616d65b3426f62b6617661746172b0b5746f6b656ed800157a6d683434627173747a77337a62656d6e796a6e70b7766f6963654964c0b36a7774c0be6167656e74417373657274696f6ec0",
        "82b16bb3617070b46461746182b568656c6c6fb8617070a46461746161b16e01",
        "dc0003ca3fc00000cf8000000000000000d3fffffffeffffffff",
        "dd00000002de0001a0db00000000df00000000",
        "c1c4d4d7c0",
    ]
    .iter()
    .map(|h| unhex(h))
    .collect();
    out.push(CLOSE.to_vec());
    let mut chunker = Chunker::new();
    if let Ok(big) = encode(&Value::Bin(vec![7; 20_000])) {
        out.extend(chunker.split(big));
    }
    for _ in 0..64 {
        if let Ok(b) = encode(&random_value(rng, 0)) {
            out.push(b);
        }
    }
    out
}

/// One mutation of `input`, sometimes spliced with another corpus entry.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = b.len();
        match rng.below(9) {
            0 if len > 0 => flip_bit(rng, &mut b),
            1 if len > 0 => set_byte(rng, &mut b, |r| r.next() as u8),
            2 if len > 0 => {
                // A tag byte, often a length-carrying one.
                set_byte(rng, &mut b, |r| {
                    [
                        0xdb, 0xdd, 0xdf, 0xd9, 0xda, 0xdc, 0xde, 0xd8, 0x9f, 0x8f, 0xcb, 0xca,
                        0xc1,
                    ][r.below(13)]
                });
            }
            3 if len > 0 => {
                // A big length right after a random position.
                let i = rng.below(len);
                let big = [0xff, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x01, 0x80];
                let n = rng.below(5);
                write_at(&mut b, i, big.into_iter().skip(rng.below(4)).take(n));
            }
            4 => insert_byte(rng, &mut b),
            5 if len > 0 => delete_run(rng, &mut b, usize::MAX),
            6 if !corpus.is_empty() => splice_tail(rng, &mut b, corpus),
            7 => {
                // Deep nesting prefix.
                let n = rng.below(200);
                let tag = [0x91u8, 0x81, 0xdc][rng.below(3)];
                let mut p = vec![tag; n];
                p.extend_from_slice(&b);
                b = p;
            }
            _ => b = random_bytes(rng, 64),
        }
    }
    b
}

/// Same structure, strings and binary; numbers may differ (the JS float encoding is lossy
/// on purpose) and undefined becomes nil.
fn same_shape(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| matches!(v, Value::Int(_) | Value::UInt(_) | Value::Float(_));
    match (a, b) {
        (Value::Undefined | Value::Nil, Value::Nil) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_shape(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| same_shape(k1, k2) && same_shape(v1, v2))
        }
        _ if num(a) => num(b),
        _ => a == b,
    }
}

/// Decodes `input`; if that works, re-encodes and decodes again. Panics on a broken invariant.
pub fn check(input: &[u8], reassembler: &mut Reassembler, now: Instant) -> Outcome {
    let _ = reassembler.receive(now, input);
    assert!(
        reassembler.pending_bytes() <= 1 << 20,
        "reassembler over its cap"
    );
    match decode(input, LIMITS) {
        Err(_) => Outcome::Rejected,
        Ok(v) => {
            if let Ok(again) = encode(&v) {
                let wide = Limits {
                    max_size: usize::MAX,
                    ..LIMITS
                };
                let v2 = match decode(&again, wide) {
                    Ok(v2) => v2,
                    Err(e) => panic!("re-encoded value does not decode: {e}"),
                };
                assert!(same_shape(&v, &v2), "re-encode changed the value's shape");
            }
            Outcome::Ok
        }
    }
}

fn reassembler() -> Reassembler {
    Reassembler::new(LIMITS, 1 << 20, Duration::from_secs(30))
}

/// [`mutate`] and [`check`], with one reassembler across inputs (a fresh one after a crash),
/// each input a millisecond after the last.
struct Binarypack {
    reassembler: Reassembler,
    epoch: Instant,
    n: u64,
}

impl Harness for Binarypack {
    // Keep some valid novel inputs to mutate further.
    const KEEP: Keep = Keep::new(4096, 8);
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        mutate(rng, input, corpus)
    }
    fn check(&mut self, input: &[u8]) -> Outcome {
        let now = self.epoch + Duration::from_millis(self.n);
        self.n += 1;
        check(input, &mut self.reassembler, now)
    }
    fn crashed(&mut self) {
        self.reassembler = reassembler();
    }
}

/// Runs `iterations` inputs from `seed` (`ok` counts the decoded ones); panics inside are
/// caught and recorded as crashes.
#[allow(clippy::disallowed_methods)] // a clock origin for the reassembler's timeouts
pub fn run(seed: u64, iterations: u64) -> Stats {
    let mut rng = Rng(seed | 1);
    let mut corpus = seeds(&mut rng);
    let mut stats = Stats::default();
    let mut harness = Binarypack {
        reassembler: reassembler(),
        epoch: Instant::now(),
        n: 0,
    };
    run_loop(&mut harness, &mut rng, &mut corpus, iterations, &mut stats);
    stats
}
