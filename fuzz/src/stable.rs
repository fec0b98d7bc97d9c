//! The stable-Rust mutation runner every fuzz harness here shares: the fallback to libFuzzer
//! when cargo-fuzz or its toolchain is missing, and a reproducible (seeded, coverage-blind)
//! second opinion. [`run_loop`] drives a [`Harness`] (its own mutations and check) from a
//! corpus; panics are caught and counted as crashes. [`run`] is it for the byte-input
//! harnesses in `src/harness/`, seeded from the files of `fuzz/corpus/<target>/`, with
//! mutations that flip, overwrite, insert, delete, duplicate and splice bytes, and write the
//! boundary integers that length fields trip on. The command-line runners (`src/bin/`) share
//! [`iterations_and_seed`] and [`save_crashes`].

use std::path::Path;
use std::process::ExitCode;
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

// Mutation steps the harnesses share; each draws from the generator in a fixed order, so a
// seed replays the same inputs.

/// Flips one bit of a non-empty `b`.
pub fn flip_bit(rng: &mut Rng, b: &mut [u8]) {
    let i = rng.below(b.len());
    b[i] ^= 1 << rng.below(8);
}

/// Sets one byte of a non-empty `b` to what `pick` draws.
pub fn set_byte(rng: &mut Rng, b: &mut [u8], pick: impl FnOnce(&mut Rng) -> u8) {
    let i = rng.below(b.len());
    b[i] = pick(rng);
}

/// Overwrites `b` from `at` with `bytes`, as far as `b` goes.
pub fn write_at(b: &mut [u8], at: usize, bytes: impl IntoIterator<Item = u8>) {
    for (j, x) in bytes.into_iter().enumerate() {
        if let Some(slot) = b.get_mut(at + j) {
            *slot = x;
        }
    }
}

/// Inserts one random byte anywhere in `b`.
pub fn insert_byte(rng: &mut Rng, b: &mut Vec<u8>) {
    let i = rng.below(b.len() + 1);
    b.insert(i, rng.next() as u8);
}

/// Deletes a run of up to `max` bytes from a non-empty `b`.
pub fn delete_run(rng: &mut Rng, b: &mut Vec<u8>, max: usize) {
    let len = b.len();
    let i = rng.below(len);
    let n = rng.below((len - i).min(max) + 1);
    b.drain(i..i + n);
}

/// Cuts `b` anywhere and appends the tail of another corpus entry (`corpus` not empty).
pub fn splice_tail(rng: &mut Rng, b: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let other = &corpus[rng.below(corpus.len())];
    let i = rng.below(b.len() + 1);
    let j = rng.below(other.len() + 1);
    b.truncate(i);
    b.extend_from_slice(&other[j..]);
}

/// Fewer than `max` random bytes.
pub fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    (0..rng.below(max)).map(|_| rng.next() as u8).collect()
}

/// One to five mutations of `input`, sometimes spliced with another corpus entry.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..=rng.below(5) {
        let len = b.len();
        match rng.below(11) {
            0 if len > 0 => flip_bit(rng, &mut b),
            1 if len > 0 => set_byte(rng, &mut b, |r| r.next() as u8),
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
                write_at(&mut b, i, bytes);
            }
            3 => insert_byte(rng, &mut b),
            4 if len > 0 => delete_run(rng, &mut b, 64),
            5 if len > 0 => {
                // Duplicate a chunk (repeated fields, nested structure).
                let i = rng.below(len);
                let n = rng.below((len - i).min(256) + 1);
                let chunk = b[i..i + n].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, chunk);
            }
            6 if !corpus.is_empty() => splice_tail(rng, &mut b, corpus),
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
            9 if rng.below(16) == 0 => b = random_bytes(rng, 128),
            _ => {}
        }
    }
    b
}

/// What a check made of an input it did not panic on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (decoded, parsed): worth mutating further.
    Ok,
    /// Refused with an error.
    Rejected,
}

/// A fuzz harness: how it mutates an input, and the check that panics on a broken invariant.
pub trait Harness {
    /// Which accepted inputs join the corpus.
    const KEEP: Keep;
    /// A mutation of `input`; `corpus` is there to splice from.
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8>;
    fn check(&mut self, input: &[u8]) -> Outcome;
    /// The last check panicked: state it keeps between inputs may be half updated.
    fn crashed(&mut self) {}
}

