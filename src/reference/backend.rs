//! The reference as a [`Backend`]: the same calls as the GPU, computed by the specification.

use super::dynamic::Dynamic;
use super::float_quant::FloatQuant;
use super::histogram::HistogramObserver;
use super::lsq::Lsq;
use super::observer::Observer;
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

/// The CPU reference as a backend (single-threaded; the specification, not a fast path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reference;

impl Backend for Reference {
    type Observer = Observer;
    type Lsq = Lsq;
    type Dynamic = Dynamic;
    type FloatQuant = FloatQuant;
    type Histogram = HistogramObserver;

    fn name(&self) -> String {
        "CPU reference".to_string()
    }

    fn fake_quant<T: Element>(
        &self,
        op: &FakeQuant,
        x: &[T],
        shape: &[usize],
    ) -> Result<FakeQuantOutput<T>> {
        super::fake_quant(op, x, shape)
    }

    fn ste_backward<T: Element>(&self, dy: &[T], mask: &PackedMask) -> Result<Vec<T>> {
        super::ste_backward(dy, mask)
    }

    fn create_observer(&self, config: &ObserverConfig, shape: &[usize]) -> Result<Observer> {
        Observer::new(config.clone(), shape)
    }

    fn create_lsq(&self, config: &LsqConfig, scales: &[f32], zero_points: &[f32]) -> Result<Lsq> {
        Lsq::new(config.clone(), scales, zero_points)
    }

    fn create_lsq_from_observer(&self, config: &LsqConfig, observer: &Observer) -> Result<Lsq> {
        Lsq::from_observer(config.clone(), observer.state())
    }

    fn create_dynamic(&self, config: &DynamicConfig, shape: &[usize]) -> Result<Dynamic> {
        Dynamic::new(config.clone(), shape)
    }

    fn create_float_quant(&self, config: &FloatQuantConfig, shape: &[usize]) -> Result<FloatQuant> {
        FloatQuant::new(config.clone(), shape)
    }

    fn create_histogram_observer(
        &self,
        config: &HistogramConfig,
        shape: &[usize],
    ) -> Result<HistogramObserver> {
        HistogramObserver::new(*config, shape)
    }
}

impl HistogramOps for HistogramObserver {
    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        HistogramObserver::observe(self, x, shape)
    }

    fn read_histograms(&self) -> Result<Vec<Histogram>> {
        Ok(self.histograms().to_vec())
    }

    fn calibrate(
        &self,
        method: &CalibrationMethod,
        config: &ObserverConfig,
    ) -> Result<ObserverState> {
        HistogramObserver::calibrate(self, method, config)
    }
}

impl FloatQuantOps for FloatQuant {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FloatQuantOutput<T>> {
        FloatQuant::forward(self, x, shape)
    }
}

impl DynamicOps for Dynamic {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>> {
        Dynamic::forward(self, x, shape)
    }
}

impl ObserverOps for Observer {
    fn step<T: Element>(
        &mut self,
        x: &[T],
        shape: &[usize],
        mode: Mode,
    ) -> Result<FakeQuantOutput<T>> {
        Observer::step(self, x, shape, mode)
    }

    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        Observer::observe(self, x, shape)
    }

    fn read_state(&self) -> Result<ObserverState> {
        Ok(self.state().clone())
    }

    fn load_state(&mut self, state: &ObserverState) -> Result<()> {
        Observer::load_state(self, state.clone())
    }
}

impl LsqOps for Lsq {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FakeQuantOutput<T>> {
        Lsq::forward(self, x, shape)
    }

    fn backward<T: Element>(&mut self, x: &[T], dy: &[T], shape: &[usize]) -> Result<LsqGrads<T>> {
        Lsq::backward(self, x, dy, shape)
    }

    fn init_from_data<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<Vec<f32>> {
        Lsq::init_from_data(self, x, shape)
    }

    fn read_params(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.scales().to_vec(), self.zero_points().to_vec()))
    }

    fn load_params(&mut self, scales: &[f32], zero_points: &[f32]) -> Result<()> {
        Lsq::load_params(self, scales, zero_points)
    }
}
