//! LSQ / LSQ+: fake quantization with a learnable scale (and zero point), trained by gradient
//! descent (Esser et al. 2019, "Learned Step Size Quantization"; Bhalgat et al. 2020, "LSQ+").
//!
//! The CPU reference ([`crate::reference::lsq`]) defines every bit; the device path
//! ([`crate::gpu::GpuLsq`]) equals it. Per channel (the whole tensor for per-tensor):
//!
//! - **Effective parameters**, the same in forward and backward: the learnable scale `s` is
//!   clamped to `[eps, 2^126]` (a NaN scale becomes `eps`); the learnable zero point `z` is rounded
//!   half to even and clamped to `[qmin, qmax]` (NaN becomes 0, clamped). PyTorch rounds the zero
//!   point differently in its forward and backward; we do not.
//! - **Forward**: the core fake-quant ([`crate::reference::fake_quant`], `Rounding::Reciprocal`)
//!   with the effective scale and zero point.
//! - **Per-element gradients**, with `inv = 1/s` correctly rounded, `y` the forward output:
//!   in range: `dx = dy`, `dscale = dy * ((y - x) * inv)`, `dzero_point = +0`;
//!   below / above the range (including `-inf` / `+inf`): `dx` is the clipped straight-through
//!   gradient of the core, `dscale = dy * (qmin - zp)` / `dy * (qmax - zp)`,
//!   `dzero_point = (-dy) * s`; NaN `x`: `dx` as the core, both terms NaN.
//!   Every operation is one IEEE f32 operation (never fused); any NaN result is the canonical
//!   `0x7fc00000`.
//! - **Reduced gradients**: per channel, the terms of the channel's elements, in flat order, are
//!   summed by [`crate::reference::lsq::tree_sum`] (blocks of 4096: lane `t` of 256 adds terms
//!   `t, t + 256, .., t + 15 * 256`, 16 groups of 16 lanes add their lanes, the block adds its
//!   groups, each sum sequential from `+0`; blocks' sums are summed the same way until one value
//!   is left), then multiplied by `grad_factor`.
//! - **Initialization from data**: `s = (2 * (sum(|x|) / count)) / sqrt(qmax)` over the finite
//!   elements of the channel (the sum by `tree_sum`, non-finite elements counting as `+0` and not
//!   counted; `count` and `sqrt(qmax)` rounded to f32); a channel without a finite element gets 1.

use crate::error::{Error, Result};
use crate::observer::{DEFAULT_EPS, MAX_OBSERVED_SCALE};
use crate::quant::{Granularity, QuantRange};

/// How the reduced gradients are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum GradScale {
    /// LSQ's gradient scaling: `1 / sqrt(numel * qmax)`, `numel` of the whole tensor (as PyTorch),
    /// computed in f64 and rounded to f32; 1 for an empty tensor.
    #[default]
    Lsq,
    /// No scaling (a factor of exactly 1).
    Off,
    /// A caller's factor (finite).
    Custom(f32),
}

/// A validated LSQ configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LsqConfig {
    range: QuantRange,
    granularity: Granularity,
    eps: f32,
    grad_scale: GradScale,
}

impl LsqConfig {
    /// A per-tensor or per-channel LSQ quantizer over `range`, which must contain zero and have
    /// `qmax > 0` (the initialization divides by `sqrt(qmax)`).
    pub fn new(range: QuantRange, granularity: Granularity) -> Result<Self> {
        if range.qmin() > 0 || range.qmax() <= 0 {
            return Err(Error::InvalidLsq(format!(
                "the range [{}, {}] must contain zero and have qmax > 0",
                range.qmin(),
                range.qmax()
            )));
        }
        Ok(Self {
            range,
            granularity,
            eps: DEFAULT_EPS,
            grad_scale: GradScale::default(),
        })
    }

    /// The seed's `default_qat_8bit_lsq_quant_qconfig` for weights: per-channel int8 on axis 0 with
    /// gradient scaling.
    pub fn weight_int8() -> Self {
        Self::new(QuantRange::INT8, Granularity::per_channel(0)).expect("a valid preset")
    }

    /// The same for activations: per-tensor int8 with gradient scaling.
    pub fn activation_int8() -> Self {
        Self::new(QuantRange::INT8, Granularity::PerTensor).expect("a valid preset")
    }

    /// The same configuration with another lower bound for the scale (a normal f32 in
    /// `[2^-126, 2^126]`).
    pub fn with_eps(mut self, eps: f32) -> Result<Self> {
        if !(eps.is_normal() && eps > 0.0 && eps <= MAX_OBSERVED_SCALE) {
            return Err(Error::InvalidLsq(format!(
                "eps must be a normal positive f32 no larger than 2^126, got {eps:e}"
            )));
        }
        self.eps = eps;
        Ok(self)
    }

    /// The same configuration with another gradient scaling.
    pub fn with_grad_scale(mut self, grad_scale: GradScale) -> Result<Self> {
        if let GradScale::Custom(g) = grad_scale {
            if !g.is_finite() {
                return Err(Error::InvalidLsq(format!(
                    "a custom gradient factor must be finite, got {g:e}"
                )));
            }
        }
        self.grad_scale = grad_scale;
        Ok(self)
    }

    /// The quantization range.
    pub fn range(&self) -> QuantRange {
        self.range
    }

    /// The same configuration per tensor or per channel along another axis (see
    /// [`crate::ObserverConfig::with_granularity`]).
    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    /// Per tensor or per channel along an axis.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Lower bound of the effective scale.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// The gradient scaling.
    pub fn grad_scale(&self) -> GradScale {
        self.grad_scale
    }

    /// The factor the reduced gradients are multiplied by, for a tensor of `numel` elements.
    pub fn grad_factor(&self, numel: usize) -> f32 {
        match self.grad_scale {
            GradScale::Off => 1.0,
            GradScale::Custom(g) => g,
            GradScale::Lsq if numel == 0 => 1.0,
            GradScale::Lsq => (1.0 / (numel as f64 * self.range.qmax() as f64).sqrt()) as f32,
        }
    }

    /// The number of channels for a tensor of `shape` (1 per-tensor).
    pub fn channels_for(&self, shape: &[usize]) -> Result<usize> {
        self.granularity.channels(shape)
    }
}

/// The gradients of one LSQ backward: `dx` per element (in the input's element type), `dscale`
/// and `dzero_point` per channel (f32).
#[derive(Debug, Clone, PartialEq)]
pub struct LsqGrads<T = f32> {
    /// Gradient with respect to the input.
    pub dx: Vec<T>,
    /// Gradient with respect to each scale.
    pub dscale: Vec<f32>,
    /// Gradient with respect to each zero point.
    pub dzero_point: Vec<f32>,
}
