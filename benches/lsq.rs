//! LSQ kernels at 1M and 16M elements, per-tensor and per-channel (axis 0, 64 channels),
//! throughput in the bytes each must move:
//! - forward: x read, y written, 8 bytes per element;
//! - backward: x and dy read, dx written (the reduced gradients are a few bytes per channel),
//!   12 bytes per element;
//! - forward + backward (one training step's worth, one submission): 20 bytes per element.
//!
//! `cargo bench --bench lsq` (adapter chosen as by `GpuContext::new`, steered by
//! `FAKEQUANT_BACKEND` / `FAKEQUANT_ADAPTER`). Each iteration is one submission waited on.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fakequant::LsqConfig;

const SIZES: [usize; 2] = [1 << 20, 1 << 24];

fn benches(c: &mut Criterion) {
    let Some(ctx) = common::context() else {
        return;
    };
    let mut group = common::group(c, "lsq", &ctx);
    for n in SIZES {
        let x = ctx.upload(&common::data(n, 1)).unwrap();
        let dy = ctx.upload(&common::data(n, 2)).unwrap();
        let y = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
        let dx = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
        let elem_bytes = n as u64 * 4;
        for (name, config, shape, channels) in [
            ("per_tensor", LsqConfig::activation_int8(), vec![n], 1),
            (
                "per_channel_axis0_64",
                LsqConfig::weight_int8(),
                vec![64, n / 64],
                64,
            ),
        ] {
            let lsq = ctx
                .create_lsq(&config, &vec![0.03; channels], &vec![0.0; channels])
                .unwrap();
            let grads = lsq.create_grads().unwrap();
            group.throughput(Throughput::Bytes(2 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("forward_{name}_8B_per_elem"), n),
                &n,
                |b, _| b.iter(|| lsq.forward_device(&x, &shape, &y, None).unwrap()),
            );
            group.throughput(Throughput::Bytes(3 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("backward_{name}_12B_per_elem"), n),
                &n,
                |b, _| b.iter(|| lsq.backward_device(&x, &dy, &shape, &dx, &grads).unwrap()),
            );
            group.throughput(Throughput::Bytes(5 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("forward_backward_{name}_20B_per_elem"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let mut encoder = ctx.create_encoder("bench");
                        lsq.record_forward(&mut encoder, x.binding(), &shape, y.binding(), None)
                            .unwrap();
                        lsq.record_backward(
                            &mut encoder,
                            x.binding(),
                            dy.binding(),
                            &shape,
                            dx.binding(),
                            &grads,
                        )
                        .unwrap();
                        ctx.submit_and_wait(encoder).unwrap();
                    })
                },
            );
        }
    }
    // 16-bit tensors: forward + backward on f16 and bf16 (10 bytes per element), per-tensor at 16M.
    let n = SIZES[SIZES.len() - 1];
    let (x32, dy32) = (common::data(n, 1), common::data(n, 2));
    for dtype in [fakequant::DType::F16, fakequant::DType::Bf16] {
        let upload = |v: &[f32]| match dtype {
            fakequant::DType::F16 => ctx.upload(
                &v.iter()
                    .map(|&e| half::f16::from_f32(e))
                    .collect::<Vec<_>>(),
            ),
            _ => ctx.upload(
                &v.iter()
                    .map(|&e| half::bf16::from_f32(e))
                    .collect::<Vec<_>>(),
            ),
        };
        let (x, dy) = (upload(&x32).unwrap(), upload(&dy32).unwrap());
        let y = ctx.create_tensor(n, dtype).unwrap();
        let dx = ctx.create_tensor(n, dtype).unwrap();
        let lsq = ctx
            .create_lsq(&LsqConfig::activation_int8(), &[0.03], &[0.0])
            .unwrap();
        let grads = lsq.create_grads().unwrap();
        group.throughput(Throughput::Bytes(n as u64 * 10));
        group.bench_with_input(
            BenchmarkId::new(
                format!("forward_backward_per_tensor_{dtype:?}_10B_per_elem"),
                n,
            ),
            &n,
            |b, _| {
                b.iter(|| {
                    let mut encoder = ctx.create_encoder("bench");
                    lsq.record_forward(&mut encoder, x.binding(), &[n], y.binding(), None)
                        .unwrap();
                    lsq.record_backward(
                        &mut encoder,
                        x.binding(),
                        dy.binding(),
                        &[n],
                        dx.binding(),
                        &grads,
                    )
                    .unwrap();
                    ctx.submit_and_wait(encoder).unwrap();
                })
            },
        );
    }
    group.finish();
}

criterion_group!(lsq, benches);
criterion_main!(lsq);
