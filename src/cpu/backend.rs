//! The CPU backend as a [`Backend`]: the same calls as the reference and the GPU.

use super::elementwise::{fake_quant_task, ste_task, ChannelTable};
use super::{
    try_output, Cpu, CpuDynamic, CpuFloatQuant, CpuHistogramObserver, CpuLsq, CpuObserver,
};
use crate::backend::{Backend, DynamicOps, FloatQuantOps, HistogramOps, LsqOps, ObserverOps};
use crate::dtype::Element;
use crate::dynamic::{DynamicConfig, DynamicOutput};
use crate::error::{check_len, Result};
use crate::float_quant::{FloatQuantConfig, FloatQuantOutput};
use crate::histogram::{CalibrationMethod, Histogram, HistogramConfig};
use crate::lsq::{LsqConfig, LsqGrads};
use crate::observer::{Mode, ObserverConfig, ObserverState};
use crate::quant::{FakeQuant, PackedMask};
use crate::reference::FakeQuantOutput;

impl Cpu {
    /// Fake-quantizes `x` of `shape` with `op` (see [`crate::reference::fake_quant`]): `y` and
    /// the mask, in new vectors.
    pub fn fake_quant<T: Element>(
        &self,
        op: &FakeQuant,
        x: &[T],
        shape: &[usize],
    ) -> Result<FakeQuantOutput<T>> {
        let mut y = try_output::<T>("fake-quant output", x.len())?;
        let mut words = try_output::<u32>("fake-quant mask", PackedMask::words_for(x.len()))?;
        self.fake_quant_into(op, x, shape, &mut y, &mut words)?;
        Ok(FakeQuantOutput {
            y,
            mask: PackedMask::from_words(words, x.len())?,
        })
    }

    /// [`Cpu::fake_quant`] into the caller's memory (a framework's tensor storage): `y` holds
    /// `x.len()` elements, `mask` the [`PackedMask::words_for`] words of the packed mask (bits
    /// past the last element are written as zeros).
    pub fn fake_quant_into<T: Element>(
        &self,
        op: &FakeQuant,
        x: &[T],
        shape: &[usize],
        y: &mut [T],
        mask: &mut [u32],
    ) -> Result<()> {
        let layout = op.layout(shape, x.len())?;
        check_len("y vs x", x.len(), y.len())?;
        check_len(
            "mask words vs x",
            PackedMask::words_for(x.len()),
            mask.len(),
        )?;
        if let Some((groups, view_shape)) = op.params().granularity().groups_last(shape)? {
            // Strided groups: the kernels run on the groups-last view, where each group is a
            // run (same groups, same parameters, elementwise: the same bits), moved back after.
            let view = groups.to_groups_last(x);
            let out = self.fake_quant(op, &view, &view_shape)?;
            groups.from_groups_last_into(&out.y, y);
            mask.copy_from_slice(groups.mask_from_groups_last(&out.mask).words());
            return Ok(());
        }
        let layout = layout.kernel_layout();
        let table = ChannelTable::new(op);
        self.for_each_task(y, mask, |start, y, words| {
            let x = &x[start..start + y.len()];
            fake_quant_task(self.isa, &table, &layout, op.rounding(), start, x, y, words)
        });
        Ok(())
    }

    /// The straight-through backward `dx = dy * mask` (see
    /// [`crate::reference::ste_grad_value`]).
    pub fn ste_backward<T: Element>(&self, dy: &[T], mask: &PackedMask) -> Result<Vec<T>> {
        let mut dx = try_output::<T>("straight-through dx", dy.len())?;
        self.ste_backward_into(dy, mask, &mut dx)?;
        Ok(dx)
    }

    /// [`Cpu::ste_backward`] into the caller's `dx` (`dy.len()` elements).
    pub fn ste_backward_into<T: Element>(
        &self,
        dy: &[T],
        mask: &PackedMask,
        dx: &mut [T],
    ) -> Result<()> {
        check_len("dy vs mask", mask.len(), dy.len())?;
        check_len("dx vs dy", dy.len(), dx.len())?;
        self.for_each_output(dx, |start, dx| {
            ste_task(self.isa, start, dy, mask.words(), dx)
        });
        Ok(())
    }
}

