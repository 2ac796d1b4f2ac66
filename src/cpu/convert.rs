//! Conversions between f32 and the 16-bit types, branch-free so that the kernels' loops
//! vectorize, equal bit for bit to the `half` crate's (which the reference uses through
//! [`Element`]): `half` converts f16 through a runtime-detected instruction, one element at a
//! time, which costs more than the fake-quant itself. Checked against `half` on every f16 and
//! bf16 pattern and on a sweep of f32 patterns (`tests/all/cpu_backend.rs`).

use crate::dtype::{DType, Element};

/// 2^112: scales an f16's bits placed in an f32's (exponent bias 15 read as 127) to its value.
const F16_REBIAS: f32 = f32::from_bits((127 + 112) << 23);

/// f16 bits to f32, exactly: finite values (subnormals included) through one exact
/// multiplication of the re-placed bits by 2^112; infinities kept, NaNs quieted with their
/// payload (as `half`).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff;
    let mantissa = h & 0x03ff;
    let finite = (f32::from_bits(magnitude << 13) * F16_REBIAS).to_bits();
    let quiet = if mantissa != 0 { 0x0040_0000 } else { 0 };
    let special = 0x7f80_0000 | (mantissa << 13) | quiet;
    f32::from_bits(sign | if magnitude >= 0x7c00 { special } else { finite })
}

/// f32 to f16 bits, rounding to nearest even: normal results by integer rounding of the
/// re-biased bits (a carry into the exponent rounds up to the next binade or to infinity);
/// subnormal results by one f32 addition of 0.5, whose spacing there is the f16 subnormal
/// spacing 2^-24; 2^16 and above saturate to infinity; NaNs quieted with the payload's top bits
/// (as `half`).
#[inline(always)]
pub fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let magnitude = bits & 0x7fff_ffff;
    let nan = 0x7e00 | ((magnitude & 0x007f_ffff) >> 13);
    let odd = (magnitude >> 13) & 1;
    let normal = magnitude.wrapping_sub(112 << 23).wrapping_add(0x0fff + odd) >> 13;
    let half = f32::from_bits(126 << 23);
    let subnormal = (f32::from_bits(magnitude) + half).to_bits() - half.to_bits();
    let finite = if magnitude < (113 << 23) {
        subnormal
    } else {
        normal
    };
    let result = if magnitude > 0x7f80_0000 {
        nan
    } else if magnitude >= (143 << 23) {
        0x7c00
    } else {
        finite
    };
    (sign | result) as u16
}

/// bf16 bits to f32: the upper half; NaNs quieted (as `half`).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let quiet = if h & 0x7fff > 0x7f80 { 0x0040 } else { 0 };
    f32::from_bits((h | quiet) << 16)
}

/// f32 to bf16 bits, rounding to nearest even by integer rounding of the bits; NaNs quieted
/// with the payload's top bits (as `half`).
#[inline(always)]
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x0040;
    (if bits & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

/// [`Element::to_f32`] through the conversions above (the type is known at compile time, so
/// the match folds away).
#[inline(always)]
pub fn widen<T: Element>(v: T) -> f32 {
    match T::DTYPE {
        DType::F16 => f16_to_f32(v.to_bits_u32() as u16),
        DType::Bf16 => bf16_to_f32(v.to_bits_u32() as u16),
        DType::F32 => v.to_f32(),
    }
}

/// [`Element::from_f32`] through the conversions above.
#[inline(always)]
pub fn narrow<T: Element>(v: f32) -> T {
    let bits = match T::DTYPE {
        DType::F16 => f32_to_f16(v),
        DType::Bf16 => f32_to_bf16(v),
        DType::F32 => return T::from_f32(v),
    };
    // The 16-bit types are exactly `u16` in size; `try_cast` cannot fail for them.
    bytemuck::try_cast(bits).unwrap_or_else(|_| T::from_f32(v))
}
