//! Observer kernels at 1M and 16M elements: the min/max reduction alone and the fused
//! observe + update + fake-quantize step, per-tensor and per-channel on the first and the last
//! axis, throughput in the bytes each must move:
//! - reduction: x read once, 4 bytes per element;
//! - fused QAT step: x read twice (the scale depends on this step's min/max, so the fake-quant
//!   pass cannot start before the reduction ends) and y written, 12 bytes per element;
//! - frozen step (the plain fake-quant with device-resident qparams), for comparison: 8 bytes.
//!
//! `cargo bench --bench observers` (adapter chosen as by `GpuContext::new`, steered by
//! `FAKEQUANT_BACKEND` / `FAKEQUANT_ADAPTER`). Each iteration is one submission waited on.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fakequant::{Mode, ObserverConfig};

const SIZES: [usize; 2] = [1 << 20, 1 << 24];

fn benches(c: &mut Criterion) {
    let Some(ctx) = common::context() else {
        return;
    };
    let mut group = common::group(c, "observers", &ctx);
    for n in SIZES {
        let x = ctx.upload(&common::data(n, 0)).unwrap();
        let y = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
        let elem_bytes = n as u64 * 4;
        let last_axis = ObserverConfig::new(
            fakequant::QuantRange::INT8,
            fakequant::QScheme::Symmetric,
            fakequant::Averaging::default(),
            fakequant::Granularity::per_channel(1),
        )
        .unwrap();
        for (name, config, shape) in [
            ("per_tensor", ObserverConfig::qat_activation_int8(), vec![n]),
            (
                "per_channel_axis0_64",
                ObserverConfig::qat_weight_int8(),
                vec![64, n / 64],
            ),
            ("per_channel_last_axis_64", last_axis, vec![n / 64, 64]),
        ] {
            let observer = ctx.create_observer(&config, &shape).unwrap();
            let stats = observer.create_batch_stats().unwrap();
            group.throughput(Throughput::Bytes(elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("min_max_{name}_4B_per_elem"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let mut encoder = ctx.create_encoder("bench");
                        observer
                            .record_batch_min_max(&mut encoder, x.binding(), &shape, &stats)
                            .unwrap();
                        ctx.submit_and_wait(encoder).unwrap();
                    })
                },
            );
            group.throughput(Throughput::Bytes(3 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("fused_qat_{name}_12B_per_elem"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        observer
                            .step_device(&x, &shape, &y, None, Mode::Qat)
                            .unwrap()
                    })
                },
            );
            group.throughput(Throughput::Bytes(2 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("frozen_{name}_8B_per_elem"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        observer
                            .step_device(&x, &shape, &y, None, Mode::Frozen)
                            .unwrap()
                    })
                },
            );
        }
    }
    // 16-bit activations: the fused QAT step on f16 and bf16 (x read twice, y written: 6 bytes per
    // element), per-tensor at 16M.
    let n = SIZES[SIZES.len() - 1];
    let x32 = common::data(n, 0);
    for dtype in [fakequant::DType::F16, fakequant::DType::Bf16] {
        let x = match dtype {
            fakequant::DType::F16 => ctx.upload(
                &x32.iter()
                    .map(|&v| half::f16::from_f32(v))
                    .collect::<Vec<_>>(),
            ),
            _ => ctx.upload(
                &x32.iter()
                    .map(|&v| half::bf16::from_f32(v))
                    .collect::<Vec<_>>(),
            ),
        }
        .unwrap();
        let y = ctx.create_tensor(n, dtype).unwrap();
        let observer = ctx
            .create_observer(&ObserverConfig::qat_activation_int8(), &[])
            .unwrap();
        group.throughput(Throughput::Bytes(n as u64 * 6));
        group.bench_with_input(
            BenchmarkId::new(format!("fused_qat_per_tensor_{dtype:?}_6B_per_elem"), n),
            &n,
            |b, _| b.iter(|| observer.step_device(&x, &[n], &y, None, Mode::Qat).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(observers, benches);
criterion_main!(observers);
