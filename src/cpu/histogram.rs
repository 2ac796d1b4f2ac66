//! Histogram observers on the CPU backend: each channel's range grown as the reference grows it
//! (to the smallest power of two above the batch's largest finite magnitude), then the counts in
//! parallel: each task counts its part into its own histograms, and the parts are added (integer
//! additions commute, so the counts are the reference's whatever the split).

use super::{reduce, Cpu};
use crate::dtype::Element;
use crate::error::{check_len, Result};
use crate::histogram::{CalibrationMethod, Histogram, HistogramConfig};
use crate::observer::{ObserverConfig, ObserverState};
use crate::reference::histogram::HistogramObserver;

/// Counts kept per task at most (channels times bins): beyond it, the batch is counted on one
/// thread, as the reference counts it.
const PARALLEL_COUNTS_MAX: usize = 1 << 20;

/// A histogram observer on the [`Cpu`] backend (the counterpart of
/// [`crate::GpuHistogramObserver`]).
#[derive(Debug, Clone)]
pub struct CpuHistogramObserver {
    cpu: Cpu,
    observer: HistogramObserver,
}

impl CpuHistogramObserver {
    pub(super) fn new(cpu: &Cpu, config: &HistogramConfig, shape: &[usize]) -> Result<Self> {
        Ok(Self {
            cpu: cpu.clone(),
            observer: HistogramObserver::new(*config, shape)?,
        })
    }

    /// The histograms, one per channel.
    pub fn histograms(&self) -> &[Histogram] {
        self.observer.histograms()
    }

    /// Counts a batch (NaN and infinities skipped; see
    /// [`crate::reference::histogram::HistogramObserver::observe`]).
    pub fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        let config = *self.observer.config();
        let layout = config.granularity().layout(shape, x.len())?;
        let channels = self.observer.histograms().len();
        check_len(
            "channels of the shape vs the observer's",
            channels,
            layout.channels,
        )?;
        let bins = config.bins();
        if channels.saturating_mul(bins) > PARALLEL_COUNTS_MAX {
            return self.observer.observe(x, shape);
        }
        // The reference grows each channel to the largest `exponent_above` of its finite values;
        // that function never decreases with |v| (its floor, 2^-126, is below the smallest
        // normal's 2^-125), so it is `exponent_above` of the largest finite magnitude. A channel
        // without a finite value has amax 0, whose exponent is the initial one: no growth, as
        // in the reference.
        let amax = reduce::channel_amax(&self.cpu, &layout, x, true);
        let histograms = self.observer.histograms_mut();
        for (h, a) in histograms.iter_mut().zip(amax) {
            h.grow_to(Histogram::exponent_above(a));
        }
        let histograms: &[Histogram] = histograms;
        let parts = self
            .cpu
            .map_ranges(x.len(), super::elementwise::CHUNK, |range| {
                let mut counts = vec![0u64; channels * bins];
                for run in super::elementwise::runs(&layout, range.start, range.end) {
                    for (i, v) in x[run.start..run.end].iter().enumerate() {
                        let v = super::convert::widen(*v);
                        if v.is_finite() {
                            let c = run.channel + if run.consecutive { i } else { 0 };
                            counts[c * bins + histograms[c].bin_of(v)] += 1;
                        }
                    }
                }
                counts
            });
        let histograms = self.observer.histograms_mut();
        for part in parts {
            for (h, counts) in histograms.iter_mut().zip(part.chunks(bins)) {
                for (total, c) in h.counts.iter_mut().zip(counts) {
                    *total += c;
                }
            }
        }
        Ok(())
    }

    /// The observer state `method` picks (see [`crate::reference::histogram::calibrate`]).
    pub fn calibrate(
        &self,
        method: &CalibrationMethod,
        observer: &ObserverConfig,
    ) -> Result<ObserverState> {
        self.observer.calibrate(method, observer)
    }
}
