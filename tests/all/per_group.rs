//! Per-group and per-token granularity: the layout rules, static per-group fake-quant, observers
//! and LSQ (range learning) per group on the device against the reference, and the dynamic
//! reference's own properties.

use crate::common::{
    adversarial, assert_bits_eq, assert_dynamic_eq, assert_mask_eq, check_on_gpu, contexts, Rng,
};
use fakequant::reference::dynamic::fake_quant_dynamic;
use fakequant::{
    reference, DType, DynamicConfig, DynamicScheme, Element, Error, FakeQuant, Granularity,
    LsqConfig, Mode, ObserverConfig, QuantParams, QuantRange,
};
use half::{bf16, f16};

/// Shapes, group axes and sizes: the last axis with the common sizes, sizes 1, 2, 3, a group as
/// long as the axis, trailing dimensions of 1, ranks 1 to 4.
fn cases() -> Vec<(Vec<usize>, usize, usize)> {
    vec![
        (vec![8, 256], 1, 32),
        (vec![8, 256], 1, 128),
        (vec![12, 256], 1, 256),
        (vec![4, 96], 1, 1),
        (vec![4, 96], 1, 2),
        (vec![4, 96], 1, 3),
        (vec![4096], 0, 4096),
        (vec![2, 3, 4, 96], 3, 32),
        (vec![4, 64, 1], 1, 16),
        (vec![3, 1, 5000], 2, 1000),
        (vec![40, 1024], 1, 128),
    ]
}

fn group_params(rng: &mut Rng, groups: usize, range: QuantRange) -> (Vec<f32>, Vec<i32>) {
    let scales = (0..groups)
        .map(|_| 2f32.powf(rng.uniform(-8.0, 4.0)))
        .collect();
    let zero_points = (0..groups)
        .map(|_| range.qmin() + rng.below((range.qmax() - range.qmin()) as usize + 1) as i32)
        .collect();
    (scales, zero_points)
}

#[test]
fn group_layouts_are_checked() {
    let bad = [
        (vec![8, 256], 1, 0, "at least 1"),
        (vec![8, 256], 1, 48, "divide"),
        (vec![8, 256], 0, 4, "no channel layout"),
        (vec![8, 256], 2, 4, ""),
    ];
    for (shape, axis, size, reason) in bad {
        let r = Granularity::per_group(axis, size).layout(&shape, 2048);
        match r {
            Err(Error::InvalidGroup { reason: why, .. }) => {
                assert!(why.contains(reason), "{shape:?} {axis} {size}: {why}")
            }
            Err(Error::AxisOutOfRange { .. }) if axis >= shape.len() => {}
            other => panic!("{shape:?} axis {axis} size {size}: {other:?}"),
        }
    }
    let layout = Granularity::per_group(1, 32)
        .layout(&[8, 256], 2048)
        .unwrap();
    assert_eq!((layout.outer, layout.channels, layout.inner), (1, 64, 32));
    let tokens = Granularity::PerToken.layout(&[2, 8, 128], 2048).unwrap();
    assert_eq!((tokens.outer, tokens.channels, tokens.inner), (1, 16, 128));
    // A group per row is per-channel along axis 0: the same parameters, the same bits.
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..2048).map(|_| rng.normal() * 4.0).collect();
    let (scales, zero_points) = group_params(&mut rng, 8, QuantRange::INT8);
    let rows = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_group(1, 256, scales.clone(), zero_points.clone()),
    )
    .unwrap();
    let channels = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_channel(0, scales, zero_points),
    )
    .unwrap();
    let a = reference::fake_quant(&rows, &x, &[8, 256]).unwrap();
    let b = reference::fake_quant(&channels, &x, &[8, 256]).unwrap();
    assert_bits_eq("a group per row vs per channel", &x, &b.y, &a.y);
}

fn check_static<T: Element>(
    ctx: &fakequant::GpuContext,
    op: &FakeQuant,
    x: &[T],
    shape: &[usize],
    label: &str,
) {
    let expected = reference::fake_quant(op, x, shape).unwrap();
    let got = ctx.fake_quant(op, x, shape).unwrap();
    let bits = |v: &[T]| v.iter().map(|e| e.to_bits_u32()).collect::<Vec<_>>();
    assert_eq!(
        bits(&got.y),
        bits(&expected.y),
        "{label} on {}",
        ctx.adapter_name()
    );
    assert_mask_eq(label, &expected.mask, &got.mask);
}

