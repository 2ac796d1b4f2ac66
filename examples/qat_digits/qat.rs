//! The seed document's workflow on real data: float pre-training, prepare, calibration, QAT with
//! the statistics recipe and with the LSQ recipe, conversion to a fixed-point model evaluated with
//! integer arithmetic only; torchao's LLM recipe (per-group weights, per-token dynamic int8
//! activations, with and without range learning); and MXFP4 weights with FP8 activations (the
//! floating-point formats, pass-through backward). Every fake-quant, observer, straight-through and LSQ operation goes
//! through the library's [`Backend`] trait: its GPU path or its CPU reference, swapped with one
//! line. The rest (matrix products, softmax, SGD) is plain,
//! single-threaded CPU code, so both backends train bit-identical models.
//!
//! Shared by `examples/qat_digits/main.rs` and `tests/qat_digits.rs`.

use fakequant::{
    Averaging, Backend, CalibrationMethod, DynamicConfig, DynamicOps, DynamicOutput, DynamicScheme,
    ElementFormat, FloatQuantConfig, FloatQuantOps, GradScale, Granularity, HistogramConfig,
    HistogramDomain, HistogramOps, LsqConfig, LsqOps, Mode, MxScaleRule, ObserverConfig,
    ObserverOps, ObserverState, PackedMask, QScheme, QuantRange,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// Data: the 8x8 digits of scikit-learn (examples/data/README.md).

pub const PIXELS: usize = 64;
pub const CLASSES: usize = 10;

pub struct Dataset {
    /// Row-major images, pixels scaled to [0, 1].
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    fn image(&self, i: usize) -> &[f32] {
        &self.images[i * PIXELS..(i + 1) * PIXELS]
    }
}

/// The 1797 digits, split deterministically: every 5th image is a test image (359), the rest
/// train (1438).
pub fn load_digits() -> Result<(Dataset, Dataset)> {
    let text = include_str!("../data/digits.csv");
    let mut train = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
    };
    let mut test = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
    };
    for (row, line) in text.lines().enumerate() {
        let values: Vec<u32> = line
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<std::result::Result<_, _>>()?;
        if values.len() != PIXELS + 1 || values[PIXELS] as usize >= CLASSES {
            return Err(format!("digits.csv line {}: malformed", row + 1).into());
        }
        let set = if row % 5 == 4 { &mut test } else { &mut train };
        set.images
            .extend(values[..PIXELS].iter().map(|&p| p as f32 / 16.0));
        set.labels.push(values[PIXELS] as usize);
    }
    Ok((train, test))
}

// ---------------------------------------------------------------------------------------------
// The quantization backends.

/// The training loop's quantizers on one [`Backend`] (the CPU reference or a GPU context; the
/// library's trait makes them interchangeable), indexed by creation order.
pub struct Ops<B: Backend> {
    backend: B,
    observers: Vec<B::Observer>,
    lsqs: Vec<B::Lsq>,
    dynamics: Vec<DynamicQuantizer<B>>,
    floats: Vec<FloatQuantizer<B>>,
    histograms: Vec<B::Histogram>,
}

/// A dynamic quantizer: its configuration, and one backend object per shape it has seen (the
/// groups of a per-token quantizer follow the batch size).
struct DynamicQuantizer<B: Backend> {
    config: DynamicConfig,
    by_shape: Vec<(Vec<usize>, B::Dynamic)>,
}

/// A floating-point quantizer, likewise one backend object per shape.
struct FloatQuantizer<B: Backend> {
    config: FloatQuantConfig,
    by_shape: Vec<(Vec<usize>, B::FloatQuant)>,
}

