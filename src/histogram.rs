//! Histogram calibration: a histogram of a tensor's values accumulated over calibration batches,
//! and methods that turn it into a clipping range (percentile, MSE, KL entropy, mix, PyTorch's
//! `HistogramObserver` search), so that one outlier no longer decides the range.
//!
//! ## The histogram (exact, independent of batch order)
//!
//! `bins` (a power of two from 128 to 4096; 2048 by default) over `[0, R)` of `|x|`
//! ([`HistogramDomain::Magnitude`], for the symmetric methods) or over `[-R, R)` of `x`
//! ([`HistogramDomain::Signed`], for affine ranges), per tensor or per channel. `R` is a power of
//! two, the smallest **above** every finite value seen (it starts at 2^-126): a value `v` falls in
//! bin `floor(|v| * bins / R)` or `bins / 2 + floor(v * bins / (2R))`, computed exactly (a power of
//! two times an f32 is exact in f64, and so is its floor). When a batch holds a larger value, `R`
//! doubles as many times as needed, and each doubling merges neighbouring bins pairwise, which
//! gives exactly the counts the values would have had at the larger `R`: the final counts depend
//! only on the multiset of values seen, not on the batches' order or sizes. NaN and infinities are
//! skipped, as the observers skip them. Counts are integers (`u64`).
//!
//! ## Methods ([`CalibrationMethod`]); each a pure function of the counts and the edges, in f64
//!
//! - `Percentile(p)` (Horizon's and modelopt's; 99.99 by default): the smallest upper bin edge
//!   below which at least `p`% of the values lie (magnitude: the range `[-t, t]`; signed: the
//!   lower edge at `100 - p`% and the upper edge at `p`%).
//! - `Mse` (Horizon's candidates): `t = amax * (1 - k / 100)` for `k` in `0..100`, `amax` the upper
//!   edge of the last non-empty bin; each bin's count at its center quantized symmetrically with
//!   `scale = t / ((qmax - qmin) / 2)` (clipped at `qmax`); the `t` with the smallest total squared
//!   error, the largest `t` among equals.
//! - `Entropy` (TensorRT's KL calibration as modelopt's `_compute_amax_entropy` implements it,
//!   stride 1, start bin 128, `2^(bits - 1)` quantized bins): for each candidate end bin `i`, the
//!   reference distribution (the first `i` bins, the rest added to the last; the zero bin replaced
//!   by the next one's count, modelopt's own step) against its quantization to `2^(bits - 1)`
//!   bins expanded back over the non-empty bins; the `i` with the smallest divergence, the last
//!   among equals; the threshold is edge `i`.
//! - `Mix(percentiles)` (Horizon's): each percentile's threshold, scored by the MSE criterion; the
//!   best.
//! - `PyTorchL2` (`HistogramObserver._non_linear_param_search`): PyTorch's greedy shrinking of
//!   `[start_bin, end_bin]` by quantile steps of 1e-5 while the L2 quantization error (to
//!   `2^bits` destination bins) decreases, on the signed histogram.
//!
//! The chosen range is the observer state's `min`/`max` (`[-t, t]` for the magnitude methods), and
//! the observers' qparams code turns it into a scale and zero point, so calibration continues into
//! QAT as with min/max (load, freeze, moving average).

use crate::error::{Error, Result};
use crate::quant::{Granularity, QuantRange};

/// What the histogram counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HistogramDomain {
    /// `|x|` over `[0, R)`: the symmetric methods.
    #[default]
    Magnitude,
    /// `x` over `[-R, R)`: affine ranges.
    Signed,
}

/// A validated histogram configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistogramConfig {
    bins: usize,
    domain: HistogramDomain,
    granularity: Granularity,
}

