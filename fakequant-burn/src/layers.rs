//! QAT layers a burn user swaps in for `Linear` and `Conv2d`: the weights fake-quantized per
//! output channel, the input per tensor, by observers (statistics) or by LSQ (learned ranges),
//! through the calibrate / QAT / frozen modes of the seed's workflow.
//!
//! The learnable LSQ scales and zero points are burn parameters (burn's optimizers update them,
//! burn's records save them). An observer's state lives in the library's device buffers, where
//! its fused step updates it without a read-back; [`QatModule::sync_state`] copies it into the
//! module's `observer_state` parameters before a record is taken, and
//! [`QatModule::restore_state`] loads it back after a record is applied:
//!
//! ```no_run
//! # use fakequant_burn::{QatDevice, QatLinear, QatModule, QConfig};
//! # use burn::module::Module;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let qat = QatDevice::new()?;
//! # let linear = burn::nn::LinearConfig::new(4, 2).init(&qat.autodiff());
//! # let layer = QatLinear::prepare(&qat, linear.clone(), &QConfig::statistics_int8())?;
//! layer.sync_state()?.into_record().save("checkpoint.bpk")?;
//! let resumed = QatLinear::prepare(&qat, linear, &QConfig::statistics_int8())?
//!     .load_record(burn::store::ModuleRecord::load("checkpoint.bpk")?);
//! resumed.restore_state()?;
//! # Ok(()) }
//! ```

