//! BinaryPack, the PeerJS DataChannel serialization (`binary`, `binary-utf8` and the default),
//! byte-compatible with the reference JS codec (npm `peerjs-js-binarypack` 2.1.0).
//!
//! It looks like MessagePack but is not: `a0–af`/`da`/`db` are binary ("raw"), `b0–bf`/`d8`/`d9`
//! are UTF-8 strings, and there is no str8/bin8/ext. See `PEERJS.md` §2.5.
//!
//! - [`Value`] is the dynamic value; [`encode`] writes the bytes the JS encoder writes for the
//!   same JS value (smallest integer form in the JS order, integral numbers as integers, every
//!   other number as the JS encoder's float64, `undefined` as nil); [`decode`] reads bytes the
//!   way the JS decoder does, bounded by [`Limits`], and rejects what it cannot represent.
//! - [`to_vec`] / [`from_slice`] put serde types on the wire (through [`Value`]); `None`
//!   is nil, and a missing map key reads as `None`.
//! - [`chunk`] splits packed messages over 16 300 bytes into PeerJS chunk maps and reassembles
//!   them, and knows the `{"__peerData":{"type":"close"}}` control message.
//!
//! Decoding never panics and never allocates more than the input can justify: every length is
//! checked against the remaining bytes first.

pub mod chunk;
mod decode;
mod encode;
mod serde_de;
mod serde_ser;
mod value;

pub use decode::{Limits, decode};
pub use encode::encode;
pub use serde_de::{from_slice, from_slice_with, from_value};
pub use serde_ser::{to_value, to_vec};
pub use value::Value;

/// Why BinaryPack bytes could not be read or a value could not be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended inside a value.
    #[error("binarypack: input ends inside a value")]
    Truncated,
    /// Bytes were left after the top-level value.
    #[error("binarypack: {0} bytes after the value")]
    TrailingBytes(usize),
    /// A string was not UTF-8.
    #[error("binarypack: string is not UTF-8")]
    InvalidUtf8,
    /// Arrays and maps nest deeper than [`Limits::max_depth`].
    #[error("binarypack: nesting deeper than {0}")]
    TooDeep(usize),
    /// The input is larger than [`Limits::max_size`].
    #[error("binarypack: input of {0} bytes is over the limit")]
    TooLarge(usize),
    /// More values than [`Limits::max_values`].
    #[error("binarypack: more than {0} values")]
    TooManyValues(usize),
    /// A number the JS encoder refuses (an infinity, or an integer beyond ±2^64).
    #[error("binarypack: number {0} cannot be encoded")]
    Unencodable(f64),
    /// A string, binary, array or map longer than 2^32 − 1.
    #[error("binarypack: length {0} over 2^32 - 1")]
    TooLong(usize),
    /// A serde type did not match the value (from [`from_slice`] / [`to_vec`]).
    #[error("binarypack: {0}")]
    Serde(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde::{Deserialize, Serialize};

    use super::*;

    /// The knock frame captured from the Kibitz widget.
    const KNOCK: &str = "87b174b56b6e6f636bb46e616d65b3426f62b6617661746172b0b5746f6b656ed800157a6d683434627173747a77337a62656d6e796a6e70b7766f6963654964c0b36a7774c0be6167656e74417373657274696f6ec0";

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "t", rename_all = "camelCase")]
    enum Presence {
        #[serde(rename_all = "camelCase")]
        Knock {
            name: String,
            avatar: String,
            token: String,
            voice_id: Option<String>,
            jwt: Option<String>,
            agent_assertion: Option<String>,
        },
        Ping,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        New(u32),
        Tuple(i8, String),
        Struct { x: f64, b: Option<bool> },
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn none_is_nil_with_its_key_in_field_order() {
        let knock = unhex(KNOCK);
        let want = Presence::Knock {
            name: "Bob".into(),
            avatar: String::new(),
            token: "zmh44bqstzw3zbemnyjnp".into(),
            voice_id: None,
            jwt: None,
            agent_assertion: None,
        };
        assert_eq!(from_slice::<Presence>(&knock).unwrap(), want);
        assert_eq!(to_vec(&want).unwrap(), knock);
        assert_eq!(to_vec(&Presence::Ping).unwrap(), unhex("81b174b470696e67"));
    }

    #[test]
    fn missing_and_undefined_keys_read_as_none() {
        let v = Value::Map(vec![
            ("t".into(), "knock".into()),
            ("name".into(), "Eve".into()),
            ("avatar".into(), "".into()),
            ("token".into(), "x".into()),
            ("jwt".into(), Value::Undefined),
        ]);
        let Presence::Knock {
            voice_id,
            jwt,
            agent_assertion,
            ..
        } = from_slice(&encode(&v).unwrap()).unwrap()
        else {
            panic!("not a knock")
        };
        assert_eq!((voice_id, jwt, agent_assertion), (None, None, None));
    }

    #[test]
    fn serde_shapes_round_trip() {
        for s in [
            Shape::Unit,
            Shape::New(70_000),
            Shape::Tuple(-3, "é".into()),
            Shape::Struct { x: 0.25, b: None },
            Shape::Struct {
                x: 2.0,
                b: Some(true),
            },
        ] {
            assert_eq!(from_slice::<Shape>(&to_vec(&s).unwrap()).unwrap(), s);
        }
        let v = (u64::MAX, i64::MIN, vec![1u8, 2], "s".to_owned(), ());
        assert_eq!(
            from_slice::<(u64, i64, Vec<u8>, String, ())>(&to_vec(&v).unwrap()).unwrap(),
            v
        );
        let any = Value::Map(vec![
            (Value::Int(1), Value::Bin(vec![1])),
            ("k".into(), Value::Float(0.5)),
        ]);
        assert_eq!(from_slice::<Value>(&to_vec(&any).unwrap()).unwrap(), any);
    }
}
