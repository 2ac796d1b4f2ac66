//! The element-wise arithmetic of the CPU backend, branch-free so that it vectorizes, and why
//! each function equals its reference counterpart bit for bit.
//!
//! The argument rests on the ranges being at most 16 bits ([`crate::QuantRange`]) and the scales
//! normal with a normal reciprocal ([`crate::quant::validate_scale`]): `qmin - zp` and
//! `qmax - zp` are integers of magnitude at most 65535, so they are exact f32 values, and the
//! reference's f64 and integer detour (`round(x / s) + zp` in f64, clamped, minus `zp` as an
//! integer) can be done on f32 with the zero point moved to the bounds.

use super::convert::{narrow, narrow_slice, widen, widen_slice};
use super::InstructionSet;
use crate::dtype::{DType, Element};
use crate::quant::{ChannelLayout, FakeQuant, Rounding};
use crate::reference::lsq::CANONICAL_NAN;
use crate::reference::{DEFAULT_NAN_BITS, QUIET_BIT};

/// Elements per inner chunk of a task: the mask flags of a chunk are packed at its end. A
/// multiple of 32 (whole mask words).
pub const CHUNK: usize = 4096;

/// Elements per block of [`fake_quant_task`]: its lanes and, for 16-bit tensors, its two f32
/// buffers (12 KiB in all) stay in the level-1 cache between the loops. A multiple of 32.
const BLOCK: usize = 1024;

/// 2^23: from here on every f32 is an integer.
const INTEGER_FROM: f32 = 8_388_608.0;

/// `v.round_ties_even()` without a library call (baseline x86-64 has no rounding instruction,
/// and a call stops the vectorizer). For `|v| < 2^23`, `|v| + 2^23` lies in `[2^23, 2^24)` where
/// the f32 spacing is 1, so the addition rounds `|v|` to an integer, ties to even, and the
/// subtraction is exact; the sign is put back (`-0.3` gives `-0.0`, as `round_ties_even`).
/// From 2^23 on (and for infinities and NaN) `v` is its own rounding.
#[inline(always)]
pub fn round_half_even(v: f32) -> f32 {
    let magnitude = v.abs();
    let rounded = ((magnitude + INTEGER_FROM) - INTEGER_FROM).copysign(v);
    if magnitude < INTEGER_FROM {
        rounded
    } else {
        v
    }
}

/// The per-channel constants of a fake-quantization: the reciprocal `1 / s` (the reference
/// forms the same quotient per element), `s`, and the integer bounds with the zero point moved
/// onto them, `lo = qmin - zp` and `hi = qmax - zp` (exact f32 values, see the module).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelConsts {
    /// `1 / s`, correctly rounded.
    pub inv: f32,
    /// `s`.
    pub scale: f32,
    /// `qmin - zp`.
    pub lo: f32,
    /// `qmax - zp`.
    pub hi: f32,
}

