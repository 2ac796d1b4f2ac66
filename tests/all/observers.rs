//! Observers on the GPU against the CPU reference, bit for bit: batch reductions on every axis of
//! ranks 1 to 4, state sequences over many steps in every mode, qparams, the fused step's outputs,
//! the data-parallel merge, load/read of the state, and the edge cases (empty, all-zero, NaN and
//! infinite inputs, signed zeros).

use crate::common::{
    adversarial, assert_bits_eq, assert_mask_eq, assert_minmax_eq, assert_state_eq, contexts,
    random_data, Rng,
};
use fakequant::reference::observer::{self as reference, Observer};
use fakequant::{
    Averaging, DispatchLimits, GpuContext, MinMax, Mode, ObserverConfig, ObserverState, QScheme,
    QuantRange, Rounding,
};

/// Every configuration family: both schemes, both averagings, signed/unsigned/narrow/4-bit ranges,
/// power-of-two scales, another eps and the quotient rounding.
fn configs(axis: Option<usize>) -> Vec<ObserverConfig> {
    let mut out = Vec::new();
    for scheme in [QScheme::Symmetric, QScheme::Affine] {
        for averaging in [
            Averaging::MinMax,
            Averaging::MovingAverage(0.01),
            Averaging::MovingAverage(0.37),
        ] {
            for range in [QuantRange::INT8, QuantRange::UINT8, QuantRange::INT4] {
                out.push(
                    ObserverConfig::new(
                        range,
                        scheme,
                        averaging,
                        crate::common::granularity_of(axis),
                    )
                    .unwrap(),
                );
            }
        }
        out.push(
            ObserverConfig::new(
                QuantRange::INT8_NARROW,
                scheme,
                Averaging::default(),
                crate::common::granularity_of(axis),
            )
            .unwrap()
            .with_power_of_two(true),
        );
        out.push(
            ObserverConfig::new(
                QuantRange::INT16,
                scheme,
                Averaging::MinMax,
                crate::common::granularity_of(axis),
            )
            .unwrap()
            .with_eps(2f32.powi(-126))
            .unwrap()
            .with_rounding(Rounding::Quotient),
        );
    }
    out
}

/// Shapes of rank 1 to 4 whose axes cover short and long rows, few and many channels.
fn shapes() -> Vec<Vec<usize>> {
    vec![
        vec![1],
        vec![1000],
        vec![70_000],
        vec![5, 300],
        vec![300, 5],
        vec![2, 100_000],
        vec![64, 1500],
        vec![3, 7, 11],
        vec![4, 260, 3],
        vec![17, 3, 2048],
        vec![2, 3, 4, 5],
        vec![8, 16, 9, 9],
        vec![3, 64, 1, 300],
    ]
}

/// Random data with a sprinkle of the adversarial corpus (NaN, inf, signed zeros, subnormals).
fn data(rng: &mut Rng, n: usize, distribution: usize) -> Vec<f32> {
    let specials = adversarial(0.05, 0, QuantRange::INT8);
    let mut x = random_data(rng, n, distribution, 0.05);
    for _ in 0..n / 50 {
        let i = rng.below(n);
        x[i] = specials[rng.below(specials.len())];
    }
    x
}

