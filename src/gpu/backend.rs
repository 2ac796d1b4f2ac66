//! The GPU as a [`Backend`]: the host-level calls of the context, its observers and LSQ
//! quantizers, under the names the reference answers to.

use super::{GpuContext, GpuDynamic, GpuFloatQuant, GpuHistogramObserver, GpuLsq, GpuObserver};
use crate::backend::{Backend, DynamicOps, FloatQuantOps, HistogramOps, LsqOps, ObserverOps};
use crate::dtype::Element;
use crate::dynamic::{DynamicConfig, DynamicOutput};
use crate::error::Result;
use crate::float_quant::{FloatQuantConfig, FloatQuantOutput};
use crate::histogram::{CalibrationMethod, Histogram, HistogramConfig};
use crate::lsq::{LsqConfig, LsqGrads};
use crate::observer::{Mode, ObserverConfig, ObserverState};
use crate::quant::{FakeQuant, PackedMask};
use crate::reference::FakeQuantOutput;

impl Backend for GpuContext {
    type Observer = GpuObserver;
    type Lsq = GpuLsq;
    type Dynamic = GpuDynamic;
    type FloatQuant = GpuFloatQuant;
    type Histogram = GpuHistogramObserver;

    fn name(&self) -> String {
        format!("GPU: {}", self.adapter_name())
    }

    fn fake_quant<T: Element>(
        &self,
        op: &FakeQuant,
        x: &[T],
        shape: &[usize],
    ) -> Result<FakeQuantOutput<T>> {
        GpuContext::fake_quant(self, op, x, shape)
    }

    fn ste_backward<T: Element>(&self, dy: &[T], mask: &PackedMask) -> Result<Vec<T>> {
        GpuContext::ste_backward(self, dy, mask)
    }

    fn create_observer(&self, config: &ObserverConfig, shape: &[usize]) -> Result<GpuObserver> {
        GpuContext::create_observer(self, config, shape)
    }

    fn create_lsq(
        &self,
        config: &LsqConfig,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<GpuLsq> {
        GpuContext::create_lsq(self, config, scales, zero_points)
    }

    fn create_lsq_from_observer(
        &self,
        config: &LsqConfig,
        observer: &GpuObserver,
    ) -> Result<GpuLsq> {
        GpuContext::create_lsq_from_observer(self, config, observer)
    }

    fn create_dynamic(&self, config: &DynamicConfig, shape: &[usize]) -> Result<GpuDynamic> {
        GpuContext::create_dynamic(self, config, shape)
    }

    fn create_float_quant(
        &self,
        config: &FloatQuantConfig,
        shape: &[usize],
    ) -> Result<GpuFloatQuant> {
        GpuContext::create_float_quant(self, config, shape)
    }

    fn create_histogram_observer(
        &self,
        config: &HistogramConfig,
        shape: &[usize],
    ) -> Result<GpuHistogramObserver> {
        GpuContext::create_histogram_observer(self, config, shape)
    }
}

impl HistogramOps for GpuHistogramObserver {
    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        GpuHistogramObserver::observe(self, x, shape)
    }

    fn read_histograms(&self) -> Result<Vec<Histogram>> {
        GpuHistogramObserver::read_histograms(self)
    }

    fn calibrate(
        &self,
        method: &CalibrationMethod,
        config: &ObserverConfig,
    ) -> Result<ObserverState> {
        GpuHistogramObserver::calibrate(self, method, config)
    }
}

impl FloatQuantOps for GpuFloatQuant {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FloatQuantOutput<T>> {
        GpuFloatQuant::forward(self, x, shape)
    }
}

impl DynamicOps for GpuDynamic {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>> {
        GpuDynamic::forward(self, x, shape)
    }
}

impl ObserverOps for GpuObserver {
    fn step<T: Element>(
        &mut self,
        x: &[T],
        shape: &[usize],
        mode: Mode,
    ) -> Result<FakeQuantOutput<T>> {
        GpuObserver::step(self, x, shape, mode)
    }

    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        GpuObserver::observe(self, x, shape)
    }

    fn read_state(&self) -> Result<ObserverState> {
        GpuObserver::read_state(self)
    }

    fn load_state(&mut self, state: &ObserverState) -> Result<()> {
        GpuObserver::load_state(self, state)
    }
}

impl LsqOps for GpuLsq {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FakeQuantOutput<T>> {
        GpuLsq::forward(self, x, shape)
    }

    fn backward<T: Element>(&mut self, x: &[T], dy: &[T], shape: &[usize]) -> Result<LsqGrads<T>> {
        GpuLsq::backward(self, x, dy, shape)
    }

    fn init_from_data<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<Vec<f32>> {
        GpuLsq::init_from_data(self, x, shape)
    }

    fn read_params(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        GpuLsq::read_params(self)
    }

    fn load_params(&mut self, scales: &[f32], zero_points: &[f32]) -> Result<()> {
        GpuLsq::load_params(self, scales, zero_points)
    }
}
