//! The QAT ops on burn tensors: validated here, then run through burn's dispatch to the CubeCL
//! and autodiff implementations in [`crate::ops`].

use std::sync::Arc;

use burn::backend::Dispatch;
use burn::tensor::Tensor;
use fakequant::{
    DynamicConfig, FakeQuant, FloatQuantConfig, GpuDynamic, GpuFloatQuant, GpuObserver, LsqConfig,
    Mode, ObserverConfig, ObserverState,
};

use crate::interop::element_type;
use crate::ops::{FakeQuantKernel, LsqKernel, QatOps};
use crate::{Error, QatDevice, Result};

/// Checks what every op asks of an input: the shared device and a float type the kernels take.
fn check_input<const D: usize>(qat: &QatDevice, what: &'static str, x: &Tensor<D>) -> Result<()> {
    qat.check_device(what, &x.device())?;
    let dtype = x.dtype();
    if element_type(dtype).is_none() {
        return Err(Error::UnsupportedDType { what, dtype });
    }
    Ok(())
}

/// A fake-quantization with fixed parameters (per tensor, per channel, per group), prepared on
/// a [`QatDevice`]: its forward on burn tensors is [`FakeQuant`]'s, bit for bit, and its
/// backward under autodiff is the straight-through estimator (`dy` where `x` was inside the
/// range, 0 where clipped), the mask kept bit-packed between the two.
#[derive(Debug, Clone)]
pub struct FakeQuantizer {
    qat: QatDevice,
    op: FakeQuant,
    kernel: FakeQuantKernel,
}

impl FakeQuantizer {
    /// Prepares `op` on `qat` (its parameters uploaded once).
    pub fn new(qat: &QatDevice, op: &FakeQuant) -> Result<Self> {
        let gpu = qat.context().prepare(op)?;
        Ok(Self {
            qat: qat.clone(),
            op: op.clone(),
            kernel: FakeQuantKernel::Fixed(Arc::new(gpu)),
        })
    }

    /// The fake-quantization.
    pub fn op(&self) -> &FakeQuant {
        &self.op
    }

    /// `y = fake_quant(x)`, differentiable (straight-through) when `x` tracks gradients.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_input(&self.qat, "x", &x)?;
        self.op.layout(&x.dims(), x.shape().num_elements())?;
        let y = Dispatch::qat_fake_quant(x.into_dispatch(), self.kernel.clone());
        Ok(Tensor::from_dispatch(y))
    }
}

/// Checks that `x` has the shape an object was made for.
fn check_shape<const D: usize>(what: &'static str, x: &Tensor<D>, shape: &[usize]) -> Result<()> {
    if x.dims() != shape {
        return Err(Error::UnsupportedParameter {
            what,
            reason: format!(
                "shape {:?}; this quantizer was made for {shape:?}",
                x.dims()
            ),
        });
    }
    Ok(())
}

/// Dynamic fake-quantization (torchao's per-group int4 weights and per-token int8
/// activations): each call computes every group's scale and zero point from the group's own
/// values, then fake-quantizes, in one pass over `x` for groups of 32 to 4096, on burn's
/// buffers; the backward under autodiff is the straight-through estimator with the clip mask.
/// The qparams of the last call stay on the device for export ([`Self::qparams`]).
#[derive(Debug, Clone)]
pub struct DynamicQuantizer {
    qat: QatDevice,
    shape: Vec<usize>,
    dynamic: Arc<GpuDynamic>,
}

