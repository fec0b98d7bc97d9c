//! The Rust BinaryPack codec against the reference JS one (`peerjs-js-binarypack` 2.1.0 in
//! tests/node), both ways, on seeded random values (`binarypack/diff.mjs`):
//!
//! - Rust → JS: for each Rust value, the JS encoder packs the same JS value to the same bytes,
//!   and the JS decoder reads the Rust bytes as the Rust decoder does.
//! - JS → Rust: for each JS value, the Rust decoder reads the JS bytes as the JS decoder does,
//!   and the Rust encoder writes the decoded value back to the same bytes.
//!
//! Values are compared as canonical text (numbers as float64 bits, strings and binary as
//! hex, keys in order); Rust integers are mapped to the double the JS decoder computes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use kibitz_proto::binarypack::{Limits, Value, decode, encode};
use serde_json::json;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/binarypack/diff.mjs");
const RUST_CASES: usize = 2500;
const JS_CASES: usize = 2500;
const SEED: u64 = 0x6b69_6269_747a_0001;

/// xorshift64*: deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn num_spec(f: f64) -> serde_json::Value {
    json!(["n", hex(&f.to_be_bytes())])
}

fn number(rng: &mut Rng) -> (Value, serde_json::Value) {
    const TWO_53: i64 = 1 << 53;
    let int = |i: i64| (Value::Int(i), num_spec(i as f64));
    // The JS encoder throws on infinities and integral numbers beyond [-2^63, 2^64].
    let float = |f: f64| {
        let f = if f.fract() != 0.0 || f.is_nan() || f.abs() <= 9.2e18 {
            f
        } else {
            0.75
        };
        (Value::Float(f), num_spec(f))
    };
    match rng.below(9) {
        0 => int(rng.below(256) as i64 - 128),
        1 => int(rng.below(140_000) as i64 - 70_000),
        2 => int(rng.below(1 << 33) as i64 - (1 << 32)),
        3 => int((rng.below(2 * TWO_53 as u64 + 1) as i64) - TWO_53),
        4 => float(
            (rng.next() as f64 / u64::MAX as f64 - 0.5) * 10f64.powi(rng.below(40) as i32 - 20),
        ),
        5 => {
            let f = f64::from_bits(rng.next());
            if f.is_finite() && (f.fract() != 0.0 || f.abs() <= 9.2e18) {
                float(f)
            } else {
                float(0.75)
            }
        }
        6 => {
            // At and a hair around powers of two: where the JS exponent arithmetic slips.
            let k = rng.below(1200) as i32 - 1100;
            let m = rng.pick(&[
                1.0,
                1.0 - f64::EPSILON / 2.0,
                1.0 + f64::EPSILON,
                1.0 - f64::EPSILON,
            ]);
            let s = rng.pick(&[1.0, -1.0]);
            float(s * m * 2f64.powi(k))
        }
        7 => float((rng.below(1 << 20) as f64) * rng.pick(&[1.0, -1.0, 1024.0, 2f64.powi(40)])),
        _ => float(rng.pick(&[
            0.0,
            -0.0,
            f64::NAN,
            9_223_372_036_854_775_808.0,
            -9_223_372_036_854_775_808.0,
            18_446_744_073_709_551_616.0,
            0.5,
            1e-310,
            5e-324,
            f64::MIN_POSITIVE,
            f64::MAX,
        ])),
    }
}

fn string(rng: &mut Rng) -> String {
    let r = rng.below(70) as usize;
    let n = rng.pick(&[0, 1, 5, 15, 16, 40, 300, r]);
    (0..n)
        .map(|_| {
            let c = match rng.below(4) {
                0 => rng.below(0x80),
                1 => 0x80 + rng.below(0x780),
                2 => 0x800 + rng.below(0xf800),
                _ => 0x10000 + rng.below(0x100000),
            };
            char::from_u32(c as u32).unwrap_or('A')
        })
        .collect()
}

fn value(rng: &mut Rng, depth: u32) -> (Value, serde_json::Value) {
    match rng.below(if depth > 3 { 8 } else { 11 }) {
        0 => (Value::Nil, json!(null)),
        1 => (Value::Undefined, json!(["u"])),
        2 => {
            let b = rng.below(2) == 0;
            (Value::Bool(b), json!(b))
        }
        3 | 4 => number(rng),
        5 | 6 => {
            let s = string(rng);
            (Value::Str(s.clone()), json!(["s", s]))
        }
        7 => {
            let big = if depth == 0 && rng.below(8) == 0 {
                70_000
            } else {
                17
            };
            let n = rng.pick(&[0, 3, 15, 16, 300, big]);
            let b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            (Value::Bin(b.clone()), json!(["b", hex(&b)]))
        }
        8 => {
            let r = rng.below(20);
            let n = rng.pick(&[0, 1, 15, 16, r]);
            let (vs, specs): (Vec<_>, Vec<_>) = (0..n).map(|_| value(rng, depth + 1)).unzip();
            (Value::Array(vs), json!(["a", specs]))
        }
        _ => {
            let r = rng.below(20);
            let n = rng.pick(&[0, 1, 15, 16, r]);
            let mut entries = Vec::new();
            let mut specs = Vec::new();
            for _ in 0..n {
                let mut k = string(rng);
                // JS objects reorder index-like keys, treat __proto__ specially, keep one per key.
                if k.starts_with(|c: char| c.is_ascii_digit()) || k == "__proto__" {
                    k.insert(0, 'k');
                }
                if entries.iter().any(|(e, _)| *e == Value::Str(k.clone())) {
                    continue;
                }
                let (v, spec) = value(rng, depth + 1);
                specs.push(json!([k.clone(), spec]));
                entries.push((Value::Str(k), v));
            }
            (Value::Map(entries), json!(["m", specs]))
        }
    }
}