impl HistogramConfig {
    /// `bins` (a power of two from 128 to 4096) over `domain`, per tensor or per channel.
    pub fn new(bins: usize, domain: HistogramDomain, granularity: Granularity) -> Result<Self> {
        if !bins.is_power_of_two() || !(128..=4096).contains(&bins) {
            return Err(Error::InvalidSetting(format!(
                "histogram bins must be a power of two from 128 to 4096, not {bins}"
            )));
        }
        if !matches!(
            granularity,
            Granularity::PerTensor | Granularity::PerChannel { .. }
        ) {
            return Err(Error::Unsupported(format!(
                "histograms are per tensor or per channel, not {granularity:?}"
            )));
        }
        Ok(Self {
            bins,
            domain,
            granularity,
        })
    }

    /// 2048 bins of `|x|` per tensor (Horizon's and modelopt's default).
    pub fn per_tensor() -> Self {
        Self {
            bins: 2048,
            domain: HistogramDomain::Magnitude,
            granularity: Granularity::PerTensor,
        }
    }

    /// Bins per histogram.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// What is counted.
    pub fn domain(&self) -> HistogramDomain {
        self.domain
    }

    /// Per tensor or per channel.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }
}

/// The exponent `R = 2^exponent` starts at: the smallest normal f32.
pub const INITIAL_EXPONENT: i32 = -126;

/// One channel's histogram: `counts` over `[0, 2^exponent)` (magnitude) or `[-2^exponent,
/// 2^exponent)` (signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// What is counted.
    pub domain: HistogramDomain,
    /// `R = 2^exponent`, the range's bound.
    pub exponent: i32,
    /// One count per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// An empty histogram of `bins` bins.
    pub fn new(bins: usize, domain: HistogramDomain) -> Self {
        Self {
            domain,
            exponent: INITIAL_EXPONENT,
            counts: vec![0; bins],
        }
    }

    /// Values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `R`.
    pub fn bound(&self) -> f64 {
        2f64.powi(self.exponent)
    }

    /// The lower edge of the range (0 or `-R`).
    pub fn lower(&self) -> f64 {
        match self.domain {
            HistogramDomain::Magnitude => 0.0,
            HistogramDomain::Signed => -self.bound(),
        }
    }

    /// The width of a bin.
    pub fn bin_width(&self) -> f64 {
        (self.bound() - self.lower()) / self.counts.len() as f64
    }

    /// Edge `i` (0 to `bins`).
    pub fn edge(&self, i: usize) -> f64 {
        self.lower() + self.bin_width() * i as f64
    }

    /// The exponent of the smallest power of two above `|v|` (finite `v`).
    pub fn exponent_above(v: f32) -> i32 {
        let a = v.abs();
        if a < f32::MIN_POSITIVE {
            return INITIAL_EXPONENT;
        }
        // a = m * 2^e with m in [1, 2): 2^(e + 1) is the smallest power of two above a.
        ((a.to_bits() >> 23) as i32 - 127) + 1
    }

    /// Doubles `R` until it is at least `2^exponent`, merging neighbouring bins each time.
    pub fn grow_to(&mut self, exponent: i32) {
        let bins = self.counts.len();
        while self.exponent < exponent {
            let mut merged = vec![0u64; bins];
            for (i, &c) in self.counts.iter().enumerate() {
                let j = match self.domain {
                    HistogramDomain::Magnitude => i / 2,
                    HistogramDomain::Signed => bins / 4 + i / 2,
                };
                merged[j] += c;
            }
            self.counts = merged;
            self.exponent += 1;
            if self.counts.iter().all(|&c| c == 0) {
                // Nothing left to merge: jump.
                self.exponent = exponent;
            }
        }
    }

    /// The bin of finite `v` (below `R` in magnitude).
    pub fn bin_of(&self, v: f32) -> usize {
        let bins = self.counts.len() as i64;
        // v * bins / R and v * bins / (2R): an f32 times a power of two, exact in f64, and so
        // is its floor.
        let log2_bins = bins.trailing_zeros() as i32;
        match self.domain {
            HistogramDomain::Magnitude => {
                let q = (v.abs() as f64) * 2f64.powi(log2_bins - self.exponent);
                (q.floor() as i64).clamp(0, bins - 1) as usize
            }
            HistogramDomain::Signed => {
                let q = (v as f64) * 2f64.powi(log2_bins - 1 - self.exponent);
                (bins / 2 + q.floor() as i64).clamp(0, bins - 1) as usize
            }
        }
    }

    /// Counts the finite values of `values`, growing the range first to hold them all.
    pub fn add(&mut self, values: impl Iterator<Item = f32> + Clone) {
        let top = values
            .clone()
            .filter(|v| v.is_finite())
            .map(Histogram::exponent_above)
            .max();
        if let Some(top) = top {
            self.grow_to(top);
        }
        for v in values.filter(|v| v.is_finite()) {
            let b = self.bin_of(v);
            self.counts[b] += 1;
        }
    }
}