use burn::module::{Module, Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use fakequant::{Granularity, LsqConfig, MinMax, Mode, ObserverConfig, ObserverState};

use crate::{Error, LsqQuantizer, ObserverQuantizer, QatDevice, Result};

/// How a QAT layer's weights and inputs are fake-quantized: the seed's two qconfigs.
///
/// Observers always run during calibration. With `learned` set, [`QatModule::start_learning`]
/// turns the calibrated qparams into LSQ's learnable parameters (the seed's "load the
/// pseudo-quantization parameters obtained from calibration"), and QAT learns them from there.
#[derive(Debug, Clone, PartialEq)]
pub struct QConfig {
    /// The weight observer. Its granularity is the layer's: per channel on the weight's output
    /// axis (`Linear`: 1, as burn stores `[d_input, d_output]`; `Conv2d`: 0), unless per tensor.
    pub weight: ObserverConfig,
    /// The input observer (per tensor).
    pub input: ObserverConfig,
    /// LSQ for the weight and the input, when the ranges are learned.
    pub learned: Option<(LsqConfig, LsqConfig)>,
}

impl QConfig {
    /// The seed's `default_qat_8bit_fake_quant_qconfig`: symmetric int8 moving-average min/max
    /// observers, weights per channel, inputs per tensor.
    pub fn statistics_int8() -> Self {
        Self {
            weight: ObserverConfig::qat_weight_int8(),
            input: ObserverConfig::qat_activation_int8(),
            learned: None,
        }
    }

    /// The seed's `default_qat_8bit_lsq_quant_qconfig`: calibrated by the same observers, then
    /// LSQ (int8, gradient scaling) with learnable scales and zero points.
    pub fn lsq_int8() -> Self {
        Self {
            learned: Some((LsqConfig::weight_int8(), LsqConfig::activation_int8())),
            ..Self::statistics_int8()
        }
    }
}

/// The modes and state of a QAT layer or model, in the order the seed's workflow uses them.
pub trait QatModule: Sized {
    /// The same module in `mode`: [`Mode::Calibrate`] observes and passes the float values
    /// through; [`Mode::Qat`] fake-quantizes (observers keep observing, or LSQ learns);
    /// [`Mode::Frozen`] fake-quantizes with fixed ranges (LSQ's parameters get no gradient).
    fn with_mode(self, mode: Mode) -> Self;
    /// For learned ranges: LSQ's parameters from the observers' calibrated qparams. Without
    /// LSQ in the qconfig, the module unchanged.
    fn start_learning(self) -> Result<Self>;
    /// The observers' device state copied into the `observer_state` parameters, so that a
    /// record taken now holds it.
    fn sync_state(self) -> Result<Self>;
    /// The observers' device state loaded from the `observer_state` parameters (after a record
    /// was applied).
    fn restore_state(&self) -> Result<()>;
}

/// The fake-quantization of one tensor of a layer (its weight or its input).
#[derive(Module, Debug)]
pub struct QatQuantizer {
    /// LSQ's learnable scales, one per channel (after [`QatModule::start_learning`]).
    pub scale: Option<Param<Tensor<1>>>,
    /// LSQ's learnable zero points.
    pub zero_point: Option<Param<Tensor<1>>>,
    /// The observer's state as saved: rows running minimum, running maximum, scale and zero
    /// point, one column per channel (see [`QatModule::sync_state`]).
    pub observer_state: Param<Tensor<2>>,
    #[module(skip)]
    runtime: Runtime,
}

#[derive(Debug, Clone)]
struct Runtime {
    qat: QatDevice,
    observer: ObserverQuantizer,
    lsq: Option<LsqQuantizer>,
    mode: Mode,
}

impl QatQuantizer {
    /// A quantizer for tensors of `shape` (which fixes the channel count) with the observer
    /// `observer` and, for learned ranges, `lsq` (of the same granularity).
    pub fn new(
        qat: &QatDevice,
        observer: &ObserverConfig,
        lsq: Option<&LsqConfig>,
        shape: &[usize],
    ) -> Result<Self> {
        let obs = ObserverQuantizer::new(qat, observer, shape)?;
        let channels = observer.channels_for(shape)?;
        let lsq = match lsq {
            Some(config) => {
                if config.granularity() != observer.granularity() {
                    return Err(Error::UnsupportedParameter {
                        what: "lsq",
                        reason: format!(
                            "granularity {:?} differs from the observer's {:?}",
                            config.granularity(),
                            observer.granularity()
                        ),
                    });
                }
                Some(LsqQuantizer::new(qat, config, channels)?)
            }
            None => None,
        };
        let state = state_tensor(qat, &ObserverState::initial(channels));
        Ok(Self {
            scale: None,
            zero_point: None,
            observer_state: Param::from_tensor(state).set_require_grad(false),
            runtime: Runtime {
                qat: qat.clone(),
                observer: obs,
                lsq,
                mode: Mode::Calibrate,
            },
        })
    }

    /// The mode the quantizer runs in.
    pub fn mode(&self) -> Mode {
        self.runtime.mode
    }

    /// The observer (its state is read with [`ObserverQuantizer::state`]).
    pub fn observer(&self) -> &ObserverQuantizer {
        &self.runtime.observer
    }

    /// `x` fake-quantized in the current mode: by LSQ in QAT and frozen modes once
    /// [`QatModule::start_learning`] made its parameters, by the observer otherwise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let rt = &self.runtime;
        match (rt.mode, &rt.lsq, &self.scale, &self.zero_point) {
            (Mode::Qat, Some(lsq), Some(s), Some(z)) => lsq.forward(x, s.val(), z.val()),
            (Mode::Frozen, Some(lsq), Some(s), Some(z)) => {
                lsq.forward(x, s.val().detach(), z.val().detach())
            }
            (mode, _, _, _) => rt.observer.forward(x, mode),
        }
    }
}

impl QatModule for QatQuantizer {
    fn with_mode(mut self, mode: Mode) -> Self {
        self.runtime.mode = mode;
        self
    }

    fn start_learning(mut self) -> Result<Self> {
        if self.runtime.lsq.is_none() {
            return Ok(self);
        }
        let state = self.runtime.observer.state()?;
        let device = self.runtime.qat.autodiff();
        let zero_points: Vec<f32> = state.zero_points.iter().map(|&z| z as f32).collect();
        let channels = state.scales.len();
        self.scale = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(state.scales, [channels]),
            &device,
        )));
        self.zero_point = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(zero_points, [channels]),
            &device,
        )));
        Ok(self)
    }

    fn sync_state(mut self) -> Result<Self> {
        let state = self.runtime.observer.state()?;
        let id: ParamId = self.observer_state.id;
        self.observer_state =
            Param::initialized(id, state_tensor(&self.runtime.qat, &state)).set_require_grad(false);
        Ok(self)
    }

    fn restore_state(&self) -> Result<()> {
        let values: Vec<f32> = self
            .observer_state
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Burn {
                what: "reading the observer_state parameter",
                message: format!("{e:?}"),
            })?;
        let channels = self.runtime.observer.channels();
        if values.len() != 4 * channels {
            return Err(Error::UnsupportedParameter {
                what: "observer_state",
                reason: format!(
                    "{} values; this observer needs 4 rows of {channels}",
                    values.len()
                ),
            });
        }
        let row = |r: usize| values[r * channels..(r + 1) * channels].to_vec();
        let mut zero_points = Vec::with_capacity(channels);
        for z in row(3) {
            // Saved from i32 zero points: integers far inside f32's exact range.
            if z.fract() != 0.0 || z.abs() > 16_777_216.0 {
                return Err(Error::UnsupportedParameter {
                    what: "observer_state",
                    reason: format!("zero point {z} is not an integer of at most 2^24"),
                });
            }
            zero_points.push(z as i32);
        }
        let state = ObserverState {
            running: MinMax {
                min: row(0),
                max: row(1),
            },
            scales: row(2),
            zero_points,
        };
        self.runtime.observer.load_state(&state)
    }
}

