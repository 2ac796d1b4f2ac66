//! Element types of the tensors (`x`, `y`, `dy`, `dx`): f32, f16 and bf16. Scales, zero points,
//! observer state and reduced gradients stay f32.
//!
//! Semantics of the 16-bit types, defined by the CPU reference: the input is widened to f32
//! exactly, everything is computed exactly as on f32, and the result is rounded to the storage type
//! to nearest, ties to even (the `half` crate's `from_f32`), NaN payloads as that crate converts
//! them. PyTorch's fake-quant kernels on f16/bf16 compute in f32 internally (`opmath`) and round
//! the output to the storage type the same way.

use crate::error::{Error, Result};

/// The storage type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the upper half of a binary32).
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// Bytes that `len` elements occupy, rounded up to whole 4-byte words; `u64::MAX` when that
    /// does not fit a `u64` (no buffer is that large, so the size check that follows fails).
    pub fn bytes_for(self, len: usize) -> u64 {
        (len as u64)
            .checked_mul(self.size())
            .and_then(|b| b.checked_next_multiple_of(4))
            .unwrap_or(u64::MAX)
    }

    /// Checks that two tensors of an op share a type.
    pub(crate) fn check_same(self, what: &'static str, other: DType) -> Result<()> {
        if self != other {
            return Err(Error::InvalidBuffer {
                what,
                reason: format!("element type {other:?} differs from the input's {self:?}"),
            });
        }
        Ok(())
    }
}

/// A host element type: `f32`, `half::f16` or `half::bf16`.
pub trait Element: bytemuck::Pod + Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Exact widening to f32.
    fn to_f32(self) -> f32;
    /// Rounding from f32 to nearest, ties to even.
    fn from_f32(v: f32) -> Self;
    /// The bit pattern, zero-extended.
    fn to_bits_u32(self) -> u32;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_bits_u32(self) -> u32 {
        self.to_bits()
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_bits_u32(self) -> u32 {
        self.to_bits() as u32
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::Bf16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_bits_u32(self) -> u32 {
        self.to_bits() as u32
    }
}
