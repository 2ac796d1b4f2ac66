//! CPU reference for LSQ / LSQ+ (semantics listed in [`crate::lsq`]): effective parameters, the
//! forward, per-element gradients, the fixed-order reduction and the initialization from data.

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::lsq::{LsqConfig, LsqGrads};
use crate::observer::{ObserverState, MAX_OBSERVED_SCALE};
use crate::quant::{FakeQuant, ParamLayout, QuantParams, QuantRange, Rounding};
use crate::reference::{fake_quant, fake_quant_value, ste_grad_value, FakeQuantOutput};
use crate::reference::{narrow, widen};

/// The NaN every LSQ gradient reports: one canonical pattern, so that results do not depend on
/// how a processor propagates NaN payloads.
pub const CANONICAL_NAN: f32 = f32::from_bits(0x7fc0_0000);

fn canonical(v: f32) -> f32 {
    if v.is_nan() {
        CANONICAL_NAN
    } else {
        v
    }
}

/// IEEE f32 addition with a canonical NaN.
pub fn add(a: f32, b: f32) -> f32 {
    canonical(a + b)
}

/// IEEE f32 multiplication with a canonical NaN.
pub fn mul(a: f32, b: f32) -> f32 {
    canonical(a * b)
}

/// Terms per block of the reduction.
pub const BLOCK: usize = 4096;
/// Lanes per block (each adds every 256th term of the block).
pub const LANES: usize = 256;
/// Lanes per group of the second step (16 groups of 16 lanes).
pub const GROUP: usize = 16;

/// The sum of at most [`BLOCK`] terms, in three sequential steps, each starting from `+0`:
/// lane `t` (of 256) adds terms `t, t + 256, .., t + 15 * 256` (those present); group `g` (of 16)
/// adds lanes `16 g .. 16 g + 15`; the block adds groups `0 .. 15`. (Two synchronisations of a
/// 256-thread workgroup per 4096 terms on the device.)
pub fn block_sum(terms: &[f32]) -> f32 {
    debug_assert!(terms.len() <= BLOCK);
    let lanes: Vec<f32> = (0..LANES)
        .map(|t| {
            terms
                .iter()
                .skip(t)
                .step_by(LANES)
                .fold(0.0, |acc, &v| add(acc, v))
        })
        .collect();
    lanes
        .chunks(GROUP)
        .map(|group| group.iter().fold(0.0, |acc, &v| add(acc, v)))
        .fold(0.0, add)
}

/// The fixed-order sum every LSQ reduction uses: [`block_sum`] over blocks of [`BLOCK`]
/// consecutive terms, then the same over the blocks' sums, until one value is left (`+0` for no
/// term).
pub fn tree_sum(terms: &[f32]) -> f32 {
    if terms.len() <= BLOCK {
        return block_sum(terms);
    }
    let partials: Vec<f32> = terms.chunks(BLOCK).map(block_sum).collect();
    tree_sum(&partials)
}

/// The scale used in forward and backward: `s` clamped to `[eps, 2^126]`, NaN to `eps`.
pub fn effective_scale(config: &LsqConfig, s: f32) -> f32 {
    if s.is_nan() || s < config.eps() {
        config.eps()
    } else if s > MAX_OBSERVED_SCALE {
        MAX_OBSERVED_SCALE
    } else {
        s
    }
}

/// The zero point used in forward and backward: `z` rounded half to even, clamped to the range;
/// NaN counts as 0.
pub fn effective_zero_point(config: &LsqConfig, z: f32) -> i32 {
    let (qmin, qmax) = (config.range().qmin(), config.range().qmax());
    if z.is_nan() {
        return 0.clamp(qmin, qmax);
    }
    z.round_ties_even().clamp(qmin as f32, qmax as f32) as i32
}

/// How flat indices of a tensor of `shape` map to the quantizer's channels.
pub fn lsq_layout(config: &LsqConfig, shape: &[usize], len: usize) -> Result<ParamLayout> {
    config.granularity().param_layout(shape, len)
}

pub(crate) fn check_params(
    layout: &ParamLayout,
    scales: &[f32],
    zero_points: &[f32],
) -> Result<()> {
    // No channel at all (an axis of length 0) is refused as `effective_op` refuses it, so that
    // the forward and the backward agree.
    if layout.channels() == 0
        || scales.len() != layout.channels()
        || zero_points.len() != layout.channels()
    {
        return Err(Error::ParamLengthMismatch {
            scales: scales.len(),
            zero_points: zero_points.len(),
        });
    }
    Ok(())
}