/// The constants of every channel of `op`, as columns (contiguous per field, for the loops over
/// a row of channels).
#[derive(Debug, Clone, Default)]
pub struct ChannelTable {
    inv: Vec<f32>,
    scale: Vec<f32>,
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl ChannelTable {
    /// The table of `op`'s channels.
    pub fn new(op: &FakeQuant) -> Self {
        let params = op.params();
        let range = op.range();
        let mut table = Self::default();
        for (&scale, &zp) in params.scales().iter().zip(params.zero_points()) {
            table.inv.push(1.0f32 / scale);
            table.scale.push(scale);
            table.lo.push((range.qmin() - zp) as f32);
            table.hi.push((range.qmax() - zp) as f32);
        }
        table
    }

    /// Channel `c`'s constants.
    pub fn get(&self, c: usize) -> ChannelConsts {
        ChannelConsts {
            inv: self.inv[c],
            scale: self.scale[c],
            lo: self.lo[c],
            hi: self.hi[c],
        }
    }
}

/// 2^22: quotients are bounded to `+-2^22` before rounding. Every bound `lo`, `hi` has magnitude
/// at most 65535, far inside, so a bounded quotient is out of range exactly when the original is.
const QUOTIENT_BOUND: f32 = 4_194_304.0;

/// 1.5 * 2^23: a bounded quotient plus this lies in `[2^23, 2^24]`, where the f32 spacing is 1
/// (2^24 itself is exact), so the addition rounds it to an integer, ties to even (the constant
/// is an even integer, so it moves no tie's parity), and the subtraction is exact.
const ROUNDING_SHIFT: f32 = 12_582_912.0;

/// [`crate::reference::fake_quant_value`] on f32 with the channel's constants; `QUOTIENT` picks
/// [`Rounding::Quotient`]. Equal to the reference because:
/// - the quotient is the same single IEEE operation; it is NaN exactly when `x` is (`x * (1/s)`
///   and `x / s` of a non-NaN `x` are never NaN, the scale and its reciprocal being normal);
/// - bounded to `+-2^22` (infinities too), it rounds half to even by the addition and
///   subtraction of 1.5 * 2^23 (see that constant's comment); the rounded `q` is the
///   reference's `round(x / s)` wherever that is in range, and out of range wherever the
///   reference's is; a zero comes out `+0.0`, the reference's integer zero;
/// - the clamped value `clamp(q, lo, hi)` is the reference's `clamp(q + zp, qmin, qmax) - zp`
///   integer, exact in f32, and `qmin <= q + zp <= qmax` is `clamp(q, lo, hi) == q`; the product
///   with `s` is the same single rounding;
/// - a NaN (which the bounds would have turned into a bound: the comparisons select the bound)
///   is out of range and returned quieted with its payload and sign, as in the reference.
///
/// No multiplication feeds an addition directly (the bounds' selections lie between the
/// quotient and the shift), and Rust never contracts operations into a fused multiply-add, so
/// every operation rounds once, as argued. Written with comparisons and selections, each bound
/// is one `maxps`/`minps` and the whole function about 15 vector instructions.
#[inline(always)]
pub fn fake_quant_value<const QUOTIENT: bool>(x: f32, c: ChannelConsts) -> (f32, bool) {
    let quotient = if QUOTIENT { x / c.scale } else { x * c.inv };
    let bounded = if quotient > -QUOTIENT_BOUND {
        quotient
    } else {
        -QUOTIENT_BOUND
    };
    let bounded = if bounded < QUOTIENT_BOUND {
        bounded
    } else {
        QUOTIENT_BOUND
    };
    let q = (bounded + ROUNDING_SHIFT) - ROUNDING_SHIFT;
    let clamped = if q > c.lo { q } else { c.lo };
    let clamped = if clamped < c.hi { clamped } else { c.hi };
    let nan = x.is_nan();
    let in_range = clamped == q && !nan;
    let y = clamped * c.scale;
    let quiet = f32::from_bits(x.to_bits() | QUIET_BIT);
    (if nan { quiet } else { y }, in_range)
}

/// [`crate::reference::ste_grad_value`] on the bits, without branches: in range `dy` (a NaN
/// quieted); out of range a zero with `dy`'s sign, the default NaN for `+-inf`, the quieted NaN
/// for a NaN.
#[inline(always)]
pub fn ste_grad_value(dy: f32, in_range: bool) -> f32 {
    let bits = dy.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    let nan = magnitude > 0x7f80_0000;
    let infinite = magnitude == 0x7f80_0000;
    let out_of_range = if infinite {
        DEFAULT_NAN_BITS
    } else {
        bits & 0x8000_0000
    };
    let kept = if in_range { bits } else { out_of_range };
    f32::from_bits(if nan { bits | QUIET_BIT } else { kept })
}

/// `v`, with any NaN replaced by LSQ's canonical NaN (the reference's `canonical`).
#[inline(always)]
fn canonical(v: f32) -> f32 {
    if v.is_nan() {
        CANONICAL_NAN
    } else {
        v
    }
}

/// [`crate::reference::lsq::element_grads`] without branches: `(dx, dscale term, dzero_point
/// term)`. Both of the reference's cases are computed and one is selected:
/// - in range, `dy * ((y - x) * (1/s))` and `0`: the same three operations on the same values
///   (`y` from [`fake_quant_value`], equal to the reference's);
/// - out of range, `dy * edge` and `(-dy) * s`, where the edge `qmin - zp` or `qmax - zp` is `lo`
///   or `hi` (exact), on the side where `q` fell: the reference's `q + zp < qmin` in f64 is
///   `q < lo` here, `q` being an integer-valued f32 or an infinity;
/// - a NaN `x` gives canonical NaN terms; every product is canonicalized, as the reference's
///   `mul`.
#[inline(always)]
pub fn lsq_element_grads(x: f32, dy: f32, c: ChannelConsts) -> (f32, f32, f32) {
    let (y, in_range) = fake_quant_value::<false>(x, c);
    let dx = ste_grad_value(dy, in_range);
    let scale_in = canonical(dy * ((y - x) * c.inv));
    let q = round_half_even(x * c.inv);
    let edge = if q < c.lo { c.lo } else { c.hi };
    let scale_out = canonical(dy * edge);
    let zero_point_out = canonical(-dy * c.scale);
    let scale_term = if in_range { scale_in } else { scale_out };
    let zero_point_term = if in_range { 0.0 } else { zero_point_out };
    if x.is_nan() {
        (dx, CANONICAL_NAN, CANONICAL_NAN)
    } else {
        (dx, scale_term, zero_point_term)
    }
}

/// One run of [`runs`]: the flat elements `start..end`, whose parameters are channel
/// `channel`'s, or, when `consecutive`, those of channels `channel..` one per element (a row of
/// channels: the channel axis is the last one, `inner == 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First flat element.
    pub start: usize,
    /// One past the last.
    pub end: usize,
    /// The channel of `start`.
    pub channel: usize,
    /// One channel per element from `channel` on, instead of one for the whole run.
    pub consecutive: bool,
}