#[test]
fn reference_known_values() {
    let sym = ObserverConfig::new(
        QuantRange::INT8,
        QScheme::Symmetric,
        Averaging::MinMax,
        fakequant::Granularity::PerTensor,
    )
    .unwrap();
    let (scale, zp) = reference::qparams(&sym, -1.149422, 2.533506);
    assert_eq!(scale.to_bits(), (2.533506f32 / 127.5).to_bits());
    assert_eq!(zp, 0);
    // By hand: uint8 affine over [-1, 3]: scale = 4 / 255, -1 / scale = -63.75 rounds to -64, so the
    // zero point is 0 - (-64) = 64.
    let affine = ObserverConfig::new(
        QuantRange::UINT8,
        QScheme::Affine,
        Averaging::MinMax,
        fakequant::Granularity::PerTensor,
    )
    .unwrap();
    let (scale, zp) = reference::qparams(&affine, -1.0, 3.0);
    assert_eq!(scale.to_bits(), (4.0f32 / 255.0).to_bits());
    assert_eq!(zp, 64);
    // A range entirely above zero still includes zero: [0, 5] -> zero point qmin.
    assert_eq!(reference::qparams(&affine, 2.0, 5.0), (5.0 / 255.0, 0));
    // Symmetric unsigned: zero point 128, as PyTorch's quint8.
    let sym_u8 = ObserverConfig::new(
        QuantRange::UINT8,
        QScheme::Symmetric,
        Averaging::MinMax,
        fakequant::Granularity::PerTensor,
    )
    .unwrap();
    assert_eq!(reference::qparams(&sym_u8, -1.0, 0.5), (1.0 / 127.5, 128));
    // Power of two: 2.533506 / 127.5 = 0.01987 rounds up to 2^-5.
    let pow2 = sym.clone().with_power_of_two(true);
    assert_eq!(reference::qparams(&pow2, -1.149422, 2.533506), (0.03125, 0));
    assert_eq!(reference::qparams(&pow2, -1.0, 127.5 * 0.0625), (0.0625, 0));
    // All zeros: eps. Never observed: 1 and 0. Overflowing affine width: 2^126.
    assert_eq!(reference::qparams(&sym, 0.0, 0.0), (f32::EPSILON, 0));
    assert_eq!(reference::qparams(&affine, 0.0, 0.0), (f32::EPSILON, 0));
    assert_eq!(
        reference::qparams(&sym, f32::INFINITY, f32::NEG_INFINITY),
        (1.0, 0)
    );
    assert_eq!(
        reference::qparams(&affine, -f32::MAX, f32::MAX),
        // -f32::MAX / 2^126 = -3.99999.. rounds to -4.
        (2f32.powi(126), 4)
    );
}

#[test]
fn reference_batch_skips_non_finite_and_counts_zeros_as_plus_zero() {
    let per_tensor = ObserverConfig::qat_activation_int8();
    let x = [f32::NAN, -0.0, f32::INFINITY, f32::NEG_INFINITY, -0.0];
    let b = reference::batch_min_max(&per_tensor, &x, &[5]).unwrap();
    assert_eq!((b.min[0].to_bits(), b.max[0].to_bits()), (0, 0));
    let b = reference::batch_min_max(&per_tensor, &[f32::NAN, f32::INFINITY], &[2]).unwrap();
    assert_eq!(b, MinMax::empty(1));
    let b = reference::batch_min_max::<f32>(&per_tensor, &[], &[0]).unwrap();
    assert_eq!(b, MinMax::empty(1));
    // An empty batch leaves the state alone.
    let mut obs = Observer::new(per_tensor, &[]).unwrap();
    obs.step(&[1.0, -2.0], &[2], Mode::Calibrate).unwrap();
    let before = obs.state().clone();
    obs.step(&[f32::NAN], &[1], Mode::Calibrate).unwrap();
    obs.step::<f32>(&[], &[0], Mode::Qat).unwrap();
    assert_eq!(&before, obs.state());
}

#[test]
fn moving_average_is_three_rounded_operations() {
    // Running and batch values a few ulps apart: a fused multiply-add gives a different last bit
    // on some of them, so this corpus catches a kernel that fuses.
    let mut differs = 0;
    let mut rng = Rng::new(7);
    for _ in 0..10_000 {
        let r = rng.normal() * 10.0;
        let b = f32::from_bits(r.to_bits().wrapping_add(rng.below(64) as u32 + 1));
        let c = 0.01f32;
        let fused = c.mul_add(b - r, r);
        if fused.to_bits() != reference::moving_average(r, b, c).to_bits() {
            differs += 1;
        }
    }
    assert!(
        differs > 0,
        "the corpus must contain cases where fusing changes the result"
    );
}