#[test]
fn static_per_group_on_the_device_matches_the_reference() {
    let mut rng = Rng::new(0x9209);
    for ctx in contexts() {
        for (shape, axis, size) in cases() {
            for range in [QuantRange::INT4, QuantRange::INT8, QuantRange::UINT4] {
                let granularity = Granularity::per_group(axis, size);
                let groups = granularity.channels(&shape).unwrap();
                let (scales, zero_points) = group_params(&mut rng, groups, range);
                let n: usize = shape.iter().product();
                // Adversarial values of the first group's parameters, the rest random.
                let mut x = adversarial(scales[0], zero_points[0], range);
                x.truncate(n);
                while x.len() < n {
                    x.push(rng.normal() * scales[x.len() / size] * 10.0);
                }
                let op = FakeQuant::new(
                    range,
                    QuantParams::per_group(axis, size, scales, zero_points),
                )
                .unwrap();
                let label = format!("{shape:?} groups of {size} along {axis}, {range:?}");
                check_on_gpu(ctx, &op, &x, &shape, &label);
                let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                check_static(ctx, &op, &x16, &shape, &format!("{label} f16"));
                let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                check_static(ctx, &op, &xb, &shape, &format!("{label} bf16"));
            }
        }
    }
}

#[test]
fn observers_and_lsq_per_group_on_the_device_match_the_reference() {
    let mut rng = Rng::new(0x0b5e);
    let shape = [6, 128];
    let granularity = Granularity::per_group(1, 32);
    for ctx in contexts() {
        let config = ObserverConfig::new(
            QuantRange::INT4,
            fakequant::QScheme::Symmetric,
            fakequant::Averaging::MinMax,
            granularity,
        )
        .unwrap();
        let mut cpu = reference::Observer::new(config.clone(), &shape).unwrap();
        let gpu = ctx.create_observer(&config, &shape).unwrap();
        for step in 0..3 {
            let x: Vec<f32> = (0..768).map(|_| rng.normal() * (step + 1) as f32).collect();
            let expected = cpu.step(&x, &shape, Mode::Qat).unwrap();
            let got = gpu.step(&x, &shape, Mode::Qat).unwrap();
            assert_bits_eq("per-group observer step", &x, &expected.y, &got.y);
        }
        let lsq_config = LsqConfig::new(QuantRange::INT4, granularity).unwrap();
        let scales: Vec<f32> = (0..24).map(|_| 0.05 + rng.unit() as f32 * 0.2).collect();
        let zero_points: Vec<f32> = (0..24).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let cpu = reference::Lsq::new(lsq_config.clone(), &scales, &zero_points).unwrap();
        let gpu = ctx.create_lsq(&lsq_config, &scales, &zero_points).unwrap();
        let x: Vec<f32> = (0..768).map(|_| rng.normal()).collect();
        let dy: Vec<f32> = (0..768).map(|_| rng.normal()).collect();
        let expected = cpu.backward(&x, &dy, &shape).unwrap();
        let got = gpu.backward(&x, &dy, &shape).unwrap();
        assert_bits_eq("per-group LSQ dx", &x, &expected.dx, &got.dx);
        assert_bits_eq(
            "per-group LSQ dscale",
            &scales,
            &expected.dscale,
            &got.dscale,
        );
        assert_bits_eq(
            "per-group LSQ dzero_point",
            &zero_points,
            &expected.dzero_point,
            &got.dzero_point,
        );
    }
}