/// The runs that cover `[start, end)` of a tensor of `layout`. An iterator rather than a
/// callback, so that the loops over a run stay in the kernel's own body, which `multiversion!`
/// (in `src/cpu/mod.rs`) compiles for each instruction set (a callback's closure is compiled on
/// its own, for the baseline set only).
#[inline(always)]
pub fn runs(layout: &ChannelLayout, start: usize, end: usize) -> impl Iterator<Item = Run> + '_ {
    let (period, consecutive) = match (layout.channels, layout.inner) {
        (0 | 1, _) => (usize::MAX, false),
        (channels, 1) => (channels, true),
        (_, inner) => (inner, false),
    };
    let mut i = start;
    std::iter::from_fn(move || {
        if i >= end {
            return None;
        }
        let run_end = if period == usize::MAX {
            end
        } else {
            ((i / period + 1) * period).min(end)
        };
        let run = Run {
            start: i,
            end: run_end,
            channel: if period == usize::MAX {
                0
            } else {
                layout.channel_of(i)
            },
            consecutive,
        };
        i = run_end;
        Some(run)
    })
}

/// Fake-quantizes the elements `start..start + x.len()` of a tensor of `layout` (`start` a
/// multiple of 32): `y` and the mask words of those elements.
///
/// A block of 1024 elements at a time. A block whose elements share one channel (every block of
/// a per-tensor op) goes, on a processor with AVX2 and F16C, through the fused kernel of
/// `src/cpu/avx2.rs`: conversion, fake-quant and mask bits in registers, 32 elements a word. At
/// 16M elements it took f16 from 8.8-9.9 ms to 3.3-4.9 ms and bf16 from 7.1-8.7 to 3.7-4.9 ms
/// (`bench_report`, two threads).
///
/// Any other block (channels shorter than a block, a channel per element on the last axis, or no
/// AVX2) runs the portable loop: it writes each element's flag as a 32-bit lane (0 or all ones,
/// what a vector comparison gives), and [`pack_lanes`] turns 32 lanes into a word with the
/// processor's sign-bit gather (`movmskps`): 0.04 ns a flag with AVX2 in a probe, against 0.56
/// for shifting 32 `bool` flags into a word. There an f16 tensor is widened into an f32 buffer
/// first and narrowed from one after, with F16C's conversion instructions where the processor
/// has them (the loop with f16's conversions in it was slower: at 16M in one sitting 11.5 and
/// 15.8 ms in the loop, 8.4 to 9.7 ms staged); a bf16 tensor converts in the loop (staged it
/// measured slower: medians of 15 calls at 16M over five alternating runs, 10.1 to 13.8 ms
/// staged, 8.7 to 11.1 ms in the loop).
#[allow(clippy::too_many_arguments)]
pub fn fake_quant_task<T: Element>(
    isa: InstructionSet,
    table: &ChannelTable,
    layout: &ChannelLayout,
    rounding: Rounding,
    start: usize,
    x: &[T],
    y: &mut [T],
    words: &mut [u32],
) {
    let mut lanes = [0i32; BLOCK];
    #[cfg(target_arch = "x86_64")]
    let fused = isa == InstructionSet::Avx2 && super::avx2::available();
    let staged = T::DTYPE == DType::F16;
    let (mut wide_x, mut wide_y) = ([0f32; BLOCK], [0f32; BLOCK]);
    for (k, ((x, y), words)) in x
        .chunks(BLOCK)
        .zip(y.chunks_mut(BLOCK))
        .zip(words.chunks_mut(BLOCK / 32))
        .enumerate()
    {
        let base = start + k * BLOCK;
        // A block of one channel: the fused kernel does its whole mask words, the loops below
        // whatever remains (the tail of a tensor, shorter than a word).
        #[cfg(target_arch = "x86_64")]
        let (x, y, words, base) = {
            let mut block = runs(layout, base, base + x.len());
            let one_channel = match (block.next(), block.next()) {
                (Some(run), None) if !run.consecutive => Some(table.get(run.channel)),
                _ => None,
            };
            let done = match one_channel {
                // SAFETY: `fused` says the processor has what the kernel needs.
                Some(c) if fused => unsafe {
                    match rounding {
                        Rounding::Reciprocal => {
                            super::avx2::fake_quant_words::<T, false>(c, x, y, words)
                        }
                        Rounding::Quotient => {
                            super::avx2::fake_quant_words::<T, true>(c, x, y, words)
                        }
                    }
                },
                _ => 0,
            };
            if done == x.len() {
                continue;
            }
            (
                &x[done..],
                &mut y[done..],
                &mut words[done / 32..],
                base + done,
            )
        };
        let lanes = &mut lanes[..x.len()];
        if staged {
            let (wide_x, wide_y) = (&mut wide_x[..x.len()], &mut wide_y[..x.len()]);
            widen_slice(isa, x, wide_x);
            fake_quant_chunk(isa, table, layout, rounding, base, wide_x, wide_y, lanes);
            narrow_slice(isa, wide_y, y);
        } else {
            fake_quant_chunk(isa, table, layout, rounding, base, x, y, lanes);
        }
        pack_lanes(isa, lanes, words);
    }
}