/// How a histogram becomes a clipping range.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibrationMethod {
    /// The `p`-th percentile (50 <= p <= 100).
    Percentile(f64),
    /// The symmetric candidate with the smallest squared quantization error.
    Mse,
    /// TensorRT's KL-divergence calibration (modelopt's implementation).
    Entropy,
    /// The best of several percentiles by the MSE criterion.
    Mix(Vec<f64>),
    /// PyTorch's `HistogramObserver` search (signed histograms).
    PyTorchL2,
}

impl CalibrationMethod {
    /// Horizon's percentile default: 99.99.
    pub fn percentile() -> Self {
        Self::Percentile(99.99)
    }

    /// Horizon's mix: 99.99, 99.995, 99.999, 99.9999 and 100.
    pub fn mix() -> Self {
        Self::Mix(vec![99.99, 99.995, 99.999, 99.9999, 100.0])
    }
}

/// The clipping range `(min, max)` that `method` picks from `hist` for quantization to `range`,
/// or `None` for an empty histogram.
pub fn choose_range(
    hist: &Histogram,
    method: &CalibrationMethod,
    range: QuantRange,
) -> Result<Option<(f64, f64)>> {
    if hist.total() == 0 {
        return Ok(None);
    }
    let magnitude_only = |name: &str| {
        if hist.domain != HistogramDomain::Magnitude {
            return Err(Error::Unsupported(format!(
                "{name} calibration takes a magnitude histogram (HistogramDomain::Magnitude)"
            )));
        }
        Ok(())
    };
    let symmetric = |t: f64| Some((-t, t));
    Ok(match method {
        CalibrationMethod::Percentile(p) => {
            check_percentile(*p)?;
            match hist.domain {
                HistogramDomain::Magnitude => symmetric(percentile_edge(hist, *p)),
                HistogramDomain::Signed => Some((
                    hist.edge(percentile_bin(hist, 100.0 - *p)),
                    percentile_edge(hist, *p),
                )),
            }
        }
        CalibrationMethod::Mse => {
            magnitude_only("MSE")?;
            symmetric(mse_threshold(hist, range))
        }
        CalibrationMethod::Entropy => {
            magnitude_only("entropy")?;
            symmetric(entropy_threshold(hist, range))
        }
        CalibrationMethod::Mix(percentiles) => {
            magnitude_only("mix")?;
            if percentiles.is_empty() {
                return Err(Error::InvalidSetting(
                    "mix calibration needs at least one percentile".into(),
                ));
            }
            let mut best: Option<(f64, f64)> = None;
            for &p in percentiles {
                check_percentile(p)?;
                let t = percentile_edge(hist, p);
                let error = squared_error(hist, t, range);
                if best.is_none_or(|(_, e)| error < e) {
                    best = Some((t, error));
                }
            }
            best.and_then(|(t, _)| symmetric(t))
        }
        CalibrationMethod::PyTorchL2 => {
            if hist.domain != HistogramDomain::Signed {
                return Err(Error::Unsupported(
                    "PyTorch's search takes a signed histogram (HistogramDomain::Signed)".into(),
                ));
            }
            let bits = (range.qmax() - range.qmin() + 1).ilog2();
            let counts: Vec<f64> = hist.counts.iter().map(|&c| c as f64).collect();
            let (start, end) = pytorch_search(&counts, hist.bin_width(), 1 << bits);
            Some((hist.edge(start), hist.edge(end + 1)))
        }
    })
}

