//! The reference floating-point fake-quantization (see [`crate::float_quant`] for the rules).

use super::{widen, QUIET_BIT};
use crate::dtype::Element;
use crate::error::{check_len, Result};
use crate::float_quant::{
    pow2, ElementFormat, FloatQuantConfig, FloatQuantOutput, FloatScales, FloatScaling, MxScaleRule,
};
use crate::quant::{PackedMask, ParamLayout};

/// Rounds an f32 result to the element type `T` and back.
fn rd<T: Element>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

/// Rounds to `T` saturating: a value beyond `T`'s largest finite one (an amax bound beyond the
/// type, or `f32::MAX` rounding up in bf16) becomes that largest value, so that a scale stays
/// finite.
fn sat<T: Element>(v: f32) -> f32 {
    let r = rd::<T>(v);
    if r.is_infinite() {
        match T::DTYPE {
            crate::DType::F32 => f32::MAX,
            crate::DType::F16 => half::f16::MAX.to_f32(),
            crate::DType::Bf16 => half::bf16::MAX.to_f32(),
        }
    } else {
        r
    }
}

/// One element's scaled value `data` (before the clamp) converted: its code, its value, and
/// whether it was in range (not saturated, not NaN).
fn convert(format: ElementFormat, data: f32) -> (u32, f32, bool) {
    let max = format.max();
    let in_range = data.abs() <= max;
    let clamped = if data.is_nan() {
        data
    } else {
        data.clamp(-max, max)
    };
    let code = format.encode(clamped);
    (code, format.decode(code), in_range)
}

/// `x` scaled by a block's `factor` (dividing or multiplying), with every special case explicit so
/// that no NaN's sign or payload is left to the platform: a NaN `x` stays that NaN, quieted; a NaN
/// factor (a block whose amax is NaN) gives the canonical NaN; dividing by `+inf` (torchao's
/// E8M0 byte 255) gives `+-0` for a finite `x` and the canonical NaN for an infinite one. Else one
/// correctly rounded operation (the factor is positive, so an infinite `x` stays infinite).
fn scale_element(x: f32, factor: f32, divide: bool) -> f32 {
    if x.is_nan() {
        return f32::from_bits(x.to_bits() | QUIET_BIT);
    }
    if factor.is_nan() {
        return f32::NAN;
    }
    if divide && factor.is_infinite() {
        return if x.is_infinite() {
            f32::NAN
        } else {
            0.0f32.copysign(x)
        };
    }
    if divide {
        x / factor
    } else {
        x * factor
    }
}

/// The value of an E8M0 byte, `2^(byte - 127)` (2^-127 is an f32 subnormal), NaN for 255.
fn e8m0_value(byte: u32) -> f32 {
    if byte == 255 {
        f32::NAN
    } else {
        pow2(byte as i32 - 127)
    }
}

/// `ceil(log2(d))` for a positive finite f32 `d`, exactly, from its bits.
fn ceil_log2(d: f32) -> i32 {
    let bits = d.to_bits();
    let field = (bits >> 23) as i32;
    if field == 0 {
        // d = b * 2^-149: floor(log2(b)) - 149, plus one unless b is a power of two.
        let floor = 31 - bits.leading_zeros() as i32 - 149;
        return floor + i32::from(!bits.is_power_of_two());
    }
    field - 127 + i32::from(bits & 0x7f_ffff != 0)
}

/// The E8M0 byte of an MX block with `amax` (f32, non-negative or NaN).
pub fn mx_scale_byte(format: ElementFormat, rule: MxScaleRule, amax: f32) -> u32 {
    if amax.is_nan() {
        return 255;
    }
    let max_pow2 = format.max_pow2();
    if rule == MxScaleRule::Rceil {
        let descale = amax / format.max();
        if descale.is_infinite() {
            return 254;
        }
        if descale == 0.0 {
            return 0;
        }
        return (ceil_log2(descale).clamp(-127, 127) + 127) as u32;
    }
    let mut bits = amax.to_bits();
    if rule == MxScaleRule::Even {
        bits = (bits + (1 << (22 - format.mantissa_bits()))) & 0xff80_0000;
    }
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    if rule == MxScaleRule::Ceil {
        e += i32::from(bits & 0x7f_ffff != 0);
    }
    ((e - max_pow2).clamp(-127, 128) + 127) as u32
}