impl<B: Backend> Ops<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            observers: Vec::new(),
            lsqs: Vec::new(),
            dynamics: Vec::new(),
            floats: Vec::new(),
            histograms: Vec::new(),
        }
    }

    pub fn name(&self) -> String {
        self.backend.name()
    }

    fn create_observer(&mut self, config: &ObserverConfig, shape: &[usize]) -> Result<usize> {
        self.observers
            .push(self.backend.create_observer(config, shape)?);
        Ok(self.observers.len() - 1)
    }

    /// The fused step: returns `y` and the mask.
    fn observe(
        &mut self,
        id: usize,
        x: &[f32],
        shape: &[usize],
        mode: Mode,
    ) -> Result<(Vec<f32>, PackedMask)> {
        let out = self.observers[id].step(x, shape, mode)?;
        Ok((out.y, out.mask))
    }

    fn observer_state(&mut self, id: usize) -> Result<ObserverState> {
        Ok(self.observers[id].read_state()?)
    }

    fn ste(&mut self, dy: &[f32], mask: &PackedMask) -> Result<Vec<f32>> {
        Ok(self.backend.ste_backward(dy, mask)?)
    }

    /// An LSQ quantizer initialized from an observer's calibrated qparams.
    fn create_lsq(&mut self, config: &LsqConfig, observer: usize) -> Result<usize> {
        let lsq = self
            .backend
            .create_lsq_from_observer(config, &self.observers[observer])?;
        self.lsqs.push(lsq);
        Ok(self.lsqs.len() - 1)
    }

    /// An LSQ quantizer with the given initial parameters.
    fn create_lsq_with(
        &mut self,
        config: &LsqConfig,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<usize> {
        self.lsqs
            .push(self.backend.create_lsq(config, scales, zero_points)?);
        Ok(self.lsqs.len() - 1)
    }

    fn create_dynamic(&mut self, config: &DynamicConfig) -> usize {
        self.dynamics.push(DynamicQuantizer {
            config: config.clone(),
            by_shape: Vec::new(),
        });
        self.dynamics.len() - 1
    }

    /// A dynamic fake-quantization: `y`, the mask and the qparams chosen for `x`.
    fn dynamic(&mut self, id: usize, x: &[f32], shape: &[usize]) -> Result<DynamicOutput> {
        let q = &mut self.dynamics[id];
        let at = match q.by_shape.iter().position(|(s, _)| s == shape) {
            Some(at) => at,
            None => {
                let object = self.backend.create_dynamic(&q.config, shape)?;
                q.by_shape.push((shape.to_vec(), object));
                q.by_shape.len() - 1
            }
        };
        Ok(q.by_shape[at].1.forward(x, shape)?)
    }

    /// An observer that starts from `state` (a calibration's result).
    fn create_observer_with_state(
        &mut self,
        config: &ObserverConfig,
        shape: &[usize],
        state: ObserverState,
    ) -> Result<usize> {
        let id = self.create_observer(config, shape)?;
        self.observers[id].load_state(&state)?;
        Ok(id)
    }

    fn create_histogram(&mut self, config: &HistogramConfig, shape: &[usize]) -> Result<usize> {
        self.histograms
            .push(self.backend.create_histogram_observer(config, shape)?);
        Ok(self.histograms.len() - 1)
    }

    fn histogram_calibrate(
        &mut self,
        id: usize,
        method: &CalibrationMethod,
        config: &ObserverConfig,
    ) -> Result<ObserverState> {
        Ok(self.histograms[id].calibrate(method, config)?)
    }

    fn create_float(&mut self, config: FloatQuantConfig) -> usize {
        self.floats.push(FloatQuantizer {
            config,
            by_shape: Vec::new(),
        });
        self.floats.len() - 1
    }

    /// A floating-point fake-quantization: `y`.
    fn float(&mut self, id: usize, x: &[f32], shape: &[usize]) -> Result<Vec<f32>> {
        let q = &mut self.floats[id];
        let at = match q.by_shape.iter().position(|(s, _)| s == shape) {
            Some(at) => at,
            None => {
                let object = self.backend.create_float_quant(&q.config, shape)?;
                q.by_shape.push((shape.to_vec(), object));
                q.by_shape.len() - 1
            }
        };
        Ok(q.by_shape[at].1.forward(x, shape)?.y)
    }

    fn lsq_forward(&mut self, id: usize, x: &[f32], shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.lsqs[id].forward(x, shape)?.y)
    }

    fn lsq_backward(
        &mut self,
        id: usize,
        x: &[f32],
        dy: &[f32],
        shape: &[usize],
    ) -> Result<fakequant::LsqGrads> {
        Ok(self.lsqs[id].backward(x, dy, shape)?)
    }

    fn lsq_params(&mut self, id: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(self.lsqs[id].read_params()?)
    }

    fn set_lsq_params(&mut self, id: usize, scales: &[f32], zero_points: &[f32]) -> Result<()> {
        Ok(self.lsqs[id].load_params(scales, zero_points)?)
    }
}

// ---------------------------------------------------------------------------------------------
// The model: an MLP 64 -> HIDDEN (ReLU) -> 10, plain f32 CPU arithmetic in a fixed order.

pub const HIDDEN: usize = 32;
/// torchao's smallest common group size: the weights' groups along their input axis.
pub const GROUP: usize = 32;

#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// [HIDDEN, PIXELS] (output channel first: axis 0 is the per-channel axis).
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// [CLASSES, HIDDEN].
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl Mlp {
    fn new(seed: u64) -> Self {
        // Uniform in [-bound, bound) (He-uniform for a ReLU layer), from a seeded generator.
        let mut rng = Pcg64::seed_from_u64(seed);
        let mut init = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = (6.0 / fan_in as f32).sqrt();
            (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0) * bound)
                .collect()
        };
        Self {
            w1: init(HIDDEN * PIXELS, PIXELS),
            b1: vec![0.0; HIDDEN],
            w2: init(CLASSES * HIDDEN, HIDDEN),
            b2: vec![0.0; CLASSES],
        }
    }
}

/// `out[b][o] = bias[o] + sum_i x[b][i] * w[o][i]`, summed in order.
fn linear(x: &[f32], batch: usize, w: &[f32], bias: &[f32], inputs: usize) -> Vec<f32> {
    let outputs = bias.len();
    let mut out = vec![0.0; batch * outputs];
    for b in 0..batch {
        for o in 0..outputs {
            let mut acc = bias[o];
            for i in 0..inputs {
                acc += x[b * inputs + i] * w[o * inputs + i];
            }
            out[b * outputs + o] = acc;
        }
    }
    out
}

/// Gradients of `linear`: (dx, dw, dbias).
fn linear_backward(
    x: &[f32],
    dout: &[f32],
    batch: usize,
    w: &[f32],
    inputs: usize,
    outputs: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0; batch * inputs];
    let mut dw = vec![0.0; outputs * inputs];
    let mut db = vec![0.0; outputs];
    for b in 0..batch {
        for o in 0..outputs {
            let g = dout[b * outputs + o];
            db[o] += g;
            for i in 0..inputs {
                dw[o * inputs + i] += g * x[b * inputs + i];
                dx[b * inputs + i] += g * w[o * inputs + i];
            }
        }
    }
    (dx, dw, db)
}

