//! The element-wise arithmetic of the CPU backend, branch-free so that it vectorizes, and why
//! each function equals its reference counterpart bit for bit.
//!
//! The argument rests on the ranges being at most 16 bits ([`crate::QuantRange`]) and the scales
//! normal with a normal reciprocal ([`crate::quant::validate_scale`]): `qmin - zp` and
//! `qmax - zp` are integers of magnitude at most 65535, so they are exact f32 values, and the
//! reference's f64 and integer detour (`round(x / s) + zp` in f64, clamped, minus `zp` as an
//! integer) can be done on f32 with the zero point moved to the bounds.

use super::convert::{narrow, widen};
use crate::dtype::Element;
use crate::quant::{ChannelLayout, FakeQuant, Rounding};
use crate::reference::lsq::CANONICAL_NAN;
use crate::reference::{DEFAULT_NAN_BITS, QUIET_BIT};

/// Elements per inner chunk of a task: the mask flags of a chunk are packed at its end. A
/// multiple of 32 (whole mask words).
pub const CHUNK: usize = 4096;

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

/// [`crate::reference::fake_quant_value`] on f32 with the channel's constants; `QUOTIENT` picks
/// [`Rounding::Quotient`]. Equal to the reference because:
/// - the quotient is the same single IEEE operation, and `q` its [`round_half_even`];
/// - `q` is an integer-valued f32 (or `+-inf`, or NaN exactly when `x` is NaN: `x * (1/s)` and
///   `x / s` of a non-NaN `x` are never NaN), so `qmin <= q + zp <= qmax` in the reference's f64
///   is `lo <= q <= hi` here;
/// - the clamped value `clamp(q, lo, hi)` is the reference's `clamp(q + zp, qmin, qmax) - zp`
///   integer, exact in f32; adding `+0.0` turns a `-0.0` (from `round(-0.3)`) into the `+0.0` the
///   reference's integer gives, and changes nothing else; the product with `s` is the same
///   single rounding;
/// - a NaN is returned quieted with its payload and sign, as in the reference.
#[inline(always)]
pub fn fake_quant_value<const QUOTIENT: bool>(x: f32, c: ChannelConsts) -> (f32, bool) {
    let quotient = if QUOTIENT { x / c.scale } else { x * c.inv };
    let q = round_half_even(quotient);
    let in_range = q >= c.lo && q <= c.hi;
    let clamped = if q < c.lo { c.lo } else { q };
    let clamped = if clamped > c.hi { c.hi } else { clamped };
    let y = (clamped + 0.0) * c.scale;
    let quiet = f32::from_bits(x.to_bits() | QUIET_BIT);
    (if x.is_nan() { quiet } else { y }, in_range)
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

/// Packs one flag per element into mask words (bit `k` of a word is element `k` of its 32). The
/// shift-and-or per flag is what AVX2 vectorizes best here (its per-lane shifts): measured
/// against gathering eight flags with one multiplication, which is faster alone and on SSE2 but
/// made the AVX2 fake-quant 25% slower.
#[inline(always)]
pub fn pack_flags(flags: &[bool], words: &mut [u32]) {
    for (word, flags) in words.iter_mut().zip(flags.chunks(32)) {
        *word = flags
            .iter()
            .enumerate()
            .fold(0u32, |acc, (k, &f)| acc | (u32::from(f) << k));
    }
}

multiversion! {
/// Fake-quantizes the elements `start..start + x.len()` of a tensor of `layout` (`start` a
/// multiple of 32): `y` and the mask words of those elements.
pub fn fake_quant_task<T: Element>(
    table: &ChannelTable,
    layout: &ChannelLayout,
    rounding: Rounding,
    start: usize,
    x: &[T],
    y: &mut [T],
    words: &mut [u32],
) {
    match rounding {
        Rounding::Reciprocal => fake_quant_chunks::<T, false>(table, layout, start, x, y, words),
        Rounding::Quotient => fake_quant_chunks::<T, true>(table, layout, start, x, y, words),
    }
}
}

#[inline(always)]
fn fake_quant_chunks<T: Element, const QUOTIENT: bool>(
    table: &ChannelTable,
    layout: &ChannelLayout,
    start: usize,
    x: &[T],
    y: &mut [T],
    words: &mut [u32],
) {
    let mut flags = [false; CHUNK];
    for (k, ((x, y), words)) in x
        .chunks(CHUNK)
        .zip(y.chunks_mut(CHUNK))
        .zip(words.chunks_mut(CHUNK / 32))
        .enumerate()
    {
        let base = start + k * CHUNK;
        for Run {
            start: a,
            end: b,
            channel: c,
            consecutive,
        } in runs(layout, base, base + x.len())
        {
            let part = a - base..b - base;
            let (x, y, flags) = (&x[part.clone()], &mut y[part.clone()], &mut flags[part]);
            if consecutive {
                let n = b - a;
                let cols = c..c + n;
                for ((((((x, y), f), &inv), &scale), &lo), &hi) in x
                    .iter()
                    .zip(y.iter_mut())
                    .zip(flags.iter_mut())
                    .zip(&table.inv[cols.clone()])
                    .zip(&table.scale[cols.clone()])
                    .zip(&table.lo[cols.clone()])
                    .zip(&table.hi[cols])
                {
                    let consts = ChannelConsts { inv, scale, lo, hi };
                    let (v, m) = fake_quant_value::<QUOTIENT>(widen(*x), consts);
                    *y = narrow::<T>(v);
                    *f = m;
                }
            } else {
                let consts = table.get(c);
                for ((x, y), f) in x.iter().zip(y.iter_mut()).zip(flags.iter_mut()) {
                    let (v, m) = fake_quant_value::<QUOTIENT>(widen(*x), consts);
                    *y = narrow::<T>(v);
                    *f = m;
                }
            }
        }
        pack_flags(&flags[..x.len()], words);
    }
}

multiversion! {
/// The straight-through backward of the elements `start..start + dx.len()` (`start` a multiple
/// of 32): `dx` from `dy` and the mask words of the whole tensor.
pub fn ste_task<T: Element>(start: usize, dy: &[T], words: &[u32], dx: &mut [T]) {
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