/// The factor an MX block's elements are scaled by before conversion, and whether it divides
/// (`FLOOR`, `CEIL`, `EVEN`: `x / sf`) or multiplies (`RCEIL`: `x * rcp`), as torchao forms them.
fn mx_element_factor(rule: MxScaleRule, byte: u32, amax: f32, max: f32) -> (f32, bool) {
    if rule == MxScaleRule::Rceil {
        let rcp = match byte {
            255 => amax / max, // NaN
            254 => pow2(-127),
            0 => 1.0,
            _ => pow2(127 - byte as i32),
        };
        return (rcp, false);
    }
    // The byte's bits as an f32, at least 2^-126: byte 255 (a NaN amax) divides by +inf, so the
    // block's finite elements get code 0 and its NaN the NaN code (its values are all NaN anyway).
    (f32::from_bits(byte << 23).max(f32::MIN_POSITIVE), true)
}

/// What each element of one channel (block) needs: its scale, derived from the channel's amax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BlockScale {
    /// FP8 amax scaling: `s = amax / max_elem` (0: no usable scale).
    Amax(f32),
    /// MX: the rule, the E8M0 byte and the block's amax (RCEIL's factor is formed from both).
    Mx {
        rule: MxScaleRule,
        byte: u32,
        amax: f32,
    },
    /// NVFP4: the E4M3 code of the block scale.
    Nvfp4(u32),
}

/// A floating-point fake-quantization split where it parallelizes: per channel, [`Self::block`]
/// turns the channel's amax ([`Self::finite_amax`] says which) into its [`BlockScale`]; per
/// element, [`Self::element`] gives `y`, the code and the in-range flag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FloatPlan {
    format: ElementFormat,
    scaling: FloatScaling,
}

impl FloatPlan {
    pub(crate) fn new(config: &FloatQuantConfig) -> Self {
        Self {
            format: config.format(),
            scaling: config.scaling(),
        }
    }

    /// Whether the amax is over the finite values only (FP8's amax scaling) or over every value
    /// with NaN propagating (MX and NVFP4 blocks, as torchao).
    pub(crate) fn finite_amax(&self) -> bool {
        matches!(self.scaling, FloatScaling::Amax { .. })
    }

    /// NVFP4's per-tensor scale and whether the conventions are Model Optimizer's.
    fn nvfp4(&self) -> (Option<f32>, bool) {
        match self.scaling {
            FloatScaling::Nvfp4Modelopt(g) => (Some(g), true),
            FloatScaling::Nvfp4(g) => (g, false),
            _ => (None, false),
        }
    }

    /// The scale of a channel whose amax is `a`, for inputs of type `T`.
    pub(crate) fn block<T: Element>(&self, a: f32) -> BlockScale {
        let format = self.format;
        match self.scaling {
            FloatScaling::Amax { lower, upper, .. } => {
                let a = upper.map_or(a, |u| a.min(u));
                let a = lower.map_or(a, |l| a.max(l));
                BlockScale::Amax(rd::<T>(sat::<T>(a) / format.max()))
            }
            FloatScaling::Mx(rule) => BlockScale::Mx {
                rule,
                byte: mx_scale_byte(format, rule, a),
                amax: a,
            },
            FloatScaling::Nvfp4(_) | FloatScaling::Nvfp4Modelopt(_) => {
                // torchao: bs = amax / 6 (then / g), clamped to [2^-6, 448]. Model Optimizer:
                // bs = amax / (6 * g), a zero replaced by 1, clamped to [2^-9, 448].
                let (tensor, modelopt) = self.nvfp4();
                let floor = pow2(if modelopt { -9 } else { -6 });
                let bs = match tensor {
                    Some(g) if modelopt => match a / (6.0 * g) {
                        0.0 => 1.0,
                        bs => bs,
                    },
                    Some(g) => a / 6.0 / g,
                    None => a / 6.0,
                };
                BlockScale::Nvfp4(ElementFormat::Fp8E4M3.encode(if bs.is_nan() {
                    bs
                } else {
                    bs.clamp(floor, 448.0)
                }))
            }
        }
    }