/// The observer state as a `[4, channels]` tensor (see [`QatQuantizer::observer_state`]).
fn state_tensor(qat: &QatDevice, state: &ObserverState) -> Tensor<2> {
    let channels = state.scales.len();
    let mut values = Vec::with_capacity(4 * channels);
    values.extend_from_slice(&state.running.min);
    values.extend_from_slice(&state.running.max);
    values.extend_from_slice(&state.scales);
    values.extend(state.zero_points.iter().map(|&z| z as f32));
    Tensor::from_data(TensorData::new(values, [4, channels]), &qat.autodiff())
}

/// The weight's and the input's quantizers for a weight of `weight_shape` whose output
/// channels are on `out_axis`.
fn quantizers(
    qat: &QatDevice,
    qconfig: &QConfig,
    weight_shape: &[usize],
    out_axis: usize,
) -> Result<(QatQuantizer, QatQuantizer)> {
    let per_out = |g: Granularity| match g {
        Granularity::PerTensor => Granularity::PerTensor,
        _ => Granularity::per_channel(out_axis),
    };
    let weight_observer = qconfig
        .weight
        .clone()
        .with_granularity(per_out(qconfig.weight.granularity()));
    let (weight_lsq, input_lsq) = match &qconfig.learned {
        Some((w, i)) => (
            Some(w.clone().with_granularity(per_out(w.granularity()))),
            Some(i.clone()),
        ),
        None => (None, None),
    };
    let weight = QatQuantizer::new(qat, &weight_observer, weight_lsq.as_ref(), weight_shape)?;
    // Inputs are per tensor: the channel count does not depend on the batch shape.
    if qconfig.input.granularity() != Granularity::PerTensor {
        return Err(Error::UnsupportedParameter {
            what: "qconfig.input",
            reason: format!(
                "granularity {:?}; a layer's input quantizer is per tensor",
                qconfig.input.granularity()
            ),
        });
    }
    let input = QatQuantizer::new(qat, &qconfig.input, input_lsq.as_ref(), &[1])?;
    Ok((weight, input))
}

/// burn's `Linear` with its weight fake-quantized per output channel and its input per tensor.
#[derive(Module, Debug)]
pub struct QatLinear {
    /// The float layer: its weight and bias are trained as before.
    pub linear: Linear,
    /// The weight's quantizer (per channel on axis 1 of burn's `[d_input, d_output]` weight).
    pub weight_quant: QatQuantizer,
    /// The input's quantizer.
    pub input_quant: QatQuantizer,
}

impl QatLinear {
    /// `linear` prepared for QAT with `qconfig`, in [`Mode::Calibrate`].
    pub fn prepare(qat: &QatDevice, linear: Linear, qconfig: &QConfig) -> Result<Self> {
        let shape = linear.weight.val().dims();
        let (weight_quant, input_quant) = quantizers(qat, qconfig, &shape, 1)?;
        Ok(Self {
            linear,
            weight_quant,
            input_quant,
        })
    }

    /// The float layer back (its trained weights), the quantizers dropped.
    pub fn into_float(self) -> Linear {
        self.linear
    }