fn check_batch_on_gpu(ctx: &GpuContext, config: &ObserverConfig, x: &[f32], shape: &[usize]) {
    let observer = ctx.create_observer(config, shape).unwrap();
    let expected = reference::batch_min_max(config, x, shape).unwrap();
    let got = observer.batch_min_max(x, shape).unwrap();
    assert_minmax_eq(
        &format!(
            "batch {shape:?} granularity {:?} on {}",
            config.granularity(),
            ctx.adapter_name()
        ),
        &expected,
        &got,
    );
}

#[test]
fn batch_min_max_every_axis_ranks_1_to_4() {
    let mut rng = Rng::new(1);
    for ctx in contexts() {
        for (k, shape) in shapes().iter().enumerate() {
            let n: usize = shape.iter().product();
            let x = data(&mut rng, n, k);
            let mut axes = vec![None];
            axes.extend((0..shape.len()).map(Some));
            for axis in axes {
                let config = ObserverConfig::new(
                    QuantRange::INT8,
                    QScheme::Symmetric,
                    Averaging::MinMax,
                    crate::common::granularity_of(axis),
                )
                .unwrap();
                check_batch_on_gpu(ctx, &config, &x, shape);
            }
        }
    }
}

#[test]
fn batch_min_max_over_small_bindings_and_workgroup_limits() {
    // Lowered limits force many windows, unaligned window starts and several dispatches.
    let mut rng = Rng::new(2);
    for base in contexts() {
        for limits in [
            DispatchLimits {
                max_binding_bytes: 1 << 18,
                max_workgroups: 3,
            },
            DispatchLimits {
                max_binding_bytes: (1 << 18) + 256,
                max_workgroups: 1,
            },
        ] {
            let ctx = base.with_dispatch_limits(limits).unwrap();
            for shape in [
                vec![300_001],
                vec![3, 100_003],
                vec![1000, 301],
                vec![4000, 75],
                vec![1, 70_001, 1],
                vec![7, 300, 129],
            ] {
                let n: usize = shape.iter().product();
                let x = data(&mut rng, n, n);
                for axis in [None, Some(0), Some(shape.len() - 1)] {
                    let config = ObserverConfig::new(
                        QuantRange::INT8,
                        QScheme::Affine,
                        Averaging::MinMax,
                        crate::common::granularity_of(axis),
                    )
                    .unwrap();
                    // The observer's parameter table must fit the lowered binding size too.
                    if config.channels_for(&shape).unwrap() > 4096 {
                        continue;
                    }
                    check_batch_on_gpu(&ctx, &config, &x, &shape);
                }
            }
        }
    }
}

#[test]
fn batch_min_max_edge_cases() {
    let per_tensor = ObserverConfig::qat_activation_int8();
    let cases: Vec<Vec<f32>> = vec![
        vec![],
        vec![0.0; 1000],
        vec![-0.0; 1000],
        vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
        vec![f32::from_bits(1), f32::from_bits(0x8000_0001), -0.0],
        vec![f32::MAX, -f32::MAX, f32::MIN_POSITIVE],
        adversarial(0.1, 3, QuantRange::UINT8),
    ];
    for ctx in contexts() {
        for x in &cases {
            check_batch_on_gpu(ctx, &per_tensor, x, &[x.len()]);
        }
        // Per-channel with whole channels of NaN: those channels stay empty.
        let mut x = vec![1.5f32; 4 * 50];
        x[50..100].fill(f32::NAN);
        x[150..200].fill(f32::NEG_INFINITY);
        check_batch_on_gpu(ctx, &ObserverConfig::qat_weight_int8(), &x, &[4, 50]);
    }
}

