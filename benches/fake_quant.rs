//! Forward and backward fake-quant kernels at 64K, 1M and 16M elements, throughput in bytes moved
//! (x read + y written + the bit-packed mask; dy read + mask read + dx written), and 200 small
//! tensors submitted one by one, recorded into one submission, or prerecorded and replayed.
//!
//! `cargo bench --bench fake_quant` (adapter chosen as by `GpuContext::new`, steered by
//! `FAKEQUANT_BACKEND` / `FAKEQUANT_ADAPTER`). Each iteration is one submission waited on, so the
//! figures include the submit and synchronisation cost, as a training step would see it.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fakequant::{reference, DType, FakeQuant, GpuContext, QuantParams, QuantRange};

const SIZES: [usize; 3] = [1 << 16, 1 << 20, 1 << 24];

fn benches(c: &mut Criterion) {
    let Some(ctx) = common::context() else {
        return;
    };
    let per_tensor =
        FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(3.0 / 127.5, 0)).unwrap();

    let mut group = common::group(c, "fake_quant", &ctx);
    for n in SIZES {
        let x_host = common::data(n, 0);
        let x = ctx.upload(&x_host).unwrap();
        let y = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
        let mask = ctx.create_mask(n).unwrap();
        let dx = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
        let mask_bytes = n.div_ceil(32) as u64 * 4;
        let elem_bytes = n as u64 * 4;

        let per_channel = FakeQuant::new(
            QuantRange::INT8,
            QuantParams::per_channel(0, vec![0.02; 64], vec![0; 64]),
        )
        .unwrap();
        for (name, op, shape) in [
            ("per_tensor", &per_tensor, vec![n]),
            ("per_channel_axis0_64", &per_channel, vec![64, n / 64]),
        ] {
            let prepared = ctx.prepare(op).unwrap();
            group.throughput(Throughput::Bytes(2 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("forward_{name}_8B_per_elem"), n),
                &n,
                |b, _| b.iter(|| prepared.forward_device(&x, &shape, &y, None).unwrap()),
            );
            group.throughput(Throughput::Bytes(2 * elem_bytes + mask_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("forward_{name}_mask_8.125B_per_elem"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        prepared
                            .forward_device(&x, &shape, &y, Some(&mask))
                            .unwrap()
                    })
                },
            );
        }
        // 16-bit elements: half the bytes, so compare bytes per second, not elements.
        for dtype in [DType::F16, DType::Bf16] {
            let x16 = match dtype {
                DType::F16 => ctx.upload(
                    &x_host
                        .iter()
                        .map(|&v| half::f16::from_f32(v))
                        .collect::<Vec<_>>(),
                ),
                _ => ctx.upload(
                    &x_host
                        .iter()
                        .map(|&v| half::bf16::from_f32(v))
                        .collect::<Vec<_>>(),
                ),
            }
            .unwrap();
            let y16 = ctx.create_tensor(n, dtype).unwrap();
            let prepared = ctx.prepare(&per_tensor).unwrap();
            group.throughput(Throughput::Bytes(n as u64 * 4));
            group.bench_with_input(
                BenchmarkId::new(format!("forward_per_tensor_{dtype:?}_4B_per_elem"), n),
                &n,
                |b, _| b.iter(|| prepared.forward_device(&x16, &[n], &y16, None).unwrap()),
            );
        }
        group.throughput(Throughput::Bytes(2 * elem_bytes + mask_bytes));
        group.bench_with_input(
            BenchmarkId::new("ste_backward_8.125B_per_elem", n),
            &n,
            |b, _| b.iter(|| ctx.ste_backward_device(&x, &mask, &dx).unwrap()),
        );
        if n == 1 << 20 {
            group.throughput(Throughput::Bytes(2 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new("cpu_reference_forward_per_tensor", n),
                &n,
                |b, _| b.iter(|| reference::fake_quant(&per_tensor, &x_host, &[n]).unwrap()),
            );
        }
    }
    group.finish();
    small_tensors(c, &ctx, &per_tensor);
}

/// 200 tensors of 4K to 256K elements (a network's layers): one submission each, all recorded into
/// one submission, and a prerecorded replay of them.
fn small_tensors(c: &mut Criterion, ctx: &GpuContext, op: &FakeQuant) {
    let mut group = common::group(c, "small_tensors_200", ctx);
    let prepared = ctx.prepare(op).unwrap();
    let sizes: Vec<usize> = (0..200).map(|i| 4096 << (i % 7)).collect();
    let tensors: Vec<_> = sizes
        .iter()
        .map(|&n| {
            (
                ctx.upload(&common::data(n, 0)).unwrap(),
                ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
            )
        })
        .collect();
    let elements: usize = sizes.iter().sum();
    group.throughput(Throughput::Bytes(elements as u64 * 8));
    let record_all = |encoder: &mut dyn fakequant::Recorder| -> fakequant::Result<()> {
        for ((x, y), &n) in tensors.iter().zip(&sizes) {
            prepared.record_forward(encoder, x.binding(), &[n], y.binding(), None)?;
        }
        Ok(())
    };
    group.bench_function("forward_one_submission_each", |b| {
        b.iter(|| {
            for ((x, y), &n) in tensors.iter().zip(&sizes) {
                prepared.forward_device(x, &[n], y, None).unwrap();
            }
        })
    });
    group.bench_function("forward_one_submission", |b| {
        b.iter(|| {
            let mut encoder = ctx.create_encoder("bench");
            record_all(&mut encoder).unwrap();
            ctx.submit_and_wait(encoder).unwrap();
        })
    });
    let replay = ctx.prerecord(|recording| record_all(recording)).unwrap();
    group.bench_function("forward_prerecorded_replay", |b| {
        b.iter(|| replay.run().unwrap())
    });
    group.finish();
}

criterion_group!(fake_quant, benches);
criterion_main!(fake_quant);