    /// `linear(fq(x), fq(weight), bias)`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let [d_input, _] = self.linear.weight.val().dims();
        if x.dims().last() != Some(&d_input) {
            return Err(Error::UnsupportedParameter {
                what: "x",
                reason: format!(
                    "shape {:?}; the last axis must be d_input = {d_input}",
                    x.dims()
                ),
            });
        }
        let x = self.input_quant.forward(x)?;
        let weight = self.weight_quant.forward(self.linear.weight.val())?;
        Ok(linear(
            x,
            weight,
            self.linear.bias.as_ref().map(|b| b.val()),
        ))
    }
}

/// burn's `Conv2d` with its weight fake-quantized per output channel and its input per tensor.
#[derive(Module, Debug)]
pub struct QatConv2d {
    /// The float layer.
    pub conv: Conv2d,
    /// The weight's quantizer (per channel on axis 0 of `[out, in / groups, kh, kw]`).
    pub weight_quant: QatQuantizer,
    /// The input's quantizer.
    pub input_quant: QatQuantizer,
}

impl QatConv2d {
    /// `conv` prepared for QAT with `qconfig`, in [`Mode::Calibrate`].
    pub fn prepare(qat: &QatDevice, conv: Conv2d, qconfig: &QConfig) -> Result<Self> {
        let shape = conv.weight.val().dims();
        let (weight_quant, input_quant) = quantizers(qat, qconfig, &shape, 0)?;
        Ok(Self {
            conv,
            weight_quant,
            input_quant,
        })
    }

    /// The float layer back (its trained weights), the quantizers dropped.
    pub fn into_float(self) -> Conv2d {
        self.conv
    }

    /// `conv2d(fq(x), fq(weight), bias)` with the layer's stride, padding, dilation and groups.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let [_, channels_in, height, width] = x.dims();
        let [_, per_group, _, _] = self.conv.weight.val().dims();
        if channels_in != per_group * self.conv.groups {
            return Err(Error::UnsupportedParameter {
                what: "x",
                reason: format!(
                    "shape {:?}; the channel axis (1) must be {}",
                    x.dims(),
                    per_group * self.conv.groups
                ),
            });
        }
        let c = &self.conv;
        let ((top, bottom), (left, right)) = padding_pairs(c, height, width);
        let options = ConvOptions::new_with_padding(
            c.stride,
            [(top, bottom), (left, right)],
            c.dilation,
            c.groups,
        );
        let x = self.input_quant.forward(x)?;
        let weight = self.weight_quant.forward(c.weight.val())?;
        Ok(conv2d(x, weight, c.bias.as_ref().map(|b| b.val()), options))
    }
}

/// burn's padding of `conv` for an input of `height` x `width` (burn-nn's own computation is
/// crate-private): ((top, bottom), (left, right)), `Same` with the odd pad at the end (ONNX).
fn padding_pairs(conv: &Conv2d, height: usize, width: usize) -> ((usize, usize), (usize, usize)) {
    let same = |kernel: usize, stride: usize, size: usize| {
        let out = size.div_ceil(stride);
        let total = if out > 0 {
            ((out - 1) * stride + kernel).saturating_sub(size)
        } else {
            0
        };
        (total / 2, total - total / 2)
    };
    match conv.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => (
            same(conv.kernel_size[0], conv.stride[0], height),
            same(conv.kernel_size[1], conv.stride[1], width),
        ),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
    }
}

/// The module trait for a layer made of a float layer and two quantizers.
macro_rules! qat_layer {
    ($layer:ty) => {
        impl QatModule for $layer {
            fn with_mode(mut self, mode: Mode) -> Self {
                self.weight_quant = self.weight_quant.with_mode(mode);
                self.input_quant = self.input_quant.with_mode(mode);
                self
            }

            fn start_learning(mut self) -> Result<Self> {
                self.weight_quant = self.weight_quant.start_learning()?;
                self.input_quant = self.input_quant.start_learning()?;
                Ok(self)
            }

            fn sync_state(mut self) -> Result<Self> {
                self.weight_quant = self.weight_quant.sync_state()?;
                self.input_quant = self.input_quant.sync_state()?;
                Ok(self)
            }

            fn restore_state(&self) -> Result<()> {
                self.weight_quant.restore_state()?;
                self.input_quant.restore_state()
            }
        }
    };
}

qat_layer!(QatLinear);
qat_layer!(QatConv2d);
