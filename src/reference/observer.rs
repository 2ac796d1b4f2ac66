//! CPU reference for observers: batch min/max, the running-state update, qparams, and the fused
//! observe + fake-quantize step. The semantics are listed in [`crate::observer`]; these functions
//! are their definition, in plain f32 arithmetic (Rust neither fuses nor flushes, so each
//! operation below is one correctly rounded IEEE operation).

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::observer::{
    Averaging, MinMax, Mode, ObserverConfig, ObserverState, QScheme, MAX_OBSERVED_SCALE,
};
use crate::quant::{Granularity, PackedMask, ParamLayout};
use crate::reference::{fake_quant, FakeQuantOutput};

/// How flat indices of a tensor of `shape` map to the observer's channels.
pub fn observer_layout(
    config: &ObserverConfig,
    shape: &[usize],
    len: usize,
) -> Result<ParamLayout> {
    config.granularity().param_layout(shape, len)
}

/// Min and max of the finite values of each channel; both zeros count as `+0.0`; a channel with no
/// finite value is empty, `(+inf, -inf)`.
/// Widening to f32 is exact, so the statistics of a 16-bit tensor are those of the stored values.
pub fn batch_min_max<T: Element>(
    config: &ObserverConfig,
    x: &[T],
    shape: &[usize],
) -> Result<MinMax> {
    let layout = observer_layout(config, shape, x.len())?;
    let mut batch = MinMax::empty(layout.channels());
    for (i, v) in x.iter().enumerate() {
        let v = v.to_f32();
        if !v.is_finite() {
            continue;
        }
        let v = if v == 0.0 { 0.0 } else { v };
        let c = layout.channel_of(i);
        if v < batch.min[c] {
            batch.min[c] = v;
        }
        if v > batch.max[c] {
            batch.max[c] = v;
        }
    }
    Ok(batch)
}

/// A min/max pair holds as many maxima as minima.
fn check_min_max(what: &'static str, m: &MinMax) -> Result<()> {
    if m.max.len() != m.min.len() {
        return Err(Error::LengthMismatch {
            what,
            expected: m.min.len(),
            actual: m.max.len(),
        });
    }
    Ok(())
}

/// Channel `c` of `m` as a range, zeros as `+0.0`; `None` when it is not a finite range (see
/// [`MinMax::is_observed`]).
fn observed(m: &MinMax, c: usize) -> Option<(f32, f32)> {
    let plus_zero = |v: f32| if v == 0.0 { 0.0 } else { v };
    m.is_observed(c)
        .then(|| (plus_zero(m.min[c]), plus_zero(m.max[c])))
}

/// Merges two replicas' batch statistics: min of mins, max of maxes; a channel empty (or not a
/// finite range) on one side takes the other side's.
pub fn merge(a: &MinMax, b: &MinMax) -> Result<MinMax> {
    check_min_max("statistics merged into", a)?;
    check_min_max("merged statistics", b)?;
    if a.channels() != b.channels() {
        return Err(Error::LengthMismatch {
            what: "channels of merged statistics",
            expected: a.channels(),
            actual: b.channels(),
        });
    }
    let mut out = MinMax::empty(a.channels());
    for c in 0..a.channels() {
        let merged = match (observed(a, c), observed(b, c)) {
            (Some((amin, amax)), Some((bmin, bmax))) => Some((
                if bmin < amin { bmin } else { amin },
                if bmax > amax { bmax } else { amax },
            )),
            (one, other) => one.or(other),
        };
        if let Some((lo, hi)) = merged {
            out.min[c] = lo;
            out.max[c] = hi;
        }
    }
    Ok(out)
}

/// One moving-average step, `running + c * (batch - running)`: a subtraction, a multiplication and
/// an addition, each rounded to f32 (never fused), saturated to the finite range.
pub fn moving_average(running: f32, batch: f32, c: f32) -> f32 {
    let difference = batch - running;
    let step = c * difference;
    (running + step).clamp(-f32::MAX, f32::MAX)
}

