//! QAT of a small CNN in burn on the GPU, on the committed 8x8 digits: float pre-training,
//! prepare (the float layers swapped for QAT layers), calibration, QAT with statistics and with
//! LSQ, then the evaluation of each frozen model (the fake-quant of fixed qparams: the values
//! the deployed int8 layers compute on).
//!
//! `cargo run -p fakequant-burn --example qat_digits_burn` (FAKEQUANT_BACKEND picks the adapter).

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use fakequant::Mode;
use fakequant_burn::{QConfig, QatConv2d, QatDevice, QatLinear, QatModule};

type Error = Box<dyn std::error::Error>;

/// Images (pixels / 16, 64 per image) and labels.
struct Dataset {
    pixels: Vec<f32>,
    labels: Vec<i64>,
}

/// The digits, every fifth image held out for the test set (as the library's own example).
fn load_digits() -> Result<(Dataset, Dataset), Error> {
    let text = include_str!("../../examples/data/digits.csv");
    let empty = || Dataset {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    let (mut train, mut test) = (empty(), empty());
    for (row, line) in text.lines().enumerate() {
        let fields: Vec<f32> = line
            .split(',')
            .map(str::parse::<f32>)
            .collect::<Result<_, _>>()?;
        if fields.len() != 65 {
            return Err(format!("digits.csv line {}: {} fields", row + 1, fields.len()).into());
        }
        let set = if row % 5 == 4 { &mut test } else { &mut train };
        set.pixels.extend(fields[..64].iter().map(|p| p / 16.0));
        set.labels.push(fields[64] as i64);
    }
    Ok((train, test))
}

/// Batches of a deterministic permutation of `n` indices (an LCG per epoch).
fn batches(n: usize, size: usize, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ epoch;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order.chunks(size).map(<[usize]>::to_vec).collect()
}

fn gather(set: &Dataset, idx: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let mut pixels = Vec::with_capacity(idx.len() * 64);
    for &i in idx {
        pixels.extend_from_slice(&set.pixels[i * 64..(i + 1) * 64]);
    }
    let labels: Vec<i64> = idx.iter().map(|&i| set.labels[i]).collect();
    (
        Tensor::from_data(TensorData::new(pixels, [idx.len(), 1, 8, 8]), device),
        Tensor::from_data(TensorData::new(labels, [idx.len()]), device),
    )
}

/// conv 3x3 (8) - relu - pool - conv 3x3 (16) - relu - pool - linear (10).
#[derive(Module, Debug)]
struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
}

fn pool(x: Tensor<4>) -> Tensor<4> {
    MaxPool2dConfig::new([2, 2]).init().forward(x)
}