multiversion! {
/// The elements `start..start + x.len()` (one block) of a tensor of `layout`: `y`, and
/// each element's flag as a lane for [`pack_lanes`].
fn fake_quant_chunk<T: Element>(
    table: &ChannelTable,
    layout: &ChannelLayout,
    rounding: Rounding,
    start: usize,
    x: &[T],
    y: &mut [T],
    lanes: &mut [i32],
) {
    match rounding {
        Rounding::Reciprocal => fake_quant_runs::<T, false>(table, layout, start, x, y, lanes),
        Rounding::Quotient => fake_quant_runs::<T, true>(table, layout, start, x, y, lanes),
    }
}
}

#[inline(always)]
fn fake_quant_runs<T: Element, const QUOTIENT: bool>(
    table: &ChannelTable,
    layout: &ChannelLayout,
    start: usize,
    x: &[T],
    y: &mut [T],
    lanes: &mut [i32],
) {
    for Run {
        start: a,
        end: b,
        channel: c,
        consecutive,
    } in runs(layout, start, start + x.len())
    {
        let part = a - start..b - start;
        let (x, y, lanes) = (&x[part.clone()], &mut y[part.clone()], &mut lanes[part]);
        if consecutive {
            let cols = c..c + (b - a);
            for ((((((x, y), lane), &inv), &scale), &lo), &hi) in x
                .iter()
                .zip(y.iter_mut())
                .zip(lanes.iter_mut())
                .zip(&table.inv[cols.clone()])
                .zip(&table.scale[cols.clone()])
                .zip(&table.lo[cols.clone()])
                .zip(&table.hi[cols])
            {
                let consts = ChannelConsts { inv, scale, lo, hi };
                let (v, m) = fake_quant_value::<QUOTIENT>(widen(*x), consts);
                *y = narrow::<T>(v);
                *lane = -i32::from(m);
            }
        } else {
            let consts = table.get(c);
            for ((x, y), lane) in x.iter().zip(y.iter_mut()).zip(lanes.iter_mut()) {
                let (v, m) = fake_quant_value::<QUOTIENT>(widen(*x), consts);
                *y = narrow::<T>(v);
                *lane = -i32::from(m);
            }
        }
    }
}

