//! The fake-quantization of a block whose elements share one channel's constants (every block
//! of a per-tensor op, and of a per-channel op whose channels are longer than a block), written
//! with AVX2 and F16C intrinsics: the element's conversion from and to its 16-bit type, the
//! fake-quant and the mask bit in one pass over registers, 32 elements (one mask word) at a time.
//!
//! The portable loop of [`super::elementwise`] gets the same bits with about three times the
//! instructions: it bounds the quotient and rounds it with an addition and a subtraction
//! (baseline x86-64 has no rounding instruction), selects NaNs explicitly, stores each mask flag
//! as a 32-bit lane to pack later, and stages f16 through f32 buffers. One thread, 16K elements
//! in cache, in one sitting: f32 0.31-0.33 ns an element there, 0.19-0.20 here; f16 0.42-0.47
//! there, 0.24-0.28 here; bf16 0.67-0.70 there, 0.34-0.39 here.
//!
//! Why each step gives [`crate::reference::fake_quant_value`]'s bits, for an element `x`
//! (widened exactly), the channel's `1/s` (or `s` for [`crate::Rounding::Quotient`]) and its
//! integer bounds `lo = qmin - zp`, `hi = qmax - zp` (exact f32 values, see
//! [`super::elementwise`]):
//! - `q = x * (1/s)` (or `x / s`): the reference's single IEEE operation; intrinsics are never
//!   contracted with what follows;
//! - `vroundps` with round-to-nearest-even in its immediate (whatever MXCSR says): the
//!   reference's `round_ties_even`, exactly, for every f32; adding `+0.0` turns a `-0.0` (from
//!   `x` in `(-s/2, 0]`) into the reference's integer zero `+0.0` and changes nothing else;
//! - `min(hi, max(lo, r))` is `clamp(r + zp, qmin, qmax) - zp`, exact, and the element is in
//!   range exactly when that equals `r` (`vcmpeqps`); infinities clamp to a bound, unequal;
//! - `clamped * s`: the reference's single rounding;
//! - a NaN: `vmaxps`/`vminps` return their second operand when one is NaN, so with the bounds
//!   first the NaN passes through; every operation on a NaN returns it quieted with its sign and
//!   payload (Intel SDM vol. 1, 4.8.3.5, the same on AMD), so `y` is the reference's quieted
//!   `x`; the ordered comparison is false, so a NaN is out of range, as in the reference.
//!   (For bf16 the quieting happens in the first multiplication instead of at the load: the
//!   same bits, quieting being idempotent.)
//!
//! Conversions: f16 through F16C (`vcvtph2ps` exact; `vcvtps2ph` with round-to-nearest-even in
//! its immediate, which is [`super::convert::f32_to_f16`], checked on every pattern in
//! `tests/all/cpu_backend.rs`); bf16 widened by a shift and narrowed by
//! [`super::convert::f32_to_bf16`]'s integer rounding, vectorized.

use std::arch::x86_64::{
    __m128i, __m256, __m256i, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256,
    _mm256_castps_si256, _mm256_castsi256_ps, _mm256_cmp_ps, _mm256_cvtepu16_epi32,
    _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_div_ps, _mm256_loadu_ps, _mm256_max_ps, _mm256_min_ps,
    _mm256_movemask_ps, _mm256_mul_ps, _mm256_packus_epi32, _mm256_permute4x64_epi64,
    _mm256_round_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_slli_epi32, _mm256_srli_epi32,
    _mm256_storeu_ps, _mm256_storeu_si256, _mm_loadu_si128, _mm_storeu_si128, _CMP_EQ_OQ,
    _MM_FROUND_NO_EXC, _MM_FROUND_TO_NEAREST_INT,
};

use super::elementwise::ChannelConsts;
use crate::dtype::{DType, Element};

/// Whether this processor runs these kernels (AVX2 and F16C).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
}

/// Fake-quantizes the leading whole mask words' worth of `x` (32 elements per word, as many as
/// `x`, `y` and `words` hold) with one channel's constants; returns the number of elements done
/// (a multiple of 32), 0 for an element type this module does not know the layout of.
///
/// # Safety
/// The processor must have AVX2 and F16C ([`available`]).
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn fake_quant_words<T: Element, const QUOTIENT: bool>(
    c: ChannelConsts,
    x: &[T],
    y: &mut [T],
    words: &mut [u32],
) -> usize {
    match T::DTYPE {
        DType::F32 => match (
            bytemuck::try_cast_slice::<T, f32>(x),
            bytemuck::try_cast_slice_mut::<T, f32>(y),
        ) {
            (Ok(x), Ok(y)) => words_loop::<F32, QUOTIENT>(c, x, y, words),
            _ => 0,
        },
        DType::F16 => match (
            bytemuck::try_cast_slice::<T, u16>(x),
            bytemuck::try_cast_slice_mut::<T, u16>(y),
        ) {
            (Ok(x), Ok(y)) => words_loop::<F16, QUOTIENT>(c, x, y, words),
            _ => 0,
        },
        DType::Bf16 => match (
            bytemuck::try_cast_slice::<T, u16>(x),
            bytemuck::try_cast_slice_mut::<T, u16>(y),
        ) {
            (Ok(x), Ok(y)) => words_loop::<Bf16, QUOTIENT>(c, x, y, words),
            _ => 0,
        },
    }
}

