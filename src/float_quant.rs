//! Floating-point fake quantization: FP8 (E4M3, E5M2), FP6 (E2M3, E3M2) and FP4 (E2M1) elements
//! with a scale per tensor, channel or block, including the OCP microscaling (MX) family's shared
//! E8M0 block scales and NVFP4's two-level E4M3 block scales (torchao 0.18's formulas by default).
//!
//! Every conversion here works on bit patterns with integer arithmetic (see
//! [`ElementFormat::encode`]): the CPU reference is the specification a device kernel reproduces
//! without a device `log2`, `exp2`, float-to-float cast or approximate division.
//!
//! ## Element formats
//!
//! | format | exponent, mantissa bits | bias | largest | specials |
//! |---|---|---|---|---|
//! | [`ElementFormat::Fp8E4M3`] (`float8_e4m3fn`) | 4, 3 | 7 | 448 | NaN `0x7f`; no infinity |
//! | [`ElementFormat::Fp8E5M2`] | 5, 2 | 15 | 57344 | infinity `0x7c`, NaN `0x7f` |
//! | [`ElementFormat::Fp6E2M3`] | 2, 3 | 1 | 7.5 | none |
//! | [`ElementFormat::Fp6E3M2`] | 3, 2 | 3 | 28 | none |
//! | [`ElementFormat::Fp4E2M1`] | 2, 1 | 1 | 6 | none |
//!
//! Conversion from f32 rounds to nearest, ties to even, on the format's grid (subnormals
//! included) and **saturates**: a finite value beyond the largest, and an infinity, become the
//! largest with the sign kept (the scaled paths clamp before the cast, as torchao does). A NaN
//! becomes the format's NaN code with its sign (FP8) or, in the formats without NaN, the largest
//! magnitude with its sign: the code is only for export, the fake-quantized value of a NaN is
//! that NaN (quieted), as in every op of this crate.
//!
//! ## Scales (see [`FloatScaling`])
//!
//! - Amax (torchao's `Float8FakeQuantizer`, per tensor, per channel on any axis, per group):
//!   `a = rd(clamp(amax, lower, upper))` in the input's type (saturating at its largest finite
//!   value, where torchao's would be infinite), `s = rd(a / max)` as f32, elements
//!   `q = encode(clamp(x / s, -max, max))` (a correctly rounded division), `y = rd(q * s)`. A
//!   block whose scale is 0 (all zeros, or subnormals whose scale underflows) has `y = +-0` with
//!   the sign of `x` instead of torchao's NaN.
//! - MX (OCP microscaling, blocks of 32 along the last axis, one E8M0 byte each), from
//!   `amax = max |x|` of the block as f32: [`MxScaleRule::Floor`] (OCP: `floor(log2(amax)) -
//!   emax_elem`), `Ceil`, `Even` (torchao's variants), and [`MxScaleRule::Rceil`]
//!   (`ceil(log2(amax / max))`, NVIDIA's and torchao's QAT default), each an exponent read from the
//!   bits, clamped to E8M0's range. Elements `x * 2^-e` converted to the element format, then
//!   `y = rd(value * 2^e)` (the product exact in f32; torchao's `rd(rd(value) * rd(2^e))` for its
//!   f32 and bf16, where both factors are exact in the type).
//! - NVFP4 (blocks of 16 of E2M1 with an E4M3 block scale; optionally an f32 tensor scale `g`,
//!   two-level): `bs = amax / 6`, `s8 = e4m3(clamp(bs / g, 2^-6, 448))`, elements
//!   `x * ((1 / g) / s8)` (each operation rounded to f32), `y = rd(value * (g * s8))`.
//!
//! ## Backward
//!
//! Straight-through: `dx = dy` (torchao's MX and NVFP4 QAT are pure pass-through), or with the
//! clip mask (`dx = dy` where the scaled element was not saturated, as modelopt's non-pass-through
//! mode), bit-packed as every mask of this crate.

use crate::error::{Error, Result};
use crate::quant::Granularity;