impl Cnn {
    fn new(device: &Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        Self {
            conv1: conv(1, 8),
            conv2: conv(8, 16),
            fc: LinearConfig::new(16 * 2 * 2, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = pool(relu(self.conv1.forward(x)));
        let x = pool(relu(self.conv2.forward(x)));
        self.fc.forward(x.flatten(1, 3))
    }
}

/// The same network with QAT layers.
#[derive(Module, Debug)]
struct QatCnn {
    conv1: QatConv2d,
    conv2: QatConv2d,
    fc: QatLinear,
}

impl QatCnn {
    fn prepare(qat: &QatDevice, float: Cnn, qconfig: &QConfig) -> fakequant_burn::Result<Self> {
        Ok(Self {
            conv1: QatConv2d::prepare(qat, float.conv1, qconfig)?,
            conv2: QatConv2d::prepare(qat, float.conv2, qconfig)?,
            fc: QatLinear::prepare(qat, float.fc, qconfig)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> fakequant_burn::Result<Tensor<2>> {
        let x = pool(relu(self.conv1.forward(x)?));
        let x = pool(relu(self.conv2.forward(x)?));
        self.fc.forward(x.flatten(1, 3))
    }
}

impl QatModule for QatCnn {
    fn with_mode(self, mode: Mode) -> Self {
        Self {
            conv1: self.conv1.with_mode(mode),
            conv2: self.conv2.with_mode(mode),
            fc: self.fc.with_mode(mode),
        }
    }

    fn start_learning(self) -> fakequant_burn::Result<Self> {
        Ok(Self {
            conv1: self.conv1.start_learning()?,
            conv2: self.conv2.start_learning()?,
            fc: self.fc.start_learning()?,
        })
    }

    fn sync_state(self) -> fakequant_burn::Result<Self> {
        Ok(Self {
            conv1: self.conv1.sync_state()?,
            conv2: self.conv2.sync_state()?,
            fc: self.fc.sync_state()?,
        })
    }

    fn restore_state(&self) -> fakequant_burn::Result<()> {
        self.conv1.restore_state()?;
        self.conv2.restore_state()?;
        self.fc.restore_state()
    }
}

const BATCH: usize = 64;

/// Accuracy on `set` of a forward function.
fn accuracy(
    set: &Dataset,
    device: &Device,
    forward: impl Fn(Tensor<4>) -> fakequant_burn::Result<Tensor<2>>,
) -> Result<f64, Error> {
    let mut correct = 0usize;
    for idx in batches(set.labels.len(), 256, 0) {
        let (x, y) = gather(set, &idx, device);
        let predicted = forward(x)?.argmax(1).flatten::<1>(0, 1);
        let same: Vec<i64> = predicted.equal(y).int().into_data().iter::<i64>().collect();
        correct += same.iter().filter(|&&s| s != 0).count();
    }
    Ok(correct as f64 / set.labels.len() as f64)
}

/// QAT epochs of `model` from its calibrated state; returns the frozen model.
fn qat_epochs(
    mut model: QatCnn,
    train: &Dataset,
    test: &Dataset,
    device: &Device,
    name: &str,
    epochs: u64,
) -> Result<(QatCnn, Duration), Error> {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut optimizer = AdamConfig::new().init();
    let mut step_time = StepTime::default();
    for epoch in 0..epochs {
        model = model.with_mode(Mode::Qat);
        let mut total = 0.0;
        let steps = batches(train.labels.len(), BATCH, 100 + epoch);
        let start = Instant::now();
        for idx in &steps {
            let (x, y) = gather(train, idx, device);
            let loss = loss_fn.forward(model.forward(x)?, y);
            total += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(1e-3, model, grads);
        }
        step_time.add(start.elapsed(), steps.len());
        let frozen = model.clone().with_mode(Mode::Frozen);
        let acc = accuracy(test, device, |x| frozen.forward(x))?;
        println!(
            "{name} epoch {}: loss {:.4}, frozen test accuracy {:.2}%",
            epoch + 1,
            total / steps.len() as f64,
            100.0 * acc
        );
    }
    Ok((model.with_mode(Mode::Frozen), step_time.mean()))
}

/// The mean time of a training step (forward, loss read back, backward, optimizer step).
#[derive(Default)]
struct StepTime {
    total: Duration,
    steps: u32,
}

impl StepTime {
    fn add(&mut self, elapsed: Duration, steps: usize) {
        self.total += elapsed;
        self.steps += steps as u32;
    }

    fn mean(&self) -> Duration {
        self.total / self.steps.max(1)
    }
}

fn main() -> Result<(), Error> {
    let qat = QatDevice::new()?;
    let device = qat.autodiff();
    let (train, test) = load_digits()?;
    println!(
        "data: 8x8 digits, {} train / {} test images; adapter: {}",
        train.labels.len(),
        test.labels.len(),
        qat.context().adapter_name()
    );

    // Float pre-training, from burn's initialization with a fixed seed.
    device.seed(17);
    let mut float = Cnn::new(&device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optimizer = AdamConfig::new().init();
    let mut float_time = StepTime::default();
    for epoch in 0..8 {
        let mut total = 0.0;
        let steps = batches(train.labels.len(), BATCH, epoch);
        let start = Instant::now();
        for idx in &steps {
            let (x, y) = gather(&train, idx, &device);
            let loss = loss_fn.forward(float.forward(x), y);
            total += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &float);
            float = optimizer.step(3e-3, float, grads);
        }
        // (The first epoch compiles burn's kernels: not timed.)
        if epoch > 0 {
            float_time.add(start.elapsed(), steps.len());
        }
        let acc = accuracy(&test, &device, |x| Ok(float.forward(x)))?;
        println!(
            "float epoch {}: loss {:.4}, test accuracy {:.2}%",
            epoch + 1,
            total / steps.len() as f64,
            100.0 * acc
        );
    }
    let float_acc = accuracy(&test, &device, |x| Ok(float.forward(x)))?;

    let mut results = vec![("float".to_string(), float_acc, float_acc, float_time.mean())];
    for (name, qconfig) in [
        ("QAT statistics", QConfig::statistics_int8()),
        ("QAT LSQ", QConfig::lsq_int8()),
    ] {
        // Prepare and calibrate: the observers see the training data, the values pass through.
        let mut model = QatCnn::prepare(&qat, float.clone(), &qconfig)?.with_mode(Mode::Calibrate);
        for idx in batches(train.labels.len(), BATCH, 50).iter().take(8) {
            let (x, _) = gather(&train, idx, &device);
            let _ = model.forward(x)?.into_data();
        }
        model = model.start_learning()?.with_mode(Mode::Frozen);
        let calibrated = accuracy(&test, &device, |x| model.forward(x))?;
        println!(
            "{name}: calibrated (post-training quantization) accuracy {:.2}%",
            100.0 * calibrated
        );
        let (frozen, step) = qat_epochs(model, &train, &test, &device, name, 3)?;
        let acc = accuracy(&test, &device, |x| frozen.forward(x))?;
        results.push((name.to_string(), calibrated, acc, step));
    }

    println!("\n| model | after calibration | after QAT (frozen, int8 values) | training step |");
    println!("|---|---:|---:|---:|");
    let mut failed = Vec::new();
    for (name, calibrated, acc, step) in results {
        // QAT that loses the model fails the run (the tests check the bits; this checks use).
        if acc < 0.85 {
            failed.push(format!("{name}: {:.2}%", 100.0 * acc));
        }
        println!(
            "| {name} | {:.2}% | {:.2}% | {:.2} ms |",
            100.0 * calibrated,
            100.0 * acc,
            step.as_secs_f64() * 1e3
        );
    }
    if !failed.is_empty() {
        return Err(format!("accuracy below 85%: {}", failed.join(", ")).into());
    }
    Ok(())
}