/// Runs the same sequence of steps (modes, data) on the reference and on the device observer and
/// compares y, mask and the state after every step.
fn check_sequence(
    ctx: &GpuContext,
    config: &ObserverConfig,
    shape: &[usize],
    steps: &[(Mode, Vec<f32>)],
    label: &str,
) {
    let mut cpu = Observer::new(config.clone(), shape).unwrap();
    let gpu = ctx.create_observer(config, shape).unwrap();
    for (i, (mode, x)) in steps.iter().enumerate() {
        let context = format!("{label} step {i} {mode:?} on {}", ctx.adapter_name());
        let expected = cpu.step(x, shape, *mode).unwrap();
        if i % 2 == 0 {
            let got = gpu.step(x, shape, *mode).unwrap();
            assert_bits_eq(&format!("{context}: y"), x, &expected.y, &got.y);
            assert_mask_eq(&format!("{context}: mask"), &expected.mask, &got.mask);
        } else {
            // Every other step without a mask: the device level, whose kernels skip it.
            let x_dev = ctx.upload(x).unwrap();
            let y_dev = ctx.create_tensor(x.len(), fakequant::DType::F32).unwrap();
            gpu.step_device(&x_dev, shape, &y_dev, None, *mode).unwrap();
            let got: Vec<f32> = ctx.read_tensor(&y_dev).unwrap();
            assert_bits_eq(&format!("{context}: y"), x, &expected.y, &got);
        }
        assert_state_eq(&context, cpu.state(), &gpu.read_state().unwrap());
    }
}

#[test]
fn state_sequences_every_config_and_mode() {
    let mut rng = Rng::new(3);
    let modes = [
        Mode::Calibrate,
        Mode::Calibrate,
        Mode::Qat,
        Mode::Qat,
        Mode::Frozen,
        Mode::Qat,
        Mode::Calibrate,
        Mode::Qat,
        Mode::Frozen,
        Mode::Qat,
        Mode::Qat,
        Mode::Qat,
    ];
    for ctx in contexts() {
        for shape in [vec![2000], vec![6, 40, 5], vec![16, 300], vec![30, 3]] {
            let n: usize = shape.iter().product();
            for axis in [None, Some(0), Some(shape.len() - 1)] {
                for (k, config) in configs(axis).iter().enumerate() {
                    let steps: Vec<(Mode, Vec<f32>)> = modes
                        .iter()
                        .enumerate()
                        .map(|(i, &m)| {
                            // Mostly well-behaved data that drifts, with an outlier step.
                            let spread = if i == 5 { 50.0 } else { 1.0 + i as f32 * 0.1 };
                            let x = if (i + k) % 4 == 3 {
                                data(&mut rng, n, i)
                            } else {
                                (0..n).map(|_| rng.normal() * spread + 0.3).collect()
                            };
                            (m, x)
                        })
                        .collect();
                    check_sequence(
                        ctx,
                        config,
                        &shape,
                        &steps,
                        &format!("{shape:?} axis {axis:?} config {k}"),
                    );
                }
            }
        }
    }
}

