//! BinaryPack against the bytes the real JS wrote: the PEERJS.md §2.5 vectors, the frames
//! captured from the Kibitz widget (`binarypack/kibitz-presence-frames.json`), the JS
//! encoder's number quirks, chunking and the close message, and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The reassembler takes time as an argument; any instant serves as the test epoch.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use kibitz_proto::binarypack::chunk::{CLOSE, Chunker, Frame, Reassembler, Received, classify};
use kibitz_proto::binarypack::{self, Error, Limits, Value, decode, encode, from_slice};

const FIXTURES: &str = include_str!("../binarypack/kibitz-presence-frames.json");

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn s(x: &str) -> Value {
    Value::Str(x.into())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

fn dec(b: &[u8]) -> Result<Value, Error> {
    decode(b, Limits::default())
}

#[test]
fn spec_vectors() {
    assert_eq!(hex(&encode(&s("hi")).unwrap()), "b26869");
    let big = map(vec![
        ("hello", s("world")),
        ("n", Value::Int(1)),
        ("neg", Value::Int(-5)),
        ("big", Value::Int(70000)),
        ("f", Value::Float(2.5)),
        ("t", Value::Bool(true)),
        ("nul", Value::Nil),
        ("arr", Value::Array(vec![Value::Int(1), s("x")])),
        ("bin", Value::Bin(vec![1, 2, 3])),
    ]);
    let want = "89b568656c6c6fb5776f726c64b16e01b36e6567fbb3626967ce00011170b166cb4004000000000000b174c3b36e756cc0b36172729201b178b362696ea3010203";
    assert_eq!(hex(&encode(&big).unwrap()), want);
    assert_eq!(dec(&unhex(want)).unwrap(), big);
}

#[test]
fn captured_frames_decode_to_the_recorded_values_and_reencode_identically() {
    let doc: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
    let frames = doc["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 6);
    for frame in frames {
        let bytes = kibitz_e2e::base64(frame["bytes_b64"].as_str().unwrap());
        let value = dec(&bytes).unwrap();
        assert_eq!(
            serde_json::to_value(&value).unwrap(),
            frame["decoded"],
            "{frame}"
        );
        // The same through serde into a dynamic JSON value.
        let json: serde_json::Value = from_slice(&bytes).unwrap();
        assert_eq!(json, frame["decoded"]);
        if frame["reencodes_identically"] == true {
            assert_eq!(hex(&encode(&value).unwrap()), hex(&bytes), "{frame}");
        }
    }
}

#[test]
fn numbers_follow_the_js_encoder() {
    let e = |v: Value| hex(&encode(&v).unwrap());
    let f = |x: f64| e(Value::Float(x));
    // Integral numbers are integers, smallest form in the JS order.
    assert_eq!(f(3.0), "03");
    assert_eq!(f(-0.0), "00");
    assert_eq!(f(-32.0), "e0");
    assert_eq!(f(-33.0), "d0df");
    assert_eq!(f(200.0), "ccc8");
    assert_eq!(f(-200.0), "d1ff38");
    assert_eq!(f(65536.0), "ce00010000");
    assert_eq!(f(-40000.0), "d2ffff63c0");
    assert_eq!(f(4294967296.0), "d30000000100000000");
    // 0x7fffffffffffffff is 2^63 as a double, so 2^63 takes int64 (and JS reads it as -2^63).
    assert_eq!(f(9_223_372_036_854_775_808.0), "d38000000000000000");
    assert_eq!(f(18_446_744_073_709_551_616.0), "cf0000000000000000");
    assert_eq!(f(0.1), "cb3fb999999999999a");
    assert_eq!(f(-1.5), "cbbff8000000000000");
    // pack_double's own arithmetic: NaN, subnormals.
    assert_eq!(f(f64::NAN), "cb0000000000000000");
    assert_eq!(f(5e-324), "cbfcd0000000000000");
    assert_eq!(f(1e-310), "cbff92688b70e62b00");
    assert!(matches!(
        encode(&Value::Float(f64::INFINITY)),
        Err(Error::Unencodable(_))
    ));
    assert!(encode(&Value::Float(4e19)).is_err());
    // Rust integers are exact; only a JS number 2^63 takes the int64 quirk.
    assert_eq!(e(Value::UInt(1 << 63)), "cf8000000000000000");
    assert_eq!(e(Value::Int(i64::MIN)), "d38000000000000000");
    assert_eq!(e(Value::Int(-4294967297)), "d3fffffffeffffffff");
    assert_eq!(
        dec(&unhex("d3fffffffeffffffff")).unwrap(),
        Value::Int(-4294967297)
    );
    assert_eq!(
        dec(&unhex("cfffffffffffffffff")).unwrap(),
        Value::UInt(u64::MAX)
    );
    // The JS decoder's float formula: all-zero bits are 2^-1023, not 0.
    assert_eq!(
        dec(&unhex("cb0000000000000000")).unwrap(),
        Value::Float(1.1125369292536007e-308)
    );
    assert_eq!(dec(&unhex("ca3fc00000")).unwrap(), Value::Float(1.5));
    assert_eq!(e(Value::Undefined), "c0");
    for b in [0xc1u8, 0xc4, 0xc9, 0xd4, 0xd7] {
        assert_eq!(dec(&[b]).unwrap(), Value::Undefined);
    }
}

#[test]
fn strings_and_binary_forms() {
    let e = |v: Value| hex(&encode(&v).unwrap());
    assert_eq!(e(s("")), "b0");
    assert_eq!(&e(s(&"x".repeat(15)))[..2], "bf");
    assert_eq!(&e(s(&"x".repeat(16)))[..6], "d80010");
    assert_eq!(&e(s(&"é".repeat(8)))[..6], "d80010", "sized by UTF-8 bytes");
    assert_eq!(&e(s(&"x".repeat(70000)))[..10], "d900011170");
    assert_eq!(&e(Value::Bin(vec![0; 16]))[..6], "da0010");
    assert_eq!(&e(Value::Bin(vec![0; 70000]))[..10], "db00011170");
    assert_eq!(&e(Value::Array(vec![Value::Nil; 16]))[..6], "dc0010");
    let m = Value::Map((0..16).map(|i| (Value::Int(i), Value::Nil)).collect());
    assert_eq!(&e(m.clone())[..6], "de0010");
    assert_eq!(dec(&encode(&m).unwrap()).unwrap(), m);
}

#[test]
fn chunking_matches_the_observed_frames() {
    let packed = encode(&Value::Bin(vec![7; 40_000])).unwrap();
    let mut chunker = Chunker::new();
    let frames = chunker.split(packed.clone());
    let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
    assert_eq!(sizes, [16331, 16331, 7434]);
    let prefix = "84ba5f5f706565724461746101b16e00b464617461da3facda9c40";
    assert_eq!(hex(&frames[0][..prefix.len() / 2]), prefix);
    // The counter is per chunker (per connection) and only counts chunked messages.
    assert_eq!(chunker.split(vec![0xc0]), vec![vec![0xc0]]);
    assert_eq!(classify(dec(&chunker.split(packed.clone())[0]).unwrap()), {
        let Frame::Chunk { n, total, data, .. } = classify(dec(&frames[0]).unwrap()) else {
            panic!()
        };
        Frame::Chunk {
            id: Value::Int(2),
            n,
            total,
            data,
        }
    });

    let t0 = Instant::now();
    let mut r = Reassembler::new(Limits::default(), 1 << 20, Duration::from_secs(10));
    // Out of order is fine.
    assert_eq!(r.receive(t0, &frames[2]).unwrap(), Received::Pending);
    assert_eq!(r.receive(t0, &frames[0]).unwrap(), Received::Pending);
    assert!((16300 + 7403..16300 + 7403 + 500).contains(&r.pending_bytes()));
    assert_eq!(
        r.receive(t0, &frames[1]).unwrap(),
        Received::Data(Value::Bin(vec![7; 40_000]))
    );
    assert_eq!(r.pending_bytes(), 0);

    // Timeout drops a partial message.
    assert_eq!(r.receive(t0, &frames[0]).unwrap(), Received::Pending);
    assert_eq!(r.next_timeout(), Some(t0 + Duration::from_secs(10)));
    assert_eq!(r.expire(t0 + Duration::from_secs(10)), 1);
    assert_eq!(r.pending_bytes(), 0);
    // A repeated slice drops the message.
    assert_eq!(r.receive(t0, &frames[0]).unwrap(), Received::Pending);
    assert!(r.receive(t0, &frames[0]).is_err());
    assert_eq!(r.pending_bytes(), 0);

    // The byte cap.
    let mut small = Reassembler::new(Limits::default(), 20_000, Duration::from_secs(10));
    assert_eq!(small.receive(t0, &frames[0]).unwrap(), Received::Pending);
    assert!(small.receive(t0, &frames[1]).is_err());
    assert_eq!(small.pending_bytes(), 0);

    // Empty slices count too, and only so many messages are collected at once.
    let empty = |id: i64| {
        encode(&map(vec![
            ("__peerData", Value::Int(id)),
            ("n", Value::Int(0)),
            ("data", Value::Bin(vec![])),
            ("total", Value::Int(1000)),
        ]))
        .unwrap()
    };
    let mut many = Reassembler::new(Limits::default(), 1 << 30, Duration::from_secs(10));
    let held = (1..=1000)
        .filter(|&id| many.receive(t0, &empty(id)).is_ok())
        .count();
    assert_eq!(held, kibitz_proto::binarypack::chunk::MAX_PENDING_MESSAGES);
    assert!(many.pending_bytes() > 0);
}

#[test]
fn close_and_control_messages_are_not_user_data() {
    assert_eq!(
        hex(CLOSE),
        "81ba5f5f706565724461746181b474797065b5636c6f7365"
    );
    let close = map(vec![("__peerData", map(vec![("type", s("close"))]))]);
    assert_eq!(encode(&close).unwrap(), CLOSE);
    let mut r = Reassembler::new(Limits::default(), 1 << 20, Duration::from_secs(10));
    let now = Instant::now();
    assert_eq!(r.receive(now, CLOSE).unwrap(), Received::Close);
    let other = encode(&map(vec![("__peerData", s("x")), ("a", Value::Int(1))])).unwrap();
    assert!(matches!(
        r.receive(now, &other).unwrap(),
        Received::Control(_)
    ));
    // Falsy __peerData is user data.
    for falsy in [Value::Int(0), s(""), Value::Nil, Value::Bool(false)] {
        let v = map(vec![("__peerData", falsy)]);
        assert_eq!(
            r.receive(now, &encode(&v).unwrap()).unwrap(),
            Received::Data(v)
        );
    }
}

#[test]
fn hostile_input_is_an_error() {
    let limits = Limits {
        max_size: 1 << 20,
        max_depth: 32,
        max_values: 10_000,
    };
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "empty"),
        (vec![0x91], "truncated array"),
        (unhex("ddffffffff"), "array32 claims 4G items"),
        (unhex("dfffffffff"), "map32 claims 4G entries"),
        (unhex("dbffffffff00"), "raw32 claims 4 GiB"),
        (unhex("d9ffffffff"), "str32 claims 4 GiB"),
        (unhex("cb0000"), "short float"),
        (unhex("b2c328"), "invalid UTF-8"),
        (unhex("c0c0"), "trailing bytes"),
        (vec![0x91; 1000], "depth bomb"),
        (
            vec![0xdc, 0x40, 0x00]
                .into_iter()
                .chain([0x90; 0x4000])
                .collect(),
            "too many values",
        ),
    ];
    for (bytes, why) in bad {
        assert!(decode(&bytes, limits).is_err(), "{why}");
    }
    assert_eq!(
        decode(
            &[0xc0; 10],
            Limits {
                max_size: 4,
                ..limits
            }
        ),
        Err(Error::TooLarge(10))
    );
    assert!(
        binarypack::from_slice::<u8>(&[0xcd, 0x01, 0x00]).is_err(),
        "256 is no u8"
    );
}