/// Softmax cross-entropy: the mean loss's gradient with respect to the logits.
fn softmax_grad(logits: &[f32], labels: &[usize]) -> Vec<f32> {
    let batch = labels.len();
    let mut grad = vec![0.0; logits.len()];
    for b in 0..batch {
        let row = &logits[b * CLASSES..(b + 1) * CLASSES];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        for c in 0..CLASSES {
            let target = if c == labels[b] { 1.0 } else { 0.0 };
            grad[b * CLASSES + c] = (exps[c] / sum - target) / batch as f32;
        }
    }
    grad
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn sgd(w: &mut [f32], g: &[f32], lr: f32) {
    for (w, g) in w.iter_mut().zip(g) {
        *w -= lr * g;
    }
}

fn relu(v: &mut [f32]) -> Vec<bool> {
    v.iter_mut()
        .map(|x| {
            let on = *x > 0.0;
            if !on {
                *x = 0.0;
            }
            on
        })
        .collect()
}

fn batches(len: usize, size: usize, epoch: usize) -> Vec<Vec<usize>> {
    // A fixed shuffle per epoch, from a generator seeded with the epoch.
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut Pcg64::seed_from_u64(
        0x9e37_79b9_7f4a_7c15 ^ epoch as u64,
    ));
    order.chunks(size).map(<[usize]>::to_vec).collect()
}

fn gather(data: &Dataset, idx: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let mut x = Vec::with_capacity(idx.len() * PIXELS);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        x.extend_from_slice(data.image(i));
        y.push(data.labels[i]);
    }
    (x, y)
}

fn float_logits(m: &Mlp, x: &[f32], batch: usize) -> Vec<f32> {
    let mut h = linear(x, batch, &m.w1, &m.b1, PIXELS);
    relu(&mut h);
    linear(&h, batch, &m.w2, &m.b2, HIDDEN)
}

fn accuracy_of(logits: &[f32], labels: &[usize]) -> f64 {
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(b, &l)| argmax(&logits[b * CLASSES..(b + 1) * CLASSES]) == l)
        .count();
    correct as f64 / labels.len() as f64
}

fn float_accuracy(m: &Mlp, data: &Dataset) -> f64 {
    let all: Vec<usize> = (0..data.len()).collect();
    let (x, y) = gather(data, &all);
    accuracy_of(&float_logits(m, &x, y.len()), &y)
}

// ---------------------------------------------------------------------------------------------
// Quantized models.

/// The observer ids of the prepared model: input, weights 1, hidden activation, weights 2, logits.
#[derive(Clone, Copy)]
struct Observers {
    input: usize,
    w1: usize,
    hidden: usize,
    w2: usize,
    logits: usize,
}

/// The LSQ quantizer ids, same places.
#[derive(Clone, Copy)]
struct Lsqs {
    input: usize,
    w1: usize,
    hidden: usize,
    w2: usize,
    logits: usize,
}

/// A fake-quantizer at one place of the model, any recipe.
#[derive(Clone, Copy)]
enum Quantizer {
    Observer(usize),
    Lsq(usize),
    /// Qparams from each tensor itself (torchao's per-group weights, per-token activations).
    Dynamic(usize),
    /// A floating-point format (FP8, MX, NVFP4), its scales from each tensor itself.
    Float(usize),
    /// A histogram observer: counts the tensor, passes it through (calibration only).
    Histogram(usize),
}

/// What the backward of one quantizer needs, kept from its forward.
enum Saved {
    Mask(PackedMask),
    Input(Vec<f32>),
    /// Nothing: the backward passes `dy` through (torchao's MX and NVFP4 QAT).
    PassThrough,
}

fn quantize<B: Backend>(
    ops: &mut Ops<B>,
    q: Quantizer,
    x: &[f32],
    shape: &[usize],
    mode: Mode,
) -> Result<(Vec<f32>, Saved)> {
    match q {
        Quantizer::Observer(id) => {
            let (y, mask) = ops.observe(id, x, shape, mode)?;
            Ok((y, Saved::Mask(mask)))
        }
        Quantizer::Lsq(id) => Ok((ops.lsq_forward(id, x, shape)?, Saved::Input(x.to_vec()))),
        Quantizer::Dynamic(id) => {
            let out = ops.dynamic(id, x, shape)?;
            Ok((out.y, Saved::Mask(out.mask)))
        }
        Quantizer::Float(id) => Ok((ops.float(id, x, shape)?, Saved::PassThrough)),
        Quantizer::Histogram(id) => {
            ops.histograms[id].observe(x, shape)?;
            Ok((x.to_vec(), Saved::PassThrough))
        }
    }
}

/// Backward of a quantizer: dx, and for LSQ the scale update (SGD with `lr_scale`).
fn quantize_backward<B: Backend>(
    ops: &mut Ops<B>,
    q: Quantizer,
    saved: &Saved,
    dy: &[f32],
    shape: &[usize],
    lr_scale: f32,
) -> Result<Vec<f32>> {
    match (q, saved) {
        (Quantizer::Observer(_) | Quantizer::Dynamic(_), Saved::Mask(mask)) => ops.ste(dy, mask),
        (Quantizer::Float(_) | Quantizer::Histogram(_), Saved::PassThrough) => Ok(dy.to_vec()),
        (Quantizer::Lsq(id), Saved::Input(x)) => {
            let grads = ops.lsq_backward(id, x, dy, shape)?;
            let (mut scales, zero_points) = ops.lsq_params(id)?;
            // Symmetric LSQ: the zero point stays at 0; the scale learns.
            sgd(&mut scales, &grads.dscale, lr_scale);
            ops.set_lsq_params(id, &scales, &zero_points)?;
            Ok(grads.dx)
        }
        _ => Err("quantizer and saved state disagree".into()),
    }
}

struct Places {
    input: Quantizer,
    w1: Quantizer,
    hidden: Quantizer,
    w2: Quantizer,
    logits: Quantizer,
}

impl From<Observers> for Places {
    fn from(o: Observers) -> Self {
        Self {
            input: Quantizer::Observer(o.input),
            w1: Quantizer::Observer(o.w1),
            hidden: Quantizer::Observer(o.hidden),
            w2: Quantizer::Observer(o.w2),
            logits: Quantizer::Observer(o.logits),
        }
    }
}