/// An element format (see the [module](self) documentation for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementFormat {
    /// FP8 E4M3 (`float8_e4m3fn`): no infinities, largest 448.
    Fp8E4M3,
    /// FP8 E5M2: IEEE-like, largest finite 57344.
    Fp8E5M2,
    /// FP6 E2M3: largest 7.5, no specials.
    Fp6E2M3,
    /// FP6 E3M2: largest 28, no specials.
    Fp6E3M2,
    /// FP4 E2M1: largest 6, no specials.
    Fp4E2M1,
}

impl ElementFormat {
    /// Exponent bits.
    pub fn exponent_bits(self) -> u32 {
        match self {
            Self::Fp8E4M3 => 4,
            Self::Fp8E5M2 => 5,
            Self::Fp6E2M3 | Self::Fp4E2M1 => 2,
            Self::Fp6E3M2 => 3,
        }
    }

    /// Mantissa bits.
    pub fn mantissa_bits(self) -> u32 {
        match self {
            Self::Fp8E4M3 | Self::Fp6E2M3 => 3,
            Self::Fp8E5M2 | Self::Fp6E3M2 => 2,
            Self::Fp4E2M1 => 1,
        }
    }

    /// Exponent bias.
    pub fn bias(self) -> i32 {
        (1 << (self.exponent_bits() - 1)) - 1
    }

    /// Bits of a code: sign, exponent, mantissa.
    pub fn bits(self) -> u32 {
        1 + self.exponent_bits() + self.mantissa_bits()
    }

    /// The largest finite magnitude's code (without the sign).
    pub fn max_code(self) -> u32 {
        match self {
            Self::Fp8E4M3 => 0x7e,
            Self::Fp8E5M2 => 0x7b,
            Self::Fp6E2M3 | Self::Fp6E3M2 => 0x1f,
            Self::Fp4E2M1 => 0x7,
        }
    }

    /// The largest finite value.
    pub fn max(self) -> f32 {
        self.decode(self.max_code())
    }

    /// The exponent of the largest power of two the format holds (`emax_elem` of the OCP
    /// specification): 8, 15, 2, 4, 2.
    pub fn max_pow2(self) -> i32 {
        (self.max_code() >> self.mantissa_bits()) as i32 - self.bias()
    }

    /// The NaN code without the sign, for the formats that have one.
    pub fn nan_code(self) -> Option<u32> {
        match self {
            Self::Fp8E4M3 | Self::Fp8E5M2 => Some(0x7f),
            _ => None,
        }
    }

    /// The code of f32 `v`: rounded to nearest, ties to even, saturating at the largest finite
    /// magnitude (infinities included); a NaN gives the NaN code with its sign, or the largest
    /// magnitude with its sign in a format without NaN.
    ///
    /// Exact by construction: the f32 significand is shifted to the format's quantum at the
    /// value's binade (or the subnormal quantum) and rounded with integer compares; the code is
    /// the count of quanta plus the binade's offset, so a carry into the next binade needs no
    /// special case.
    pub fn encode(self, v: f32) -> u32 {
        let bits = v.to_bits();
        let sign = (bits >> 31) << (self.bits() - 1);
        let magnitude = bits & 0x7fff_ffff;
        if magnitude > 0x7f80_0000 {
            return sign | self.nan_code().unwrap_or(self.max_code());
        }
        if magnitude >= 0x7f80_0000 {
            return sign | self.max_code();
        }
        if magnitude == 0 {
            return sign;
        }
        let mbits = self.mantissa_bits() as i32;
        // v = m * 2^(e - 23) with m < 2^24 (the implicit bit for normals).
        let field = (magnitude >> 23) as i32;
        let (e, m) = if field == 0 {
            (-126, magnitude)
        } else {
            (field - 127, (magnitude & 0x7f_ffff) | 0x80_0000)
        };
        let emin = 1 - self.bias();
        // The quantum: 2^(binade - mbits), the binade not below the smallest normal's.
        let quantum = e.max(emin) - mbits;
        // m * 2^(e - 23) / 2^quantum = m / 2^shift; shift >= 23 - mbits > 0.
        let shift = 23 + quantum - e;
        let n = if shift >= 26 {
            0 // below a quarter quantum (m < 2^24): rounds to zero
        } else {
            let shift = shift as u32;
            let kept = m >> shift;
            let rest = m & ((1 << shift) - 1);
            let half = 1 << (shift - 1);
            kept + u32::from(rest > half || (rest == half && kept & 1 == 1))
        };
        // Normal binades start at code (e - emin + 1) << mbits with n in [2^mbits, 2^(mbits+1)];
        // subnormals are n itself. Both: offset + n - 2^mbits for e >= emin.
        let code = if e >= emin {
            (((e - emin + 1) as u32) << mbits) + n - (1 << mbits)
        } else {
            n
        };
        sign | code.min(self.max_code())
    }