#[test]
fn moving_average_where_fusing_would_change_the_last_bit() {
    // Each step's batch min/max sits a few ulps from the running value, so the device must do
    // exactly sub, mul, add (the reference test above shows fusing differs on such data).
    let mut rng = Rng::new(4);
    for ctx in contexts() {
        for c in [0.01f32, 0.1, 0.3333, 1.0] {
            let config = ObserverConfig::new(
                QuantRange::INT8,
                QScheme::Affine,
                Averaging::MovingAverage(c),
                fakequant::Granularity::per_channel(0),
            )
            .unwrap();
            let channels = 64;
            let mut cpu = Observer::new(config.clone(), &[channels]).unwrap();
            let gpu = ctx.create_observer(&config, &[channels]).unwrap();
            let mut lo: Vec<f32> = (0..channels).map(|_| -rng.unit() as f32 * 3.0).collect();
            let mut hi: Vec<f32> = (0..channels).map(|_| rng.unit() as f32 * 3.0).collect();
            for step in 0..40 {
                // Two elements per channel: the channel's min and max, nudged by a few ulps.
                let mut x = Vec::with_capacity(channels * 2);
                for ch in 0..channels {
                    let nudge = |v: f32, rng: &mut Rng| {
                        f32::from_bits(
                            v.to_bits()
                                .wrapping_add(rng.below(9) as u32)
                                .wrapping_sub(4),
                        )
                    };
                    lo[ch] = if step == 0 {
                        lo[ch]
                    } else {
                        nudge(cpu.state().running.min[ch], &mut rng)
                    };
                    hi[ch] = if step == 0 {
                        hi[ch]
                    } else {
                        nudge(cpu.state().running.max[ch], &mut rng)
                    };
                    x.push(lo[ch]);
                    x.push(hi[ch]);
                }
                let expected = cpu.step(&x, &[channels, 2], Mode::Qat).unwrap();
                let got = gpu.step(&x, &[channels, 2], Mode::Qat).unwrap();
                let context = format!("c={c} step {step} on {}", ctx.adapter_name());
                assert_bits_eq(&context, &x, &expected.y, &got.y);
                assert_state_eq(&context, cpu.state(), &gpu.read_state().unwrap());
            }
        }
    }
}

#[test]
fn extreme_ranges_saturate_identically() {
    // Ranges near f32::MAX overflow the affine width and the moving-average difference.
    let x_steps = [
        vec![f32::MAX, -f32::MAX, 1.0],
        vec![-f32::MAX, 3.0e38, f32::MAX],
        vec![f32::from_bits(1), -f32::from_bits(3), 0.0],
        vec![f32::MAX, -f32::MAX, 0.0],
        vec![1e-30, -1e-30, 0.0],
    ];
    for ctx in contexts() {
        for config in configs(None) {
            let steps: Vec<(Mode, Vec<f32>)> =
                x_steps.iter().map(|x| (Mode::Qat, x.clone())).collect();
            check_sequence(ctx, &config, &[3], &steps, "extreme");
        }
    }
}

#[test]
fn data_parallel_merge_matches_one_big_batch() {
    let mut rng = Rng::new(5);
    for ctx in contexts() {
        let config = ObserverConfig::qat_weight_int8();
        let shape = [8, 500];
        let replicas: Vec<Vec<f32>> = (0..3).map(|r| data(&mut rng, 4000, r)).collect();
        let observers: Vec<_> = (0..3)
            .map(|_| {
                ctx.create_observer(&config, &crate::common::channel_shape(&config, 8))
                    .unwrap()
            })
            .collect();
        let mut encoder = ctx.create_encoder("replicas");
        let uploads: Vec<_> = replicas.iter().map(|x| ctx.upload(x).unwrap()).collect();
        let stats: Vec<_> = observers
            .iter()
            .map(|o| o.create_batch_stats().unwrap())
            .collect();
        for ((o, x), s) in observers.iter().zip(&uploads).zip(&stats) {
            o.record_batch_min_max(&mut encoder, x.binding(), &shape, s)
                .unwrap();
        }
        // An all-reduce, done here by merging every replica's statistics into replica 0's, then
        // copying the result to the others.
        ctx.record_merge_batch_stats(&mut encoder, &stats[0], &stats[1])
            .unwrap();
        ctx.record_merge_batch_stats(&mut encoder, &stats[0], &stats[2])
            .unwrap();
        for s in &stats[1..] {
            encoder.copy_buffer_to_buffer(stats[0].buffer(), 0, s.buffer(), 0, 64);
        }
        for (o, s) in observers.iter().zip(&stats) {
            o.record_update(&mut encoder, s).unwrap();
        }
        ctx.submit_and_wait(encoder).unwrap();

        let mut expected = MinMax::empty(8);
        for x in &replicas {
            let b = reference::batch_min_max(&config, x, &shape).unwrap();
            expected = reference::merge(&expected, &b).unwrap();
        }
        assert_minmax_eq(
            "merged",
            &expected,
            &ctx.read_batch_stats(&stats[0]).unwrap(),
        );
        let all: Vec<f32> = replicas.concat();
        let whole = reference::batch_min_max(&config, &all, &[24, 500]).unwrap();
        // Channel c of the concatenation is channel c % 8 of a replica.
        for c in 0..8 {
            let lo = (0..3)
                .map(|r| whole.min[c + 8 * r])
                .fold(f32::INFINITY, f32::min);
            assert_eq!(lo.to_bits(), expected.min[c].to_bits());
        }
        let mut cpu =
            Observer::new(config.clone(), &crate::common::channel_shape(&config, 8)).unwrap();
        cpu.apply_batch(&expected).unwrap();
        for o in &observers {
            assert_state_eq("replica", cpu.state(), &o.read_state().unwrap());
        }
    }
}

