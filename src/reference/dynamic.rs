//! The reference dynamic fake-quantization (see [`crate::dynamic`] for the rules).

use half::bf16;

use super::{fake_quant, widen};
use crate::dtype::{DType, Element};
use crate::dynamic::{DynamicConfig, DynamicOutput, DynamicScheme};
use crate::error::Result;
use crate::quant::{FakeQuant, PackedMask, ParamLayout, QuantParams, Rounding};

/// The largest scale with a normal f32 reciprocal.
const MAX_SCALE: f32 = 8.507_059e37; // 2^126

/// Rounds an f32 result to the element type `T` (torchao computes the qparams in the input's
/// dtype: each op in f32, rounded once to the dtype).
fn rd<T: Element>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

/// The largest finite value of an element type, as f32.
fn max_finite(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::MAX,
        DType::F16 => half::f16::MAX.to_f32(),
        DType::Bf16 => bf16::MAX.to_f32(),
    }
}

/// Rounds a finite result to `dtype`, saturating: a value that overflows the type becomes its
/// largest finite value with the sign kept (the float domain's qparams stay finite).
fn sat(dtype: DType, v: f32) -> f32 {
    let r = match dtype {
        DType::F32 => v,
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::Bf16 => bf16::from_f32(v).to_f32(),
    };
    if r.is_infinite() {
        max_finite(dtype).copysign(r)
    } else {
        r
    }
}

/// Rounds to the qparams' precision.
fn rq(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::Bf16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Min and max of the finite values of each group, in flat order of the groups (`(0, 0)` for a
/// group without one). Comparisons treat `-0.0` and `+0.0` alike; the first one seen stays.
fn group_min_max(x: &[f32], layout: &ParamLayout) -> Vec<(f32, f32)> {
    let mut out = vec![(f32::INFINITY, f32::NEG_INFINITY); layout.channels()];
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            continue;
        }
        let (lo, hi) = &mut out[layout.channel_of(i)];
        if v < *lo {
            *lo = v;
        }
        if v > *hi {
            *hi = v;
        }
    }
    out.into_iter()
        .map(|(lo, hi)| if lo > hi { (0.0, 0.0) } else { (lo, hi) })
        .collect()
}

/// The qparams of one group, for inputs of type `T`.
pub(crate) fn group_qparams<T: Element>(
    config: &DynamicConfig,
    eps: f32,
    lo: f32,
    hi: f32,
) -> (f32, f32) {
    let (qmin, qmax) = (config.range().qmin(), config.range().qmax());
    let levels = (qmax - qmin) as f32;
    let cap = |s: f32| if s > MAX_SCALE { MAX_SCALE } else { s };
    match config.scheme() {
        DynamicScheme::Symmetric => {
            let (mn, mx) = (lo.min(0.0), hi.max(0.0));
            let s = rd::<T>((-mn).max(mx) / (levels / 2.0));
            (cap(s.max(eps)), 0.0)
        }
        DynamicScheme::Asymmetric => {
            let (mn, mx) = (lo.min(0.0), hi.max(0.0));
            let s = cap(rd::<T>(rd::<T>(mx - mn) / levels).max(eps));
            let zp =
                (qmin as f32 - rd::<T>(mn / s).round_ties_even()).clamp(qmin as f32, qmax as f32);
            (s, zp)
        }
        DynamicScheme::AsymmetricFloat => {
            let mid = ((qmin + qmax + 1) / 2) as f32;
            // A range that overflows the input type is taken as the type's largest finite value,
            // so that the scale, the zero point and `zp - s * mid` stay finite.
            let mut width = rd::<T>(hi - lo);
            if width.is_infinite() {
                width = max_finite(T::DTYPE);
            }
            let s = rd::<T>(rd::<T>(width / levels).max(eps));
            let zp = sat(T::DTYPE, lo + sat(T::DTYPE, s * mid));
            let dtype = config.qparams_dtype();
            (sat(dtype, s), sat(dtype, zp))
        }
    }
}

/// Dynamic fake-quantization of a row-major tensor of `shape` and element type `T`: each group's
/// qparams from its own values, then `y`, the mask and the qparams (see [`crate::dynamic`]).
pub fn fake_quant_dynamic<T: Element>(
    config: &DynamicConfig,
    x: &[T],
    shape: &[usize],
) -> Result<DynamicOutput<T>> {
    let layout = config.granularity().param_layout(shape, x.len())?;
    let wide = widen(x);
    let eps = config.eps_for(T::DTYPE);
    let (scales, zero_points): (Vec<f32>, Vec<f32>) = group_min_max(&wide, &layout)
        .into_iter()
        .map(|(lo, hi)| group_qparams::<T>(config, eps, lo, hi))
        .unzip();
    if config.scheme() != DynamicScheme::AsymmetricFloat {
        return integer_output(config, layout.channels(), scales, zero_points, |op| {
            fake_quant(op, x, shape)
        });
    }
    let domain = FloatDomain::new::<T>(config);
    let mut in_range = Vec::with_capacity(x.len());
    let y = wide
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let g = layout.channel_of(i);
            let (y, m) = domain.fake_quant_value::<T>(v, scales[g], zero_points[g]);
            in_range.push(m);
            y
        })
        .collect();
    Ok(DynamicOutput {
        y,
        mask: PackedMask::from_bools(&in_range),
        scales,
        zero_points,
    })
}

