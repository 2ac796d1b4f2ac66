//! The LLM-era kernels at 1M and 16M f32 elements, shape `[n / 4096, 4096]`: dynamic per-group
//! (g = 32) and per-token fake-quant (one pass: x read, y written, 8 bytes per element), the
//! floating-point formats (MXFP4, NVFP4, FP8 per row: y and a code byte per element, 9 bytes;
//! FP8 reads x once more for the rows' amax) and a histogram calibration pass (x read by the
//! min/max reduction and by the counting, 8 bytes).
//!
//! `cargo bench --bench llm_formats` (adapter chosen as by `GpuContext::new`, steered by
//! `FAKEQUANT_BACKEND` / `FAKEQUANT_ADAPTER`). Each iteration is one submission waited on.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fakequant::{
    DynamicConfig, ElementFormat, FloatQuantConfig, Granularity, HistogramConfig, HistogramDomain,
    MxScaleRule,
};

const SIZES: [usize; 2] = [1 << 20, 1 << 24];

fn benches(c: &mut Criterion) {
    let Some(ctx) = common::context() else {
        return;
    };
    let mut group = common::group(c, "llm_formats", &ctx);
    for n in SIZES {
        let x = ctx.upload(&common::data(n, 0)).unwrap();
        let y = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
        let shape = vec![n / 4096, 4096];
        let elem_bytes = n as u64 * 4;
        for (name, config) in [
            ("dynamic_g32", DynamicConfig::int4_weight(32)),
            ("dynamic_per_token", DynamicConfig::int8_per_token()),
        ] {
            let dynamic = ctx.create_dynamic(&config, &shape).unwrap();
            group.throughput(Throughput::Bytes(2 * elem_bytes));
            group.bench_with_input(
                BenchmarkId::new(format!("{name}_8B_per_elem"), n),
                &n,
                |b, _| b.iter(|| dynamic.forward_device(&x, &shape, &y, None).unwrap()),
            );
        }
        for (name, config) in [
            (
                "mxfp4_rceil",
                FloatQuantConfig::mx(ElementFormat::Fp4E2M1, MxScaleRule::Rceil).unwrap(),
            ),
            (
                "nvfp4_two_level",
                FloatQuantConfig::nvfp4(Some(1.0 / 2688.0)).unwrap(),
            ),
            (
                "fp8_e4m3_per_row",
                FloatQuantConfig::fp8_per_row(ElementFormat::Fp8E4M3).unwrap(),
            ),
        ] {
            let float = ctx.create_float_quant(&config, &shape).unwrap();
            group.throughput(Throughput::Bytes(elem_bytes * 9 / 4));
            group.bench_with_input(
                BenchmarkId::new(format!("{name}_9B_per_elem"), n),
                &n,
                |b, _| b.iter(|| float.forward_device(&x, &shape, &y, None).unwrap()),
            );
        }
        let config =
            HistogramConfig::new(2048, HistogramDomain::Magnitude, Granularity::PerTensor).unwrap();
        let histogram = ctx.create_histogram_observer(&config, &[n]).unwrap();
        group.throughput(Throughput::Bytes(2 * elem_bytes));
        group.bench_with_input(
            BenchmarkId::new("histogram_per_tensor_8B_per_elem", n),
            &n,
            |b, _| b.iter(|| histogram.observe_device(&x, &[n]).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(llm, benches);
criterion_main!(llm);