    /// One element `v` (widened) of a channel with scale `block`: `y` (as f32, exactly a `T`
    /// value), the code, and whether it was in range.
    pub(crate) fn element<T: Element>(&self, v: f32, block: BlockScale) -> (f32, u32, bool) {
        let format = self.format;
        let nan_of = |v: f32| f32::from_bits(v.to_bits() | QUIET_BIT);
        match block {
            BlockScale::Mx { rule, byte, amax } => {
                let (factor, divide) = mx_element_factor(rule, byte, amax, format.max());
                let (code, value, ok) = convert(format, scale_element(v, factor, divide));
                let out = if v.is_nan() {
                    nan_of(v)
                } else if byte == 255 {
                    f32::NAN
                } else {
                    // Exact in f32 (a 4-bit significand times 2^-127 or more), rounded once to
                    // T: torchao's rd(rd(value) * rd(2^e)) for f32 and bf16, where both factors
                    // are exact in T; for f16 it also keeps a block with an infinity from
                    // giving 0 * rd(2^126) = NaN.
                    rd::<T>(value * e8m0_value(byte))
                };
                (out, code, ok && !v.is_nan())
            }
            BlockScale::Nvfp4(block) => {
                // Elements times (1 / s8) or ((1 / g) / s8), values times s8 or (g * s8)
                // (torchao); divided by s8 * g, values times s8 * g, -0 coded as +0 (Model
                // Optimizer).
                let (tensor, modelopt) = self.nvfp4();
                let s8 = ElementFormat::Fp8E4M3.decode(block);
                let (factor, divide, dequant) = match tensor {
                    Some(g) if modelopt => (s8 * g, true, s8 * g),
                    Some(g) => ((1.0 / g) / s8, false, g * s8),
                    None => (1.0 / s8, false, s8),
                };
                let (code, _, ok) = convert(format, scale_element(v, factor, divide));
                let negative_zero = 1 << (format.bits() - 1);
                let code = if modelopt && code == negative_zero {
                    0
                } else {
                    code
                };
                let out = if v.is_nan() {
                    nan_of(v)
                } else if s8.is_nan() {
                    f32::NAN
                } else {
                    rd::<T>(format.decode(code) * dequant)
                };
                (out, code, ok && !v.is_nan())
            }
            BlockScale::Amax(s) => {
                if v.is_nan() {
                    (nan_of(v), format.encode(v), false)
                } else if s == 0.0 {
                    // A block without a usable scale: zeros with x's sign (torchao: 0 / 0).
                    let zero = 0.0f32.copysign(v);
                    (zero, format.encode(zero), true)
                } else {
                    let (code, value, ok) = convert(format, scale_element(v, s, true));
                    (rd::<T>(value * s), code, ok)
                }
            }
        }
    }