impl DynamicQuantizer {
    /// A dynamic fake-quantization with `config` for tensors of `shape`.
    pub fn new(qat: &QatDevice, config: &DynamicConfig, shape: &[usize]) -> Result<Self> {
        let dynamic = qat.context().create_dynamic(config, shape)?;
        Ok(Self {
            qat: qat.clone(),
            shape: shape.to_vec(),
            dynamic: Arc::new(dynamic),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DynamicConfig {
        self.dynamic.config()
    }

    /// `y = fake_quant(x)` with `x`'s own qparams, differentiable (straight-through) when `x`
    /// tracks gradients.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_input(&self.qat, "x", &x)?;
        check_shape("x", &x, &self.shape)?;
        let kernel = FakeQuantKernel::Dynamic(Arc::clone(&self.dynamic));
        Ok(Tensor::from_dispatch(Dispatch::qat_fake_quant(
            x.into_dispatch(),
            kernel,
        )))
    }

    /// The scales and zero points of the last call (one per group, f32), read back.
    pub fn qparams(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(self.dynamic.read_qparams()?)
    }
}

/// A floating-point format (FP8 with amax scaling, MX, NVFP4) on burn tensors: the library's
/// exact conversion on burn's buffers; the backward under autodiff passes `dy` through as
/// torchao's MX and NVFP4 QAT do ([`Self::with_clip_mask`]: the clip mask instead).
#[derive(Debug, Clone)]
pub struct FloatQuantizer {
    qat: QatDevice,
    shape: Vec<usize>,
    quant: Arc<GpuFloatQuant>,
    pass_through: bool,
}

impl FloatQuantizer {
    /// The format of `config` for tensors of `shape`.
    pub fn new(qat: &QatDevice, config: &FloatQuantConfig, shape: &[usize]) -> Result<Self> {
        let quant = qat.context().create_float_quant(config, shape)?;
        Ok(Self {
            qat: qat.clone(),
            shape: shape.to_vec(),
            quant: Arc::new(quant),
            pass_through: true,
        })
    }

    /// The backward with the clip mask (`dx = dy` where the value was inside the format's
    /// range after scaling, 0 where it saturated; Model Optimizer's non-pass-through mode).
    pub fn with_clip_mask(mut self) -> Self {
        self.pass_through = false;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &FloatQuantConfig {
        self.quant.config()
    }

    /// `y`: `x` through the format and back, in `x`'s type, differentiable when `x` tracks
    /// gradients.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_input(&self.qat, "x", &x)?;
        check_shape("x", &x, &self.shape)?;
        let kernel = FakeQuantKernel::Float {
            quant: Arc::clone(&self.quant),
            pass_through: self.pass_through,
        };
        Ok(Tensor::from_dispatch(Dispatch::qat_fake_quant(
            x.into_dispatch(),
            kernel,
        )))
    }

    /// The element codes and scales of the last call, read back (the deployed tensor).
    pub fn codes_and_scales(&self) -> Result<(Vec<u8>, fakequant::FloatScales)> {
        Ok((self.quant.read_codes()?, self.quant.read_scales()?))
    }
}

/// An observer (min/max statistics, moving average, per tensor or per channel) whose state
/// lives on the shared device: each [`ObserverQuantizer::forward`] is the library's fused step
/// in the given [`Mode`] (calibrate: observe and pass `x` through; QAT: observe, then
/// fake-quantize with this step's qparams; frozen: fake-quantize only), with the
/// straight-through backward under autodiff. Nothing is read back per step.
#[derive(Debug, Clone)]
pub struct ObserverQuantizer {
    qat: QatDevice,
    observer: Arc<GpuObserver>,
}

impl ObserverQuantizer {
    /// A fresh observer for tensors of `shape` (the shape fixes the channel count).
    pub fn new(qat: &QatDevice, config: &ObserverConfig, shape: &[usize]) -> Result<Self> {
        let observer = qat.context().create_observer(config, shape)?;
        Ok(Self {
            qat: qat.clone(),
            observer: Arc::new(observer),
        })
    }

    /// The fused step on `x` (see the type's documentation).
    pub fn forward<const D: usize>(&self, x: Tensor<D>, mode: Mode) -> Result<Tensor<D>> {
        check_input(&self.qat, "x", &x)?;
        let config = self.observer.config();
        let channels = config.channels_for(&x.dims())?;
        if channels != self.observer.channels() {
            return Err(Error::UnsupportedParameter {
                what: "x",
                reason: format!(
                    "shape {:?} has {channels} channels; this observer has {}",
                    x.dims(),
                    self.observer.channels()
                ),
            });
        }
        let kernel = FakeQuantKernel::Observer(Arc::clone(&self.observer), mode);
        Ok(Tensor::from_dispatch(Dispatch::qat_fake_quant(
            x.into_dispatch(),
            kernel,
        )))
    }

    /// The number of channels (1 per tensor).
    pub fn channels(&self) -> usize {
        self.observer.channels()
    }

    /// The configuration.
    pub fn config(&self) -> &ObserverConfig {
        self.observer.config()
    }

    /// The state (running min/max, scale, zero point per channel), read back from the device.
    pub fn state(&self) -> Result<ObserverState> {
        Ok(self.observer.read_state()?)
    }

    /// Replaces the state (a checkpoint being resumed).
    pub fn load_state(&self, state: &ObserverState) -> Result<()> {
        Ok(self.observer.load_state(state)?)
    }
}

/// An LSQ (or LSQ+) quantizer whose learnable scale and zero point are burn tensors (module
/// parameters, updated by burn's optimizers): the forward is the library's LSQ forward, and the
/// backward gives `dx`, `dscale` and `dzero_point` from the library's kernels, reduced in the
/// reference's order.
#[derive(Debug, Clone)]
pub struct LsqQuantizer {
    qat: QatDevice,
    kernel: LsqKernel,
}

impl LsqQuantizer {
    /// A quantizer with `config` for `channels` learnable scales (1 for per tensor).
    pub fn new(qat: &QatDevice, config: &LsqConfig, channels: usize) -> Result<Self> {
        // The library's parameter buffers are overwritten from burn's tensors by every call.
        let lsq = qat
            .context()
            .create_lsq(config, &vec![1.0; channels], &vec![0.0; channels])?;
        Ok(Self {
            qat: qat.clone(),
            kernel: LsqKernel {
                grads: lsq.create_grads()?,
                lsq: Arc::new(lsq),
            },
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LsqConfig {
        self.kernel.lsq.config()
    }

    /// The LSQ forward of `x` with `scale` and `zero_point` (f32, shape `[channels]`),
    /// differentiable in all three.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<D>,
        scale: Tensor<1>,
        zero_point: Tensor<1>,
    ) -> Result<Tensor<D>> {
        check_input(&self.qat, "x", &x)?;
        let channels = self.kernel.lsq.channels();
        for (what, p) in [("scale", &scale), ("zero_point", &zero_point)] {
            self.qat.check_device(what, &p.device())?;
            if p.dtype() != burn::tensor::DType::F32 {
                return Err(Error::UnsupportedParameter {
                    what,
                    reason: format!("dtype {:?}; LSQ parameters are f32", p.dtype()),
                });
            }
            if p.dims() != [channels] {
                return Err(Error::UnsupportedParameter {
                    what,
                    reason: format!(
                        "shape {:?}; this quantizer has {channels} channels",
                        p.dims()
                    ),
                });
            }
        }
        let x_channels = self.config().channels_for(&x.dims())?;
        if x_channels != channels {
            return Err(Error::UnsupportedParameter {
                what: "x",
                reason: format!(
                    "shape {:?} has {x_channels} channels for {:?}; this quantizer has {channels}",
                    x.dims(),
                    self.config().granularity()
                ),
            });
        }
        let y = Dispatch::qat_lsq(
            x.into_dispatch(),
            scale.into_dispatch(),
            zero_point.into_dispatch(),
            self.kernel.clone(),
        );
        Ok(Tensor::from_dispatch(y))
    }
}
