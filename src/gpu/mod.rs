//! The GPU path: a [`GpuContext`] owns the device and the kernels; the fake-quant family is
//! offered at three levels (host slices, device tensors, recording into a caller's encoder), and
//! recorded work can be kept and replayed without creating anything ([`Prerecorded`]).

mod context;
mod fake_quant;
mod lsq;
mod observer;
mod prerecorded;

pub use context::{
    fake_quant_shader_source, kernel_sources, lsq_shader_source, observer_shader_source,
    wide_shader_source, DispatchLimits, GpuContext, GpuMask, GpuTensor, TensorBinding,
};
pub use fake_quant::GpuFakeQuant;
pub use lsq::{GpuLsq, GpuLsqGrads};
pub use observer::{GpuBatchStats, GpuObserver};
pub use prerecorded::Prerecorded;