    /// The value of `code` (the low [`Self::bits`] bits; the rest are ignored), exactly: NaN for a
    /// NaN code, infinity for E5M2's.
    pub fn decode(self, code: u32) -> f32 {
        let code = code & ((1 << self.bits()) - 1);
        let sign = if code >> (self.bits() - 1) == 1 {
            -1.0
        } else {
            1.0
        };
        let magnitude = code & ((1 << (self.bits() - 1)) - 1);
        match self {
            Self::Fp8E4M3 if magnitude == 0x7f => return f32::NAN.copysign(sign),
            Self::Fp8E5M2 if magnitude > 0x7c => return f32::NAN.copysign(sign),
            Self::Fp8E5M2 if magnitude == 0x7c => return f32::INFINITY * sign,
            _ => {}
        }
        let mbits = self.mantissa_bits();
        let field = (magnitude >> mbits) as i32;
        let mantissa = (magnitude & ((1 << mbits) - 1)) as f32;
        // Exact in f32: at most 4 significant bits times a power of two within f32's range.
        let value = if field == 0 {
            mantissa * pow2(1 - self.bias() - mbits as i32)
        } else {
            (mantissa + (1u32 << mbits) as f32) * pow2(field - self.bias() - mbits as i32)
        };
        value * sign
    }
}

/// `2^k` as an f32 for `k` in `[-149, 127]` (subnormal powers included), exactly.
pub(crate) fn pow2(k: i32) -> f32 {
    if k >= -126 {
        f32::from_bits(((k + 127) as u32) << 23)
    } else {
        f32::from_bits(1 << (k + 149))
    }
}

/// How an MX block's shared E8M0 exponent follows from its `amax` (f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MxScaleRule {
    /// OCP's rule: `floor(log2(amax)) - max_pow2`, the exponent field of amax (-127 for a
    /// subnormal amax).
    Floor,
    /// torchao's `CEIL`: the floor rule, plus one when amax is not a power of two.
    Ceil,
    /// torchao's `EVEN`: amax's mantissa rounded to the element's mantissa bits first.
    Even,
    /// `ceil(log2(amax / max))` (NVIDIA's and torchao's QAT default), from the bits of the
    /// correctly rounded quotient.
    #[default]
    Rceil,
}

/// How the scale of an element block is chosen (see the [module](self) documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FloatScaling {
    /// An f32 scale `amax / max` per tensor, per channel or per group (torchao's
    /// `Float8FakeQuantizer`): `amax` clamped to `[lower, upper]` when given (torchao's
    /// `hp_value_lb`, `hp_value_ub`).
    Amax {
        /// Which elements share a scale.
        granularity: Granularity,
        /// A floor for amax (finite, positive), or none.
        lower: Option<f32>,
        /// A ceiling for amax (finite, positive), or none.
        upper: Option<f32>,
    },
    /// OCP microscaling: blocks of 32 consecutive elements of the last axis, an E8M0 scale each.
    Mx(MxScaleRule),
    /// NVFP4: blocks of 16 consecutive elements of the last axis, an E4M3 scale each, and with
    /// `Some(g)` a per-tensor f32 scale `g` in `[2^-119, 2^119]` (two-level; torchao's
    /// `per_tensor_amax_to_scale` gives `amax / 2688`).
    Nvfp4(Option<f32>),
    /// NVFP4 as NVIDIA's Model Optimizer computes it (always two-level, tensor scale `g` in
    /// `[2^-119, 2^119]`): block scales `e4m3(clamp(amax / (6 * g), 2^-9, 448))` with a zero
    /// replaced by 1 (E4M3 subnormal scales allowed), elements `x / (s8 * g)` (a correctly
    /// rounded division), `y = rd(value * (s8 * g))`, and `-0` coded as `+0`.
    Nvfp4Modelopt(f32),
}