#[test]
fn dynamic_qparams_follow_the_rules() {
    // An all-zero group: the smallest scale, zero point in range, zeros out.
    let config = DynamicConfig::int4_weight(4);
    let out = fake_quant_dynamic(&config, &[0.0f32; 8], &[1, 8]).unwrap();
    assert_eq!(out.scales, vec![f32::MIN_POSITIVE; 2]);
    assert!(out.y.iter().all(|&v| v.to_bits() == 0));
    // Symmetric int4: max |x| maps to 7.5 -> 8, clipped to 7 (the positive maximum clips).
    let out = fake_quant_dynamic(&config, &[-1.5f32, 0.25, 0.5, 1.5], &[1, 4]).unwrap();
    assert_eq!(out.scales, vec![0.2]);
    assert_eq!(out.mask.get(3), Some(false));
    assert_eq!(out.mask.get(0), Some(true));
    // Per token: one asymmetric int8 (scale, zero point) per row, from the row alone.
    let x: Vec<f32> = (0..12).map(|i| i as f32 - 3.0).collect();
    let out = fake_quant_dynamic(&DynamicConfig::int8_per_token(), &x, &[3, 4]).unwrap();
    for row in 0..3 {
        let alone = fake_quant_dynamic(
            &DynamicConfig::int8_per_token(),
            &x[row * 4..row * 4 + 4],
            &[1, 4],
        )
        .unwrap();
        assert_eq!(alone.scales[0], out.scales[row]);
        assert_eq!(alone.zero_points[0], out.zero_points[row]);
    }
    // NaN and infinities are skipped by the qparams and pass through the op as the core does.
    let out = fake_quant_dynamic(
        &DynamicConfig::new(
            QuantRange::INT8,
            DynamicScheme::Asymmetric,
            Granularity::PerToken,
        )
        .unwrap(),
        &[f32::NAN, f32::INFINITY, 1.0, -1.0],
        &[4],
    )
    .unwrap();
    assert_eq!(out.scales, vec![2.0 / 255.0]);
    assert!(out.y[0].is_nan());
    // Settings are checked.
    assert!(config.clone().with_eps(0.0).is_err());
    assert!(config.clone().with_eps(1e-40).is_err());
    assert!(config.clone().with_eps(2.0).is_err());
    // A symmetric range must contain its zero point.
    assert!(matches!(
        DynamicConfig::new(
            QuantRange::new(1, 15).unwrap(),
            DynamicScheme::Symmetric,
            Granularity::PerToken
        ),
        Err(Error::InvalidRange { .. })
    ));
    assert!(config.with_qparams_dtype(fakequant::DType::F16).is_err());
}

/// Data for dynamic groups: random groups of several magnitudes, and groups that are all zero,
/// constant, one-signed, dominated by one outlier, subnormal, near the f32 maximum (their range
/// overflows), or hold NaN and infinities.
fn dynamic_data(rng: &mut Rng, n: usize, group: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    for g in 0..n.div_ceil(group) {
        let len = group.min(n - x.len());
        let scale = 2f32.powf(rng.uniform(-10.0, 10.0));
        for j in 0..len {
            let v = match g % 9 {
                0 => 0.0,
                1 => 1.25,
                2 => rng.unit() as f32 * scale,
                3 if j == len / 2 => 1e4 * scale,
                4 => f32::from_bits(1 + rng.below(1 << 22) as u32),
                5 => [3e38, -3e38][j % 2],
                6 if j == 1 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][g % 3],
                _ => rng.normal() * scale,
            };
            x.push(v);
        }
    }
    x
}

fn check_dynamic<T: Element>(
    ctx: &fakequant::GpuContext,
    config: &DynamicConfig,
    x: &[f32],
    shape: &[usize],
    label: &str,
) {
    let x: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let expected = fake_quant_dynamic(config, &x, shape).unwrap();
    let got = ctx
        .create_dynamic(config, shape)
        .unwrap()
        .forward(&x, shape)
        .unwrap();
    let label = format!("{label} {:?} on {}", T::DTYPE, ctx.adapter_name());
    assert_dynamic_eq(&label, &expected, &got);
}