/// The integer schemes' output: the core fake-quant with the groups' qparams (`run` performs it,
/// the reference's or a backend's), or an empty output for a tensor without groups.
pub(crate) fn integer_output<T: Element>(
    config: &DynamicConfig,
    groups: usize,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    run: impl FnOnce(&FakeQuant) -> Result<crate::reference::FakeQuantOutput<T>>,
) -> Result<DynamicOutput<T>> {
    if groups == 0 {
        return Ok(DynamicOutput {
            y: Vec::new(),
            mask: PackedMask::from_bools(&[]),
            scales,
            zero_points,
        });
    }
    // Integer zero points in range by construction; scales in [eps, 2^126].
    let params = QuantParams::new(
        config.granularity(),
        scales.clone(),
        zero_points.iter().map(|&z| z as i32).collect(),
    );
    let op = FakeQuant::new(config.range(), params)?.with_rounding(Rounding::Reciprocal);
    let out = run(&op)?;
    Ok(DynamicOutput {
        y: out.y,
        mask: out.mask,
        scales,
        zero_points,
    })
}

/// The float zero-point domain's per-element arithmetic (torchao's `ZeroPointDomain.FLOAT`): the
/// constants of one configuration and input type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FloatDomain {
    qmin: f32,
    qmax: f32,
    mid: f32,
    qdtype: DType,
    p: DType,
}

impl FloatDomain {
    pub(crate) fn new<T: Element>(config: &DynamicConfig) -> Self {
        let qdtype = config.qparams_dtype();
        Self {
            qmin: config.range().qmin() as f32,
            qmax: config.range().qmax() as f32,
            mid: ((config.range().qmin() + config.range().qmax() + 1) / 2) as f32,
            qdtype,
            // torchao's promotion: the arithmetic on x is bf16 only when x and the qparams are
            // bf16.
            p: if T::DTYPE == DType::Bf16 && qdtype == DType::Bf16 {
                DType::Bf16
            } else {
                DType::F32
            },
        }
    }

    /// `y` and the in-range flag of one (widened) element with its group's scale and zero point.
    pub(crate) fn fake_quant_value<T: Element>(&self, v: f32, s: f32, zp: f32) -> (T, bool) {
        if v.is_nan() {
            // As the core op: the same NaN, quieted, and out of range.
            return (
                T::from_f32(f32::from_bits(v.to_bits() | super::QUIET_BIT)),
                false,
            );
        }
        let (p, qdtype, mid) = (self.p, self.qdtype, self.mid);
        let mv = sat(qdtype, zp - sat(qdtype, s * mid));
        let pre = rq(p, rq(p, v - mv) / s);
        // +-inf (an infinite x, or x - mv overflowing) lands on its side.
        let r = pre.round_ties_even();
        let q = r.clamp(self.qmin, self.qmax);
        let t = rd::<T>(rq(p, (q - mid) * s));
        (T::from_f32(rq(p, t + zp)), self.qmin <= r && r <= self.qmax)
    }
}

/// A dynamic fake-quantization for tensors with the groups of one shape: the reference's
/// counterpart of [`crate::GpuDynamic`] (same checks, same results).
#[derive(Debug, Clone, PartialEq)]
pub struct Dynamic {
    config: DynamicConfig,
    groups: usize,
}

impl Dynamic {
    /// For tensors with the groups of `shape`.
    pub fn new(config: DynamicConfig, shape: &[usize]) -> Result<Self> {
        let groups = config.granularity().channels(shape)?;
        Ok(Self { config, groups })
    }

    /// The configuration.
    pub fn config(&self) -> &DynamicConfig {
        &self.config
    }

    /// [`fake_quant_dynamic`], for a shape with this object's number of groups.
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>> {
        let layout = self.config.granularity().param_layout(shape, x.len())?;
        if layout.channels() != self.groups {
            return Err(crate::Error::LengthMismatch {
                what: "groups of the shape",
                expected: self.groups,
                actual: layout.channels(),
            });
        }
        fake_quant_dynamic(&self.config, x, shape)
    }
}
