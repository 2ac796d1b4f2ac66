//! Quantization-aware training in [burn](https://burn.dev) on fakequant's bit-exact kernels.
//!
//! burn and fakequant share one wgpu device ([`QatDevice`]); the QAT ops run the library's WGSL
//! kernels on the wgpu buffers that hold burn's tensors (no read-back, no copy) and register
//! their backward with burn's autodiff, so a QAT model trains with burn's optimizers and its
//! results equal fakequant's CPU reference bit for bit.
//!
//! ```no_run
//! use burn::tensor::Tensor;
//! use fakequant::{FakeQuant, QuantParams, QuantRange};
//! use fakequant_burn::{FakeQuantizer, QatDevice};
//!
//! # fn main() -> fakequant_burn::Result<()> {
//! let qat = QatDevice::new()?;
//! let device = qat.autodiff();
//! let op = FakeQuant::new(QuantRange::signed(8)?, QuantParams::per_tensor(0.05, 0))?;
//! let fq = FakeQuantizer::new(&qat, &op)?;
//! let x = Tensor::<2>::from_floats([[0.1, -2.0], [7.0, 0.33]], &device).require_grad();
//! let y = fq.forward(x.clone())?; // fake-quantized on the GPU, in x's own buffer's pool
//! let grads = y.sum().backward(); // straight-through: 1 inside the range, 0 where clipped
//! let dx = x.grad(&grads);
//! # let _ = dx; Ok(()) }
//! ```
#![warn(missing_docs)]

mod device;
mod error;
mod functions;
mod interop;
mod layers;
pub mod ops;

pub use device::QatDevice;
pub use error::{Error, Result};
pub use functions::{
    DynamicQuantizer, FakeQuantizer, FloatQuantizer, LsqQuantizer, ObserverQuantizer,
};
pub use interop::{binding_stats, BindingStats};
pub use layers::{QConfig, QatConv2d, QatLinear, QatModule, QatQuantizer};
