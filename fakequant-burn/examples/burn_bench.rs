//! The cost of the burn wrapping: the fake-quant forward (with its packed mask) and the
//! straight-through backward as burn autodiff ops, against the same two kernels called raw on
//! the library's own buffers; and a training step of a small model in float and in QAT.
//!
//! `cargo run --release -p fakequant-burn --example burn_bench` (FAKEQUANT_BACKEND picks the
//! adapter as everywhere). Prints the median of the timed repetitions of each row.

use std::time::{Duration, Instant};

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use fakequant::{DType, FakeQuant, Mode, ObserverConfig, QuantParams, QuantRange};
use fakequant_burn::{binding_stats, FakeQuantizer, ObserverQuantizer, QatDevice};

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn time(reps: usize, mut run: impl FnMut()) -> Duration {
    run(); // warm-up: pipelines compiled, burn's pool grown
    median(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                run();
                start.elapsed()
            })
            .collect(),
    )
}

fn data(n: usize) -> Vec<f32> {
    // A deterministic spread over the int8 range and beyond it (some elements clip).
    (0..n)
        .map(|i| ((i * 7919) % 4001) as f32 * 0.004 - 8.0)
        .collect()
}

fn raw(qat: &QatDevice, op: &FakeQuant, n: usize, reps: usize) -> fakequant::Result<Duration> {
    let ctx = qat.context();
    let gpu = ctx.prepare(op)?;
    let x = ctx.upload(&data(n))?;
    let dy = ctx.upload(&vec![1.0f32; n])?;
    let y = ctx.create_tensor(n, DType::F32)?;
    let dx = ctx.create_tensor(n, DType::F32)?;
    let mask = ctx.create_mask(n)?;
    let mut failure = None;
    let t = time(reps, || {
        let mut encoder = ctx.create_encoder("raw forward + backward");
        let recorded = gpu
            .record_forward(
                &mut encoder,
                x.binding(),
                &[n],
                y.binding(),
                Some(mask.binding()),
            )
            .and_then(|()| {
                ctx.record_ste_backward(&mut encoder, dy.binding(), mask.binding(), dx.binding(), n)
            })
            .and_then(|()| ctx.submit_and_wait(encoder));
        if let Err(e) = recorded {
            failure = Some(e);
        }
    });
    failure.map_or(Ok(t), Err)
}

fn wrapped(
    qat: &QatDevice,
    op: &FakeQuant,
    n: usize,
    reps: usize,
) -> fakequant_burn::Result<Duration> {
    let device = qat.autodiff();
    let fq = FakeQuantizer::new(qat, op)?;
    let x = Tensor::<1>::from_data(TensorData::new(data(n), [n]), &device).require_grad();
    let mut failure = None;
    let t = time(reps, || {
        let result = fq.forward(x.clone()).map(|y| {
            // dy = ones (burn's seed of a backward from a non-scalar root), as in the raw row.
            let grads = y.backward();
            let dx = x.grad(&grads);
            device.sync().expect("burn's device sync");
            drop(dx);
        });
        if let Err(e) = result {
            failure = Some(e);
        }
    });
    failure.map_or(Ok(t), Err)
}

/// The two ops alone on burn tensors, without autodiff: the masked forward and the
/// straight-through backward through burn's dispatch (`ops::QatOps`), `dy` made once as in the
/// raw row. What the wrapping itself costs (buffer look-ups, burn's pool, a flush and a submit
/// per op); the autodiff row adds burn's own work for a backward (the seed `dy = ones`, made on
/// every backward, and the gradient bookkeeping).
fn wrapped_ops(
    qat: &QatDevice,
    op: &FakeQuant,
    n: usize,
    reps: usize,
) -> fakequant::Result<Duration> {
    use burn::backend::Dispatch;
    use fakequant_burn::ops::{FakeQuantKernel, QatOps};
    let device = qat.device();
    let kernel = FakeQuantKernel::Fixed(std::sync::Arc::new(qat.context().prepare(op)?));
    let x = Tensor::<1>::from_data(TensorData::new(data(n), [n]), &device);
    let dy = Tensor::<1>::ones([n], &device);
    Ok(time(reps, || {
        let (y, mask) = Dispatch::qat_fake_quant_masked(x.clone().into_dispatch(), kernel.clone());
        let dx = Dispatch::qat_ste_backward(dy.clone().into_dispatch(), mask, kernel.clone());
        device.sync().expect("burn's device sync");
        drop((y, dx));
    }))
}