/// The fake-quantization that the learnable parameters define right now (effective parameters).
pub fn effective_op(config: &LsqConfig, scales: &[f32], zero_points: &[f32]) -> Result<FakeQuant> {
    if scales.is_empty() || zero_points.len() != scales.len() {
        return Err(Error::ParamLengthMismatch {
            scales: scales.len(),
            zero_points: zero_points.len(),
        });
    }
    let s: Vec<f32> = scales.iter().map(|&s| effective_scale(config, s)).collect();
    let z: Vec<i32> = zero_points
        .iter()
        .map(|&z| effective_zero_point(config, z))
        .collect();
    if config.granularity() == crate::Granularity::PerTensor && s.len() != 1 {
        return Err(Error::ParamLengthMismatch {
            scales: s.len(),
            zero_points: z.len(),
        });
    }
    let params = QuantParams::new(config.granularity(), s, z);
    Ok(FakeQuant::new(config.range(), params)?.with_rounding(Rounding::Reciprocal))
}

/// The LSQ forward: the core fake-quant with the effective parameters, for any element type.
pub fn forward<T: Element>(
    config: &LsqConfig,
    x: &[T],
    shape: &[usize],
    scales: &[f32],
    zero_points: &[f32],
) -> Result<FakeQuantOutput<T>> {
    let layout = lsq_layout(config, shape, x.len())?;
    check_params(&layout, scales, zero_points)?;
    fake_quant(&effective_op(config, scales, zero_points)?, x, shape)
}

/// Per-element gradients `(dx, dscale term, dzero_point term)` for effective scale `s` and zero
/// point `zp` (see [`crate::lsq`]).
pub fn element_grads(x: f32, dy: f32, s: f32, zp: i32, range: QuantRange) -> (f32, f32, f32) {
    let (y, in_range) = fake_quant_value(x, s, zp, range, Rounding::Reciprocal);
    let dx = ste_grad_value(dy, in_range);
    if x.is_nan() {
        return (dx, CANONICAL_NAN, CANONICAL_NAN);
    }
    let inv = 1.0f32 / s;
    if in_range {
        return (dx, mul(dy, (y - x) * inv), 0.0);
    }
    // The quotient as the forward forms it; +-inf lands on its side.
    let q = (x * inv).round_ties_even() as f64 + zp as f64;
    let edge = if q < range.qmin() as f64 {
        range.qmin() - zp
    } else {
        range.qmax() - zp
    };
    (dx, mul(dy, edge as f32), mul(-dy, s))
}

/// The LSQ backward: `dx` per element and the reduced `dscale`, `dzero_point` per channel, each
/// `tree_sum` of the channel's terms in flat order times `grad_factor`. Any element type: `x` and
/// `dy` are widened exactly, `dx` is rounded to `T`, the reduced gradients are f32.
pub fn backward<T: Element>(
    config: &LsqConfig,
    x: &[T],
    dy: &[T],
    shape: &[usize],
    scales: &[f32],
    zero_points: &[f32],
) -> Result<LsqGrads<T>> {
    let grads = backward_f32(config, &widen(x), &widen(dy), shape, scales, zero_points)?;
    Ok(LsqGrads {
        dx: narrow(grads.dx),
        dscale: grads.dscale,
        dzero_point: grads.dzero_point,
    })
}

fn backward_f32(
    config: &LsqConfig,
    x: &[f32],
    dy: &[f32],
    shape: &[usize],
    scales: &[f32],
    zero_points: &[f32],
) -> Result<LsqGrads> {
    let layout = lsq_layout(config, shape, x.len())?;
    check_params(&layout, scales, zero_points)?;
    if dy.len() != x.len() {
        return Err(Error::LengthMismatch {
            what: "dy vs x",
            expected: x.len(),
            actual: dy.len(),
        });
    }
    let s: Vec<f32> = scales.iter().map(|&v| effective_scale(config, v)).collect();
    let z: Vec<i32> = zero_points
        .iter()
        .map(|&v| effective_zero_point(config, v))
        .collect();
    let mut dx = Vec::with_capacity(x.len());
    let mut scale_terms = vec![Vec::new(); layout.channels()];
    let mut zero_point_terms = vec![Vec::new(); layout.channels()];
    for (i, (&xi, &gi)) in x.iter().zip(dy).enumerate() {
        let c = layout.channel_of(i);
        let (d, ts, tz) = element_grads(xi, gi, s[c], z[c], config.range());
        dx.push(d);
        scale_terms[c].push(ts);
        zero_point_terms[c].push(tz);
    }
    let g = config.grad_factor(x.len());
    Ok(LsqGrads {
        dx,
        dscale: scale_terms.iter().map(|t| mul(tree_sum(t), g)).collect(),
        dzero_point: zero_point_terms
            .iter()
            .map(|t| mul(tree_sum(t), g))
            .collect(),
    })
}