/// Packs lanes (0 or all ones, one per element) into mask words: bit `k` of a word is the sign
/// bit of lane `k` of its 32. On x86-64 with `movmskps`, which gathers the sign bits of 8 lanes
/// (AVX2) or 4 (SSE2, every x86-64 processor) into an integer.
pub fn pack_lanes(isa: InstructionSet, lanes: &[i32], words: &mut [u32]) {
    let whole = (lanes.len() / 32).min(words.len());
    let (head, tail) = words.split_at_mut(whole);
    #[cfg(target_arch = "x86_64")]
    {
        if isa == InstructionSet::Avx2 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected just above.
            unsafe { movemask::pack_avx2(&lanes[..whole * 32], head) };
        } else {
            movemask::pack_sse2(&lanes[..whole * 32], head);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_lanes_portable(&lanes[..whole * 32], head);
    pack_lanes_portable(&lanes[whole * 32..], tail);
}

/// [`pack_lanes`] by shifting each lane's sign bit into place.
fn pack_lanes_portable(lanes: &[i32], words: &mut [u32]) {
    for (word, lanes) in words.iter_mut().zip(lanes.chunks(32)) {
        *word = lanes
            .iter()
            .enumerate()
            .fold(0u32, |acc, (k, &lane)| acc | (((lane as u32) >> 31) << k));
    }
}

#[cfg(target_arch = "x86_64")]
mod movemask {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_castsi256_ps, _mm256_loadu_si256, _mm256_movemask_ps,
        _mm_castsi128_ps, _mm_loadu_si128, _mm_movemask_ps,
    };

    /// 32 lanes per word, 8 per `vmovmskps`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn pack_avx2(lanes: &[i32], words: &mut [u32]) {
        for (word, lanes) in words.iter_mut().zip(lanes.chunks_exact(32)) {
            let mut packed = 0u32;
            for (q, eight) in lanes.chunks_exact(8).enumerate() {
                // SAFETY: `eight` holds 8 i32 (32 bytes); an unaligned load.
                let v = unsafe { _mm256_loadu_si256(eight.as_ptr().cast::<__m256i>()) };
                packed |= (_mm256_movemask_ps(_mm256_castsi256_ps(v)) as u32) << (8 * q);
            }
            *word = packed;
        }
    }

    /// 32 lanes per word, 4 per `movmskps`.
    pub fn pack_sse2(lanes: &[i32], words: &mut [u32]) {
        for (word, lanes) in words.iter_mut().zip(lanes.chunks_exact(32)) {
            let mut packed = 0u32;
            for (q, four) in lanes.chunks_exact(4).enumerate() {
                // SAFETY: `four` holds 4 i32 (16 bytes); an unaligned load. SSE2 is part of
                // every x86-64 processor.
                let v = unsafe { _mm_loadu_si128(four.as_ptr().cast::<__m128i>()) };
                packed |= (unsafe { _mm_movemask_ps(_mm_castsi128_ps(v)) } as u32) << (4 * q);
            }
            *word = packed;
        }
    }
}

