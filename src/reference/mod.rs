//! The CPU reference: the executable specification that the GPU kernels match bit for bit.
//!
//! These functions are written to read like the definition, not to be fast.
//!
//! | input `x` | `y` | `mask` |
//! |---|---|---|
//! | finite | `(clamp(round_half_even(x * (1/s)) + zp, qmin, qmax) - zp) * s` | `qmin <= round(..) + zp <= qmax` |
//! | `+inf` / `-inf` | `(qmax - zp) * s` / `(qmin - zp) * s` | 0 |
//! | NaN | the same NaN, quieted (payload and sign kept) | 0 |
//!
//! A zero result is always `+0.0` (PyTorch goes through an integer, so `-0.0` and tiny negatives
//! give `+0.0`). With [`Rounding::Quotient`] the quotient is the correctly rounded `x / s` instead of
//! `x * (1/s)`. The straight-through backward is `dx = dy * mask` with IEEE semantics, see
//! [`ste_grad_value`].

mod backend;
pub mod dynamic;
pub mod float_quant;
pub mod histogram;
pub mod lsq;
pub mod observer;

pub use backend::Reference;
pub use lsq::Lsq;
pub use observer::Observer;

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::quant::{FakeQuant, PackedMask, QuantRange, Rounding};

/// The quiet bit of an f32 NaN.
pub const QUIET_BIT: u32 = 0x0040_0000;

/// The NaN that an invalid operation (`0 * inf`) produces, as wgpu's and Rust's `f32::NAN`.
pub const DEFAULT_NAN_BITS: u32 = 0x7fc0_0000;

/// Output of a fake-quantization: `y` (in the input's element type) and the bit-packed in-range
/// mask.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantOutput<T = f32> {
    /// Fake-quantized values, one per input.
    pub y: Vec<T>,
    /// `qmin <= q <= qmax` per element (before the clamp).
    pub mask: PackedMask,
}

/// Fake-quantizes one value: returns `(y, in_range)`.
pub fn fake_quant_value(
    x: f32,
    scale: f32,
    zero_point: i32,
    range: QuantRange,
    rounding: Rounding,
) -> (f32, bool) {
    if x.is_nan() {
        return (f32::from_bits(x.to_bits() | QUIET_BIT), false);
    }
    let quotient = match rounding {
        Rounding::Reciprocal => x * (1.0f32 / scale),
        Rounding::Quotient => x / scale,
    };
    // An integer-valued float, or +-inf. Adding the zero point in f64 is exact for every value
    // that can land in the range, and keeps the far-out ones far out.
    let q = quotient.round_ties_even() as f64 + zero_point as f64;
    let in_range = range.qmin() as f64 <= q && q <= range.qmax() as f64;
    // Through an integer, like PyTorch: a zero comes out as +0.0.
    let clamped = q.clamp(range.qmin() as f64, range.qmax() as f64) as i64;
    let y = (clamped - zero_point as i64) as f32 * scale;
    (y, in_range)
}

/// Straight-through estimator with clipping for one element: `dy * (in_range ? 1.0 : 0.0)` with
/// IEEE semantics, written out on bits so that it is the same on every processor:
/// in range, `dy` itself (a NaN quieted); out of range, a zero with the sign of `dy` for finite
/// `dy`, the quieted NaN for a NaN, and the default NaN (`0x7fc00000`) for `+-inf` (`0 * inf`).
pub fn ste_grad_value(dy: f32, in_range: bool) -> f32 {
    let bits = dy.to_bits();
    if dy.is_nan() {
        return f32::from_bits(bits | QUIET_BIT);
    }
    if in_range {
        dy
    } else if dy.is_infinite() {
        f32::from_bits(DEFAULT_NAN_BITS)
    } else {
        f32::from_bits(bits & 0x8000_0000)
    }
}

/// Fake-quantizes a row-major contiguous f32 tensor of `shape` (per-tensor, or per-channel along
/// the parameters' axis). Returns `y` and the packed mask.
fn fake_quant_f32(op: &FakeQuant, x: &[f32], shape: &[usize]) -> Result<FakeQuantOutput> {
    let layout = op.layout(shape, x.len())?;
    let params = op.params();
    let mut y = Vec::with_capacity(x.len());
    let mut in_range = Vec::with_capacity(x.len());
    for (i, &xi) in x.iter().enumerate() {
        let c = layout.channel_of(i);
        let (yi, mi) = fake_quant_value(
            xi,
            params.scales()[c],
            params.zero_points()[c],
            op.range(),
            op.rounding(),
        );
        y.push(yi);
        in_range.push(mi);
    }
    let mask = PackedMask::from_bools(&in_range);
    Ok(FakeQuantOutput { y, mask })
}

/// The straight-through backward of a fake-quantization on f32: `dx = dy * mask`, see
/// [`ste_grad_value`].
fn ste_backward_f32(dy: &[f32], mask: &PackedMask) -> Result<Vec<f32>> {
    if dy.len() != mask.len() {
        return Err(Error::LengthMismatch {
            what: "dy vs mask",
            expected: mask.len(),
            actual: dy.len(),
        });
    }
    Ok(dy
        .iter()
        .zip(mask.to_bools())
        .map(|(&g, m)| ste_grad_value(g, m))
        .collect())
}

/// Fake-quantizes a row-major contiguous tensor of `shape` and any element type (`f32`,
/// `half::f16`, `half::bf16`): each input is widened to f32 exactly, fake-quantized as f32 (see
/// [`fake_quant_value`]), and the output rounded to `T` to nearest even (see [`crate::dtype`]).
/// Returns `y` and the packed mask.
pub fn fake_quant<T: Element>(
    op: &FakeQuant,
    x: &[T],
    shape: &[usize],
) -> Result<FakeQuantOutput<T>> {
    let out = fake_quant_f32(op, &widen(x), shape)?;
    Ok(FakeQuantOutput {
        y: narrow(out.y),
        mask: out.mask,
    })
}

/// The straight-through backward `dx = dy * mask` (see [`ste_grad_value`]) for any element type:
/// `dy` widened exactly, `dx` rounded to `T`.
pub fn ste_backward<T: Element>(dy: &[T], mask: &PackedMask) -> Result<Vec<T>> {
    Ok(narrow(ste_backward_f32(&widen(dy), mask)?))
}

/// `x` widened to f32 (exact for every element type).
pub(crate) fn widen<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// f32 values rounded to `T` to nearest even (the identity for f32).
pub(crate) fn narrow<T: Element>(y: Vec<f32>) -> Vec<T> {
    y.into_iter().map(T::from_f32).collect()
}