/// Which accepted inputs join the corpus: one in `one_in`, while it holds fewer than `max`.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub max: usize,
    pub one_in: usize,
}

impl Keep {
    pub const fn new(max: usize, one_in: usize) -> Self {
        Self { max, one_in }
    }
}

/// Totals of one run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub execs: u64,
    pub ok: u64,
    pub rejected: u64,
    pub crashes: Vec<Vec<u8>>,
    pub slowest: Duration,
    pub largest_input: usize,
}

impl Stats {
    /// The run in one line, `ok` naming the accepted inputs.
    pub fn line(&self, ok: &str) -> String {
        format!(
            "execs {} {ok} {} rejected {} crashes {} slowest {:?} largest input {} B",
            self.execs,
            self.ok,
            self.rejected,
            self.crashes.len(),
            self.slowest,
            self.largest_input
        )
    }

    /// Runs `check` on `input` and counts it: its outcome, or `None` if it panicked (the
    /// input is kept as a crash).
    #[allow(clippy::disallowed_methods)] // wall-clock time per input is what is measured
    pub fn one(&mut self, input: &[u8], check: impl FnOnce(&[u8]) -> Outcome) -> Option<Outcome> {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
        self.slowest = self.slowest.max(started.elapsed());
        self.execs += 1;
        self.largest_input = self.largest_input.max(input.len());
        match result {
            Ok(Outcome::Ok) => self.ok += 1,
            Ok(Outcome::Rejected) => self.rejected += 1,
            Err(_) => self.crashes.push(input.to_vec()),
        }
        result.ok()
    }
}

/// Runs `iterations` inputs through `harness`, each a mutation of a corpus entry (`corpus`
/// must not be empty); accepted ones may join the corpus as its [`Harness::KEEP`] says.
pub fn run_loop<H: Harness>(
    harness: &mut H,
    rng: &mut Rng,
    corpus: &mut Vec<Vec<u8>>,
    iterations: u64,
    stats: &mut Stats,
) {
    let keep = H::KEEP;
    for _ in 0..iterations {
        let base = &corpus[rng.below(corpus.len())];
        let input = harness.mutate(rng, base, corpus);
        match stats.one(&input, |i| harness.check(i)) {
            Some(Outcome::Ok) => {
                if corpus.len() < keep.max && rng.below(keep.one_in) == 0 {
                    corpus.push(input);
                }
            }
            Some(Outcome::Rejected) => {}
            None => harness.crashed(),
        }
    }
}

/// A byte-input harness of `src/harness/`: its check and dictionary.
struct Bytes<'a> {
    check: fn(&[u8]),
    dict: &'a [&'a [u8]],
}

impl Harness for Bytes<'_> {
    const KEEP: Keep = Keep::new(4096, 64);
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        mutate(rng, input, corpus, self.dict)
    }
    fn check(&mut self, input: &[u8]) -> Outcome {
        (self.check)(input);
        Outcome::Ok
    }
}

/// Runs every seed of `target` in `corpus`, then `iterations` mutated inputs through `check`;
/// inputs that panic are kept as crashes. Some inputs are kept to mutate further.
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
    let mut harness = Bytes { check, dict };
    for s in &corpus {
        stats.one(s, |i| harness.check(i));
    }
    run_loop(&mut harness, &mut rng, &mut corpus, iterations, &mut stats);
    stats
}

/// A command-line runner's `[iterations] [seed]` (1,000,000 and `seed` when missing or not a
/// number).
pub fn iterations_and_seed(mut args: impl Iterator<Item = String>, seed: u64) -> (u64, u64) {
    let iterations = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000u64);
    let seed = args.next().and_then(|a| a.parse().ok()).unwrap_or(seed);
    (iterations, seed)
}

/// A command-line runner's end: the first 20 crashing inputs go to
/// `fuzz/artifacts/<dir>/<prefix><n><ext>`; failure if there were any.
pub fn save_crashes(dir: &str, prefix: &str, ext: &str, crashes: &[impl AsRef<[u8]>]) -> ExitCode {
    if crashes.is_empty() {
        return ExitCode::SUCCESS;
    }
    // A runner's manifest is fuzz/Cargo.toml.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(dir);
    let _ = std::fs::create_dir_all(&dir);
    for (i, c) in crashes.iter().enumerate().take(20) {
        let _ = std::fs::write(dir.join(format!("{prefix}{i}{ext}")), c);
    }
    ExitCode::FAILURE
}
