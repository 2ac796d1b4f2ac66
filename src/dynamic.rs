//! Dynamic quantization parameters: a scale and a zero point computed from each group's own
//! values in the same call (torchao's per-group weight and per-token activation recipes), and the
//! fake-quantization with them.
//!
//! The rules, per group of the [`Granularity`] (per tensor, per channel, per group, per token),
//! over the group's finite values (NaN and infinities are skipped, as the observers skip them;
//! a group with none counts as all zeros). `rd(v)` rounds an f32 result to the input's element
//! type (identity for f32): torchao computes the qparams in the input's dtype.
//!
//! - [`DynamicScheme::Symmetric`] (torchao `get_group_qparams_symmetric`):
//!   `mn = min(min, 0)`, `mx = max(max, 0)`, `s = max(rd(max(-mn, mx) / ((qmax - qmin) / 2)), eps)`,
//!   zero point 0.
//! - [`DynamicScheme::Asymmetric`] (torchao's per-token rule, `_choose_qparams_affine` with zero
//!   preserved): `s = max(rd(rd(mx - mn) / (qmax - qmin)), eps)`,
//!   `zp = clamp(qmin - rne(rd(mn / s)), qmin, qmax)`.
//! - [`DynamicScheme::AsymmetricFloat`] (torchao's `ZeroPointDomain.FLOAT`, the tinygemm uint4
//!   recipe): `mn`, `mx` without zero, `s = rd(max(rd(w / (qmax - qmin)), eps))` with
//!   `w = rd(mx - mn)` (the input type's largest finite value when that overflows),
//!   `zp = rd(mn + rd(s * mid))` with `mid = (qmin + qmax + 1) / 2`, both then rounded to the
//!   qparams' precision (f32 or bf16).
//!
//! The integer-domain schemes then fake-quantize with the core op (see [`crate::reference`]),
//! multiplying by the reciprocal as torchao does. The float domain computes, in torchao's order
//! and dtypes: `mv = zp - s * mid` in the qparams' precision, `pre = (x - mv) / s`,
//! `q = clamp(rne(pre), qmin, qmax)`, `y = rd(rd((q - mid) * s) + zp)`; a NaN stays the same NaN,
//! quieted (as in the core op), and `+-inf` lands on its side.
//!
//! `eps` defaults to torchao's: the smallest normal number of the input's type for the integer
//! domain (2^-126 for f32 and bf16, 2^-14 for f16), `1e-6` for the float domain. Integer-domain
//! scales are capped at 2^126 (a group whose range overflows f32 gets that scale) so that every
//! group has a valid reciprocal.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::{Granularity, QuantRange};

/// How a group's qparams follow from its values (see the [module](self) documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DynamicScheme {
    /// Zero point 0, the range symmetric around zero.
    #[default]
    Symmetric,
    /// An integer zero point; the range includes zero.
    Asymmetric,
    /// A float zero point (torchao's `ZeroPointDomain.FLOAT`); the range is the group's own.
    AsymmetricFloat,
}

/// A dynamic fake-quantization: range, scheme, granularity, `eps` and the precision its float
/// zero points and scales are kept in.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    range: QuantRange,
    scheme: DynamicScheme,
    granularity: Granularity,
    eps: Option<f32>,
    qparams_dtype: DType,
}

impl DynamicConfig {
    /// A configuration with torchao's default `eps` and f32 qparams. A symmetric range must
    /// contain 0 (its zero point).
    pub fn new(range: QuantRange, scheme: DynamicScheme, granularity: Granularity) -> Result<Self> {
        if scheme == DynamicScheme::Symmetric && !(range.qmin() <= 0 && 0 <= range.qmax()) {
            return Err(Error::InvalidRange {
                qmin: range.qmin(),
                qmax: range.qmax(),
                reason: "a symmetric dynamic range must contain 0, its zero point",
            });
        }
        Ok(Self {
            range,
            scheme,
            granularity,
            eps: None,
            qparams_dtype: DType::F32,
        })
    }

    /// torchao's int4 weights: symmetric groups of `group_size` along the last axis of a 2-D
    /// weight (`axis` 1), range [-8, 7].
    pub fn int4_weight(group_size: usize) -> Self {
        Self {
            range: QuantRange::INT4,
            scheme: DynamicScheme::Symmetric,
            granularity: Granularity::per_group(1, group_size),
            eps: None,
            qparams_dtype: DType::F32,
        }
    }

    /// torchao's int8 per-token activations: asymmetric, range [-128, 127].
    pub fn int8_per_token() -> Self {
        Self {
            range: QuantRange::INT8,
            scheme: DynamicScheme::Asymmetric,
            granularity: Granularity::PerToken,
            eps: None,
            qparams_dtype: DType::F32,
        }
    }

    /// The smallest scale, from 2^-126 (a smaller one would have no finite reciprocal) to 1 (a
    /// larger one would make the float domain's 16-bit scales and zero points overflow).
    pub fn with_eps(mut self, eps: f32) -> Result<Self> {
        if !(f32::MIN_POSITIVE..=1.0).contains(&eps) {
            return Err(Error::InvalidSetting(format!(
                "dynamic eps {eps:e} must lie in [2^-126, 1]"
            )));
        }
        self.eps = Some(eps);
        Ok(self)
    }

    /// The precision the float-domain scales and zero points are kept in: `DType::F32` (default)
    /// or `DType::Bf16` (torchao's `Int4WeightOnlyQATQuantizer`). Integer-domain scales are f32.
    pub fn with_qparams_dtype(mut self, dtype: DType) -> Result<Self> {
        if dtype == DType::F16 {
            return Err(Error::InvalidSetting(
                "dynamic qparams are kept in f32 or bf16, not f16".into(),
            ));
        }
        self.qparams_dtype = dtype;
        Ok(self)
    }

    /// The quantization range.
    pub fn range(&self) -> QuantRange {
        self.range
    }

    /// The scheme.
    pub fn scheme(&self) -> DynamicScheme {
        self.scheme
    }

    /// The granularity.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The precision of the float-domain qparams.
    pub fn qparams_dtype(&self) -> DType {
        self.qparams_dtype
    }

    /// `eps` for inputs of `dtype`: the configured one, or torchao's default. The float domain
    /// rounds its scale to the input's type after the `max` with `eps`, so there `eps` is at
    /// least the type's smallest positive value (f16: 2^-24): a configured eps that would
    /// round to 0 would give a scale of 0, and NaN out of finite input.
    pub fn eps_for(&self, dtype: DType) -> f32 {
        let eps = self.eps.unwrap_or(match (self.scheme, dtype) {
            (DynamicScheme::AsymmetricFloat, _) => 1e-6,
            (_, DType::F16) => 2f32.powi(-14),
            _ => f32::MIN_POSITIVE,
        });
        match (self.scheme, dtype) {
            (DynamicScheme::AsymmetricFloat, DType::F16) => eps.max(2f32.powi(-24)),
            _ => eps,
        }
    }
}

/// What a dynamic fake-quantization returns: `y`, the clip mask, and the qparams it chose, one
/// per group in flat order (integer zero points as exact f32 values), for export to the integer
/// model.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicOutput<T = f32> {
    /// The fake-quantized tensor.
    pub y: Vec<T>,
    /// `true` where the rounded value lay inside `[qmin, qmax]` (the straight-through mask).
    pub mask: crate::quant::PackedMask,
    /// The scale of each group.
    pub scales: Vec<f32>,
    /// The zero point of each group.
    pub zero_points: Vec<f32>,
}
