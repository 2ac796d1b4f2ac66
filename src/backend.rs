//! One interface over the CPU reference and the GPU: a framework (or the QAT example) written
//! against [`Backend`], [`ObserverOps`] and [`LsqOps`] switches between them with one line, and
//! the results are the same bits.
//!
//! These are the host-level calls (slices in, values out). The GPU objects also offer the device
//! level (`*_device`) and the recording level (`record_*`) under the same names.

use crate::dtype::Element;
use crate::dynamic::{DynamicConfig, DynamicOutput};
use crate::error::Result;
use crate::float_quant::{FloatQuantConfig, FloatQuantOutput};
use crate::histogram::{CalibrationMethod, Histogram, HistogramConfig};
use crate::lsq::{LsqConfig, LsqGrads};
use crate::observer::{Mode, ObserverConfig, ObserverState};
use crate::quant::{FakeQuant, PackedMask};
use crate::reference::FakeQuantOutput;

/// Where fake-quantization runs: [`crate::reference::Reference`] (the CPU specification) or a
/// [`crate::GpuContext`].
pub trait Backend {
    /// Its observers.
    type Observer: ObserverOps;
    /// Its LSQ quantizers.
    type Lsq: LsqOps;
    /// Its dynamic fake-quantizations.
    type Dynamic: DynamicOps;
    /// Its floating-point fake-quantizations.
    type FloatQuant: FloatQuantOps;
    /// Its histogram observers.
    type Histogram: HistogramOps;

    /// A one-line description (the adapter, or "CPU reference").
    fn name(&self) -> String;

    /// Fake-quantizes `x` of `shape` with `op`: `y` and the mask.
    fn fake_quant<T: Element>(
        &self,
        op: &FakeQuant,
        x: &[T],
        shape: &[usize],
    ) -> Result<FakeQuantOutput<T>>;

    /// The straight-through backward `dx = dy * mask`.
    fn ste_backward<T: Element>(&self, dy: &[T], mask: &PackedMask) -> Result<Vec<T>>;

    /// An observer for tensors of `shape` (only the channel axis matters: a per-tensor observer
    /// takes any shape, `&[]` included) that has seen nothing.
    fn create_observer(&self, config: &ObserverConfig, shape: &[usize]) -> Result<Self::Observer>;

    /// An LSQ quantizer with initial learnable parameters (one per channel).
    fn create_lsq(
        &self,
        config: &LsqConfig,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<Self::Lsq>;

    /// An LSQ quantizer whose learnable parameters are an observer's calibrated qparams (the
    /// seed's "load the pseudo-quantization parameters obtained from calibration").
    fn create_lsq_from_observer(
        &self,
        config: &LsqConfig,
        observer: &Self::Observer,
    ) -> Result<Self::Lsq>;

    /// A dynamic fake-quantization for tensors with the groups of `shape` (see
    /// [`crate::dynamic`]).
    fn create_dynamic(&self, config: &DynamicConfig, shape: &[usize]) -> Result<Self::Dynamic>;

    /// A floating-point fake-quantization (FP8, MX, NVFP4) for tensors with the elements and
    /// blocks of `shape` (see [`crate::float_quant`]).
    fn create_float_quant(
        &self,
        config: &FloatQuantConfig,
        shape: &[usize],
    ) -> Result<Self::FloatQuant>;

    /// A histogram observer for tensors of `shape` (only the channel axis matters) that has seen
    /// nothing (see [`crate::histogram`]).
    fn create_histogram_observer(
        &self,
        config: &HistogramConfig,
        shape: &[usize],
    ) -> Result<Self::Histogram>;
}

/// A histogram observer's host-level calls.
pub trait HistogramOps {
    /// Counts a batch (NaN and infinities skipped).
    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()>;
    /// The histograms, one per channel.
    fn read_histograms(&self) -> Result<Vec<Histogram>>;
    /// The observer state `method` picks for an observer of `config`.
    fn calibrate(
        &self,
        method: &CalibrationMethod,
        config: &ObserverConfig,
    ) -> Result<ObserverState>;
}

/// A floating-point fake-quantization's host-level call.
pub trait FloatQuantOps {
    /// `y`, the mask, the element codes and the scales of `x`.
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FloatQuantOutput<T>>;
}

/// A dynamic fake-quantization's host-level call.
pub trait DynamicOps {
    /// Each group's qparams from `x` itself, then `y`, the mask and the qparams.
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>>;
}

/// An observer's host-level calls.
pub trait ObserverOps {
    /// The fused step (see [`Mode`]): observe (calibration, QAT) and fake-quantize (QAT, frozen).
    fn step<T: Element>(
        &mut self,
        x: &[T],
        shape: &[usize],
        mode: Mode,
    ) -> Result<FakeQuantOutput<T>>;

    /// Observes `x` (folds its statistics into the state) without producing an output.
    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()>;

    /// The running range and the qparams in force.
    fn read_state(&self) -> Result<ObserverState>;

    /// Replaces the state (validated first).
    fn load_state(&mut self, state: &ObserverState) -> Result<()>;
}

/// An LSQ quantizer's host-level calls.
pub trait LsqOps {
    /// The forward with the current learnable parameters.
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FakeQuantOutput<T>>;

    /// The backward: `dx` and the reduced parameter gradients.
    fn backward<T: Element>(&mut self, x: &[T], dy: &[T], shape: &[usize]) -> Result<LsqGrads<T>>;

    /// Initializes the scales from data (`2 * mean(|x|) / sqrt(qmax)` per channel) and returns them.
    fn init_from_data<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<Vec<f32>>;

    /// The learnable parameters: `(scales, zero_points)`.
    fn read_params(&self) -> Result<(Vec<f32>, Vec<f32>)>;

    /// Replaces the learnable parameters.
    fn load_params(&mut self, scales: &[f32], zero_points: &[f32]) -> Result<()>;
}