/// Folds a batch's statistics into the running state, channel by channel.
pub fn update_running(config: &ObserverConfig, running: &mut MinMax, batch: &MinMax) -> Result<()> {
    check_min_max("running range", running)?;
    check_min_max("batch statistics", batch)?;
    if running.channels() != batch.channels() {
        return Err(Error::LengthMismatch {
            what: "channels of the batch statistics",
            expected: running.channels(),
            actual: batch.channels(),
        });
    }
    for c in 0..running.channels() {
        let Some((bmin, bmax)) = observed(batch, c) else {
            continue;
        };
        let (lo, hi) = match (observed(running, c), config.averaging()) {
            (None, _) => (bmin, bmax),
            (Some((rmin, rmax)), Averaging::MinMax) => (
                if bmin < rmin { bmin } else { rmin },
                if bmax > rmax { bmax } else { rmax },
            ),
            (Some((rmin, rmax)), Averaging::MovingAverage(k)) => {
                (moving_average(rmin, bmin, k), moving_average(rmax, bmax, k))
            }
        };
        running.min[c] = lo;
        running.max[c] = hi;
    }
    Ok(())
}

/// The smallest power of two not below a positive normal `scale`.
pub fn next_power_of_two(scale: f32) -> f32 {
    let bits = scale.to_bits();
    if bits & 0x007f_ffff == 0 {
        scale
    } else {
        f32::from_bits((bits & 0x7f80_0000) + 0x0080_0000)
    }
}

/// The scale and zero point of one channel's running range (see [`crate::observer`]).
pub fn qparams(config: &ObserverConfig, min: f32, max: f32) -> (f32, i32) {
    let Some((min, max)) = observed(
        &MinMax {
            min: vec![min],
            max: vec![max],
        },
        0,
    ) else {
        return (1.0, 0);
    };
    let (qmin, qmax) = (config.range().qmin(), config.range().qmax());
    let min_neg = if min < 0.0 { min } else { 0.0 };
    let max_pos = if max > 0.0 { max } else { 0.0 };
    let raw = match config.scheme() {
        QScheme::Symmetric => {
            let amax = if -min_neg > max_pos {
                -min_neg
            } else {
                max_pos
            };
            amax / ((qmax - qmin) as f32 / 2.0)
        }
        // max_pos - min_neg may overflow to +inf; the clamp below turns that into 2^126.
        QScheme::Affine => (max_pos - min_neg) / (qmax - qmin) as f32,
    };
    let mut scale = raw.clamp(config.eps(), MAX_OBSERVED_SCALE);
    if config.power_of_two() {
        scale = next_power_of_two(scale);
    }
    let zero_point = match config.scheme() {
        QScheme::Symmetric => config.symmetric_zero_point(),
        QScheme::Affine => {
            // |min_neg / scale| <= qmax - qmin (plus rounding), far inside i64.
            let q = (min_neg / scale).round_ties_even() as i64;
            (qmin as i64 - q).clamp(qmin as i64, qmax as i64) as i32
        }
    };
    (scale, zero_point)
}

/// The reference observer: its state, updated by batches, and the fused step.
#[derive(Debug, Clone, PartialEq)]
pub struct Observer {
    config: ObserverConfig,
    state: ObserverState,
}