impl From<Lsqs> for Places {
    fn from(l: Lsqs) -> Self {
        Self {
            input: Quantizer::Lsq(l.input),
            w1: Quantizer::Lsq(l.w1),
            hidden: Quantizer::Lsq(l.hidden),
            w2: Quantizer::Lsq(l.w2),
            logits: Quantizer::Lsq(l.logits),
        }
    }
}

/// Learning rates of a training step: weights and biases, LSQ scales.
#[derive(Clone, Copy)]
struct Rates {
    weights: f32,
    scales: f32,
}

const FROZEN: Rates = Rates {
    weights: 0.0,
    scales: 0.0,
};

/// Fake-quantized forward (and, when `labels` is given, backward and SGD step).
fn qat_step<B: Backend>(
    ops: &mut Ops<B>,
    m: &mut Mlp,
    p: &Places,
    x: &[f32],
    labels: Option<&[usize]>,
    mode: Mode,
    rates: Rates,
) -> Result<Vec<f32>> {
    let (lr, lr_scale) = (rates.weights, rates.scales);
    let batch = x.len() / PIXELS;
    let (a0, _s0) = quantize(ops, p.input, x, &[batch, PIXELS], mode)?;
    let (w1q, s1) = quantize(ops, p.w1, &m.w1, &[HIDDEN, PIXELS], mode)?;
    let mut h = linear(&a0, batch, &w1q, &m.b1, PIXELS);
    let active = relu(&mut h);
    let (a1, s2) = quantize(ops, p.hidden, &h, &[batch, HIDDEN], mode)?;
    let (w2q, s3) = quantize(ops, p.w2, &m.w2, &[CLASSES, HIDDEN], mode)?;
    let z = linear(&a1, batch, &w2q, &m.b2, HIDDEN);
    let (out, s4) = quantize(ops, p.logits, &z, &[batch, CLASSES], mode)?;
    let Some(labels) = labels else {
        return Ok(out);
    };
    let dout = softmax_grad(&out, labels);
    let dz = quantize_backward(ops, p.logits, &s4, &dout, &[batch, CLASSES], lr_scale)?;
    let (da1, dw2q, db2) = linear_backward(&a1, &dz, batch, &w2q, HIDDEN, CLASSES);
    let dw2 = quantize_backward(ops, p.w2, &s3, &dw2q, &[CLASSES, HIDDEN], lr_scale)?;
    let mut dh = quantize_backward(ops, p.hidden, &s2, &da1, &[batch, HIDDEN], lr_scale)?;
    for (g, &on) in dh.iter_mut().zip(&active) {
        if !on {
            *g = 0.0;
        }
    }
    let (da0, dw1q, db1) = linear_backward(&a0, &dh, batch, &w1q, PIXELS, HIDDEN);
    let dw1 = quantize_backward(ops, p.w1, &s1, &dw1q, &[HIDDEN, PIXELS], lr_scale)?;
    if let Quantizer::Lsq(_) = p.input {
        // The input's scale learns too (its dx is not needed).
        quantize_backward(ops, p.input, &_s0, &da0, &[batch, PIXELS], lr_scale)?;
    }
    sgd(&mut m.w1, &dw1, lr);
    sgd(&mut m.b1, &db1, lr);
    sgd(&mut m.w2, &dw2, lr);
    sgd(&mut m.b2, &db2, lr);
    Ok(out)
}

fn fake_quant_accuracy<B: Backend>(
    ops: &mut Ops<B>,
    m: &Mlp,
    p: &Places,
    data: &Dataset,
) -> Result<(f64, Vec<usize>)> {
    let all: Vec<usize> = (0..data.len()).collect();
    let (x, y) = gather(data, &all);
    let mut m = m.clone();
    let out = qat_step(ops, &mut m, p, &x, None, Mode::Frozen, FROZEN)?;
    let predictions = (0..y.len())
        .map(|b| argmax(&out[b * CLASSES..(b + 1) * CLASSES]))
        .collect();
    Ok((accuracy_of(&out, &y), predictions))
}

// ---------------------------------------------------------------------------------------------
// Conversion to fixed point: int8 weights and activations, int32 accumulation, requantization by
// an integer multiplier and shift; inference in integers only.

/// A real multiplier `0 < m < 2^31` as `multiplier * 2^-shift`, `multiplier` in `[2^30, 2^31)`.
fn quantize_multiplier(real: f64) -> (i64, u32) {
    let mut shift = 0u32;
    let mut m = real;
    while m < (1u64 << 30) as f64 && shift < 62 {
        m *= 2.0;
        shift += 1;
    }
    (m.round() as i64, shift)
}

/// `round(acc * multiplier * 2^-shift)` (half away from zero), integers only.
fn requantize(acc: i64, (multiplier, shift): (i64, u32)) -> i64 {
    let p = acc * multiplier;
    let half = 1i64 << (shift - 1);
    if p >= 0 {
        (p + half) >> shift
    } else {
        -((-p + half) >> shift)
    }
}

struct FixedLayer {
    weights: Vec<i8>,
    bias: Vec<i32>,
    /// Per output channel: input scale * weight scale / output scale.
    requant: Vec<(i64, u32)>,
    inputs: usize,
    /// Range of the requantized output.
    out_range: (i64, i64),
}

const INT8: (i32, i32) = (-128, 127);

pub struct FixedPointModel {
    input_scale: f32,
    layers: [FixedLayer; 2],
}

/// Symmetric quantization to `[qmin, qmax]` (at most 8 bits), stored in an i8.
fn quantize_to(v: f32, scale: f32, (qmin, qmax): (i32, i32)) -> i8 {
    (v / scale)
        .round_ties_even()
        .clamp(qmin as f32, qmax as f32) as i8
}