/// Sixteen elements of a storage type to and from two f32 vectors.
trait Lanes {
    /// The stored element.
    type Stored: Copy;
    /// Elements `0..16` of `p`, widened exactly.
    unsafe fn load16(p: *const Self::Stored) -> [__m256; 2];
    /// Stores `v` (16 elements) at `p`, rounded to the storage type.
    unsafe fn store16(p: *mut Self::Stored, v: [__m256; 2]);
}

struct F32;
struct F16;
struct Bf16;

impl Lanes for F32 {
    type Stored = f32;
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> [__m256; 2] {
        // SAFETY: the caller passes 16 readable elements; unaligned loads.
        unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
    }
    #[inline(always)]
    unsafe fn store16(p: *mut f32, v: [__m256; 2]) {
        // SAFETY: the caller passes 16 writable elements; unaligned stores.
        unsafe {
            _mm256_storeu_ps(p, v[0]);
            _mm256_storeu_ps(p.add(8), v[1]);
        }
    }
}

impl Lanes for F16 {
    type Stored = u16;
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> [__m256; 2] {
        // SAFETY: 16 readable u16 (two 16-byte unaligned loads); F16C is enabled by the caller.
        unsafe {
            [
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast::<__m128i>())),
            ]
        }
    }
    #[inline(always)]
    unsafe fn store16(p: *mut u16, v: [__m256; 2]) {
        const NEAREST_EVEN: i32 = _MM_FROUND_TO_NEAREST_INT;
        // SAFETY: 16 writable u16 (two 16-byte unaligned stores).
        unsafe {
            _mm_storeu_si128(p.cast::<__m128i>(), _mm256_cvtps_ph::<NEAREST_EVEN>(v[0]));
            _mm_storeu_si128(
                p.add(8).cast::<__m128i>(),
                _mm256_cvtps_ph::<NEAREST_EVEN>(v[1]),
            );
        }
    }
}

impl Lanes for Bf16 {
    type Stored = u16;
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> [__m256; 2] {
        // SAFETY: 16 readable u16 (two 16-byte unaligned loads). A bf16 is the upper half of
        // its f32; a NaN is quieted by the first operation on it (see the module).
        unsafe {
            let widen = |q: *const u16| {
                let halves = _mm256_cvtepu16_epi32(_mm_loadu_si128(q.cast::<__m128i>()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(halves))
            };
            [widen(p), widen(p.add(8))]
        }
    }
    #[inline(always)]
    unsafe fn store16(p: *mut u16, v: [__m256; 2]) {
        // SAFETY: 16 writable u16 (one 32-byte unaligned store).
        unsafe {
            let narrow = |v: __m256| {
                // f32_to_bf16: add 0x7fff plus the kept part's lowest bit and keep the upper
                // half (a carry rounds up into the exponent). Its NaN case needs no select
                // here: every NaN `y` is a bf16 `x` quieted, whose lower half is zero, so the
                // addition leaves its upper half as it is.
                let bits = _mm256_castps_si256(v);
                let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
                let bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff));
                _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, bias))
            };
            // Both halves are below 2^16, so the saturating pack is exact; it packs within each
            // 128-bit lane, and the permutation puts the four 64-bit quarters back in order.
            let packed = _mm256_packus_epi32(narrow(v[0]), narrow(v[1]));
            let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
            _mm256_storeu_si256(p.cast::<__m256i>(), ordered);
        }
    }
}

/// [`fake_quant_words`] for one storage type.
#[inline(always)]
unsafe fn words_loop<L: Lanes, const QUOTIENT: bool>(
    c: ChannelConsts,
    x: &[L::Stored],
    y: &mut [L::Stored],
    words: &mut [u32],
) -> usize {
    const NEAREST_EVEN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let whole = (x.len().min(y.len()) / 32).min(words.len());
    // SAFETY (the whole body): AVX2 and F16C are enabled by the caller; every access below is
    // within the first `whole * 32` elements of `x` and `y`.
    unsafe {
        let inv = _mm256_set1_ps(c.inv);
        let scale = _mm256_set1_ps(c.scale);
        let lo = _mm256_set1_ps(c.lo);
        let hi = _mm256_set1_ps(c.hi);
        let zero = _mm256_set1_ps(0.0);
        let element = |v: __m256| {
            let q = if QUOTIENT {
                _mm256_div_ps(v, scale)
            } else {
                _mm256_mul_ps(v, inv)
            };
            let r = _mm256_add_ps(_mm256_round_ps::<NEAREST_EVEN>(q), zero);
            let clamped = _mm256_min_ps(hi, _mm256_max_ps(lo, r));
            let in_range = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(clamped, r)) as u32;
            (_mm256_mul_ps(clamped, scale), in_range)
        };
        for (w, word) in words[..whole].iter_mut().enumerate() {
            let mut bits = 0u32;
            for half in 0..2 {
                let at = w * 32 + half * 16;
                let [a, b] = L::load16(x.as_ptr().add(at));
                let ((ya, ma), (yb, mb)) = (element(a), element(b));
                L::store16(y.as_mut_ptr().add(at), [ya, yb]);
                bits |= (ma | mb << 8) << (16 * half);
            }
            *word = bits;
        }
    }
    whole * 32
}
