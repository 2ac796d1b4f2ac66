//! The GPU path: a [`GpuContext`] owns the device and the kernels; the fake-quant family is
//! offered at three levels (host slices, device tensors, recording into a caller's encoder).

mod context;
mod fake_quant;
mod lsq;
mod observer;

pub use context::{
    fake_quant_shader_source, kernel_sources, lsq_shader_source, observer_shader_source,
    DispatchLimits, GpuContext, GpuMask, GpuTensor, TensorBinding,
};
pub use fake_quant::GpuFakeQuant;
pub use lsq::{GpuLsq, GpuLsqGrads};
pub use observer::{GpuBatchStats, GpuObserver};
