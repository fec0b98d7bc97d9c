//! The encoder: the JS `Packer`'s choices, byte for byte.

use super::{Error, Value};

const TWO_32: f64 = 4_294_967_296.0;
const TWO_52: f64 = 4_503_599_627_370_496.0;
const TWO_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

/// Packs `value` into the bytes the JS encoder writes for the same JS value.
///
/// Fails only where the JS encoder throws (an infinite number, an integral number beyond
/// ±2^64) or a length exceeds 2^32 − 1.
pub fn encode(value: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    write(&mut out, value)?;
    Ok(out)
}

pub(crate) fn write(out: &mut Vec<u8>, value: &Value) -> Result<(), Error> {
    match value {
        Value::Nil | Value::Undefined => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => write_integer(out, i128::from(*i), false),
        Value::UInt(u) => write_integer(out, i128::from(*u), false),
        Value::Float(f) => write_number(out, *f)?,
        Value::Str(s) => {
            write_len(out, s.len(), [0xb0, 0xd8, 0xd9])?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => {
            write_len(out, b.len(), [0xa0, 0xda, 0xdb])?;
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            write_len(out, items.len(), [0x90, 0xdc, 0xdd])?;
            for item in items {
                write(out, item)?;
            }
        }
        Value::Map(entries) => {
            write_len(out, entries.len(), [0x80, 0xde, 0xdf])?;
            for (k, v) in entries {
                write(out, k)?;
                write(out, v)?;
            }
        }
    }
    Ok(())
}

/// `[fix base, 16-bit tag, 32-bit tag]`; the fix form holds lengths 0–15.
fn write_len(out: &mut Vec<u8>, len: usize, tags: [u8; 3]) -> Result<(), Error> {
    if let Ok(small) = u8::try_from(len)
        && small <= 0x0f
    {
        out.push(tags[0] + small);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(tags[1]);
        out.extend_from_slice(&l.to_be_bytes());
    } else if let Ok(l) = u32::try_from(len) {
        out.push(tags[2]);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        return Err(Error::TooLong(len));
    }
    Ok(())
}

/// JS `pack_integer`: the first form whose range holds `i`, in the JS order. `js_number`
/// widens the int64 range to 2^63 (JS compares against `0x7fffffffffffffff`, which is 2^63
/// as a double) and the uint64 range to 2^64; the bytes are then `i` modulo 2^64, as the
/// JS bit operations produce.
fn write_integer(out: &mut Vec<u8>, i: i128, js_number: bool) {
    let int64_max = if js_number {
        1i128 << 63
    } else {
        i128::from(i64::MAX)
    };
    if (-0x20..=0x7f).contains(&i) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        out.push(i as u8);
    } else if let Ok(v) = u8::try_from(i) {
        out.extend_from_slice(&[0xcc, v]);
    } else if let Ok(v) = i8::try_from(i) {
        out.push(0xd0);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u16::try_from(i) {
        out.push(0xcd);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = i16::try_from(i) {
        out.push(0xd1);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(i) {
        out.push(0xce);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = i32::try_from(i) {
        out.push(0xd2);
        out.extend_from_slice(&v.to_be_bytes());
    } else if (i128::from(i64::MIN)..=int64_max).contains(&i) {
        out.push(0xd3);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        out.extend_from_slice(&(i as u64).to_be_bytes());
    } else {
        // Callers pass only values within 0..=2^64 here (u64, or a checked JS number).
        out.push(0xcf);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        out.extend_from_slice(&(i as u64).to_be_bytes());
    }
}

/// JS `pack`'s number branch: `Math.floor(v) === v` → integer, else `pack_double`.
fn write_number(out: &mut Vec<u8>, f: f64) -> Result<(), Error> {
    if f.floor() == f {
        // Integral, or an infinity (which JS `pack_integer` throws on).
        if !(-TWO_63..=TWO_64).contains(&f) {
            return Err(Error::Unencodable(f));
        }
        // Exact: f is integral and within ±2^64. -0 becomes 0, as `-0 & 0xff` does.
        #[allow(clippy::cast_possible_truncation)]
        write_integer(out, f as i128, true);
    } else {
        write_js_double(out, f);
    }
    Ok(())
}

/// JS `pack_double`, including its arithmetic: the exponent comes from
/// `Math.floor(Math.log(num) / Math.LN2)` (fdlibm `log`, which V8 uses and `libm` ports), so
/// values a hair below a power of two, subnormals and NaN come out as the JS encoder writes
/// them (NaN becomes `cb 00…00`), not as IEEE bits.
fn write_js_double(out: &mut Vec<u8>, f: f64) {
    let mut num = f;
    let mut sign = 0i32;
    if num < 0.0 {
        sign = 1;
        num = -num;
    }
    let exp = (libm::log(num) / std::f64::consts::LN_2).floor();
    let frac0 = num / js_pow2(exp) - 1.0;
    let frac1 = (frac0 * TWO_52).floor();
    let h32 = sign.wrapping_shl(31)
        | to_int32(exp + 1023.0).wrapping_shl(20)
        | (to_int32(frac1 / TWO_32) & 0x000f_ffff);
    let l32 = frac1 % TWO_32;
    out.push(0xcb);
    out.extend_from_slice(&h32.to_be_bytes());
    out.extend_from_slice(&to_int32(l32).to_be_bytes());
}

/// ECMAScript ToInt32: NaN and infinities are 0, otherwise truncate and wrap modulo 2^32.
fn to_int32(x: f64) -> i32 {
    if !x.is_finite() {
        return 0;
    }
    let mut r = x.trunc() % TWO_32;
    if r < 0.0 {
        r += TWO_32;
    }
    // r is an integer in 0..2^32.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let u = r as u32;
    i32::from_ne_bytes(u.to_ne_bytes())
}

/// `2 ** e` for an integral or NaN `e`, correctly rounded (exact powers, 0 below 2^-1074).
pub(crate) fn js_pow2(e: f64) -> f64 {
    if e.is_nan() {
        return f64::NAN;
    }
    if e > 1023.0 {
        return f64::INFINITY;
    }
    if e >= -1022.0 {
        // Normal range: the biased exponent alone.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return f64::from_bits(((e + 1023.0) as u64) << 52);
    }
    if e >= -1074.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return f64::from_bits(1u64 << ((e + 1074.0) as u32));
    }
    0.0
}