/// A two-layer perceptron whose training step is timed in float and in QAT.
#[derive(Module, Debug)]
struct Mlp {
    w1: Param<Tensor<2>>,
    w2: Param<Tensor<2>>,
}

struct QatMlp {
    w1: ObserverQuantizer,
    w2: ObserverQuantizer,
    a1: ObserverQuantizer,
    a2: ObserverQuantizer,
}

fn step_times(qat: &QatDevice, reps: usize) -> fakequant_burn::Result<(Duration, Duration)> {
    let device: Device = qat.autodiff();
    let (batch, inputs, hidden, outputs) = (256usize, 784usize, 256usize, 10usize);
    let weights = |rows: usize, cols: usize, seed: usize| -> Param<Tensor<2>> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (((i + seed) * 2654435761) % 1000) as f32 * 1e-4 - 0.05)
            .collect();
        Param::from_tensor(Tensor::from_data(TensorData::new(v, [rows, cols]), &device))
    };
    let x = Tensor::<2>::from_data(
        TensorData::new(data(batch * inputs), [batch, inputs]),
        &device,
    );
    let qmlp = QatMlp {
        w1: ObserverQuantizer::new(qat, &ObserverConfig::qat_weight_int8(), &[hidden, inputs])?,
        w2: ObserverQuantizer::new(qat, &ObserverConfig::qat_weight_int8(), &[outputs, hidden])?,
        a1: ObserverQuantizer::new(
            qat,
            &ObserverConfig::qat_activation_int8(),
            &[batch, inputs],
        )?,
        a2: ObserverQuantizer::new(
            qat,
            &ObserverConfig::qat_activation_int8(),
            &[batch, hidden],
        )?,
    };
    let mut times = Vec::new();
    for quantized in [false, true] {
        let mut model = Mlp {
            w1: weights(hidden, inputs, 1),
            w2: weights(outputs, hidden, 2),
        };
        let mut optimizer = SgdConfig::new().init();
        let mut failure = None;
        let t = time(reps, || {
            let step = |model: &Mlp| -> fakequant_burn::Result<Tensor<1>> {
                let (w1, w2) = (model.w1.val(), model.w2.val());
                let (input, w1, w2) = if quantized {
                    (
                        qmlp.a1.forward(x.clone(), Mode::Qat)?,
                        qmlp.w1.forward(w1, Mode::Qat)?,
                        qmlp.w2.forward(w2, Mode::Qat)?,
                    )
                } else {
                    (x.clone(), w1, w2)
                };
                let h = burn::tensor::activation::relu(input.matmul(w1.transpose()));
                let h = if quantized {
                    qmlp.a2.forward(h, Mode::Qat)?
                } else {
                    h
                };
                Ok((h.matmul(w2.transpose())).powi_scalar(2).mean())
            };
            match step(&model) {
                Ok(loss) => {
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optimizer.step(1e-3, model.clone(), grads);
                    device.sync().expect("burn's device sync");
                }
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        times.push(t);
    }
    Ok((times[0], times[1]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let qat = QatDevice::new()?;
    println!("adapter: {}", qat.context().adapter_name());
    let op = FakeQuant::new(QuantRange::signed(8)?, QuantParams::per_tensor(0.02, 0))?;
    println!(
        "| elements | raw forward + STE backward | burn ops | ratio | through burn (autodiff) | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (n, reps) in [(1usize << 20, 21), (1 << 24, 7)] {
        let r = raw(&qat, &op, n, reps)?;
        let o = wrapped_ops(&qat, &op, n, reps)?;
        let w = wrapped(&qat, &op, n, reps)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {}M | {:.2} ms | {:.2} ms | {:.2} | {:.2} ms | {:.2} |",
            n >> 20,
            ms(r),
            ms(o),
            ms(o) / ms(r),
            ms(w),
            ms(w) / ms(r)
        );
    }
    let stats = binding_stats();
    println!(
        "bindings: {} tensors bound in place, {} at a non-zero offset, {} inputs copied",
        stats.bound, stats.at_nonzero_offset, stats.copies
    );
    let (float, qat_step) = step_times(&qat, 7)?;
    println!(
        "MLP 784-256-10, batch 256, SGD step: float {:.2} ms, QAT (weights per channel, inputs per tensor, observers) {:.2} ms ({:.2}x)",
        float.as_secs_f64() * 1e3,
        qat_step.as_secs_f64() * 1e3,
        qat_step.as_secs_f64() / float.as_secs_f64()
    );
    Ok(())
}