/// A validated floating-point fake-quantization: element format and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatQuantConfig {
    format: ElementFormat,
    scaling: FloatScaling,
}

impl FloatQuantConfig {
    /// `format` with `scaling`. NVFP4 takes E2M1 elements; MX any element format; the amax
    /// scaling FP8 formats (torchao's and modelopt's FP8 fake-quant). Bounds and tensor scales must
    /// be finite and positive, the lower bound at most the upper.
    pub fn new(format: ElementFormat, scaling: FloatScaling) -> Result<Self> {
        let positive = |what: &str, v: Option<f32>| match v {
            Some(v) if !(v.is_finite() && v > 0.0) => Err(Error::InvalidSetting(format!(
                "{what} must be finite and positive, got {v:e}"
            ))),
            _ => Ok(()),
        };
        match scaling {
            FloatScaling::Amax {
                lower,
                upper,
                granularity,
            } => {
                if !matches!(format, ElementFormat::Fp8E4M3 | ElementFormat::Fp8E5M2) {
                    return Err(Error::Unsupported(format!(
                        "amax scaling takes the FP8 formats, not {format:?} (use MX or NVFP4 \
                         block scaling for FP6 and FP4)"
                    )));
                }
                if matches!(granularity, Granularity::PerToken) {
                    return Err(Error::Unsupported(
                        "amax scaling per token: use per-channel on the last axis's rows or \
                         per-group"
                            .into(),
                    ));
                }
                positive("the amax lower bound", lower)?;
                positive("the amax upper bound", upper)?;
                if let (Some(l), Some(u)) = (lower, upper) {
                    if l > u {
                        return Err(Error::InvalidSetting(format!(
                            "the amax lower bound {l:e} exceeds the upper bound {u:e}"
                        )));
                    }
                }
            }
            FloatScaling::Mx(_) => {}
            FloatScaling::Nvfp4(_) | FloatScaling::Nvfp4Modelopt(_) => {
                let tensor_scale = match scaling {
                    FloatScaling::Nvfp4Modelopt(g) => Some(g),
                    FloatScaling::Nvfp4(g) => g,
                    _ => None,
                };
                if format != ElementFormat::Fp4E2M1 {
                    return Err(Error::Unsupported(format!(
                        "NVFP4 takes E2M1 elements, not {format:?}"
                    )));
                }
                // (1 / g) / s8 and g * s8, with s8 in [2^-6, 448], must stay finite and normal.
                if let Some(g) = tensor_scale {
                    if !(pow2(-119)..=pow2(119)).contains(&g) {
                        return Err(Error::InvalidSetting(format!(
                            "the NVFP4 tensor scale must lie in [2^-119, 2^119], got {g:e}"
                        )));
                    }
                }
            }
        }
        Ok(Self { format, scaling })
    }

    /// FP8 with one scale per tensor (torchao's `Float8FakeQuantizeConfig()` default is per row:
    /// [`Self::fp8_per_row`]).
    pub fn fp8(format: ElementFormat, granularity: Granularity) -> Result<Self> {
        Self::new(
            format,
            FloatScaling::Amax {
                granularity,
                lower: None,
                upper: None,
            },
        )
    }

