//! The GPU path. A [`GpuContext`] owns the device (`context.rs`); memory, upload and read-back are
//! in `memory.rs`; the kernel registry, cache, recording and planners in `kernel/`; each op family
//! (fake-quant, observers, LSQ, dynamic, floating-point formats) in its own module, at three levels: host slices, device tensors,
//! and recording into a [`Recorder`] (a caller's encoder, or a [`Prerecording`] replayed by
//! [`Prerecorded`] without creating anything).
//!
//! Sizes, offsets and counts in this module are computed with checked or saturating arithmetic;
//! the lint below makes new code say so, or say in an `allow` why a computation cannot overflow
//! (its inputs bounded by a check made before).
#![cfg_attr(not(test), warn(clippy::arithmetic_side_effects))]

mod backend;
mod context;
mod dynamic;
mod errors;
mod fake_quant;
mod float_quant;
mod histogram;
pub(crate) mod kernel;
mod lsq;
mod memory;
mod observer;
mod permute;

/// The kernel families: one line each (with their shader modules in `kernel/shaders.rs`).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const FAMILIES: &[fn() -> kernel::FamilyDecl] = &[
    fake_quant::declarations,
    observer::declarations,
    lsq::declarations,
    dynamic::declarations,
    float_quant::declarations,
    histogram::declarations,
    permute::declarations,
];

pub use context::{DispatchLimits, GpuContext};
pub use dynamic::GpuDynamic;
pub use fake_quant::GpuFakeQuant;
pub use float_quant::GpuFloatQuant;
pub use histogram::GpuHistogramObserver;
pub use kernel::shaders::kernel_sources;
pub use kernel::{Prerecorded, Prerecording, Recorder};
pub use lsq::{GpuLsq, GpuLsqGrads};
pub use memory::{GpuMask, GpuTensor, TensorBinding};
pub use observer::{GpuBatchStats, GpuObserver};