/// The straight-through backward of the elements `start..start + dx.len()` (`start` a multiple
/// of 32): `dx` from `dy` and the mask words of the whole tensor. A 16-bit tensor is done on its
/// bits ([`ste_grad_bits16`]), with no conversion: at 16M elements f16 took 11.2-11.5 ms
/// converting and 3.7-4.4 ms on the bits (`bench_report`, two threads).
pub fn ste_task<T: Element>(
    isa: InstructionSet,
    start: usize,
    dy: &[T],
    words: &[u32],
    dx: &mut [T],
) {
    if let Some(format) = Bits16::of::<T>() {
        if let (Ok(dy), Ok(dx)) = (
            bytemuck::try_cast_slice::<T, u16>(dy),
            bytemuck::try_cast_slice_mut::<T, u16>(dx),
        ) {
            return ste_task_bits16(isa, format, start, dy, words, dx);
        }
    }
    ste_task_widened(isa, start, dy, words, dx)
}

multiversion! {
/// [`ste_task`] through f32.
fn ste_task_widened<T: Element>(start: usize, dy: &[T], words: &[u32], dx: &mut [T]) {
    let dy = &dy[start..start + dx.len()];
    let words = &words[start / 32..];
    for ((dy, dx), &word) in dy.chunks(32).zip(dx.chunks_mut(32)).zip(words) {
        for (k, (g, d)) in dy.iter().zip(dx.iter_mut()).enumerate() {
            *d = narrow::<T>(ste_grad_value(widen(*g), (word >> k) & 1 != 0));
        }
    }
}
}

multiversion! {
/// [`ste_task`] on the bits of a 16-bit type.
fn ste_task_bits16(format: Bits16, start: usize, dy: &[u16], words: &[u32], dx: &mut [u16]) {
    let dy = &dy[start..start + dx.len()];
    let words = &words[start / 32..];
    for ((dy, dx), &word) in dy.chunks(32).zip(dx.chunks_mut(32)).zip(words) {
        for (k, (g, d)) in dy.iter().zip(dx.iter_mut()).enumerate() {
            *d = ste_grad_bits16(*g, (word >> k) & 1 != 0, format);
        }
    }
}
}

/// What [`ste_grad_bits16`] needs of a 16-bit floating-point type.
#[derive(Debug, Clone, Copy)]
pub struct Bits16 {
    /// The exponent field (an infinity's magnitude).
    exponent: u16,
    /// The quiet bit of a NaN.
    quiet: u16,
    /// The reference's default NaN, narrowed to the type.
    default_nan: u16,
}

impl Bits16 {
    /// The constants of `T`, or `None` for f32.
    pub fn of<T: Element>() -> Option<Self> {
        let default_nan = narrow::<T>(f32::from_bits(DEFAULT_NAN_BITS)).to_bits_u32() as u16;
        match T::DTYPE {
            DType::F16 => Some(Self {
                exponent: 0x7c00,
                quiet: 0x0200,
                default_nan,
            }),
            DType::Bf16 => Some(Self {
                exponent: 0x7f80,
                quiet: 0x0040,
                default_nan,
            }),
            DType::F32 => None,
        }
    }
}