#[test]
fn merge_of_partial_and_invalid_statistics() {
    let a = MinMax {
        min: vec![f32::INFINITY, -1.0, 2.0, f32::NAN, -0.0],
        max: vec![f32::NEG_INFINITY, 1.0, 1.0, 3.0, 0.0],
    };
    let b = MinMax {
        min: vec![-5.0, f32::INFINITY, -3.0, -2.0, 0.0],
        max: vec![5.0, f32::NEG_INFINITY, 4.0, 2.0, 0.0],
    };
    let expected = reference::merge(&a, &b).unwrap();
    assert_eq!(expected.min[2], -3.0, "a reversed range counts as empty");
    assert_eq!(expected.min[4].to_bits(), 0, "zeros merge as +0.0");
    for ctx in contexts() {
        // Statistics written by a framework may hold anything: write them raw.
        let raw = |m: &MinMax| {
            let words: Vec<f32> = m.min.iter().chain(&m.max).copied().collect();
            ctx.upload(&words).unwrap()
        };
        let observer = ctx
            .create_observer(&ObserverConfig::qat_weight_int8(), &[5])
            .unwrap();
        let into = observer.create_batch_stats().unwrap();
        let from = observer.create_batch_stats().unwrap();
        let (ta, tb) = (raw(&a), raw(&b));
        let mut encoder = ctx.create_encoder("raw");
        encoder.copy_buffer_to_buffer(ta.buffer(), 0, into.buffer(), 0, 40);
        encoder.copy_buffer_to_buffer(tb.buffer(), 0, from.buffer(), 0, 40);
        ctx.record_merge_batch_stats(&mut encoder, &into, &from)
            .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        assert_minmax_eq("merge", &expected, &ctx.read_batch_stats(&into).unwrap());
    }
}

#[test]
fn calibrated_qparams_load_into_a_frozen_observer() {
    let mut rng = Rng::new(6);
    for ctx in contexts() {
        let config = ObserverConfig::new(
            QuantRange::UINT8,
            QScheme::Affine,
            Averaging::default(),
            fakequant::Granularity::per_channel(1),
        )
        .unwrap();
        let shape = [4, 6, 50];
        let calibrating = ctx
            .create_observer(&config, &crate::common::channel_shape(&config, 6))
            .unwrap();
        let mut cpu =
            Observer::new(config.clone(), &crate::common::channel_shape(&config, 6)).unwrap();
        for _ in 0..5 {
            let x: Vec<f32> = (0..1200).map(|_| rng.normal() * 2.0).collect();
            let y = calibrating.step(&x, &shape, Mode::Calibrate).unwrap();
            assert_bits_eq("calibration passes x through", &x, &x, &y.y);
            assert!(y.mask.to_bools().iter().all(|&b| b));
            cpu.step(&x, &shape, Mode::Calibrate).unwrap();
        }
        let calibrated = calibrating.read_state().unwrap();
        assert_state_eq("calibrated", cpu.state(), &calibrated);

        let qat = ctx
            .create_observer(&config, &crate::common::channel_shape(&config, 6))
            .unwrap();
        qat.load_state(&calibrated).unwrap();
        assert_state_eq("loaded", &calibrated, &qat.read_state().unwrap());
        // Frozen: the loaded qparams (fake-quant parameters derived on the host) give the same
        // bits as the reference and as the device-derived parameters of the calibrating observer.
        let x = data(&mut rng, 1200, 2);
        let expected = cpu.step(&x, &shape, Mode::Frozen).unwrap();
        for observer in [&qat, &calibrating] {
            let got = observer.step(&x, &shape, Mode::Frozen).unwrap();
            assert_bits_eq("frozen", &x, &expected.y, &got.y);
            assert_mask_eq("frozen mask", &expected.mask, &got.mask);
        }
        qat.reset().unwrap();
        assert_state_eq(
            "reset",
            &ObserverState::initial(6),
            &qat.read_state().unwrap(),
        );
    }
}

