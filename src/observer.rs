//! Observers: statistics-based quantization parameters (min/max, moving averages) and the modes of
//! the fused observe + fake-quantize step.
//!
//! The types here are plain data shared by the CPU reference ([`crate::reference::observer`],
//! which defines the arithmetic) and the device path ([`crate::gpu::GpuObserver`]).
//!
//! Semantics, per channel (the whole tensor for a per-tensor observer):
//! - A batch's min/max covers its **finite** values only: NaN and infinities are skipped (the
//!   fake-quant saturates infinities and passes NaN through, so the loss still shows them), and
//!   both zeros count as `+0.0`. A channel with no finite value (an empty tensor, or all NaN/inf)
//!   yields the empty batch `(+inf, -inf)`, which leaves the state unchanged.
//! - The running state starts empty (`+inf, -inf`). [`Averaging::MinMax`] keeps the min of mins
//!   and max of maxes; [`Averaging::MovingAverage`] sets the state to the first non-empty batch,
//!   then `running = running + c * (batch - running)` in f32, each operation correctly rounded
//!   (never fused). The state stays finite: an update that overflows saturates at `+-f32::MAX`.
//! - Qparams from a non-empty state, with `min_neg = min(min, 0)`, `max_pos = max(max, 0)`:
//!   symmetric `scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2)`, zero point 0 for signed
//!   ranges (`qmin < 0`) and `(qmax + 1) / 2` for unsigned ones (128 for uint8, as PyTorch);
//!   affine `scale = (max_pos - min_neg) / (qmax - qmin)`,
//!   `zp = clamp(qmin - round_half_even(min_neg / scale), qmin, qmax)`. The scale is clamped to
//!   `[eps, 2^126]` (the upper bound only matters when `max_pos - min_neg` overflows) before the
//!   zero point is computed, and optionally rounded up to a power of two. All zeros give
//!   `scale = eps`. A state never observed gives `scale = 1.0`, zero point 0.

use crate::error::{Error, Result};
use crate::quant::{FakeQuant, Granularity, QuantParams, QuantRange, Rounding};

/// How the scale and zero point follow from the observed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QScheme {
    /// A range symmetric around zero: `scale = max(|min|, |max|) / ((qmax - qmin) / 2)`.
    #[default]
    Symmetric,
    /// The observed range mapped onto `[qmin, qmax]` with a zero point.
    Affine,
}

/// How a batch's min/max enters the running state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Averaging {
    /// Running min of mins and max of maxes (PyTorch's `MinMaxObserver`).
    MinMax,
    /// `running = running + c * (batch - running)` after the first batch (PyTorch's
    /// `MovingAverageMinMaxObserver`, default `c = 0.01`). `c` must lie in `(0, 1]`.
    MovingAverage(f32),
}

impl Default for Averaging {
    fn default() -> Self {
        Averaging::MovingAverage(0.01)
    }
}

/// What one call of the fused step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Observe only: update the state and qparams, output `y = x` (and an all-ones mask).
    Calibrate,
    /// Observe, update the qparams from this step's state, then fake-quantize with them.
    Qat,
    /// Fake-quantize with the current qparams; the state is left alone.
    Frozen,
}

/// The default `eps`: f32 machine epsilon, `2^-23`, as PyTorch's observers.
pub const DEFAULT_EPS: f32 = f32::EPSILON;

/// The largest scale an observer produces: its reciprocal is still a normal f32.
pub const MAX_OBSERVED_SCALE: f32 = f32::from_bits(0x7e80_0000); // 2^126

/// A validated observer configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverConfig {
    range: QuantRange,
    scheme: QScheme,
    averaging: Averaging,
    granularity: Granularity,
    eps: f32,
    power_of_two: bool,
    rounding: Rounding,
}