#[test]
fn dynamic_fake_quant_on_the_device_matches_the_reference() {
    let mut rng = Rng::new(0xd1a);
    let mut granularities: Vec<(Vec<usize>, Granularity)> = cases()
        .into_iter()
        .map(|(shape, axis, size)| (shape, Granularity::per_group(axis, size)))
        .collect();
    granularities.push((vec![2, 8, 128], Granularity::PerToken));
    granularities.push((vec![300, 7], Granularity::PerToken));
    granularities.push((vec![5, 333], Granularity::PerTensor));
    granularities.push((vec![16, 3, 3], Granularity::per_channel(0)));
    for base in contexts() {
        // The one-pass kernel's runs: the adapter's default (whole groups on these CPU adapters),
        // and runs of 32 and 64 (a GPU's default) whose groups meet in workgroup memory.
        let runs = [
            base.clone(),
            base.with_dynamic_run(32).unwrap(),
            base.with_dynamic_run(64).unwrap(),
        ];
        for (shape, granularity) in &granularities {
            let n: usize = shape.iter().product();
            let group = n / granularity.channels(shape).unwrap();
            let x = dynamic_data(&mut rng, n, group);
            let layout = granularity.layout(shape, n).unwrap();
            let one_pass = layout.outer == 1
                && layout.inner.is_power_of_two()
                && (32..=4096).contains(&layout.inner);
            for ctx in if one_pass { &runs[..] } else { &runs[..1] } {
                for (range, scheme, qparams) in [
                    (QuantRange::INT4, DynamicScheme::Symmetric, DType::F32),
                    (QuantRange::INT8, DynamicScheme::Symmetric, DType::F32),
                    (QuantRange::INT8, DynamicScheme::Asymmetric, DType::F32),
                    (QuantRange::UINT4, DynamicScheme::Asymmetric, DType::F32),
                    (
                        QuantRange::UINT4,
                        DynamicScheme::AsymmetricFloat,
                        DType::F32,
                    ),
                    (
                        QuantRange::UINT4,
                        DynamicScheme::AsymmetricFloat,
                        DType::Bf16,
                    ),
                ] {
                    let config = DynamicConfig::new(range, scheme, *granularity)
                        .unwrap()
                        .with_qparams_dtype(qparams)
                        .unwrap();
                    let label =
                        format!("{shape:?} {granularity:?} {range:?} {scheme:?} {qparams:?}");
                    let label = format!("{label} run {}", ctx.dynamic_run());
                    check_dynamic::<f32>(ctx, &config, &x, shape, &label);
                    check_dynamic::<f16>(ctx, &config, &x, shape, &label);
                    check_dynamic::<bf16>(ctx, &config, &x, shape, &label);
                }
            }
        }
        let ctx = &base;
        // A float-domain object made for one-pass groups, called on a shape with as many groups
        // that the one-pass kernel does not take: the two-pass plan in the float domain, never
        // the integer path's output.
        let float = DynamicConfig::new(
            QuantRange::UINT4,
            DynamicScheme::AsymmetricFloat,
            Granularity::PerToken,
        )
        .unwrap();
        let dynamic = ctx.create_dynamic(&float, &[4, 64]).unwrap();
        let x48 = dynamic_data(&mut rng, 4 * 48, 48);
        let expected = fake_quant_dynamic(&float, &x48, &[4, 48]).unwrap();
        let got = dynamic.forward(&x48, &[4, 48]).unwrap();
        assert_dynamic_eq("float domain, same groups, other shape", &expected, &got);
        // Over several bindings and with few workgroups: the chunked reduction and forward.
        let small = ctx
            .with_dispatch_limits(fakequant::DispatchLimits {
                max_binding_bytes: 256 << 10,
                max_workgroups: 3,
            })
            .unwrap();
        // (The reduction's partial results, 8 bytes per group and partial, must fit one binding:
        // few, long groups here.)
        let shape = [8, 20480];
        let x = dynamic_data(&mut rng, 8 * 20480, 4096);
        for granularity in [Granularity::per_group(1, 4096), Granularity::PerToken] {
            for scheme in [
                DynamicScheme::Symmetric,
                DynamicScheme::Asymmetric,
                DynamicScheme::AsymmetricFloat,
            ] {
                if scheme == DynamicScheme::AsymmetricFloat && granularity == Granularity::PerToken
                {
                    continue; // rows of 20480: beyond the one-pass kernel
                }
                let config = DynamicConfig::new(QuantRange::INT4, scheme, granularity).unwrap();
                // Runs of 256 (a tile fills a chunk) and of 32 (8 tiles a chunk on 3
                // workgroups: every workgroup takes several tiles and turns of key sets).
                for ctx in [small.clone(), small.with_dynamic_run(32).unwrap()] {
                    let label = format!(
                        "lowered limits {granularity:?} {scheme:?} run {}",
                        ctx.dynamic_run()
                    );
                    check_dynamic::<f32>(&ctx, &config, &x, &shape, &label);
                    check_dynamic::<bf16>(&ctx, &config, &x, &shape, &label);
                }
            }
        }
    }
}