#[test]
fn device_derived_parameters_equal_host_derived_ones() {
    // Observe data whose ranges produce scales over the whole legal span (every binade from
    // 2^-126 to 2^126, odd mantissas), then fake-quantize the adversarial corpus of each scale with
    // the device-derived parameters and with a FakeQuant built on the host from the read-back
    // qparams.
    let mut rng = Rng::new(8);
    for ctx in contexts() {
        let config = ObserverConfig::new(
            QuantRange::INT8,
            QScheme::Symmetric,
            Averaging::MinMax,
            fakequant::Granularity::per_channel(0),
        )
        .unwrap()
        .with_eps(2f32.powi(-126))
        .unwrap();
        let channels = 256;
        let per = 2;
        let x: Vec<f32> = (0..channels)
            .flat_map(|c| {
                let e = (c as i32 % 250) - 124;
                let amax = 2f32.powi(e) * (1.0 + rng.unit() as f32) * 127.5;
                let amax = if amax.is_finite() { amax } else { f32::MAX };
                [amax, -amax * 0.5]
            })
            .collect();
        let observer = ctx
            .create_observer(&config, &crate::common::channel_shape(&config, channels))
            .unwrap();
        observer
            .step(&x, &[channels, per], Mode::Calibrate)
            .unwrap();
        let state = observer.read_state().unwrap();
        let op = state.fake_quant(&config).unwrap();
        // The corpus of each channel's scale, laid out along axis 0.
        let corpora: Vec<Vec<f32>> = state
            .scales
            .iter()
            .map(|&s| adversarial(s, 0, QuantRange::INT8))
            .collect();
        let len = corpora.iter().map(Vec::len).min().unwrap();
        let probe: Vec<f32> = corpora.iter().flat_map(|c| c[..len].to_vec()).collect();
        let shape = [channels, len];
        let expected = fakequant::reference::fake_quant(&op, &probe, &shape).unwrap();
        let got = observer.step(&probe, &shape, Mode::Frozen).unwrap();
        assert_bits_eq("device-derived parameters", &probe, &expected.y, &got.y);
        assert_mask_eq("device-derived mask", &expected.mask, &got.mask);
    }
}