fn check_percentile(p: f64) -> Result<()> {
    if !(50.0..=100.0).contains(&p) {
        return Err(Error::InvalidSetting(format!(
            "a calibration percentile must lie in [50, 100], not {p}"
        )));
    }
    Ok(())
}

/// The smallest bin whose cumulative count reaches `p`% of the total.
fn percentile_bin(hist: &Histogram, p: f64) -> usize {
    let target = hist.total() as f64 * p / 100.0;
    let mut sum = 0u64;
    for (i, &c) in hist.counts.iter().enumerate() {
        sum += c;
        if sum as f64 >= target && sum > 0 {
            return i;
        }
    }
    hist.counts.len() - 1
}

/// The upper edge of [`percentile_bin`].
fn percentile_edge(hist: &Histogram, p: f64) -> f64 {
    hist.edge(percentile_bin(hist, p) + 1)
}

/// The upper edge of the last non-empty bin.
fn amax(hist: &Histogram) -> f64 {
    let last = hist.counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    hist.edge(last + 1)
}

/// The squared error of the magnitude histogram's bin centers quantized symmetrically with
/// threshold `t` for `range`.
fn squared_error(hist: &Histogram, t: f64, range: QuantRange) -> f64 {
    let levels = (range.qmax() - range.qmin()) as f64 / 2.0;
    let scale = t / levels;
    let qmax = range.qmax() as f64;
    hist.counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &c)| {
            let center = hist.edge(i) + hist.bin_width() / 2.0;
            let q = if scale > 0.0 {
                (center / scale).round_ties_even().min(qmax) * scale
            } else {
                0.0
            };
            (center - q) * (center - q) * c as f64
        })
        .sum()
}

fn mse_threshold(hist: &Histogram, range: QuantRange) -> f64 {
    let top = amax(hist);
    let mut best = (top, f64::INFINITY);
    for k in 0..100 {
        let t = top * (1.0 - k as f64 / 100.0);
        let error = squared_error(hist, t, range);
        if error < best.1 {
            best = (t, error);
        }
    }
    best.0
}

/// modelopt's `_compute_amax_entropy` (stride 1, start bin 128).
fn entropy_threshold(hist: &Histogram, range: QuantRange) -> f64 {
    let bits = (range.qmax() - range.qmin() + 1).ilog2();
    let nbins = 1usize << (bits - 1);
    let mut bins: Vec<f64> = hist.counts.iter().map(|&c| c as f64).collect();
    if bins.len() > 1 {
        bins[0] = bins[1];
    }
    let start = nbins.min(bins.len());
    let mut best: Option<(usize, f64)> = None;
    for i in start..=bins.len() {
        let divergence = kl_for_end_bin(&bins, i, nbins);
        // The last minimum: `<=`.
        if best.is_none_or(|(_, d)| divergence <= d) {
            best = Some((i, divergence));
        }
    }
    hist.edge(best.map_or(bins.len(), |(i, _)| i))
}

/// The KL divergence of the first `i` bins (the rest folded into the last) against their
/// quantization to `nbins` bins, as modelopt computes it.
fn kl_for_end_bin(bins: &[f64], i: usize, nbins: usize) -> f64 {
    // Source bin j falls in quantized bin floor(j * nbins / i) (numpy's digitize on
    // linspace(0, i, nbins + 1), exact here); empty source bins take no share.
    let quantized_of = |j: usize| j * nbins / i;
    let mut sums = vec![0.0f64; nbins];
    let mut nonempty = vec![0usize; nbins];
    for j in 0..i {
        if bins[j] != 0.0 {
            sums[quantized_of(j)] += bins[j];
            nonempty[quantized_of(j)] += 1;
        }
    }
    let mut q: Vec<f64> = (0..i)
        .map(|j| {
            let k = quantized_of(j);
            if bins[j] != 0.0 {
                sums[k] / nonempty[k] as f64
            } else {
                0.0
            }
        })
        .collect();
    let mut p: Vec<f64> = bins[..i].to_vec();
    let tail: f64 = bins[i..].iter().sum();
    if let Some(last) = p.last_mut() {
        *last += tail;
    }
    normalize(&mut p);
    normalize(&mut q);
    // scipy.stats.entropy(p, q): sum p * ln(p / q), +inf where q = 0 < p.
    p.iter()
        .zip(&q)
        .filter(|(&pi, _)| pi > 0.0)
        .map(|(&pi, &qi)| {
            if qi > 0.0 {
                pi * (pi / qi).ln()
            } else {
                f64::INFINITY
            }
        })
        .sum()
}