/// Per-group tables larger than one binding (a 7B model's int4 weights have hundreds of millions
/// of groups; here the binding is lowered to 256 KiB): the static parameters (32 bytes a group)
/// and the dynamic scales and zero points (4 bytes each a group) are bound a window per chunk, and
/// the results stay the reference's. Every binding a plan makes is checked against the limits in
/// force, so a table bound whole would be refused here.
#[test]
fn per_group_tables_larger_than_a_binding() {
    let mut rng = Rng::new(0x7ab1e);
    let limits = fakequant::DispatchLimits {
        max_binding_bytes: 256 << 10,
        max_workgroups: 65535,
    };
    // 96 Ki groups of 32: static parameters of 3 MiB, qparams tables of 384 KiB.
    let shape = [96, 32768];
    let n = 96 * 32768;
    let groups = n / 32;
    for base in contexts() {
        let ctx = base.with_dispatch_limits(limits).unwrap();
        let (scales, zero_points) = group_params(&mut rng, groups, QuantRange::INT4);
        let x: Vec<f32> = (0..n)
            .map(|i| rng.normal() * scales[i / 32] * 10.0)
            .collect();
        let op = FakeQuant::new(
            QuantRange::INT4,
            QuantParams::per_group(1, 32, scales, zero_points),
        )
        .unwrap();
        check_on_gpu(
            &ctx,
            &op,
            &x,
            &shape,
            "static per-group, tables over a binding",
        );
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        check_static(
            &ctx,
            &op,
            &xb,
            &shape,
            "static per-group bf16, tables over a binding",
        );
        let x = dynamic_data(&mut rng, n, 32);
        for ctx in [ctx.clone(), ctx.with_dynamic_run(32).unwrap()] {
            for scheme in [DynamicScheme::Asymmetric, DynamicScheme::AsymmetricFloat] {
                let config =
                    DynamicConfig::new(QuantRange::UINT4, scheme, Granularity::per_group(1, 32))
                        .unwrap();
                let label = format!("dynamic {scheme:?}, tables over a binding");
                check_dynamic::<f32>(&ctx, &config, &x, &shape, &label);
            }
        }
    }
    // Groups of 3 take the two-pass plan: at 4 MiB bindings, 196608 groups whose parameters
    // (6 MiB; chunks of x shortened so that their windows of it fit) and qparams tables are bound
    // a window per chunk, in both zero-point domains. (A chunk holds at least 2^16 elements: at
    // the 256 KiB floor, a chunk of groups of 3 would need 700 KiB of parameters.)
    let limits = fakequant::DispatchLimits {
        max_binding_bytes: 4 << 20,
        max_workgroups: 65535,
    };
    let two_pass_shape = [192, 3072];
    let x = dynamic_data(&mut rng, 192 * 3072, 3);
    for base in contexts() {
        let ctx = base.with_dispatch_limits(limits).unwrap();
        for scheme in [DynamicScheme::Symmetric, DynamicScheme::AsymmetricFloat] {
            let range = match scheme {
                DynamicScheme::Symmetric => QuantRange::INT8,
                _ => QuantRange::UINT4,
            };
            let config = DynamicConfig::new(range, scheme, Granularity::per_group(1, 3)).unwrap();
            let label = format!("two-pass {scheme:?}, tables over a binding");
            check_dynamic::<f32>(&ctx, &config, &x, &two_pass_shape, &label);
        }
    }
}