impl FixedPointModel {
    /// Builds the integer model from float weights and the quantizers' scales: input (int8),
    /// weights 1 (per channel), hidden, weights 2 (per channel), logits (int8). `range` is the
    /// weights' and hidden activation's.
    fn convert(m: &Mlp, scales: [&[f32]; 5], range: QuantRange) -> Self {
        let [s_in, s_w1, s_h, s_w2, s_out] = scales;
        let range = (range.qmin(), range.qmax());
        let layer = |w: &[f32],
                     b: &[f32],
                     inputs: usize,
                     (s_x, s_w, s_y): (f32, &[f32], f32),
                     out_range: (i32, i32)| {
            let outputs = b.len();
            FixedLayer {
                weights: (0..outputs * inputs)
                    .map(|k| quantize_to(w[k], s_w[k / inputs], range))
                    .collect(),
                bias: (0..outputs)
                    .map(|o| (b[o] as f64 / (s_x as f64 * s_w[o] as f64)).round() as i32)
                    .collect(),
                requant: (0..outputs)
                    .map(|o| quantize_multiplier(s_x as f64 * s_w[o] as f64 / s_y as f64))
                    .collect(),
                inputs,
                out_range: (out_range.0 as i64, out_range.1 as i64),
            }
        };
        Self {
            input_scale: s_in[0],
            layers: [
                layer(&m.w1, &m.b1, PIXELS, (s_in[0], s_w1, s_h[0]), range),
                layer(&m.w2, &m.b2, HIDDEN, (s_h[0], s_w2, s_out[0]), INT8),
            ],
        }
    }

    /// Integer inference of one image: int8 in, int32 accumulate, requantize, ReLU as a clamp at
    /// zero, int8 logits; returns the predicted class.
    fn predict(&self, image: &[f32]) -> usize {
        // The sensor data enters as int8 (the only float operation: the input quantizer).
        let mut act: Vec<i64> = image
            .iter()
            .map(|&v| quantize_to(v, self.input_scale, INT8) as i64)
            .collect();
        for (k, layer) in self.layers.iter().enumerate() {
            let outputs = layer.bias.len();
            act = (0..outputs)
                .map(|o| {
                    let acc: i64 = layer.bias[o] as i64
                        + (0..layer.inputs)
                            .map(|i| act[i] * layer.weights[o * layer.inputs + i] as i64)
                            .sum::<i64>();
                    let q = requantize(acc, layer.requant[o])
                        .clamp(layer.out_range.0, layer.out_range.1);
                    if k == 0 {
                        q.max(0)
                    } else {
                        q
                    }
                })
                .collect();
        }
        let mut best = 0;
        for (i, &v) in act.iter().enumerate() {
            if v > act[best] {
                best = i;
            }
        }
        best
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Clone, Debug)]
pub struct Options {
    /// Bit width of the weights and the hidden activation (symmetric, signed; the input and the
    /// logits stay int8): 8 is the seed's int8 recipe; narrower widths lose accuracy at
    /// calibration, which QAT recovers.
    pub bits: u32,
    pub float_epochs: usize,
    pub qat_epochs: usize,
    pub calibration_batches: usize,
    pub batch_size: usize,
}

impl Options {
    pub fn full(bits: u32) -> Self {
        Self {
            bits,
            float_epochs: 30,
            qat_epochs: 6,
            calibration_batches: 12,
            batch_size: 32,
        }
    }