impl Observer {
    /// An observer for tensors of `shape` (only the channel axis matters: a per-tensor observer
    /// takes any shape, `&[]` included) that has seen nothing.
    pub fn new(config: ObserverConfig, shape: &[usize]) -> Result<Self> {
        let channels = config.channels_for(shape)?;
        check_channels(&config, channels)?;
        // The state holds 16 bytes per channel: refuse what the host cannot allocate with an
        // error instead of the allocator's abort.
        let mut probe: Vec<[u32; 4]> = Vec::new();
        probe
            .try_reserve_exact(channels)
            .map_err(|_| Error::TooLarge {
                what: "observer channels (16 bytes of state per channel on the host)",
                requested: channels as u64,
                limit: (isize::MAX as u64) / 16,
            })?;
        drop(probe);
        Ok(Self {
            state: ObserverState::initial(channels),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ObserverConfig {
        &self.config
    }

    /// The running range and the qparams in force.
    pub fn state(&self) -> &ObserverState {
        &self.state
    }

    /// Replaces the state (for example with calibrated values); validated first.
    pub fn load_state(&mut self, state: ObserverState) -> Result<()> {
        self.state = state.validated(&self.config, self.state.channels())?;
        Ok(())
    }

    /// Folds a batch's statistics into the running range and recomputes the qparams.
    pub fn apply_batch(&mut self, batch: &MinMax) -> Result<()> {
        update_running(&self.config, &mut self.state.running, batch)?;
        for c in 0..self.state.channels() {
            let (scale, zero_point) = qparams(
                &self.config,
                self.state.running.min[c],
                self.state.running.max[c],
            );
            self.state.scales[c] = scale;
            self.state.zero_points[c] = zero_point;
        }
        Ok(())
    }

    /// Observes a tensor of `shape` and any element type: folds its statistics into the state,
    /// with no output (calibration without a copy).
    pub fn observe<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<()> {
        let layout = observer_layout(&self.config, shape, x.len())?;
        if layout.channels() != self.state.channels() {
            return Err(Error::ChannelCountMismatch {
                axis: self.config.granularity().axis().unwrap_or(0),
                channels: layout.channels(),
                params: self.state.channels(),
            });
        }
        let batch = batch_min_max(&self.config, x, shape)?;
        self.apply_batch(&batch)
    }

    /// The fused step on an f32 tensor of `shape`: see [`Mode`].
    fn step_f32(&mut self, x: &[f32], shape: &[usize], mode: Mode) -> Result<FakeQuantOutput> {
        let layout = observer_layout(&self.config, shape, x.len())?;
        if layout.channels() != self.state.channels() {
            return Err(Error::ChannelCountMismatch {
                axis: self.config.granularity().axis().unwrap_or(0),
                channels: layout.channels(),
                params: self.state.channels(),
            });
        }
        if mode != Mode::Frozen {
            let batch = batch_min_max(&self.config, x, shape)?;
            self.apply_batch(&batch)?;
        }
        if mode == Mode::Calibrate {
            return Ok(FakeQuantOutput {
                y: x.to_vec(),
                mask: PackedMask::from_bools(&vec![true; x.len()]),
            });
        }
        fake_quant(&self.state.fake_quant(&self.config)?, x, shape)
    }
}

impl Observer {
    /// The fused step on a tensor of `shape` and any element type (see [`Mode`]): the statistics
    /// of the widened values, the fake-quant of [`crate::reference::fake_quant`]; calibration
    /// returns `x` itself.
    pub fn step<T: Element>(
        &mut self,
        x: &[T],
        shape: &[usize],
        mode: Mode,
    ) -> Result<FakeQuantOutput<T>> {
        let wide: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        if mode == Mode::Calibrate {
            let out = self.step_f32(&wide, shape, mode)?;
            return Ok(FakeQuantOutput {
                y: x.to_vec(),
                mask: out.mask,
            });
        }
        // Observe (QAT) or only validate (frozen) through the f32 step, then fake-quantize the
        // stored type.
        let f32_mode = if mode == Mode::Qat {
            Mode::Calibrate
        } else {
            Mode::Frozen
        };
        self.step_f32(&wide, shape, f32_mode)?;
        let op = self.state.fake_quant(&self.config)?;
        crate::reference::fake_quant(&op, x, shape)
    }
}

/// Observers keep at least one channel, and exactly one per-tensor.
pub(crate) fn check_channels(config: &ObserverConfig, channels: usize) -> Result<()> {
    if channels == 0 || (config.granularity() == Granularity::PerTensor && channels != 1) {
        return Err(Error::InvalidObserver(format!(
            "an observer needs one channel per-tensor and at least one per-channel, got {channels}"
        )));
    }
    Ok(())
}
