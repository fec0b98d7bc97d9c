//! A generic stable-Rust mutation runner for the byte-input harnesses in `src/harness/`: the
//! fallback to libFuzzer when cargo-fuzz or its toolchain is missing, and a reproducible
//! (seeded, coverage-blind) second opinion. Seeds are the files of `fuzz/corpus/<target>/`;
//! mutations flip, overwrite, insert, delete, duplicate and splice bytes, and write the
//! boundary integers that length fields trip on. Panics are caught and counted as crashes.

use std::path::Path;
use std::time::{Duration, Instant};

/// xorshift64*.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// The seed files of `<corpus>/<target>/` (an empty input if there are none).
pub fn seeds(corpus: &Path, target: &str) -> Vec<Vec<u8>> {
    let dir = corpus.join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    out.sort();
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
];

/// One to five mutations of `input`, sometimes spliced with another corpus entry.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..=rng.below(5) {
        let len = b.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                // A boundary integer, big- or little-endian, 1 to 8 bytes wide.
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1, 2, 4, 8][rng.below(4)];
                let bytes = if rng.below(2) == 0 {
                    v.to_be_bytes()[8 - w..].to_vec()
                } else {
                    v.to_le_bytes()[..w].to_vec()
                };
                let i = rng.below(len);
                for (j, x) in bytes.into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(i + j) {
                        *slot = x;
                    }
                }
            }
            3 => {
                let i = rng.below(len + 1);
                b.insert(i, rng.next() as u8);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64) + 1);
                b.drain(i..i + n);
            }
            5 if len > 0 => {
                // Duplicate a chunk (repeated fields, nested structure).
                let i = rng.below(len);
                let n = rng.below((len - i).min(256) + 1);
                let chunk = b[i..i + n].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, chunk);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let i = rng.below(len + 1);
                let j = rng.below(other.len() + 1);
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            7 if !dict.is_empty() => {
                let word = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                if rng.below(2) == 0 {
                    b.splice(at..at, word.iter().copied());
                } else {
                    let end = (at + word.len()).min(len);
                    b.splice(at..end, word.iter().copied());
                }
            }
            8 => b.truncate(rng.below(len + 1)),
            9 if rng.below(16) == 0 => {
                b = (0..rng.below(128)).map(|_| rng.next() as u8).collect();
            }
            _ => {}
        }
    }
    b
}

/// Totals of one run.
#[derive(Debug, Default)]
pub struct Stats {
    pub execs: u64,
    pub crashes: Vec<Vec<u8>>,
    pub slowest: Duration,
    pub largest_input: usize,
}

/// Runs every seed of `target` in `corpus`, then `iterations` mutated inputs through `check`;
/// inputs that panic are kept as crashes. Some inputs are kept to mutate further.
#[allow(clippy::disallowed_methods)] // wall-clock time per input is what is measured
pub fn run(
    corpus: &Path,
    target: &str,
    check: fn(&[u8]),
    dict: &[&[u8]],
    seed: u64,
    iterations: u64,
) -> Stats {
    let mut rng = Rng(seed | 1);
    let mut corpus = seeds(corpus, target);
    let mut stats = Stats::default();
    let inputs = corpus.clone();
    let one = |input: &[u8], stats: &mut Stats| {
        let started = Instant::now();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input))).is_ok();
        stats.slowest = stats.slowest.max(started.elapsed());
        stats.execs += 1;
        stats.largest_input = stats.largest_input.max(input.len());
        if !ok {
            stats.crashes.push(input.to_vec());
        }
        ok
    };
    for s in &inputs {
        one(s, &mut stats);
    }
    for _ in 0..iterations {
        let base = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base, &corpus, dict);
        if one(&input, &mut stats) && corpus.len() < 4096 && rng.below(64) == 0 {
            corpus.push(input);
        }
    }
    stats
}