    /// The scales as the output reports them.
    pub(crate) fn scales(&self, blocks: &[BlockScale]) -> FloatScales {
        let (tensor, _) = self.nvfp4();
        let byte = |b: &BlockScale| match *b {
            BlockScale::Mx { byte, .. } | BlockScale::Nvfp4(byte) => byte as u8,
            BlockScale::Amax(_) => 0,
        };
        match self.scaling {
            FloatScaling::Amax { .. } => FloatScales::F32(
                blocks
                    .iter()
                    .map(|b| match *b {
                        BlockScale::Amax(s) => s,
                        _ => 0.0,
                    })
                    .collect(),
            ),
            FloatScaling::Mx(_) => FloatScales::E8M0(blocks.iter().map(byte).collect()),
            FloatScaling::Nvfp4(_) | FloatScaling::Nvfp4Modelopt(_) => FloatScales::E4M3 {
                blocks: blocks.iter().map(byte).collect(),
                tensor,
            },
        }
    }
}

/// Floating-point fake-quantization of a row-major tensor of `shape` and element type `T` (see
/// [`crate::float_quant`]): each channel's (block's) scale from its amax, then each element.
pub fn fake_quant_float<T: Element>(
    config: &FloatQuantConfig,
    x: &[T],
    shape: &[usize],
) -> Result<FloatQuantOutput<T>> {
    let layout = config.granularity(shape).param_layout(shape, x.len())?;
    let wide = widen(x);
    let plan = FloatPlan::new(config);
    let blocks: Vec<BlockScale> = channel_amax(&wide, &layout, plan.finite_amax())
        .into_iter()
        .map(|a| plan.block::<T>(a))
        .collect();
    let mut y = Vec::with_capacity(x.len());
    let mut codes = Vec::with_capacity(x.len());
    let mut in_range = Vec::with_capacity(x.len());
    for (i, &v) in wide.iter().enumerate() {
        let (value, code, ok) = plan.element::<T>(v, blocks[layout.channel_of(i)]);
        y.push(T::from_f32(value));
        codes.push(code as u8);
        in_range.push(ok);
    }
    Ok(FloatQuantOutput {
        y,
        mask: PackedMask::from_bools(&in_range),
        codes,
        scales: plan.scales(&blocks),
    })
}

/// `max |x|` per channel of `layout`: over the finite values (a channel without one has 0) when
/// `finite_only`, else over every value with NaN propagating (torchao's block amax: a NaN makes
/// the block's scale NaN, an infinity makes it infinite).
fn channel_amax(x: &[f32], layout: &ParamLayout, finite_only: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; layout.channels()];
    for (i, &v) in x.iter().enumerate() {
        let a = &mut out[layout.channel_of(i)];
        if v.is_nan() {
            if !finite_only {
                *a = f32::NAN;
            }
        } else if (finite_only && v.is_infinite()) || a.is_nan() {
            continue;
        } else if v.abs() > *a {
            *a = v.abs();
        }
    }
    out
}

/// A floating-point fake-quantization for tensors with the elements and blocks of one shape: the
/// reference's counterpart of [`crate::GpuFloatQuant`] (same checks, same results).
#[derive(Debug, Clone, PartialEq)]
pub struct FloatQuant {
    config: FloatQuantConfig,
    len: usize,
    blocks: usize,
}

impl FloatQuant {
    /// For tensors of `shape`.
    pub fn new(config: FloatQuantConfig, shape: &[usize]) -> Result<Self> {
        let len = crate::quant::numel(shape)?;
        let blocks = config
            .granularity(shape)
            .param_layout(shape, len)?
            .channels();
        Ok(Self {
            config,
            len,
            blocks,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FloatQuantConfig {
        &self.config
    }

    /// [`fake_quant_float`], for a shape with this object's elements and blocks.
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<FloatQuantOutput<T>> {
        self.check_shape(shape)?;
        fake_quant_float(&self.config, x, shape)
    }

    /// Checks that `shape` has this object's elements and blocks.
    pub(crate) fn check_shape(&self, shape: &[usize]) -> Result<()> {
        let len = crate::quant::numel(shape)?;
        check_len("elements of the shape", self.len, len)?;
        let layout = self.config.granularity(shape).param_layout(shape, len)?;
        check_len("blocks of the shape", self.blocks, layout.channels())
    }
}
