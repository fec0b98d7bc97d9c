//! The dynamic BinaryPack value.

/// One BinaryPack value, as the JS codec sees it.
///
/// Integers: the decoder yields [`Value::Int`] for every integer that fits `i64` and
/// [`Value::UInt`] only above `i64::MAX`, so equal integers compare equal after a decode.
/// [`Value::Float`] is a JS number: an integral one (e.g. `3.0`) is written as an integer,
/// exactly as the JS encoder does.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// `c0`: JS `null`.
    #[default]
    Nil,
    /// JS `undefined`: read from `c1`, `c4`–`c9` and `d4`–`d7`; written as nil.
    Undefined,
    /// `c2` / `c3`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A JS number (float64, or float32 on read).
    Float(f64),
    /// A UTF-8 string (`b0`–`bf`, `d8`, `d9`).
    Str(String),
    /// Binary (`a0`–`af`, `da`, `db`): an `ArrayBuffer` / `Uint8Array` in JS.
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, in wire order (JS objects keep insertion order for non-index keys).
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries, if this is a map.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under string key `key` in a map (the last one, as a JS object keeps).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value as an integer, if it is an integral number within `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::UInt(u) => i64::try_from(u).ok(),
            // Exactly integral and strictly inside i64 (2^63 itself is not).
            Value::Float(f)
                if f.fract() == 0.0
                    && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
            {
                #[allow(clippy::cast_possible_truncation)]
                Some(f as i64)
            }
            _ => None,
        }
    }

    /// JS truthiness: false for nil, undefined, `false`, `0`, `NaN` and `""`.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Nil | Value::Undefined => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::UInt(u) => *u != 0,
            Value::Float(f) => !(*f == 0.0 || f.is_nan()),
            Value::Str(s) => !s.is_empty(),
            Value::Bin(_) | Value::Array(_) | Value::Map(_) => true,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bin(b)
    }
}