impl ObserverConfig {
    /// A per-tensor or per-channel observer. The range must contain zero (`qmin <= 0 < qmax`), as
    /// every zero point formula here assumes.
    pub fn new(
        range: QuantRange,
        scheme: QScheme,
        averaging: Averaging,
        granularity: Granularity,
    ) -> Result<Self> {
        if range.qmin() > 0 {
            return Err(Error::InvalidObserver(format!(
                "the range [{}, {}] must contain zero",
                range.qmin(),
                range.qmax()
            )));
        }
        if let Averaging::MovingAverage(c) = averaging {
            // Written so that NaN fails too.
            if !(c > 0.0 && c <= 1.0) {
                return Err(Error::InvalidObserver(format!(
                    "the moving-average constant must lie in (0, 1], got {c:e}"
                )));
            }
        }
        Ok(Self {
            range,
            scheme,
            averaging,
            granularity,
            eps: DEFAULT_EPS,
            power_of_two: false,
            rounding: Rounding::default(),
        })
    }

    /// The seed's (and PyTorch's `default_qat_qconfig`'s) weight observer: per-channel symmetric
    /// int8 along axis 0 with a moving average (`c = 0.01`).
    pub fn qat_weight_int8() -> Self {
        Self::new(
            QuantRange::INT8,
            QScheme::Symmetric,
            Averaging::default(),
            Granularity::per_channel(0),
        )
        .expect("a valid preset")
    }

    /// The seed's activation observer: per-tensor symmetric int8 with a moving average
    /// (`c = 0.01`).
    pub fn qat_activation_int8() -> Self {
        Self::new(
            QuantRange::INT8,
            QScheme::Symmetric,
            Averaging::default(),
            Granularity::PerTensor,
        )
        .expect("a valid preset")
    }

    /// The same configuration with another lower bound for the scale, which must be a normal f32
    /// in `[2^-126, 2^126]`.
    pub fn with_eps(mut self, eps: f32) -> Result<Self> {
        if !(eps.is_normal() && eps > 0.0 && eps <= MAX_OBSERVED_SCALE) {
            return Err(Error::InvalidObserver(format!(
                "eps must be a normal positive f32 no larger than 2^126, got {eps:e}"
            )));
        }
        self.eps = eps;
        Ok(self)
    }

    /// The same configuration with scales rounded up to the next power of two (targets that only
    /// shift). Rounding up keeps the observed range representable.
    pub fn with_power_of_two(mut self, power_of_two: bool) -> Self {
        self.power_of_two = power_of_two;
        self
    }

    /// The same configuration with another rounding of the fake-quant quotient.
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// The quantization range.
    pub fn range(&self) -> QuantRange {
        self.range
    }

    /// Symmetric or affine.
    pub fn scheme(&self) -> QScheme {
        self.scheme
    }

    /// The same configuration per tensor or per channel along another axis (a framework whose
    /// weights keep their output channels on another axis than PyTorch's 0: burn's `Linear`
    /// stores `[d_input, d_output]`). Checked against a tensor's shape when one is given.
    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    /// Running min/max or moving average.
    pub fn averaging(&self) -> Averaging {
        self.averaging
    }

    /// Per tensor or per channel along an axis.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Lower bound of the scale.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Whether scales are rounded up to powers of two.
    pub fn power_of_two(&self) -> bool {
        self.power_of_two
    }

    /// Rounding of the fake-quant quotient.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// The symmetric scheme's zero point: 0 for signed ranges, the upper middle for unsigned ones.
    pub fn symmetric_zero_point(&self) -> i32 {
        if self.range.qmin() < 0 {
            0
        } else {
            (self.range.qmax() + 1) / 2
        }
    }

    /// The number of channels this observer keeps for a tensor of `shape` (1 per-tensor).
    pub fn channels_for(&self, shape: &[usize]) -> Result<usize> {
        self.granularity.channels(shape)
    }
}

/// Per-channel minima and maxima: a batch's statistics or an observer's running state. An empty
/// channel (never observed, or nothing finite in the batch) holds `(+inf, -inf)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MinMax {
    /// Minimum per channel.
    pub min: Vec<f32>,
    /// Maximum per channel.
    pub max: Vec<f32>,
}