/// An observer's per-group tables over one binding: 65536 groups of 32 at 256 KiB bindings
/// (2 MiB of fake-quant parameters, 512 KiB of minima and maxima, 512 KiB of partial results).
/// The update, the merge of replicas' statistics and the reduction (sub-tensors of whole groups)
/// are recorded a window of every table per chunk of groups; every binding is checked against the
/// limits in force, so a table bound whole would be refused. The results stay the reference's.
#[test]
fn observer_tables_larger_than_a_binding() {
    let mut rng = Rng::new(0x0b7ab);
    let limits = fakequant::DispatchLimits {
        max_binding_bytes: 256 << 10,
        max_workgroups: 65535,
    };
    let shape = [2048, 1024];
    let n = 2048 * 1024;
    let granularity = Granularity::per_group(1, 32);
    let config = ObserverConfig::new(
        QuantRange::INT4,
        fakequant::QScheme::Affine,
        fakequant::Averaging::MovingAverage(0.125),
        granularity,
    )
    .unwrap();
    let batches: Vec<Vec<f32>> = (0..3)
        .map(|b| {
            dynamic_data(&mut rng, n, 32)
                .iter()
                .map(|v| v * (b + 1) as f32)
                .collect()
        })
        .collect();
    for base in contexts() {
        let ctx = base.with_dispatch_limits(limits).unwrap();
        let mut cpu = reference::Observer::new(config.clone(), &shape).unwrap();
        let gpu = ctx.create_observer(&config, &shape).unwrap();
        for (b, x) in batches.iter().enumerate() {
            let mode = [Mode::Calibrate, Mode::Qat, Mode::Frozen][b];
            let expected = cpu.step(x, &shape, mode).unwrap();
            let got = gpu.step(x, &shape, mode).unwrap();
            assert_bits_eq("observer step over bindings", x, &expected.y, &got.y);
            assert_mask_eq(
                "observer step mask over bindings",
                &expected.mask,
                &got.mask,
            );
        }
        assert_eq!(
            gpu.read_state().unwrap(),
            *cpu.state(),
            "{}",
            ctx.adapter_name()
        );
        // Two replicas' statistics merged on the device, as the reference merges them.
        let a = reference::observer::batch_min_max(&config, &batches[0], &shape).unwrap();
        let b = reference::observer::batch_min_max(&config, &batches[2], &shape).unwrap();
        let (into, from) = (
            ctx.upload_batch_stats(&a).unwrap(),
            ctx.upload_batch_stats(&b).unwrap(),
        );
        let mut encoder = ctx.create_encoder("merge over bindings");
        ctx.record_merge_batch_stats(&mut encoder, &into, &from)
            .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        assert_eq!(
            ctx.read_batch_stats(&into).unwrap(),
            reference::observer::merge(&a, &b).unwrap()
        );
        // A channel count that is no multiple of the alignment: the maxima's windows start
        // before their first record (a shift), and the chunks leave room for it.
        let odd = |seed: u64| {
            let mut rng = Rng::new(seed);
            let min: Vec<f32> = (0..70001).map(|_| -(rng.unit() as f32)).collect();
            let max: Vec<f32> = (0..70001).map(|_| rng.unit() as f32).collect();
            fakequant::MinMax { min, max }
        };
        let (a, b) = (odd(1), odd(2));
        let (into, from) = (
            ctx.upload_batch_stats(&a).unwrap(),
            ctx.upload_batch_stats(&b).unwrap(),
        );
        let mut encoder = ctx.create_encoder("merge of 70001 channels");
        ctx.record_merge_batch_stats(&mut encoder, &into, &from)
            .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        assert_eq!(
            ctx.read_batch_stats(&into).unwrap(),
            reference::observer::merge(&a, &b).unwrap()
        );
        assert_eq!(
            gpu.batch_min_max(&batches[1], &shape).unwrap(),
            reference::observer::batch_min_max(&config, &batches[1], &shape).unwrap()
        );
        // 104112 groups of 8: after three chunks of 32704, the last 6000 groups (48000
        // elements) fit one window, where the column plan leaves 8 partials a group (384 KB):
        // that chunk is split again so that its partials fit too.
        let ragged = [104112, 8];
        let x = &batches[0][..104112 * 8];
        let config = ObserverConfig::new(
            QuantRange::INT4,
            fakequant::QScheme::Affine,
            fakequant::Averaging::MovingAverage(0.125),
            Granularity::per_group(1, 8),
        )
        .unwrap();
        let mut cpu = reference::Observer::new(config.clone(), &ragged).unwrap();
        let gpu = ctx.create_observer(&config, &ragged).unwrap();
        let expected = cpu.step(x, &ragged, Mode::Qat).unwrap();
        let got = gpu.step(x, &ragged, Mode::Qat).unwrap();
        assert_bits_eq("observer step, ragged chunks", x, &expected.y, &got.y);
        assert_eq!(
            gpu.read_state().unwrap(),
            *cpu.state(),
            "{}",
            ctx.adapter_name()
        );
        // FP8 with a scale per block of 32 reduces through such an observer, then derives the
        // 65536 scales a window per chunk.
        let fp8 = fakequant::FloatQuantConfig::fp8(fakequant::ElementFormat::Fp8E4M3, granularity)
            .unwrap();
        let expected =
            fakequant::reference::float_quant::fake_quant_float(&fp8, &batches[0], &shape).unwrap();
        let got = ctx
            .create_float_quant(&fp8, &shape)
            .unwrap()
            .forward(&batches[0], &shape)
            .unwrap();
        assert_bits_eq(
            "FP8 per block over bindings",
            &batches[0],
            &expected.y,
            &got.y,
        );
        assert_eq!(got.codes, expected.codes, "{}", ctx.adapter_name());
        assert_eq!(got.scales, expected.scales, "{}", ctx.adapter_name());
    }
}