    /// A shortened run for the test.
    pub fn short(bits: u32) -> Self {
        Self {
            bits,
            float_epochs: 3,
            qat_epochs: 1,
            calibration_batches: 3,
            batch_size: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RecipeResult {
    pub name: &'static str,
    /// For the histogram-calibrated recipes: the accuracy before QAT.
    pub calibrated_accuracy: Option<f64>,
    pub fake_quant_accuracy: f64,
    /// `None` for the dynamic recipes, which this fixed-point model (per-tensor activation scales
    /// fixed at conversion) does not represent.
    pub fixed_point_accuracy: Option<f64>,
    /// Fraction of test images on which the fake-quant and fixed-point models agree.
    pub agreement: Option<f64>,
    pub model: Mlp,
    /// The quantizers' scales: input, w1, hidden, w2, logits.
    pub scales: Vec<Vec<f32>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub bits: u32,
    pub float_accuracy: f64,
    pub calibrated_accuracy: f64,
    pub recipes: Vec<RecipeResult>,
}

impl Report {
    /// FNV-1a over the bits of every final weight and scale of both recipes.
    pub fn digest(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |v: f32| {
            for byte in v.to_bits().to_le_bytes() {
                h ^= byte as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for r in &self.recipes {
            for v in r
                .model
                .w1
                .iter()
                .chain(&r.model.b1)
                .chain(&r.model.w2)
                .chain(&r.model.b2)
            {
                eat(*v);
            }
            for s in r.scales.iter().flatten() {
                eat(*s);
            }
        }
        h
    }
}

/// FNV-1a over the digests of several reports.
pub fn digest(reports: &[Report]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for r in reports {
        for byte in r.digest().to_le_bytes() {
            h ^= byte as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The final table: one column per bit width.
pub fn table(reports: &[Report]) -> String {
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            "float model".into(),
            reports.iter().map(|r| pct(r.float_accuracy)).collect(),
        ),
        (
            "fake-quant right after calibration".into(),
            reports.iter().map(|r| pct(r.calibrated_accuracy)).collect(),
        ),
    ];
    let recipes = reports.first().map_or(0, |r| r.recipes.len());
    for k in 0..recipes {
        let name = reports[0].recipes[k].name;
        let column = |f: &dyn Fn(&RecipeResult) -> Option<f64>| -> Vec<String> {
            reports
                .iter()
                .map(|r| f(&r.recipes[k]).map_or("n/a".to_string(), pct))
                .collect()
        };
        rows.push((
            format!("{name}: fake-quant right after calibration"),
            column(&|r| r.calibrated_accuracy),
        ));
        rows.push((
            format!("QAT, {name}: fake-quant"),
            column(&|r| Some(r.fake_quant_accuracy)),
        ));
        rows.push((
            format!("QAT, {name}: fixed point (integer-only)"),
            column(&|r| r.fixed_point_accuracy),
        ));
        rows.push((
            format!("QAT, {name}: fixed point predicts the fake-quant class"),
            column(&|r| r.agreement),
        ));
    }
    let mut t = String::from("| test accuracy |");
    for r in reports {
        t.push_str(&format!(" int{} |", r.bits));
    }
    t.push_str("\n|---|");
    for _ in reports {
        t.push_str("---|");
    }
    t.push('\n');
    // The dynamic recipes have no fixed-point rows.
    for (label, values) in rows
        .into_iter()
        .filter(|(_, v)| v.iter().any(|v| v != "n/a"))
    {
        t.push_str(&format!("| {label} | {} |\n", values.join(" | ")));
    }
    t
}

fn scales_of<B: Backend>(ops: &mut Ops<B>, p: &Places) -> Result<Vec<Vec<f32>>> {
    [p.input, p.w1, p.hidden, p.w2, p.logits]
        .into_iter()
        .map(|q| match q {
            Quantizer::Observer(id) => Ok(ops.observer_state(id)?.scales),
            // Chosen anew for every tensor: nothing to keep.
            Quantizer::Dynamic(_) | Quantizer::Float(_) | Quantizer::Histogram(_) => Ok(Vec::new()),
            Quantizer::Lsq(id) => {
                // The effective scales (clamped to eps), as the kernels use them.
                let (s, _) = ops.lsq_params(id)?;
                let config = LsqConfig::activation_int8();
                Ok(s.iter()
                    .map(|&v| fakequant::reference::lsq::effective_scale(&config, v))
                    .collect())
            }
        })
        .collect()
}

fn finish_recipe<B: Backend>(
    ops: &mut Ops<B>,
    name: &'static str,
    calibrated_accuracy: Option<f64>,
    m: Mlp,
    p: &Places,
    test: &Dataset,
    range: QuantRange,
) -> Result<RecipeResult> {
    let (fq_acc, fq_pred) = fake_quant_accuracy(ops, &m, p, test)?;
    let scales = scales_of(ops, p)?;
    let places = [p.input, p.w1, p.hidden, p.w2, p.logits];
    if places
        .iter()
        .any(|q| matches!(q, Quantizer::Dynamic(_) | Quantizer::Float(_)))
    {
        return Ok(RecipeResult {
            name,
            calibrated_accuracy,
            fake_quant_accuracy: fq_acc,
            fixed_point_accuracy: None,
            agreement: None,
            model: m,
            scales,
        });
    }
    let fixed = FixedPointModel::convert(
        &m,
        [&scales[0], &scales[1], &scales[2], &scales[3], &scales[4]],
        range,
    );
    let fixed_pred: Vec<usize> = (0..test.len())
        .map(|i| fixed.predict(test.image(i)))
        .collect();
    let correct = fixed_pred
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count();
    let same = fixed_pred
        .iter()
        .zip(&fq_pred)
        .filter(|(a, b)| a == b)
        .count();
    Ok(RecipeResult {
        name,
        calibrated_accuracy,
        fake_quant_accuracy: fq_acc,
        fixed_point_accuracy: Some(correct as f64 / test.len() as f64),
        agreement: Some(same as f64 / test.len() as f64),
        model: m,
        scales,
    })
}

fn float_lr(epoch: usize, epochs: usize) -> f32 {
    let lr = 0.2;
    if 3 * epoch < epochs {
        lr
    } else if 3 * epoch < 2 * epochs {
        lr * 0.3
    } else {
        lr * 0.1
    }
}

/// The whole workflow. `log` receives the progress lines.
pub fn run<B: Backend>(
    opts: &Options,
    ops: &mut Ops<B>,
    log: &mut dyn FnMut(String),
) -> Result<Report> {
    let (train, test) = load_digits()?;
    log(format!(
        "data: 8x8 digits, {} train / {} test images; backend: {}",
        train.len(),
        test.len(),
        ops.name()
    ));

    // 1. Float pre-training.
    let mut model = Mlp::new(42);
    for epoch in 0..opts.float_epochs {
        for idx in batches(train.len(), opts.batch_size, epoch) {
            let (x, y) = gather(&train, &idx);
            let batch = y.len();
            let mut h = linear(&x, batch, &model.w1, &model.b1, PIXELS);
            let active = relu(&mut h);
            let z = linear(&h, batch, &model.w2, &model.b2, HIDDEN);
            let dz = softmax_grad(&z, &y);
            let (mut dh, dw2, db2) = linear_backward(&h, &dz, batch, &model.w2, HIDDEN, CLASSES);
            for (g, &on) in dh.iter_mut().zip(&active) {
                if !on {
                    *g = 0.0;
                }
            }
            let (_, dw1, db1) = linear_backward(&x, &dh, batch, &model.w1, PIXELS, HIDDEN);
            // A step decay: 0.2, then 0.06 and 0.02 for the last thirds.
            let lr = float_lr(epoch, opts.float_epochs);
            sgd(&mut model.w1, &dw1, lr);
            sgd(&mut model.b1, &db1, lr);
            sgd(&mut model.w2, &dw2, lr);
            sgd(&mut model.b2, &db2, lr);
        }
        if epoch % 5 == 4 || epoch + 1 == opts.float_epochs {
            log(format!(
                "float pre-training epoch {:2}: test accuracy {:.2}%",
                epoch + 1,
                float_accuracy(&model, &test) * 100.0
            ));
        }
    }
    let float_acc = float_accuracy(&model, &test);

    // 2. Prepare: per-channel symmetric int8 weights on axis 0, per-tensor int8 activations
    //    (the seed's default_qat_8bit_fake_quant_qconfig).
    let range = QuantRange::signed(opts.bits)?;
    let observer =
        |axis| ObserverConfig::new(range, QScheme::Symmetric, Averaging::default(), axis);
    let (weights, activations) = (
        observer(Granularity::per_channel(0))?,
        observer(Granularity::PerTensor)?,
    );
    // The network's input and output stay int8 (pixels and logits), as usual for the first and
    // last tensors; the weights and the hidden activation take the width under test.
    let edges = ObserverConfig::qat_activation_int8();
    let obs = Observers {
        input: ops.create_observer(&edges, &[])?,
        w1: ops.create_observer(&weights, &[HIDDEN, PIXELS])?,
        hidden: ops.create_observer(&activations, &[])?,
        w2: ops.create_observer(&weights, &[CLASSES, HIDDEN])?,
        logits: ops.create_observer(&edges, &[])?,
    };
    log(format!(
        "prepare: 5 fake-quant nodes, symmetric: weights int{} [{}, {}] per channel on axis 0, hidden activation int{0} per tensor, input and logits int8 per tensor; moving-average observers",
        opts.bits,
        range.qmin(),
        range.qmax()
    ));

    // 3. Calibration: observe only.
    let places = Places::from(obs);
    for idx in batches(train.len(), opts.batch_size, 1000)
        .iter()
        .take(opts.calibration_batches)
    {
        let (x, _) = gather(&train, idx);
        qat_step(
            ops,
            &mut model.clone(),
            &places,
            &x,
            None,
            Mode::Calibrate,
            FROZEN,
        )?;
    }
    let (calibrated_acc, _) = fake_quant_accuracy(ops, &model, &places, &test)?;
    log(format!(
        "calibration: {} batches observed; int{} fake-quant test accuracy {:.2}% (float {:.2}%)",
        opts.calibration_batches,
        opts.bits,
        calibrated_acc * 100.0,
        float_acc * 100.0
    ));
    let calibrated_model = model.clone();

    // 3b. Histogram calibration of the activations (Horizon's and modelopt's methods) over the
    //     same batches: histograms of |x| per tensor, the clipping range by percentile, MSE or KL
    //     entropy, loaded into fresh observers that then run the statistics recipe (the weights
    //     keep their per-channel min/max calibration). Built before the recipes move `obs` on.
    let magnitude = |g| HistogramConfig::new(2048, HistogramDomain::Magnitude, g);
    let hist = [
        ops.create_histogram(&magnitude(Granularity::PerTensor)?, &[])?,
        ops.create_histogram(&magnitude(Granularity::per_channel(0))?, &[HIDDEN, PIXELS])?,
        ops.create_histogram(&magnitude(Granularity::PerTensor)?, &[])?,
        ops.create_histogram(&magnitude(Granularity::per_channel(0))?, &[CLASSES, HIDDEN])?,
        ops.create_histogram(&magnitude(Granularity::PerTensor)?, &[])?,
    ];
    let hist_places = Places {
        input: Quantizer::Histogram(hist[0]),
        w1: Quantizer::Histogram(hist[1]),
        hidden: Quantizer::Histogram(hist[2]),
        w2: Quantizer::Histogram(hist[3]),
        logits: Quantizer::Histogram(hist[4]),
    };
    for idx in batches(train.len(), opts.batch_size, 1000)
        .iter()
        .take(opts.calibration_batches)
    {
        let (x, _) = gather(&train, idx);
        qat_step(
            ops,
            &mut model.clone(),
            &hist_places,
            &x,
            None,
            Mode::Calibrate,
            FROZEN,
        )?;
    }
    let (w1_state, w2_state) = (ops.observer_state(obs.w1)?, ops.observer_state(obs.w2)?);
    let mut histogram_places = Vec::new();
    for (name, method) in [
        (
            "histogram calibration (percentile 99.99) + statistics",
            CalibrationMethod::percentile(),
        ),
        (
            "histogram calibration (MSE) + statistics",
            CalibrationMethod::Mse,
        ),
        (
            "histogram calibration (KL entropy) + statistics",
            CalibrationMethod::Entropy,
        ),
    ] {
        let input = ops.histogram_calibrate(hist[0], &method, &edges)?;
        let hidden = ops.histogram_calibrate(hist[2], &method, &activations)?;
        let logits = ops.histogram_calibrate(hist[4], &method, &edges)?;
        let observers = Observers {
            input: ops.create_observer_with_state(&edges, &[], input)?,
            w1: ops.create_observer_with_state(&weights, &[HIDDEN, PIXELS], w1_state.clone())?,
            hidden: ops.create_observer_with_state(&activations, &[], hidden)?,
            w2: ops.create_observer_with_state(&weights, &[CLASSES, HIDDEN], w2_state.clone())?,
            logits: ops.create_observer_with_state(&edges, &[], logits)?,
        };
        histogram_places.push((name, Places::from(observers)));
    }

    // 4. QAT with the LSQ recipe, from the calibrated start (quantizers initialized from the
    //    observers' qparams: the seed's "load the parameters obtained from calibration").
    //    Created before the statistics recipe moves the observers on.
    let (lsq_weights, lsq_activations) = (
        LsqConfig::new(range, Granularity::per_channel(0))?,
        LsqConfig::new(range, Granularity::PerTensor)?,
    );
    let lsq_edges = LsqConfig::activation_int8();
    let lsqs = Lsqs {
        input: ops.create_lsq(&lsq_edges, obs.input)?,
        w1: ops.create_lsq(&lsq_weights, obs.w1)?,
        hidden: ops.create_lsq(&lsq_activations, obs.hidden)?,
        w2: ops.create_lsq(&lsq_weights, obs.w2)?,
        logits: ops.create_lsq(&lsq_edges, obs.logits)?,
    };

    // 5. torchao's LLM recipe: weights in symmetric groups of 32 along the input axis at the width
    //    under test, activations int8 asymmetric per token (each row's own qparams), every
    //    qparam chosen from the tensor itself at each call; and with range learning: the weights'
    //    per-group scales learned (LSQ per group, unscaled gradients as torchao), initialized from
    //    the calibrated weights' dynamic qparams as torchao's first forward does.
    let per_token = ops.create_dynamic(&DynamicConfig::int8_per_token());
    let per_group = ops.create_dynamic(&DynamicConfig::new(
        range,
        DynamicScheme::Symmetric,
        Granularity::per_group(1, GROUP),
    )?);
    let dynamic_places = Places {
        input: Quantizer::Dynamic(per_token),
        w1: Quantizer::Dynamic(per_group),
        hidden: Quantizer::Dynamic(per_token),
        w2: Quantizer::Dynamic(per_group),
        logits: Quantizer::Dynamic(per_token),
    };
    let learned =
        LsqConfig::new(range, Granularity::per_group(1, GROUP))?.with_grad_scale(GradScale::Off)?;
    let mut learned_weights = |w: &[f32], shape: [usize; 2]| -> Result<Quantizer> {
        let scales = ops.dynamic(per_group, w, &shape)?.scales;
        let zero_points = vec![0.0; scales.len()];
        Ok(Quantizer::Lsq(ops.create_lsq_with(
            &learned,
            &scales,
            &zero_points,
        )?))
    };
    let range_learning_places = Places {
        input: Quantizer::Dynamic(per_token),
        w1: learned_weights(&calibrated_model.w1, [HIDDEN, PIXELS])?,
        hidden: Quantizer::Dynamic(per_token),
        w2: learned_weights(&calibrated_model.w2, [CLASSES, HIDDEN])?,
        logits: Quantizer::Dynamic(per_token),
    };

    // 6. The floating-point formats: MXFP4 weights (blocks of 32 along the input axis, E8M0 scales
    //    by RCEIL, torchao's QAT default) and FP8 E4M3 activations with a scale per row, every
    //    scale from the tensor itself; the backward passes the gradient through (torchao's MX
    //    QAT). The integer width under test does not apply.
    let mxfp4 = ops.create_float(FloatQuantConfig::mx(
        ElementFormat::Fp4E2M1,
        MxScaleRule::Rceil,
    )?);
    let fp8_rows = ops.create_float(FloatQuantConfig::fp8_per_row(ElementFormat::Fp8E4M3)?);
    let float_places = Places {
        input: Quantizer::Float(fp8_rows),
        w1: Quantizer::Float(mxfp4),
        hidden: Quantizer::Float(fp8_rows),
        w2: Quantizer::Float(mxfp4),
        logits: Quantizer::Float(fp8_rows),
    };

    let mut recipes = Vec::new();
    let mut all: Vec<(&'static str, Places, f32, bool)> = Vec::new();
    for (name, places, lr_scale) in [
        (
            "statistics (moving-average min/max)",
            Places::from(obs),
            0.0f32,
        ),
        ("LSQ (learned scales)", Places::from(lsqs), 0.01),
        (
            "torchao per-group weights (g=32) + per-token int8 activations, dynamic",
            dynamic_places,
            0.0,
        ),
        (
            "torchao per-group + per-token, with range learning",
            range_learning_places,
            0.0005,
        ),
        (
            "MXFP4 weights + FP8 E4M3 per-row activations",
            float_places,
            0.0,
        ),
    ] {
        all.push((name, places, lr_scale, false));
    }
    for (name, places) in histogram_places {
        all.push((name, places, 0.0, true));
    }
    for (name, places, lr_scale, show_calibrated) in all {
        let calibrated = if show_calibrated {
            Some(fake_quant_accuracy(ops, &calibrated_model, &places, &test)?.0)
        } else {
            None
        };
        let mut m = calibrated_model.clone();
        for epoch in 0..opts.qat_epochs {
            for idx in batches(train.len(), opts.batch_size, 2000 + epoch) {
                let (x, y) = gather(&train, &idx);
                qat_step(
                    ops,
                    &mut m,
                    &places,
                    &x,
                    Some(&y),
                    Mode::Qat,
                    Rates {
                        weights: 0.02,
                        scales: lr_scale,
                    },
                )?;
            }
            let (fq, _) = fake_quant_accuracy(ops, &m, &places, &test)?;
            log(format!(
                "QAT {name}, epoch {}: float {:.2}%, fake-quant {:.2}%",
                epoch + 1,
                float_accuracy(&m, &test) * 100.0,
                fq * 100.0
            ));
        }
        let result = finish_recipe(ops, name, calibrated, m, &places, &test, range)?;
        let Some(fixed_point_accuracy) = result.fixed_point_accuracy else {
            recipes.push(result);
            continue;
        };
        log(format!(
            "convert {name}: fixed point (int{} weights and hidden activation stored in int8, int8 input and logits, int32 accumulation, requantization by integer multiplier and shift) accuracy {:.2}%, same class as fake-quant on {:.2}% of test images",
            opts.bits,
            fixed_point_accuracy * 100.0,
            result.agreement.unwrap_or(0.0) * 100.0
        ));
        recipes.push(result);
    }
    Ok(Report {
        bits: opts.bits,
        float_accuracy: float_acc,
        calibrated_accuracy: calibrated_acc,
        recipes,
    })
}