impl MinMax {
    /// `channels` empty channels.
    pub fn empty(channels: usize) -> Self {
        Self {
            min: vec![f32::INFINITY; channels],
            max: vec![f32::NEG_INFINITY; channels],
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.min.len()
    }

    /// Whether channel `c` holds a range: both ends finite and `min <= max`. Anything else (the
    /// empty sentinel, NaN, a reversed range, a channel past the end) is treated as empty.
    pub fn is_observed(&self, c: usize) -> bool {
        match (self.min.get(c), self.max.get(c)) {
            (Some(&lo), Some(&hi)) => lo.is_finite() && hi.is_finite() && lo <= hi,
            // A channel that does not exist has observed nothing.
            _ => false,
        }
    }

    /// Checks the lengths and that every channel is either a finite range or exactly empty;
    /// `-0.0` is replaced by `+0.0` (observers only ever hold `+0.0`).
    pub fn validated(mut self, channels: usize) -> Result<Self> {
        if self.min.len() != channels || self.max.len() != channels {
            return Err(Error::LengthMismatch {
                what: "min/max per channel",
                expected: channels,
                actual: if self.min.len() != channels {
                    self.min.len()
                } else {
                    self.max.len()
                },
            });
        }
        for c in 0..channels {
            let empty = self.min[c] == f32::INFINITY && self.max[c] == f32::NEG_INFINITY;
            if !empty && !self.is_observed(c) {
                return Err(Error::InvalidObserver(format!(
                    "channel {c}: [{:e}, {:e}] is neither a finite range nor empty (+inf, -inf)",
                    self.min[c], self.max[c]
                )));
            }
            for v in [&mut self.min[c], &mut self.max[c]] {
                if *v == 0.0 {
                    *v = 0.0;
                }
            }
        }
        Ok(self)
    }
}

/// An observer's whole state: the running min/max and the quantization parameters in force.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverState {
    /// Running minima and maxima.
    pub running: MinMax,
    /// Scale per channel.
    pub scales: Vec<f32>,
    /// Zero point per channel.
    pub zero_points: Vec<i32>,
}

impl ObserverState {
    /// The state of an observer that has seen nothing: empty ranges, scale 1, zero point 0.
    pub fn initial(channels: usize) -> Self {
        Self {
            running: MinMax::empty(channels),
            scales: vec![1.0; channels],
            zero_points: vec![0; channels],
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.scales.len()
    }

    /// The fake-quantization these qparams define under `config` (validated like any other).
    pub fn fake_quant(&self, config: &ObserverConfig) -> Result<FakeQuant> {
        if self.scales.is_empty() || self.zero_points.len() != self.scales.len() {
            return Err(Error::ParamLengthMismatch {
                scales: self.scales.len(),
                zero_points: self.zero_points.len(),
            });
        }
        let params = QuantParams::new(
            config.granularity(),
            self.scales.clone(),
            self.zero_points.clone(),
        );
        Ok(FakeQuant::new(config.range(), params)?.with_rounding(config.rounding()))
    }

    /// Checks the state against `config` and `channels`: a valid range per channel (see
    /// [`MinMax::validated`]) and qparams that [`FakeQuant::new`] accepts.
    pub fn validated(self, config: &ObserverConfig, channels: usize) -> Result<Self> {
        if config.granularity() == Granularity::PerTensor && channels != 1 {
            return Err(Error::ChannelCountMismatch {
                axis: 0,
                channels: 1,
                params: channels,
            });
        }
        let running = self.running.validated(channels)?;
        let state = Self { running, ..self };
        if state.scales.len() != channels || state.zero_points.len() != channels {
            return Err(Error::ParamLengthMismatch {
                scales: state.scales.len(),
                zero_points: state.zero_points.len(),
            });
        }
        state.fake_quant(config)?;
        Ok(state)
    }
}