/// LSQ's per-group tables over one binding (torchao's range learning of a large weight): 65536
/// groups of 32 at 256 KiB bindings (2 MiB of parameters, 512 KiB of gradients). The parameters
/// pass, the initializations and the backward's sums take a window of every table per chunk of
/// groups (sub-tensors of whole groups, each group's terms in the reference's order); the
/// results stay the reference's.
#[test]
fn lsq_tables_larger_than_a_binding() {
    let mut rng = Rng::new(0x15c);
    let limits = fakequant::DispatchLimits {
        max_binding_bytes: 256 << 10,
        max_workgroups: 65535,
    };
    let shape = [2048, 1024];
    let n = 2048 * 1024;
    let groups = n / 32;
    let granularity = Granularity::per_group(1, 32);
    let config = LsqConfig::new(QuantRange::INT4, granularity)
        .unwrap()
        .with_grad_scale(fakequant::GradScale::Off)
        .unwrap();
    let x = dynamic_data(&mut rng, n, 32);
    let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let scales: Vec<f32> = (0..groups)
        .map(|_| 0.02 + rng.unit() as f32 * 0.2)
        .collect();
    let zero_points: Vec<f32> = (0..groups).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let observer_config = ObserverConfig::new(
        QuantRange::INT4,
        fakequant::QScheme::Affine,
        fakequant::Averaging::MinMax,
        granularity,
    )
    .unwrap();
    let mut observed = reference::Observer::new(observer_config.clone(), &shape).unwrap();
    observed.observe(&x, &shape).unwrap();
    for base in contexts() {
        let ctx = base.with_dispatch_limits(limits).unwrap();
        let name = ctx.adapter_name();
        let mut cpu = reference::Lsq::new(config.clone(), &scales, &zero_points).unwrap();
        let gpu = ctx.create_lsq(&config, &scales, &zero_points).unwrap();
        let expected = cpu.forward(&x, &shape).unwrap();
        let got = gpu.forward(&x, &shape).unwrap();
        assert_bits_eq("LSQ forward over bindings", &x, &expected.y, &got.y);
        assert_mask_eq("LSQ mask over bindings", &expected.mask, &got.mask);
        let expected = cpu.backward(&x, &dy, &shape).unwrap();
        let got = gpu.backward(&x, &dy, &shape).unwrap();
        assert_bits_eq("LSQ dx over bindings", &x, &expected.dx, &got.dx);
        assert_bits_eq(
            "LSQ dscale over bindings",
            &scales,
            &expected.dscale,
            &got.dscale,
        );
        assert_bits_eq(
            "LSQ dzero_point over bindings",
            &zero_points,
            &expected.dzero_point,
            &got.dzero_point,
        );
        let expected = cpu.init_from_data(&x, &shape).unwrap();
        let got = gpu.init_from_data(&x, &shape).unwrap();
        assert_bits_eq("LSQ init from data over bindings", &scales, &expected, &got);
        // From a calibrated observer, on the device.
        let observer = ctx.create_observer(&observer_config, &shape).unwrap();
        observer.observe(&x, &shape).unwrap();
        let from_observer = ctx.create_lsq_from_observer(&config, &observer).unwrap();
        let expected = reference::Lsq::from_observer(config.clone(), observed.state()).unwrap();
        let (s, z) = from_observer.read_params().unwrap();
        assert_eq!(s, expected.scales(), "{name}");
        assert_eq!(z, expected.zero_points(), "{name}");
    }
}