/// LSQ's initialization from data, per channel: `(2 * (sum(|x|) / count)) / sqrt(qmax)` over the
/// finite elements (see [`crate::lsq`]); 1 for a channel without a finite element. Any element
/// type (widening is exact).
pub fn init_scales<T: Element>(config: &LsqConfig, x: &[T], shape: &[usize]) -> Result<Vec<f32>> {
    let layout = lsq_layout(config, shape, x.len())?;
    let mut terms = vec![Vec::new(); layout.channels()];
    let mut counts = vec![0u64; layout.channels()];
    for (i, v) in x.iter().enumerate() {
        let v = v.to_f32();
        let c = layout.channel_of(i);
        if v.is_finite() {
            terms[c].push(v.abs());
            counts[c] += 1;
        } else {
            terms[c].push(0.0);
        }
    }
    let sqrt_qmax = (config.range().qmax() as f32).sqrt();
    Ok(terms
        .iter()
        .zip(&counts)
        .map(|(t, &count)| {
            if count == 0 {
                return 1.0;
            }
            let mean = tree_sum(t) / count as f32;
            (2.0 * mean) / sqrt_qmax
        })
        .collect())
}

/// The learnable parameters an observer's calibrated qparams give: its scales, and its integer zero
/// points as f32 (exact: at most 16 bits).
pub fn params_from_observer(state: &ObserverState) -> (Vec<f32>, Vec<f32>) {
    (
        state.scales.clone(),
        state.zero_points.iter().map(|&z| z as f32).collect(),
    )
}

/// An LSQ quantizer holding its learnable parameters: the object form of the functions above, the
/// reference's counterpart of [`crate::GpuLsq`].
#[derive(Debug, Clone, PartialEq)]
pub struct Lsq {
    config: LsqConfig,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
}

impl Lsq {
    /// A quantizer with initial learnable parameters (one scale and zero point per channel, one
    /// per tensor). Any values are accepted: the effective ones are clamped (see [`crate::lsq`]).
    pub fn new(config: LsqConfig, scales: &[f32], zero_points: &[f32]) -> Result<Self> {
        check_param_counts(&config, scales.len(), zero_points.len())?;
        Ok(Self {
            config,
            scales: scales.to_vec(),
            zero_points: zero_points.to_vec(),
        })
    }

    /// A quantizer initialized from an observer's calibrated qparams ([`params_from_observer`]).
    pub fn from_observer(config: LsqConfig, state: &ObserverState) -> Result<Self> {
        let (scales, zero_points) = params_from_observer(state);
        Self::new(config, &scales, &zero_points)
    }

    /// The configuration.
    pub fn config(&self) -> &LsqConfig {
        &self.config
    }

    /// The learnable scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The learnable zero points.
    pub fn zero_points(&self) -> &[f32] {
        &self.zero_points
    }

    /// The forward ([`forward`]) with the current parameters.
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<FakeQuantOutput<T>> {
        forward(&self.config, x, shape, &self.scales, &self.zero_points)
    }

    /// The backward ([`backward`]) with the current parameters.
    pub fn backward<T: Element>(&self, x: &[T], dy: &[T], shape: &[usize]) -> Result<LsqGrads<T>> {
        backward(&self.config, x, dy, shape, &self.scales, &self.zero_points)
    }

    /// Initializes the scales from data ([`init_scales`]) and returns them.
    pub fn init_from_data<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<Vec<f32>> {
        let scales = init_scales(&self.config, x, shape)?;
        check_param_counts(&self.config, scales.len(), self.zero_points.len())?;
        self.scales = scales.clone();
        Ok(scales)
    }

    /// Replaces the learnable parameters.
    pub fn load_params(&mut self, scales: &[f32], zero_points: &[f32]) -> Result<()> {
        for (what, len) in [("scales", scales.len()), ("zero points", zero_points.len())] {
            if len != self.scales.len() {
                return Err(Error::LengthMismatch {
                    what,
                    expected: self.scales.len(),
                    actual: len,
                });
            }
        }
        self.scales = scales.to_vec();
        self.zero_points = zero_points.to_vec();
        Ok(())
    }
}

/// One scale and zero point per channel, at least one, exactly one per tensor.
pub(crate) fn check_param_counts(
    config: &LsqConfig,
    scales: usize,
    zero_points: usize,
) -> Result<()> {
    if scales == 0
        || zero_points != scales
        || (config.granularity() == crate::Granularity::PerTensor && scales != 1)
    {
        return Err(Error::ParamLengthMismatch {
            scales,
            zero_points,
        });
    }
    Ok(())
}