/// [`ste_grad_value`] of a 16-bit `dy` on its bits: the reference widens `dy` exactly, takes the
/// gradient and narrows it back, and each case survives the round trip as the bits below: a kept
/// finite `dy` or infinity is itself; a zero with `dy`'s sign is that sign bit; the default NaN
/// is its narrowed bits; a NaN, quieted in f32 with its payload, narrows back to its own bits with
/// the type's quiet bit (the payload bits it had are the ones the narrowing keeps).
#[inline(always)]
pub fn ste_grad_bits16(dy: u16, in_range: bool, format: Bits16) -> u16 {
    let magnitude = dy & 0x7fff;
    let nan = magnitude > format.exponent;
    let infinite = magnitude == format.exponent;
    let out_of_range = if infinite {
        format.default_nan
    } else {
        dy & 0x8000
    };
    let kept = if in_range { dy } else { out_of_range };
    if nan {
        dy | format.quiet
    } else {
        kept
    }
}

multiversion! {
/// LSQ's `dx` (the straight-through gradient with the forward's mask) for the elements
/// `start..start + dx.len()` of a tensor of `layout`, with the effective parameters' `table`.
pub fn lsq_dx_task<T: Element>(
    table: &ChannelTable,
    layout: &ChannelLayout,
    start: usize,
    x: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    let end = start + dx.len();
    for Run {
        start: a,
        end: b,
        channel: c,
        consecutive,
    } in runs(layout, start, end)
    {
        let (x, dy, dx) = (&x[a..b], &dy[a..b], &mut dx[a - start..b - start]);
        for (k, ((x, dy), dx)) in x.iter().zip(dy).zip(dx.iter_mut()).enumerate() {
            let consts = table.get(if consecutive { c + k } else { c });
            let (_, in_range) = fake_quant_value::<false>(widen(*x), consts);
            *dx = narrow::<T>(ste_grad_value(widen(*dy), in_range));
        }
    }
}
}

multiversion! {
/// LSQ's per-element `(dscale, dzero_point)` terms of the flat elements `start..start + len`,
/// all of one channel, appended to `out`.
pub fn lsq_terms<T: Element>(
    consts: ChannelConsts,
    x: &[T],
    dy: &[T],
    start: usize,
    len: usize,
    out: &mut [Vec<f32>; 2],
) {
    let [scale_terms, zero_point_terms] = out;
    let base = scale_terms.len();
    scale_terms.resize(base + len, 0.0);
    zero_point_terms.resize(base + len, 0.0);
    let range = start..start + len;
    for (((x, dy), ts), tz) in x[range.clone()]
        .iter()
        .zip(&dy[range])
        .zip(&mut scale_terms[base..])
        .zip(&mut zero_point_terms[base..])
    {
        let (_, scale_term, zero_point_term) = lsq_element_grads(widen(*x), widen(*dy), consts);
        (*ts, *tz) = (scale_term, zero_point_term);
    }
}
}

multiversion! {
    /// [`lsq_terms`] and LSQ's `dx` of the same elements in one pass: the terms of the flat
    /// elements `start..start + len` (all of one channel) appended to `out`, their `dx` written
    /// to `dx` (`len` elements).
    pub fn lsq_terms_and_dx<T: Element>(
        consts: ChannelConsts,
        x: &[T],
        dy: &[T],
        start: usize,
        out: &mut [Vec<f32>; 2],
        dx: &mut [T],
    ) {
        let len = dx.len();
        let [scale_terms, zero_point_terms] = out;
        let base = scale_terms.len();
        scale_terms.resize(base + len, 0.0);
        zero_point_terms.resize(base + len, 0.0);
        let range = start..start + len;
        for ((((x, dy), ts), tz), dx) in x[range.clone()]
            .iter()
            .zip(&dy[range])
            .zip(&mut scale_terms[base..])
            .zip(&mut zero_point_terms[base..])
            .zip(dx.iter_mut())
        {
            let (d, scale_term, zero_point_term) = lsq_element_grads(widen(*x), widen(*dy), consts);
            (*ts, *tz, *dx) = (scale_term, zero_point_term, narrow::<T>(d));
        }
    }
}
