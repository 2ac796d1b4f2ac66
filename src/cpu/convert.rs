//! Conversions between f32 and the 16-bit types, branch-free so that the kernels' loops
//! vectorize, equal bit for bit to the `half` crate's (which the reference uses through
//! [`Element`]): `half` converts f16 through a runtime-detected instruction, one element at a
//! time, which costs more than the fake-quant itself. Checked against `half` on every f16 and
//! bf16 pattern and on a sweep of f32 patterns (`tests/all/cpu_backend.rs`).

use super::InstructionSet;
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

multiversion! {
/// [`widen`] of every element of `x` into `out` (equal lengths), in a loop of its own so that it
/// vectorizes whatever the kernel that reads `out` does.
fn widen_loop<T: Element>(x: &[T], out: &mut [f32]) {
    for (x, out) in x.iter().zip(out.iter_mut()) {
        *out = widen(*x);
    }
}
}

multiversion! {
/// [`narrow`] of every element of `x` into `out` (equal lengths), in a loop of its own.
fn narrow_loop<T: Element>(x: &[f32], out: &mut [T]) {
    for (x, out) in x.iter().zip(out.iter_mut()) {
        *out = narrow::<T>(*x);
    }
}
}

/// [`widen`] of every element of `x` into `out` (equal lengths). With
/// [`InstructionSet::Avx2`] an f16 tensor is widened by the processor's `vcvtph2ps` (F16C, which
/// every AVX2 processor has), eight at a time: it is exact for every f16, subnormals included
/// (denormals-are-zero is off in Rust programs), keeps infinities, and quiets a NaN keeping its
/// sign and payload, which is [`f16_to_f32`]'s result (checked on every pattern in
/// `tests/all/cpu_backend.rs`).
pub fn widen_slice<T: Element>(isa: InstructionSet, x: &[T], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == DType::F16 && isa == InstructionSet::Avx2 && f16c::available() {
        // SAFETY: F16C and AVX2 were detected just above.
        return unsafe { f16c::widen(bytemuck::cast_slice(x), out) };
    }
    widen_loop(isa, x, out)
}

/// [`narrow`] of every element of `x` into `out` (equal lengths). With
/// [`InstructionSet::Avx2`] an f16 tensor is narrowed by `vcvtps2ph` with round-to-nearest-even
/// encoded in the instruction: correctly rounded, subnormal results included (flush-to-zero does
/// not apply to it, and is off anyway), 65520 and above to infinity, a NaN quieted with the top
/// bits of its payload: [`f32_to_f16`]'s result (checked on every f16 boundary and a sweep of f32
/// patterns).
pub fn narrow_slice<T: Element>(isa: InstructionSet, x: &[f32], out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == DType::F16 && isa == InstructionSet::Avx2 && f16c::available() {
        // SAFETY: F16C and AVX2 were detected just above.
        return unsafe { f16c::narrow(x, bytemuck::cast_slice_mut(out)) };
    }
    narrow_loop(isa, x, out)
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::{
        __m128i, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_storeu_ps,
        _mm_loadu_si128, _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT,
    };

    /// Whether this processor has F16C and AVX2.
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx2")
    }

    /// f16 bits to f32, eight per instruction; the tail through [`super::f16_to_f32`].
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen(x: &[u16], out: &mut [f32]) {
        let n = x.len().min(out.len());
        let (x, out) = (&x[..n], &mut out[..n]);
        let mut blocks = x.chunks_exact(8).zip(out.chunks_exact_mut(8));
        for (h, f) in &mut blocks {
            // SAFETY: `h` holds 8 u16 (16 bytes) and `f` 8 f32; both unaligned accesses.
            unsafe {
                let halves = _mm_loadu_si128(h.as_ptr().cast::<__m128i>());
                _mm256_storeu_ps(f.as_mut_ptr(), _mm256_cvtph_ps(halves));
            }
        }
        let done = n - n % 8;
        for (h, f) in x[done..].iter().zip(&mut out[done..]) {
            *f = super::f16_to_f32(*h);
        }
    }

    /// f32 to f16 bits, eight per instruction, rounding to nearest even; the tail through
    /// [`super::f32_to_f16`].
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn narrow(x: &[f32], out: &mut [u16]) {
        let n = x.len().min(out.len());
        let (x, out) = (&x[..n], &mut out[..n]);
        let mut blocks = x.chunks_exact(8).zip(out.chunks_exact_mut(8));
        for (f, h) in &mut blocks {
            // SAFETY: `f` holds 8 f32 and `h` 8 u16 (16 bytes); both unaligned accesses.
            unsafe {
                let wide = _mm256_loadu_ps(f.as_ptr());
                let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(wide);
                _mm_storeu_si128(h.as_mut_ptr().cast::<__m128i>(), halves);
            }
        }
        let done = n - n % 8;
        for (f, h) in x[done..].iter().zip(&mut out[done..]) {
            *h = super::f32_to_f16(*f);
        }
    }
}
