//! Observers on the CPU backend: the reference's state and its update (a few values per
//! channel), the batch statistics and the fake-quant on the fast kernels.

use super::{reduce, Cpu};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::observer::{MinMax, Mode, ObserverConfig, ObserverState};
use crate::quant::{PackedMask, ParamLayout};
use crate::reference::observer::{observer_layout, Observer};
use crate::reference::FakeQuantOutput;

/// An observer on the [`Cpu`] backend (the counterpart of [`crate::GpuObserver`]).
#[derive(Debug, Clone)]
pub struct CpuObserver {
    cpu: Cpu,
    observer: Observer,
}

impl CpuObserver {
    pub(super) fn new(cpu: &Cpu, config: &ObserverConfig, shape: &[usize]) -> Result<Self> {
        Ok(Self {
            cpu: cpu.clone(),
            observer: Observer::new(config.clone(), shape)?,
        })
    }

    /// The running range and the qparams in force.
    pub fn state(&self) -> &ObserverState {
        self.observer.state()
    }

    /// The configuration.
    pub fn config(&self) -> &ObserverConfig {
        self.observer.config()
    }

    /// The layout of `x`, checked against the observer's channels as the reference checks it.
    fn layout(&self, shape: &[usize], len: usize) -> Result<ParamLayout> {
        let layout = observer_layout(self.observer.config(), shape, len)?;
        if layout.channels() != self.observer.state().channels() {
            return Err(Error::ChannelCountMismatch {
                axis: self.observer.config().granularity().axis().unwrap_or(0),
                channels: layout.channels(),
                params: self.observer.state().channels(),
            });
        }
        Ok(layout)
    }

    /// `x`'s statistics. Strided groups are reduced on their groups-last view (the same values
    /// per group; min and max do not depend on the order anyway).
    fn batch<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<MinMax> {
        let layout = self.layout(shape, x.len())?;
        Ok(match layout.strided() {
            Some(groups) => reduce::channel_min_max(
                &self.cpu,
                &groups.groups_last_layout(),
                &groups.to_groups_last(x),
            ),
            None => reduce::channel_min_max(&self.cpu, &layout.kernel_layout(), x),
        })
    }

    /// Folds `x`'s statistics into the state (see [`crate::reference::Observer::observe`]).
    pub fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        let batch = self.batch(x, shape)?;
        self.observer.apply_batch(&batch)
    }

    /// The fused step (see [`Mode`] and [`crate::reference::Observer::step`]).
    pub fn step<T: Element>(
        &mut self,
        x: &[T],
        shape: &[usize],
        mode: Mode,
    ) -> Result<FakeQuantOutput<T>> {
        if mode == Mode::Frozen {
            self.layout(shape, x.len())?;
        } else {
            let batch = self.batch(x, shape)?;
            self.observer.apply_batch(&batch)?;
        }
        if mode == Mode::Calibrate {
            let mut words =
                super::try_output::<u32>("calibration mask", PackedMask::words_for(x.len()))?;
            words.fill(u32::MAX);
            if !x.len().is_multiple_of(32) {
                if let Some(last) = words.last_mut() {
                    *last = (1u32 << (x.len() % 32)) - 1;
                }
            }
            let mut y = super::try_output::<T>("calibration output", x.len())?;
            y.copy_from_slice(x);
            return Ok(FakeQuantOutput {
                y,
                mask: PackedMask::from_words(words, x.len())?,
            });
        }
        let op = self.observer.state().fake_quant(self.observer.config())?;
        self.cpu.fake_quant(&op, x, shape)
    }

    /// Replaces the state (validated first).
    pub fn load_state(&mut self, state: &ObserverState) -> Result<()> {
        self.observer.load_state(state.clone())
    }
}
