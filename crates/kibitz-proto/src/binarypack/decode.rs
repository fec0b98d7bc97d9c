//! The bounded decoder.

use super::encode::js_pow2;
use super::{Error, Value};

/// Bounds on what [`decode`] accepts. Memory use is O(`max_size` + 32·`max_values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input accepted, in bytes.
    pub max_size: usize,
    /// Deepest nesting of arrays and maps (the top-level value is depth 0).
    pub max_depth: usize,
    /// Most values (array items, map keys and values, counted at every level).
    pub max_values: usize,
}

impl Default for Limits {
    /// 16 MiB, depth 64, one million values.
    fn default() -> Self {
        Limits {
            max_size: 16 << 20,
            max_depth: 64,
            max_values: 1 << 20,
        }
    }
}

/// Reads one BinaryPack value that fills all of `bytes`.
///
/// Reads as the JS decoder does, with these differences, all on input the JS encoder never
/// writes: truncated input, trailing bytes and non-UTF-8 strings are errors (JS pads with
/// zeros, ignores the rest, and decodes loosely); 64-bit integers are exact (JS rounds them to
/// doubles); map entries are all kept in wire order (a JS object keeps one per key).
/// Floats are read with the JS arithmetic, so `cb 00…00` is `2^-1023`, as JS reads it.
pub fn decode(bytes: &[u8], limits: Limits) -> Result<Value, Error> {
    if bytes.len() > limits.max_size {
        return Err(Error::TooLarge(bytes.len()));
    }
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        values: 0,
        limits,
    };
    let v = r.value(0)?;
    match bytes.len() - r.pos {
        0 => Ok(v),
        n => Err(Error::TrailingBytes(n)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    values: usize,
    limits: Limits,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let out = rest.get(..n).ok_or(Error::Truncated)?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    fn len16(&mut self) -> Result<usize, Error> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn len32(&mut self) -> Result<usize, Error> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| Error::Truncated)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Accounts for `count` nested values, each at least one byte long.
    fn reserve(&mut self, count: usize, depth: usize) -> Result<(), Error> {
        if depth >= self.limits.max_depth {
            return Err(Error::TooDeep(self.limits.max_depth));
        }
        if count > self.remaining() {
            return Err(Error::Truncated);
        }
        self.values = self.values.saturating_add(count);
        if self.values > self.limits.max_values {
            return Err(Error::TooManyValues(self.limits.max_values));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        let tag = self.u8()?;
        let v = match tag {
            0x00..=0x7f => Value::Int(i64::from(tag)),
            0xe0..=0xff => Value::Int(i64::from(i8::from_be_bytes([tag]))),
            0xa0..=0xaf => self.bin(usize::from(tag & 0x0f))?,
            0xb0..=0xbf => self.str(usize::from(tag & 0x0f))?,
            0x90..=0x9f => self.seq(usize::from(tag & 0x0f), depth)?,
            0x80..=0x8f => self.map(usize::from(tag & 0x0f), depth)?,
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xca => Value::Float(js_float32(u32::from_be_bytes(self.array()?))),
            0xcb => {
                let h = u32::from_be_bytes(self.array()?);
                let l = u32::from_be_bytes(self.array()?);
                Value::Float(js_float64(h, l))
            }
            0xcc => Value::Int(i64::from(self.u8()?)),
            0xcd => Value::Int(i64::from(u16::from_be_bytes(self.array()?))),
            0xce => Value::Int(i64::from(u32::from_be_bytes(self.array()?))),
            0xcf => {
                let u = u64::from_be_bytes(self.array()?);
                i64::try_from(u).map_or(Value::UInt(u), Value::Int)
            }
            0xd0 => Value::Int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.array()?)),
            0xd8 => {
                let n = self.len16()?;
                self.str(n)?
            }
            0xd9 => {
                let n = self.len32()?;
                self.str(n)?
            }
            0xda => {
                let n = self.len16()?;
                self.bin(n)?
            }
            0xdb => {
                let n = self.len32()?;
                self.bin(n)?
            }
            0xdc => {
                let n = self.len16()?;
                self.seq(n, depth)?
            }
            0xdd => {
                let n = self.len32()?;
                self.seq(n, depth)?
            }
            0xde => {
                let n = self.len16()?;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.len32()?;
                self.map(n, depth)?
            }
            // c1, d4–d7 and the unassigned c4–c9: the JS decoder returns `undefined` and
            // reads nothing more.
            0xc1 | 0xc4..=0xc9 | 0xd4..=0xd7 => Value::Undefined,
        };
        Ok(v)
    }

    fn bin(&mut self, n: usize) -> Result<Value, Error> {
        Ok(Value::Bin(self.take(n)?.to_vec()))
    }

    fn str(&mut self, n: usize) -> Result<Value, Error> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8)?;
        Ok(Value::Str(s.to_owned()))
    }

    fn seq(&mut self, n: usize, depth: usize) -> Result<Value, Error> {
        self.reserve(n, depth)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, Error> {
        self.reserve(n.saturating_mul(2), depth)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

/// JS `unpack_float`: `±fraction · 2^(exp − 23)` with the implicit bit always set.
fn js_float32(u: u32) -> f64 {
    let sign = if u >> 31 == 0 { 1.0 } else { -1.0 };
    let exp = f64::from((u >> 23) & 0xff) - 127.0;
    let fraction = f64::from((u & 0x007f_ffff) | 0x0080_0000);
    sign * fraction * js_pow2(exp - 23.0)
}

/// JS `unpack_double`: exact for normal numbers; zero, subnormal, infinite and NaN bit
/// patterns read as the JS formula makes them (e.g. all-zero bits are 2^-1023).
fn js_float64(h: u32, l: u32) -> f64 {
    let sign = if h >> 31 == 0 { 1.0 } else { -1.0 };
    let exp = f64::from((h >> 20) & 0x7ff) - 1023.0;
    let hfrac = f64::from((h & 0x000f_ffff) | 0x0010_0000);
    let frac = hfrac * js_pow2(exp - 20.0) + f64::from(l) * js_pow2(exp - 52.0);
    sign * frac
}