/// The JS decoder's `unpack_uint64`: a double built byte by byte, rounding as it goes.
fn js_uint64(bytes: [u8; 8]) -> f64 {
    bytes.iter().fold(0.0, |acc, &b| acc * 256.0 + f64::from(b))
}

/// The number the JS decoder yields for an integer the Rust encoder wrote.
fn js_integer(i: i128) -> f64 {
    if (-(1i128 << 31)..(1i128 << 32)).contains(&i) {
        return i as f64;
    }
    let u = js_uint64((i as u64).to_be_bytes());
    // cf reads as is; d3 wraps when the rounded double reaches 2^63 (so i64::MAX reads
    // as -2^63, too).
    if i <= i128::from(i64::MAX) && u >= 9_223_372_036_854_775_808.0 {
        u - 18_446_744_073_709_551_616.0
    } else {
        u
    }
}

/// The value as the JS decoder holds it: 64-bit integers become the doubles it computes.
fn js_view(v: &Value) -> Value {
    match v {
        Value::Int(i) => Value::Float(js_integer(i128::from(*i))),
        Value::UInt(u) => Value::Float(js_integer(i128::from(*u))),
        Value::Array(items) => Value::Array(items.iter().map(js_view).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (js_view(k), js_view(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Canonical text of a value as the JS decoder would hold it (see diff.mjs `canon`).
fn canon(v: &Value) -> String {
    let n = |f: f64| format!("n{}", hex(&f.to_be_bytes()));
    match v {
        Value::Nil => "N".into(),
        Value::Undefined => "U".into(),
        Value::Bool(true) => "T".into(),
        Value::Bool(false) => "F".into(),
        Value::Int(i) => n(js_integer(i128::from(*i))),
        Value::UInt(u) => n(js_integer(i128::from(*u))),
        Value::Float(f) => n(*f),
        Value::Str(s) => format!("s{}", hex(s.as_bytes())),
        Value::Bin(b) => format!("b{}", hex(b)),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canon).collect::<Vec<_>>().join(",")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}:{}", canon(k), canon(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

#[test]
fn rust_and_js_agree_both_ways() {
    let mut rng = Rng(SEED);
    let mut cases = String::new();
    let mut rust = Vec::new();
    for _ in 0..RUST_CASES {
        let (v, spec) = value(&mut rng, 0);
        let bytes = encode(&v).unwrap();
        cases.push_str(&json!({"spec": spec, "hex": hex(&bytes)}).to_string());
        cases.push('\n');
        rust.push((v, bytes));
    }
    let path = std::env::temp_dir().join(format!("binarypack-diff-{}.jsonl", std::process::id()));
    std::fs::write(&path, cases).unwrap();
    let out = Command::new("node")
        .arg(SCRIPT)
        .arg(&path)
        .arg((SEED as u32).to_string())
        .arg(JS_CASES.to_string())
        .output()
        .expect("node must be installed (scripts/test installs it)");
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "diff.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), RUST_CASES + JS_CASES);

    let limits = Limits::default();
    let mut failures = Vec::new();
    let mut reencoded = 0;
    for ((v, bytes), line) in rust.iter().zip(&lines) {
        let ours = hex(bytes);
        if line["js_hex"] != ours.as_str() {
            failures.push(format!(
                "encode {v:?}\n rust {ours}\n   js {}",
                line["js_hex"]
            ));
            continue;
        }
        let decoded = decode(bytes, limits).unwrap();
        if line["canon"] != canon(&decoded).as_str() {
            failures.push(format!(
                "decode {ours}\n rust {}\n   js {}",
                canon(&decoded),
                line["canon"]
            ));
        }
    }
    for line in &lines[RUST_CASES..] {
        let js_hex = line["hex"].as_str().unwrap();
        let decoded = match decode(&unhex(js_hex), limits) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("decode JS bytes {js_hex}: {e}"));
                continue;
            }
        };
        if line["canon"] != canon(&decoded).as_str() {
            failures.push(format!(
                "decode JS {js_hex}\n rust {}\n   js {}",
                canon(&decoded),
                line["canon"]
            ));
        }
        // The JS encoder does not always write back what it read: pack_double slips near
        // powers of two and on subnormals (and refuses the huge integers those become), and
        // int64s outside the double range come back rounded. Packing the value as the JS
        // decoder holds it (Rust integers as the doubles JS reads) must match byte for byte.
        let repack = line["repack"].as_str().unwrap();
        match encode(&js_view(&decoded)).map(|b| hex(&b)) {
            Ok(again) if again == repack => reencoded += 1,
            Err(_) if repack.starts_with("ERR:") => {}
            other => failures.push(format!(
                "re-encode JS {js_hex}\n rust {other:?}\n   js {repack}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ; first:\n{}",
        failures.len(),
        RUST_CASES + JS_CASES,
        failures
            .iter()
            .take(5)
            .map(|f| f.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        reencoded > JS_CASES * 3 / 4,
        "only {reencoded} JS values re-encoded"
    );
}
