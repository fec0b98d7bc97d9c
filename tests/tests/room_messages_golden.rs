//! Room messages against the frames the real Kibitz widget sent
//! (`binarypack/kibitz-presence-frames.json`): every captured BinaryPack frame decodes into the
//! kibitz-proto room types (presence both directions, content envelopes) and encodes back to
//! the same value — byte for byte where the JS sent no nil fields. JS writes `undefined` fields
//! as nil and the types read nil as absent and omit absent fields, so the value comparison
//! drops nil map entries first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kibitz_proto::binarypack::{self, Limits, Value, decode};
use kibitz_proto::content::Content;
use kibitz_proto::mesh::MeshFrame;
use kibitz_proto::presence::{AuthorityWire, ClientWire, Wire, feature};

const FIXTURES: &str = include_str!("../binarypack/kibitz-presence-frames.json");

/// The value with every nil (or undefined) map entry removed, recursively.
fn without_nils(v: Value) -> Value {
    match v {
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .filter(|(_, v)| !matches!(v, Value::Nil | Value::Undefined))
                .map(|(k, v)| (k, without_nils(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nils).collect()),
        other => other,
    }
}

struct Frame {
    from: String,
    plane: String,
    bytes: Vec<u8>,
    has_nils: bool,
}

fn frames() -> Vec<Frame> {
    let doc: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
    doc["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let bytes = kibitz_e2e::base64(f["bytes_b64"].as_str().unwrap());
            let has_nils = f["decoded"]
                .as_object()
                .unwrap()
                .values()
                .any(|v| v.is_null());
            Frame {
                from: f["from"].as_str().unwrap().to_owned(),
                plane: f["plane"].as_str().unwrap().to_owned(),
                bytes,
                has_nils,
            }
        })
        .collect()
}

/// Decodes a frame as the given type, checks it is known, and re-encodes it to the same value.
/// (A macro, so this crate needs no direct serde dependency for the trait bounds.)
macro_rules! round_trip {
    ($t:ty, $frame:expr) => {{
        let frame: &Frame = $frame;
        let wire: Wire<$t> = binarypack::from_slice(&frame.bytes).unwrap();
        let Wire::Known(known) = wire else {
            panic!("{} frame not recognised: {wire:?}", frame.from)
        };
        let original = without_nils(decode(&frame.bytes, Limits::default()).unwrap());
        assert_eq!(binarypack::to_value(&known).unwrap(), original);
        if !frame.has_nils {
            assert_eq!(binarypack::to_vec(&known).unwrap(), frame.bytes);
        }
        known
    }};
}

#[test]
fn every_captured_frame_reads_and_writes_back() {
    let frames = frames();
    assert_eq!(frames.len(), 6);
    let (mut rosters, mut knocks, mut voices, mut pings, mut apps) = (0, 0, 0, 0, 0);
    for frame in &frames {
        match (frame.plane.as_str(), frame.from.as_str()) {
            ("presence", "authority") => match round_trip!(AuthorityWire, frame) {
                AuthorityWire::Roster(r) => {
                    rosters += 1;
                    assert!(!r.members.is_empty());
                    assert_eq!(r.lobby, Some(false));
                    assert!(r.host().is_some());
                    let kbz = r.members[0].meta.as_ref().unwrap().kbz.as_ref().unwrap();
                    assert_eq!(kbz.v.as_deref(), Some("0.1.0"));
                    assert_eq!(kbz.protocol(), 1);
                    assert!(kbz.has_feature(feature::CAPS_V1));
                }
                AuthorityWire::Ping => pings += 1,
                other => panic!("unexpected {other:?}"),
            },
            ("presence", "participant") => match round_trip!(ClientWire, frame) {
                ClientWire::Knock(k) => {
                    knocks += 1;
                    assert_eq!(k.name, "Bob");
                    assert_eq!(k.voice_id, None);
                    assert_eq!(k.jwt, None);
                }
                ClientWire::Voice(v) => {
                    voices += 1;
                    assert!(v.on && !v.cam);
                    assert!(v.voice_id.is_some() && v.token.is_some());
                    assert_eq!(v.agent_assertion, None);
                }
                other => panic!("unexpected {other:?}"),
            },
            ("data-mesh", _) => {
                let content = round_trip!(Content, frame);
                assert!(matches!(content, Content::App { .. }));
                let mesh: MeshFrame = binarypack::from_slice(&frame.bytes).unwrap();
                assert!(matches!(mesh, MeshFrame::Content(Content::App { .. })));
                apps += 1;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!((rosters, knocks, voices, pings, apps), (2, 1, 1, 1, 1));
}

#[test]
fn unknown_frames_are_kept_over_binarypack() {
    let frame = Value::Map(vec![
        (Value::Str("t".into()), Value::Str("future".into())),
        (Value::Str("n".into()), Value::Int(3)),
        (Value::Str("blob".into()), Value::Bin(vec![0, 1, 2])),
    ]);
    let bytes = binarypack::encode(&frame).unwrap();
    let wire: Wire<ClientWire> = binarypack::from_slice(&bytes).unwrap();
    assert_eq!(wire, Wire::Unknown(frame.clone()));
    // Key order and integer encoding survive: the same bytes go back out.
    assert_eq!(binarypack::to_vec(&wire).unwrap(), bytes);

    // App payloads keep binary too.
    let app = Value::Map(vec![
        (Value::Str("k".into()), Value::Str("app".into())),
        (Value::Str("data".into()), Value::Bin(vec![9; 20])),
    ]);
    let bytes = binarypack::encode(&app).unwrap();
    let mesh: MeshFrame = binarypack::from_slice(&bytes).unwrap();
    let MeshFrame::Content(Content::App { data }) = &mesh else {
        panic!("{mesh:?}")
    };
    assert_eq!(data, &Value::Bin(vec![9; 20]));
    assert_eq!(binarypack::to_vec(&mesh).unwrap(), bytes);
}