fn normalize(v: &mut [f64]) {
    let sum: f64 = v.iter().sum();
    if sum != 0.0 {
        for x in v {
            *x /= sum;
        }
    }
}

/// PyTorch's `_non_linear_param_search` on `counts` (PyTorch's own are float32, interpolated
/// by its range growth) with bins of `width` and `dst_bins` destination bins: the chosen
/// `(start_bin, end_bin)`, in f64 where PyTorch computes in f32.
pub fn pytorch_search(counts: &[f64], width: f64, dst_bins: usize) -> (usize, usize) {
    let bins = counts.len();
    if bins == 0 {
        return (0, 0);
    }
    let total: f64 = counts.iter().sum();
    let mut csum = Vec::with_capacity(bins);
    let mut running = 0.0;
    for &c in counts {
        running += c;
        csum.push(running);
    }
    let stepsize = 1e-5;
    let (mut alpha, mut beta) = (0.0f64, 1.0f64);
    let (mut start_bin, mut end_bin) = (0usize, bins - 1);
    let mut norm_min = f64::INFINITY;
    while alpha < beta {
        let next_alpha = alpha + stepsize;
        let next_beta = beta - stepsize;
        let (mut l, mut r) = (start_bin, end_bin);
        while l < end_bin && csum[l] < next_alpha * total {
            l += 1;
        }
        while r > start_bin && csum[r] > next_beta * total {
            r -= 1;
        }
        let (mut next_start, mut next_end) = (start_bin, end_bin);
        if (l - start_bin) > (end_bin - r) {
            next_start = l;
            alpha = next_alpha;
        } else {
            next_end = r;
            beta = next_beta;
        }
        if next_start == start_bin && next_end == end_bin {
            continue;
        }
        let norm = quantization_error(counts, width, dst_bins, next_start, next_end);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start_bin = next_start;
        end_bin = next_end;
    }
    (start_bin, end_bin)
}

/// PyTorch's `_compute_quantization_error`.
fn quantization_error(
    counts: &[f64],
    width: f64,
    dst_bins: usize,
    start: usize,
    end: usize,
) -> f64 {
    let dst_width = width * (end - start + 1) as f64 / dst_bins as f64;
    if dst_width == 0.0 {
        return 0.0;
    }
    let norm3 = |begin: f64, end: f64, density: f64| {
        density * (end * end * end - begin * begin * begin) / 3.0
    };
    let last = (dst_bins - 1) as f64;
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let density = c / width;
            let begin = (i as f64 - start as f64) * width;
            let end = begin + width;
            let dst_begin = (begin / dst_width).floor().clamp(0.0, last);
            let dst_begin_center = (dst_begin + 0.5) * dst_width;
            let dst_end = (end / dst_width).floor().clamp(0.0, last);
            let mut norm = norm3(begin - dst_begin_center, dst_width / 2.0, density);
            norm += (dst_end - dst_begin - 1.0) * norm3(-dst_width / 2.0, dst_width / 2.0, density);
            let dst_end_center = dst_end * dst_width + dst_width / 2.0;
            norm += norm3(-dst_width / 2.0, end - dst_end_center, density);
            norm
        })
        .sum()
}