#[test]
fn fused_step_recorded_with_other_work_in_one_submission() {
    // Weights and activations of a layer, observed and fake-quantized in one encoder.
    let mut rng = Rng::new(9);
    for ctx in contexts() {
        let weights = ctx
            .create_observer(&ObserverConfig::qat_weight_int8(), &[16])
            .unwrap();
        let acts = ctx
            .create_observer(&ObserverConfig::qat_activation_int8(), &[])
            .unwrap();
        let mut cpu_w = Observer::new(ObserverConfig::qat_weight_int8(), &[16]).unwrap();
        let mut cpu_a = Observer::new(ObserverConfig::qat_activation_int8(), &[]).unwrap();
        let w: Vec<f32> = (0..16 * 72).map(|_| rng.normal() * 0.1).collect();
        let a: Vec<f32> = (0..8 * 16 * 25).map(|_| rng.normal().max(0.0)).collect();
        let (w_dev, a_dev) = (ctx.upload(&w).unwrap(), ctx.upload(&a).unwrap());
        let (wq, aq) = (
            ctx.create_tensor(w.len(), fakequant::DType::F32).unwrap(),
            ctx.create_tensor(a.len(), fakequant::DType::F32).unwrap(),
        );
        let mask = ctx.create_mask(a.len()).unwrap();
        for step in 0..3 {
            let mut encoder = ctx.create_encoder("layer");
            weights
                .record_step(
                    &mut encoder,
                    w_dev.binding(),
                    &[16, 8, 3, 3],
                    wq.binding(),
                    None,
                    Mode::Qat,
                )
                .unwrap();
            acts.record_step(
                &mut encoder,
                a_dev.binding(),
                &[8, 16, 5, 5],
                aq.binding(),
                Some(mask.binding()),
                Mode::Qat,
            )
            .unwrap();
            ctx.submit_and_wait(encoder).unwrap();
            let ew = cpu_w.step(&w, &[16, 8, 3, 3], Mode::Qat).unwrap();
            let ea = cpu_a.step(&a, &[8, 16, 5, 5], Mode::Qat).unwrap();
            assert_bits_eq(
                &format!("weights step {step}"),
                &w,
                &ew.y,
                &ctx.read_tensor(&wq).unwrap(),
            );
            assert_bits_eq(
                &format!("acts step {step}"),
                &a,
                &ea.y,
                &ctx.read_tensor(&aq).unwrap(),
            );
            assert_mask_eq("acts mask", &ea.mask, &ctx.read_mask(&mask).unwrap());
        }
    }
}

#[test]
fn random_observer_property_test() {
    let mut rng = Rng::new(10);
    for ctx in contexts() {
        for trial in 0..40 {
            let rank = 1 + rng.below(4);
            let shape: Vec<usize> = (0..rank)
                .map(|_| 1 + rng.below(if rank > 2 { 12 } else { 400 }))
                .collect();
            let axis = if rng.below(3) == 0 {
                None
            } else {
                Some(rng.below(rank))
            };
            let all = configs(axis);
            let config = all[rng.below(all.len())].clone();
            let n: usize = shape.iter().product();
            let steps: Vec<(Mode, Vec<f32>)> = (0..4)
                .map(|i| {
                    let mode = [Mode::Calibrate, Mode::Qat, Mode::Frozen][rng.below(3)];
                    (mode, data(&mut rng, n, trial + i))
                })
                .collect();
            check_sequence(
                ctx,
                &config,
                &shape,
                &steps,
                &format!("trial {trial} {shape:?} axis {axis:?}"),
            );
        }
    }
}

#[test]
fn reduction_over_a_tensor_larger_than_128_mib() {
    // Over the software GPUs' 128 MiB binding limit with the device's own limits: several windows.
    let n = (1usize << 25) + 12_345;
    let mut rng = Rng::new(11);
    let mut x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    // Extremes planted past the first window, where a reduction of one binding would miss them.
    x[n - 3] = 1.0e6;
    x[(1 << 25) + 7] = -2.5e6;
    for ctx in contexts() {
        for (shape, axis) in [
            (vec![n], None),
            (vec![5, n / 5], Some(0)),
            (vec![n / 5, 5], Some(1)),
        ] {
            let x = &x[..shape.iter().product::<usize>()];
            let config = ObserverConfig::new(
                QuantRange::INT8,
                QScheme::Affine,
                Averaging::MinMax,
                crate::common::granularity_of(axis),
            )
            .unwrap();
            check_batch_on_gpu(ctx, &config, x, &shape);
        }
    }
}
