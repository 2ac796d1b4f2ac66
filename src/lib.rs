//! # fakequant
//!
//! Fake quantization for quantization-aware training (QAT) as WGSL compute kernels on wgpu, bit
//! for bit identical to a CPU reference that is the executable specification.
//!
//! - [`quant`]: ranges, scales and zero points, validated on construction.
//! - [`dynamic`] and [`float_quant`]: qparams computed per group in the call (torchao's LLM
//!   recipes), and the floating-point formats (FP8, MX, NVFP4).
//! - [`reference`](mod@reference): the CPU reference (read it for the exact semantics).
//! - [`gpu`]: the device path, at three levels with one naming rule: host slices
//!   ([`GpuContext::fake_quant`]), device tensors (`*_device`: [`GpuFakeQuant::forward_device`])
//!   and recording (`record_*`: [`GpuFakeQuant::record_forward`]) into a [`Recorder`], a caller's
//!   command encoder or a [`Prerecording`] replayed without creating anything
//!   ([`GpuContext::prerecord`], [`Prerecorded`]).
//! - [`backend`]: the traits ([`Backend`], [`ObserverOps`], [`LsqOps`]) that the reference
//!   ([`Reference`]) and the GPU ([`GpuContext`]) both implement, so generic code runs on either
//!   with the same bits.
//!
//! ```no_run
//! use fakequant::{FakeQuant, GpuContext, QuantParams, QuantRange};
//! # fn main() -> fakequant::Result<()> {
//! let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.05, 0))?;
//! let x = [0.1f32, -2.0, 7.0];
//! let ctx = GpuContext::new()?;
//! let gpu = ctx.fake_quant(&op, &x, &[3])?;
//! let cpu = fakequant::reference::fake_quant(&op, &x, &[3])?;
//! assert!(gpu.y.iter().zip(&cpu.y).all(|(a, b)| a.to_bits() == b.to_bits()));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod backend;
pub mod cpu;
pub mod dtype;
pub mod dynamic;
pub mod error;
pub mod float_quant;
pub mod gpu;
pub mod histogram;
pub mod lsq;
pub mod observer;
pub mod quant;
pub mod reference;
pub mod select;

pub use backend::{Backend, DynamicOps, FloatQuantOps, HistogramOps, LsqOps, ObserverOps};
pub use cpu::{Cpu, CpuDynamic, CpuFloatQuant, CpuHistogramObserver, CpuLsq, CpuObserver};
pub use dtype::{DType, Element};
pub use dynamic::{DynamicConfig, DynamicOutput, DynamicScheme};
pub use error::{Error, Result};
pub use float_quant::{
    ElementFormat, FloatQuantConfig, FloatQuantOutput, FloatScales, FloatScaling, MxScaleRule,
};
pub use gpu::{
    DispatchLimits, GpuBatchStats, GpuContext, GpuDynamic, GpuFakeQuant, GpuFloatQuant,
    GpuHistogramObserver, GpuLsq, GpuLsqGrads, GpuMask, GpuObserver, GpuTensor, Prerecorded,
    Prerecording, Recorder, TensorBinding,
};
pub use histogram::{CalibrationMethod, Histogram, HistogramConfig, HistogramDomain};
pub use lsq::{GradScale, LsqConfig, LsqGrads};
pub use observer::{Averaging, MinMax, Mode, ObserverConfig, ObserverState, QScheme};
pub use quant::{
    ChannelLayout, FakeQuant, Granularity, PackedMask, ParamLayout, QuantParams, QuantRange,
    Rounding, StridedGroups,
};
pub use reference::{FakeQuantOutput, Reference};
pub use select::BestBackend;