    /// FP8 with a scale per row of a 2-D tensor (per channel along axis 0).
    pub fn fp8_per_row(format: ElementFormat) -> Result<Self> {
        Self::fp8(format, Granularity::per_channel(0))
    }

    /// An MX format: MXFP8 (E4M3, E5M2), MXFP6, MXFP4 with `rule`.
    pub fn mx(format: ElementFormat, rule: MxScaleRule) -> Result<Self> {
        Self::new(format, FloatScaling::Mx(rule))
    }

    /// NVFP4, single-level (`None`) or two-level with tensor scale `g`.
    pub fn nvfp4(tensor_scale: Option<f32>) -> Result<Self> {
        Self::new(ElementFormat::Fp4E2M1, FloatScaling::Nvfp4(tensor_scale))
    }

    /// NVFP4 with Model Optimizer's conventions and tensor scale `g` (see
    /// [`FloatScaling::Nvfp4Modelopt`]).
    pub fn nvfp4_modelopt(tensor_scale: f32) -> Result<Self> {
        Self::new(
            ElementFormat::Fp4E2M1,
            FloatScaling::Nvfp4Modelopt(tensor_scale),
        )
    }

    /// The element format.
    pub fn format(&self) -> ElementFormat {
        self.format
    }

    /// The scaling.
    pub fn scaling(&self) -> FloatScaling {
        self.scaling
    }

    /// Elements per block along the last axis (MX 32, NVFP4 16), or `None` for amax scaling.
    pub fn block(&self) -> Option<usize> {
        match self.scaling {
            FloatScaling::Amax { .. } => None,
            FloatScaling::Mx(_) => Some(32),
            FloatScaling::Nvfp4(_) | FloatScaling::Nvfp4Modelopt(_) => Some(16),
        }
    }

    /// The granularity of the scales for a tensor: the amax scaling's own, or blocks along the
    /// last axis.
    pub fn granularity(&self, shape: &[usize]) -> Granularity {
        match (self.scaling, self.block()) {
            (FloatScaling::Amax { granularity, .. }, _) => granularity,
            (_, Some(block)) => Granularity::per_group(shape.len().saturating_sub(1), block),
            (_, None) => Granularity::PerTensor,
        }
    }
}

/// NVFP4's tensor scale from a tensor's amax, as torchao's `per_tensor_amax_to_scale`:
/// `amax / (448 * 6)`.
pub fn nvfp4_tensor_scale(amax: f32) -> f32 {
    amax / 2688.0
}

/// The scales a floating-point fake-quantization chose, for export.
#[derive(Debug, Clone, PartialEq)]
pub enum FloatScales {
    /// Amax scaling: one f32 per tensor, channel or group.
    F32(Vec<f32>),
    /// MX: one E8M0 byte per block (the scale is `2^(byte - 127)`, 255 NaN).
    E8M0(Vec<u8>),
    /// NVFP4: one E4M3 byte per block, and the tensor scale of two-level scaling.
    E4M3 {
        /// The block scales' codes.
        blocks: Vec<u8>,
        /// The per-tensor scale, if any.
        tensor: Option<f32>,
    },
}

/// What a floating-point fake-quantization returns: `y` in the input's type, the clip mask, and
/// the deployed tensor (one element code per element, unpacked; [`pack_fp4`] packs E2M1 codes as
/// torchao does) with its scales.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatQuantOutput<T> {
    /// The fake-quantized values.
    pub y: Vec<T>,
    /// Bit `i` set where element `i` was not saturated (and is not NaN).
    pub mask: crate::quant::PackedMask,
    /// The element codes (the low [`ElementFormat::bits`] bits of each byte).
    pub codes: Vec<u8>,
    /// The scales.
    pub scales: FloatScales,
}

/// Packs 4-bit codes two to a byte, element `2i` in the low nibble of byte `i` (torchao's
/// `pack_uint4` layout); an odd count leaves the last high nibble 0.
pub fn pack_fp4(codes: &[u8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|pair| (pair[0] & 0xf) | (pair.get(1).copied().unwrap_or(0) & 0xf) << 4)
        .collect()
}
