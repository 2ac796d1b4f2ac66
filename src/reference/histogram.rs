//! The reference histogram observer (see [`crate::histogram`] for the rules).

use super::observer::qparams;
use super::widen;
use crate::dtype::Element;
use crate::error::{check_len, Result};
use crate::histogram::{choose_range, CalibrationMethod, Histogram, HistogramConfig};
use crate::observer::{MinMax, ObserverConfig, ObserverState};

/// Histograms of a tensor's values (one per channel, or one), accumulated over batches.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramObserver {
    config: HistogramConfig,
    histograms: Vec<Histogram>,
}

impl HistogramObserver {
    /// An observer for tensors of `shape` (only the channel axis matters) that has seen nothing.
    pub fn new(config: HistogramConfig, shape: &[usize]) -> Result<Self> {
        let channels = config.granularity().channels(shape)?;
        Ok(Self {
            config,
            histograms: vec![Histogram::new(config.bins(), config.domain()); channels],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HistogramConfig {
        &self.config
    }

    /// The histograms, one per channel.
    pub fn histograms(&self) -> &[Histogram] {
        &self.histograms
    }

    /// The histograms, to fill (the CPU backend counts in parallel into them).
    pub(crate) fn histograms_mut(&mut self) -> &mut [Histogram] {
        &mut self.histograms
    }

    /// Counts a batch `x` of `shape` (any element type; NaN and infinities skipped).
    pub fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        let layout = self.config.granularity().param_layout(shape, x.len())?;
        check_len(
            "channels of the shape vs the observer's",
            self.histograms.len(),
            layout.channels(),
        )?;
        let wide = widen(x);
        let mut top = vec![None::<i32>; layout.channels()];
        for (i, &v) in wide.iter().enumerate() {
            if v.is_finite() {
                let t = &mut top[layout.channel_of(i)];
                *t = Some(t.map_or(Histogram::exponent_above(v), |e: i32| {
                    e.max(Histogram::exponent_above(v))
                }));
            }
        }
        for (h, t) in self.histograms.iter_mut().zip(&top) {
            if let Some(t) = t {
                h.grow_to(*t);
            }
        }
        for (i, &v) in wide.iter().enumerate() {
            if v.is_finite() {
                let h = &mut self.histograms[layout.channel_of(i)];
                let b = h.bin_of(v);
                h.counts[b] += 1;
            }
        }
        Ok(())
    }

    /// The observer state `method` picks for `observer` (see [`calibrate`]).
    pub fn calibrate(
        &self,
        method: &CalibrationMethod,
        observer: &ObserverConfig,
    ) -> Result<ObserverState> {
        calibrate(&self.histograms, method, observer)
    }
}

/// The observer state `method` picks from `histograms` (one per channel) for `observer` (whose
/// range, scheme and eps give the qparams, as for min/max): each channel's range as its running
/// min and max, ready to load into an observer, reference or GPU, and continue into QAT. A
/// channel that saw nothing stays empty.
pub fn calibrate(
    histograms: &[Histogram],
    method: &CalibrationMethod,
    observer: &ObserverConfig,
) -> Result<ObserverState> {
    let mut state = ObserverState::initial(histograms.len());
    state.running = MinMax::empty(histograms.len());
    for (c, h) in histograms.iter().enumerate() {
        let Some((lo, hi)) = choose_range(h, method, observer.range())? else {
            continue;
        };
        // Edges are multiples of a power of two: exact in f32 but for 2^128, beyond it.
        let (lo, hi) = ((lo as f32).max(-f32::MAX), (hi as f32).min(f32::MAX));
        state.running.min[c] = lo;
        state.running.max[c] = hi;
        let (s, z) = qparams(observer, lo, hi);
        state.scales[c] = s;
        state.zero_points[c] = z;
    }
    Ok(state)
}