impl Backend for Cpu {
    type Observer = CpuObserver;
    type Lsq = CpuLsq;
    type Dynamic = CpuDynamic;
    type FloatQuant = CpuFloatQuant;
    type Histogram = CpuHistogramObserver;

    fn name(&self) -> String {
        format!("CPU backend ({} threads, {:?})", self.threads, self.isa)
    }

    fn fake_quant<T: Element>(
        &self,
        op: &FakeQuant,
        x: &[T],
        shape: &[usize],
    ) -> Result<FakeQuantOutput<T>> {
        Cpu::fake_quant(self, op, x, shape)
    }

    fn ste_backward<T: Element>(&self, dy: &[T], mask: &PackedMask) -> Result<Vec<T>> {
        Cpu::ste_backward(self, dy, mask)
    }

    fn create_observer(&self, config: &ObserverConfig, shape: &[usize]) -> Result<CpuObserver> {
        CpuObserver::new(self, config, shape)
    }

    fn create_lsq(
        &self,
        config: &LsqConfig,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<CpuLsq> {
        CpuLsq::new(self, config, scales, zero_points)
    }

    fn create_lsq_from_observer(
        &self,
        config: &LsqConfig,
        observer: &CpuObserver,
    ) -> Result<CpuLsq> {
        CpuLsq::from_observer(self, config, observer.state())
    }

    fn create_dynamic(&self, config: &DynamicConfig, shape: &[usize]) -> Result<CpuDynamic> {
        CpuDynamic::new(self, config, shape)
    }

    fn create_float_quant(
        &self,
        config: &FloatQuantConfig,
        shape: &[usize],
    ) -> Result<CpuFloatQuant> {
        CpuFloatQuant::new(self, config, shape)
    }

    fn create_histogram_observer(
        &self,
        config: &HistogramConfig,
        shape: &[usize],
    ) -> Result<CpuHistogramObserver> {
        CpuHistogramObserver::new(self, config, shape)
    }
}

impl ObserverOps for CpuObserver {
    fn step<T: Element>(
        &mut self,
        x: &[T],
        shape: &[usize],
        mode: Mode,
    ) -> Result<FakeQuantOutput<T>> {
        CpuObserver::step(self, x, shape, mode)
    }

    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        CpuObserver::observe(self, x, shape)
    }

    fn read_state(&self) -> Result<ObserverState> {
        Ok(self.state().clone())
    }

    fn load_state(&mut self, state: &ObserverState) -> Result<()> {
        CpuObserver::load_state(self, state)
    }
}

impl LsqOps for CpuLsq {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FakeQuantOutput<T>> {
        CpuLsq::forward(self, x, shape)
    }

    fn backward<T: Element>(&mut self, x: &[T], dy: &[T], shape: &[usize]) -> Result<LsqGrads<T>> {
        CpuLsq::backward(self, x, dy, shape)
    }

    fn init_from_data<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<Vec<f32>> {
        CpuLsq::init_from_data(self, x, shape)
    }

    fn read_params(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.scales().to_vec(), self.zero_points().to_vec()))
    }

    fn load_params(&mut self, scales: &[f32], zero_points: &[f32]) -> Result<()> {
        CpuLsq::load_params(self, scales, zero_points)
    }
}

impl DynamicOps for CpuDynamic {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>> {
        CpuDynamic::forward(self, x, shape)
    }
}

impl FloatQuantOps for CpuFloatQuant {
    fn forward<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<FloatQuantOutput<T>> {
        CpuFloatQuant::forward(self, x, shape)
    }
}

impl HistogramOps for CpuHistogramObserver {
    fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        CpuHistogramObserver::observe(self, x, shape)
    }

    fn read_histograms(&self) -> Result<Vec<Histogram>> {
        Ok(self.histograms().to_vec())
    }

    fn calibrate(
        &self,
        method: &CalibrationMethod,
        config: &ObserverConfig,
    ) -> Result<ObserverState> {
        CpuHistogramObserver::calibrate(self, method, config)
    }
}
