//! Every invalid argument returns an error that names the problem; nothing panics.

use crate::common::contexts;
use fakequant::{
    reference, DispatchLimits, Error, FakeQuant, PackedMask, QuantParams, QuantRange, TensorBinding,
};

#[test]
fn invalid_ranges_are_rejected() {
    for (qmin, qmax) in [
        (5, 5),
        (10, 3),
        (-40_000, 0),
        (0, 70_000),
        (-32_768, 32_768),
    ] {
        assert!(
            matches!(QuantRange::new(qmin, qmax), Err(Error::InvalidRange { .. })),
            "[{qmin}, {qmax}]"
        );
    }
    for bits in [0, 1, 17, 32] {
        assert!(
            QuantRange::signed(bits).is_err() && QuantRange::unsigned(bits).is_err(),
            "{bits} bits"
        );
        assert!(
            QuantRange::signed_narrow(bits).is_err(),
            "{bits} bits narrow"
        );
    }
}

#[test]
fn invalid_scales_are_rejected() {
    let bad = [
        0.0f32,
        -0.0,
        -1.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        f32::MAX,
        2f32.powi(127),
        f32::from_bits(1),
    ];
    for scale in bad {
        let r = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(scale, 0));
        assert!(
            matches!(r, Err(Error::InvalidScale { index: 0, .. })),
            "scale {scale:e}: {r:?}"
        );
        let r = FakeQuant::new(
            QuantRange::INT8,
            QuantParams::per_channel(0, vec![1.0, scale], vec![0, 0]),
        );
        assert!(
            matches!(r, Err(Error::InvalidScale { index: 1, .. })),
            "per-channel scale {scale:e}"
        );
    }
    // The extremes that are legal.
    for scale in [2f32.powi(-126), 2f32.powi(126)] {
        assert!(FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(scale, 0)).is_ok());
    }
}

#[test]
fn zero_points_outside_the_range_are_rejected() {
    for zp in [-129, 128, i32::MIN, i32::MAX] {
        let r = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(1.0, zp));
        assert!(matches!(r, Err(Error::InvalidZeroPoint { .. })), "zp {zp}");
    }
    let r = FakeQuant::new(
        QuantRange::UINT4,
        QuantParams::per_channel(0, vec![1.0; 3], vec![0, 15, 16]),
    );
    assert!(matches!(r, Err(Error::InvalidZeroPoint { index: 2, .. })));
}

#[test]
fn per_channel_parameter_lengths_must_agree() {
    let r = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_channel(0, vec![1.0; 3], vec![0; 2]),
    );
    assert!(matches!(
        r,
        Err(Error::ParamLengthMismatch {
            scales: 3,
            zero_points: 2
        })
    ));
    let r = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_channel(0, vec![], vec![]),
    );
    assert!(matches!(r, Err(Error::ParamLengthMismatch { .. })));
}

#[test]
fn shapes_axes_and_lengths_are_checked() {
    let op = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_channel(2, vec![1.0; 4], vec![0; 4]),
    )
    .unwrap();
    let x = vec![0.0f32; 24];
    assert!(matches!(
        reference::fake_quant(&op, &x, &[6, 4]),
        Err(Error::AxisOutOfRange { axis: 2, rank: 2 })
    ));
    assert!(reference::fake_quant(&op, &x, &[2, 3, 4]).is_ok());
    assert!(matches!(
        reference::fake_quant(&op, &x, &[2, 4, 3]),
        Err(Error::ChannelCountMismatch {
            axis: 2,
            channels: 3,
            params: 4
        })
    ));
    assert!(matches!(
        reference::fake_quant(&op, &x, &[2, 3, 5]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        reference::fake_quant(&op, &x, &[usize::MAX, 2, 4]),
        Err(Error::ShapeOverflow { .. })
    ));
    let mask = PackedMask::from_bools(&[true; 5]);
    assert!(matches!(
        reference::ste_backward(&[0.0; 4], &mask),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        PackedMask::from_words(vec![0; 2], 5),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        PackedMask::from_words(vec![1 << 7], 5),
        Err(Error::InvalidBuffer { .. })
    ));
}

#[test]
fn gpu_calls_check_their_arguments() {
    for ctx in contexts() {
        let op = FakeQuant::new(
            QuantRange::INT8,
            QuantParams::per_channel(0, vec![0.1; 4], vec![0; 4]),
        )
        .unwrap();
        // Shape errors surface before any device work.
        assert!(matches!(
            ctx.fake_quant(&op, &[0.0; 12], &[3, 4]),
            Err(Error::ChannelCountMismatch { .. })
        ));
        assert!(matches!(
            ctx.fake_quant(&op, &[0.0; 12], &[4, 4]),
            Err(Error::LengthMismatch { .. })
        ));
        let mask = PackedMask::from_bools(&[true; 40]);
        assert!(matches!(
            ctx.ste_backward(&[0.0; 39], &mask),
            Err(Error::LengthMismatch { .. })
        ));

        let prepared = ctx.prepare(&op).unwrap();
        let x = ctx.upload(&[1.0; 16]).unwrap();
        let y_short = ctx.create_tensor(15, fakequant::DType::F32).unwrap();
        assert!(matches!(
            prepared.forward_device(&x, &[4, 4], &y_short, None),
            Err(Error::LengthMismatch { .. })
        ));
        let y = ctx.create_tensor(16, fakequant::DType::F32).unwrap();
        let short_mask = ctx.create_mask(8).unwrap();
        assert!(matches!(
            prepared.forward_device(&x, &[4, 4], &y, Some(&short_mask)),
            Err(Error::LengthMismatch { .. })
        ));
        // In place is refused rather than left to wgpu's usage validation.
        assert!(matches!(
            prepared.forward_device(&x, &[4, 4], &x, None),
            Err(Error::InvalidBuffer { what: "y", .. })
        ));

        let device = ctx.device();
        let mut encoder = ctx.create_encoder("errors");
        let uniform_only = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 1024,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        });
        let r = prepared.record_forward(
            &mut encoder,
            TensorBinding::from(&uniform_only),
            &[4, 4],
            y.binding(),
            None,
        );
        assert!(
            matches!(r, Err(Error::InvalidBuffer { what: "x", .. })),
            "{r:?}"
        );
        let misaligned = TensorBinding::new(x.buffer(), 4);
        let r = prepared.record_forward(&mut encoder, misaligned, &[4, 4], y.binding(), None);
        assert!(
            matches!(r, Err(Error::InvalidBuffer { what: "x", .. })),
            "{r:?}"
        );
        let r = prepared.record_forward(&mut encoder, x.binding(), &[4, 8], y.binding(), None);
        assert!(
            matches!(
                r,
                Err(Error::ChannelCountMismatch { .. }) | Err(Error::InvalidBuffer { .. })
            ),
            "{r:?}"
        );
        let big_op = FakeQuant::new(
            QuantRange::INT8,
            QuantParams::per_channel(0, vec![0.1; 8], vec![0; 8]),
        )
        .unwrap();
        let r = ctx.prepare(&big_op).unwrap().record_forward(
            &mut encoder,
            x.binding(),
            &[8, 4],
            y.binding(),
            None,
        );
        assert!(
            matches!(r, Err(Error::InvalidBuffer { what: "x", .. })),
            "buffer too small: {r:?}"
        );
        let r = ctx.record_ste_backward(
            &mut encoder,
            x.binding(),
            TensorBinding::from(&uniform_only),
            y.binding(),
            16,
        );
        assert!(
            matches!(r, Err(Error::InvalidBuffer { what: "mask", .. })),
            "{r:?}"
        );
        // Nothing invalid was recorded: the encoder still submits.
        ctx.submit_and_wait(encoder).unwrap();

        assert!(ctx.read_buffer(&uniform_only, 0, 16).is_err());
        assert!(ctx.read_buffer(x.buffer(), 2, 16).is_err());
        assert!(ctx.read_buffer(x.buffer(), 0, 1 << 20).is_err());
        let limits = ctx.dispatch_limits();
        assert!(ctx
            .with_dispatch_limits(DispatchLimits {
                max_workgroups: 0,
                ..limits
            })
            .is_err());
        assert!(ctx
            .with_dispatch_limits(DispatchLimits {
                max_binding_bytes: 1024,
                ..limits
            })
            .is_err());
        assert!(ctx
            .with_dispatch_limits(DispatchLimits {
                max_binding_bytes: limits.max_binding_bytes * 2,
                ..limits
            })
            .is_err());
        // A tensor larger than the device's largest buffer.
        let too_big = ctx.device_limits().max_buffer_size / 4 + 1;
        assert!(matches!(
            ctx.create_tensor(too_big as usize, fakequant::DType::F32),
            Err(Error::TooLarge { .. })
        ));
        // Errors print a message that names the problem.
        let message = ctx
            .create_tensor(too_big as usize, fakequant::DType::F32)
            .unwrap_err()
            .to_string();
        assert!(message.contains("too large"), "{message}");
    }
}

#[test]
fn invalid_observer_configs_are_rejected() {
    use fakequant::{Averaging, ObserverConfig, QScheme};
    let sym = QScheme::Symmetric;
    let ok = Averaging::default();
    let no_zero = QuantRange::new(1, 10).unwrap();
    assert!(matches!(
        ObserverConfig::new(no_zero, sym, ok, fakequant::Granularity::PerTensor),
        Err(Error::InvalidObserver(_))
    ));
    for c in [0.0f32, -0.5, 1.5, f32::NAN, f32::INFINITY] {
        let r = ObserverConfig::new(
            QuantRange::INT8,
            sym,
            Averaging::MovingAverage(c),
            fakequant::Granularity::PerTensor,
        );
        assert!(
            matches!(r, Err(Error::InvalidObserver(_))),
            "c = {c}: {r:?}"
        );
    }
    for eps in [
        0.0f32,
        -1.0,
        f32::from_bits(1),
        f32::MAX,
        f32::NAN,
        f32::INFINITY,
    ] {
        let r = ObserverConfig::qat_activation_int8().with_eps(eps);
        assert!(
            matches!(r, Err(Error::InvalidObserver(_))),
            "eps = {eps:e}: {r:?}"
        );
    }
    let weights = ObserverConfig::qat_weight_int8();
    let acts = ObserverConfig::qat_activation_int8();
    // A per-tensor observer takes any shape; a per-channel one needs its axis and a channel.
    assert!(reference::observer::Observer::new(acts.clone(), &[]).is_ok());
    assert!(reference::observer::Observer::new(acts.clone(), &[2, 3]).is_ok());
    assert!(matches!(
        reference::observer::Observer::new(weights.clone(), &[]),
        Err(Error::AxisOutOfRange { axis: 0, rank: 0 })
    ));
    assert!(matches!(
        reference::observer::Observer::new(weights.clone(), &[0, 5]),
        Err(Error::InvalidObserver(_))
    ));
    for ctx in contexts() {
        assert!(ctx.create_observer(&acts, &[3]).is_ok());
        assert!(matches!(
            ctx.create_observer(&weights, &[]),
            Err(Error::AxisOutOfRange { axis: 0, rank: 0 })
        ));
        assert!(matches!(
            ctx.create_observer(&weights, &[0]),
            Err(Error::InvalidObserver(_))
        ));
    }
}

#[test]
fn observer_calls_with_bad_shapes_states_and_buffers_fail_cleanly() {
    use fakequant::{MinMax, Mode, ObserverConfig, ObserverState};
    let weights = ObserverConfig::qat_weight_int8();
    let mut cpu = reference::observer::Observer::new(weights.clone(), &[4]).unwrap();
    assert!(matches!(
        cpu.step(&[0.0; 12], &[3, 4], Mode::Qat),
        Err(Error::ChannelCountMismatch { .. })
    ));
    assert!(matches!(
        cpu.step(&[0.0; 12], &[4, 4], Mode::Qat),
        Err(Error::LengthMismatch { .. })
    ));
    let bad_states = [
        // A reversed range, a NaN, a half-empty range.
        (
            vec![1.0, 0.0, 0.0, 0.0],
            vec![0.0, 1.0, 1.0, 1.0],
            vec![1.0; 4],
            vec![0; 4],
        ),
        (
            vec![f32::NAN, 0.0, 0.0, 0.0],
            vec![1.0; 4],
            vec![1.0; 4],
            vec![0; 4],
        ),
        (
            vec![f32::INFINITY, 0.0, 0.0, 0.0],
            vec![1.0; 4],
            vec![1.0; 4],
            vec![0; 4],
        ),
        // Bad qparams.
        (
            vec![0.0; 4],
            vec![1.0; 4],
            vec![1.0, 0.0, 1.0, 1.0],
            vec![0; 4],
        ),
        (vec![0.0; 4], vec![1.0; 4], vec![1.0; 4], vec![0, 0, 200, 0]),
        (vec![0.0; 3], vec![1.0; 3], vec![1.0; 3], vec![0; 3]),
    ];
    for ctx in contexts() {
        let gpu = ctx.create_observer(&weights, &[4]).unwrap();
        assert!(matches!(
            gpu.step(&[0.0; 12], &[3, 4], Mode::Qat),
            Err(Error::ChannelCountMismatch { .. })
        ));
        assert!(matches!(
            gpu.step(&[0.0; 12], &[4, 4], Mode::Qat),
            Err(Error::LengthMismatch { .. })
        ));
        let scalar_axis = ObserverConfig::new(
            QuantRange::INT8,
            fakequant::QScheme::Symmetric,
            fakequant::Averaging::MinMax,
            fakequant::Granularity::per_channel(2),
        )
        .unwrap();
        let on_axis_2 = ctx.create_observer(&scalar_axis, &[1, 1, 4]).unwrap();
        assert!(matches!(
            on_axis_2.step(&[0.0; 16], &[4, 4], Mode::Calibrate),
            Err(Error::AxisOutOfRange { .. })
        ));
        for (min, max, scales, zero_points) in &bad_states {
            let state = ObserverState {
                running: MinMax {
                    min: min.clone(),
                    max: max.clone(),
                },
                scales: scales.clone(),
                zero_points: zero_points.clone(),
            };
            assert!(gpu.load_state(&state).is_err(), "{state:?}");
            assert!(cpu.load_state(state.clone()).is_err(), "{state:?}");
        }
        // The state is untouched by the rejected loads.
        assert_eq!(gpu.read_state().unwrap(), ObserverState::initial(4));

        let stats = gpu.create_batch_stats().unwrap();
        let mut encoder = ctx.create_encoder("errors");
        assert!(matches!(
            ctx.record_merge_batch_stats(&mut encoder, &stats, &stats),
            Err(Error::InvalidBuffer { .. })
        ));
        let other = ctx
            .create_observer(&weights, &[5])
            .unwrap()
            .create_batch_stats()
            .unwrap();
        assert!(matches!(
            ctx.record_merge_batch_stats(&mut encoder, &stats, &other),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            gpu.record_update(&mut encoder, &other),
            Err(Error::LengthMismatch { .. })
        ));
        let not_storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 64,
            usage: wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        assert!(matches!(
            gpu.record_batch_min_max(
                &mut encoder,
                TensorBinding::from(&not_storage),
                &[4, 4],
                &stats
            ),
            Err(Error::InvalidBuffer { .. })
        ));
        let x = ctx.upload(&[0.0; 8]).unwrap();
        assert!(matches!(
            gpu.record_step(
                &mut encoder,
                x.binding(),
                &[4, 4],
                x.binding(),
                None,
                Mode::Qat
            ),
            Err(Error::InvalidBuffer { .. })
        ));
        ctx.submit_and_wait(encoder).unwrap();
    }
}

#[test]
fn invalid_lsq_configs_parameters_and_buffers_fail_cleanly() {
    use fakequant::{GradScale, LsqConfig, ObserverConfig};
    for (qmin, qmax) in [(1, 10), (-10, 0)] {
        let r = LsqConfig::new(
            QuantRange::new(qmin, qmax).unwrap(),
            fakequant::Granularity::PerTensor,
        );
        assert!(
            matches!(r, Err(Error::InvalidLsq(_))),
            "[{qmin}, {qmax}]: {r:?}"
        );
    }
    for eps in [0.0f32, -1.0, f32::from_bits(1), f32::MAX, f32::NAN] {
        assert!(matches!(
            LsqConfig::activation_int8().with_eps(eps),
            Err(Error::InvalidLsq(_))
        ));
    }
    for g in [f32::NAN, f32::INFINITY] {
        assert!(matches!(
            LsqConfig::activation_int8().with_grad_scale(GradScale::Custom(g)),
            Err(Error::InvalidLsq(_))
        ));
    }
    let weights = LsqConfig::weight_int8();
    let acts = LsqConfig::activation_int8();
    let r = reference::lsq::backward(
        &weights,
        &[0.0; 6],
        &[0.0; 5],
        &[2, 3],
        &[1.0; 2],
        &[0.0; 2],
    );
    assert!(matches!(r, Err(Error::LengthMismatch { .. })), "{r:?}");
    let r = reference::lsq::forward(&weights, &[0.0; 6], &[2, 3], &[1.0; 3], &[0.0; 3]);
    assert!(matches!(r, Err(Error::ParamLengthMismatch { .. })), "{r:?}");
    for ctx in contexts() {
        for (s, z) in [(vec![], vec![]), (vec![1.0, 1.0], vec![0.0])] {
            assert!(matches!(
                ctx.create_lsq(&weights, &s, &z),
                Err(Error::ParamLengthMismatch { .. })
            ));
        }
        assert!(matches!(
            ctx.create_lsq(&acts, &[1.0, 1.0], &[0.0, 0.0]),
            Err(Error::ParamLengthMismatch { .. })
        ));
        let lsq = ctx.create_lsq(&weights, &[0.1; 2], &[0.0; 2]).unwrap();
        assert!(matches!(
            lsq.forward(&[0.0; 6], &[3, 2]),
            Err(Error::ChannelCountMismatch { .. })
        ));
        assert!(matches!(
            lsq.backward(&[0.0; 6], &[0.0; 5], &[2, 3]),
            Err(Error::LengthMismatch { .. })
        ));
        let x = ctx.upload(&[0.0; 6]).unwrap();
        let grads = lsq.create_grads().unwrap();
        let mut encoder = ctx.create_encoder("errors");
        assert!(matches!(
            lsq.record_backward(
                &mut encoder,
                x.binding(),
                x.binding(),
                &[2, 3],
                x.binding(),
                &grads
            ),
            Err(Error::InvalidBuffer { .. })
        ));
        let other = ctx
            .create_lsq(&weights, &[0.1; 3], &[0.0; 3])
            .unwrap()
            .create_grads()
            .unwrap();
        let dx = ctx.create_tensor(6, fakequant::DType::F32).unwrap();
        assert!(matches!(
            lsq.record_backward(
                &mut encoder,
                x.binding(),
                x.binding(),
                &[2, 3],
                dx.binding(),
                &other
            ),
            Err(Error::LengthMismatch { .. })
        ));
        let observer = ctx
            .create_observer(&ObserverConfig::qat_weight_int8(), &[3])
            .unwrap();
        assert!(matches!(
            lsq.record_init_from_observer(&mut encoder, &observer),
            Err(Error::LengthMismatch { .. })
        ));
        ctx.submit_and_wait(encoder).unwrap();
        // One block of 1024 elements of a channel spans 1024 rows of 301 channels: more than a
        // lowered binding can hold, which is reported, not mis-computed.
        let small = ctx
            .with_dispatch_limits(DispatchLimits {
                max_binding_bytes: 1 << 18,
                max_workgroups: 65535,
            })
            .unwrap();
        let last_axis =
            LsqConfig::new(QuantRange::INT8, fakequant::Granularity::per_channel(1)).unwrap();
        let wide = small
            .create_lsq(&last_axis, &[0.1; 301], &[0.0; 301])
            .unwrap();
        let n = 1000 * 301;
        assert!(matches!(
            wide.backward(&vec![0.0; n], &vec![0.0; n], &[1000, 301]),
            Err(Error::TooLarge { .. })
        ));
    }
}

/// Sizes whose byte counts overflow are refused, not wrapped into a small buffer or an abort.
#[test]
fn overflowing_sizes_are_errors() {
    let config = fakequant::ObserverConfig::qat_weight_int8();
    assert!(matches!(
        fakequant::reference::Observer::new(config.clone(), &[1 << 59]),
        Err(Error::TooLarge { .. })
    ));
    for ctx in crate::common::contexts() {
        for len in [1usize << 62, usize::MAX] {
            assert!(
                matches!(
                    ctx.create_tensor(len, fakequant::DType::F32),
                    Err(Error::TooLarge { .. })
                ),
                "create_tensor({len})"
            );
        }
        assert!(matches!(
            ctx.create_observer(&config, &[1 << 59]),
            Err(Error::TooLarge { .. })
        ));
        // A shape whose byte count wraps u64 on a small tensor is refused before any planning.
        let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.1, 0)).unwrap();
        let prepared = ctx.prepare(&op).unwrap();
        let small = ctx.create_tensor(4096, fakequant::DType::F32).unwrap();
        let out = ctx.create_tensor(4096, fakequant::DType::F32).unwrap();
        let small16 = ctx.create_tensor(4096, fakequant::DType::F16).unwrap();
        let out16 = ctx.create_tensor(4096, fakequant::DType::F16).unwrap();
        let mut encoder = ctx.create_encoder("overflow");
        for (x, y) in [(&small, &out), (&small16, &out16)] {
            assert!(matches!(
                prepared.record_forward(
                    &mut encoder,
                    x.binding(),
                    &[1 << 31, 1 << 31],
                    y.binding(),
                    None
                ),
                Err(Error::InvalidBuffer { what: "x", .. })
            ));
        }
    }
}

/// State and reference helpers refuse mismatched lengths instead of indexing out of bounds.
#[test]
fn state_and_reference_helpers_check_lengths() {
    use fakequant::reference::{lsq as ref_lsq, observer as ref_observer};
    use fakequant::{LsqConfig, MinMax, ObserverConfig, ObserverState};
    let weights = ObserverConfig::qat_weight_int8();
    let acts = ObserverConfig::qat_activation_int8();
    let state = |scales: usize, zero_points: usize| ObserverState {
        running: MinMax::empty(scales),
        scales: vec![0.1; scales],
        zero_points: vec![0; zero_points],
    };
    // Fewer or more zero points than scales.
    for (config, shape, scales, zero_points) in [
        (&acts, vec![], 1, 0),
        (&acts, vec![], 1, 2),
        (&weights, vec![3], 3, 2),
        (&weights, vec![3], 3, 4),
    ] {
        let mut cpu = ref_observer::Observer::new(config.clone(), &shape).unwrap();
        assert!(matches!(
            cpu.load_state(state(scales, zero_points)),
            Err(Error::ParamLengthMismatch { .. })
        ));
        assert!(state(scales, zero_points).fake_quant(config).is_err());
        for ctx in contexts() {
            let gpu = ctx.create_observer(config, &shape).unwrap();
            assert!(matches!(
                gpu.load_state(&state(scales, zero_points)),
                Err(Error::ParamLengthMismatch { .. })
            ));
        }
    }
    // Minima and maxima of different lengths.
    let ragged = MinMax {
        min: vec![0.0; 3],
        max: vec![1.0; 2],
    };
    let good = MinMax::empty(3);
    assert!(matches!(
        ref_observer::merge(&ragged, &good),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        ref_observer::merge(&good, &ragged),
        Err(Error::LengthMismatch { .. })
    ));
    let mut running = MinMax::empty(3);
    assert!(ref_observer::update_running(&weights, &mut running, &ragged).is_err());
    let mut ragged_running = ragged.clone();
    assert!(ref_observer::update_running(&weights, &mut ragged_running, &good).is_err());
    // LSQ's effective parameters with missing zero points.
    for config in [LsqConfig::activation_int8(), LsqConfig::weight_int8()] {
        assert!(matches!(
            ref_lsq::effective_op(&config, &[0.1], &[]),
            Err(Error::ParamLengthMismatch { .. })
        ));
        assert!(ref_lsq::effective_op(&config, &[], &[]).is_err());
    }
}

/// Device-level calls check the tensors' lengths against the shape (issue 13, finding 4): a
/// tensor shorter than its shape is refused, not fake-quantized past its end.
#[test]
fn device_level_lengths_are_checked_against_the_shape() {
    use fakequant::{DType, LsqConfig};
    let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.1, 0)).unwrap();
    for ctx in contexts() {
        let prepared = ctx.prepare(&op).unwrap();
        let empty = ctx.create_tensor(0, DType::F32).unwrap();
        assert!(matches!(
            prepared.forward_device(&empty, &[1], &empty, None),
            Err(Error::LengthMismatch { .. })
        ));
        let three = ctx.create_tensor(3, DType::F16).unwrap();
        let three_out = ctx.create_tensor(3, DType::F16).unwrap();
        assert!(matches!(
            prepared.forward_device(&three, &[4], &three_out, None),
            Err(Error::LengthMismatch { .. })
        ));
        let lsq = ctx
            .create_lsq(&LsqConfig::activation_int8(), &[0.1], &[0.0])
            .unwrap();
        assert!(matches!(
            lsq.forward_device(&empty, &[1], &empty, None),
            Err(Error::LengthMismatch { .. })
        ));
        let grads = lsq.create_grads().unwrap();
        assert!(matches!(
            lsq.backward_device(&three, &three, &[4], &three_out, &grads),
            Err(Error::LengthMismatch { .. })
        ));
        let observer = ctx
            .create_observer(&fakequant::ObserverConfig::qat_activation_int8(), &[])
            .unwrap();
        assert!(matches!(
            observer.step_device(&empty, &[1], &empty, None, fakequant::Mode::Qat),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            observer.observe_device(&empty, &[1]),
            Err(Error::LengthMismatch { .. })
        ));
    }
}

/// Messages name the argument by its role, the value given and what is allowed (issue 13,
/// finding 6).
#[test]
fn messages_name_the_role_the_value_and_what_is_allowed() {
    use fakequant::{DType, TensorBinding};
    let message = |e: Error| e.to_string();
    // A bit width, not "range [0, 0]".
    for bits in [0, 1, 17] {
        for r in [QuantRange::signed(bits), QuantRange::unsigned(bits)] {
            let m = message(r.unwrap_err());
            assert!(
                m.contains(&format!("bit width {bits}")) && m.contains("2 to 16"),
                "{m}"
            );
            assert!(!m.contains("[0, 0]"), "{m}");
        }
    }
    // A shape overflow names the shape; a shape with a zero dimension is empty, not an overflow.
    let m = message(fakequant::quant::numel(&[1 << 40, 1 << 40, 3]).unwrap_err());
    assert!(m.contains("[1099511627776, 1099511627776, 3]"), "{m}");
    assert_eq!(fakequant::quant::numel(&[1 << 40, 1 << 40, 0]).unwrap(), 0);
    // A per-tensor LSQ with two scales is not described as per-channel.
    let m = message(
        fakequant::reference::Lsq::new(
            fakequant::LsqConfig::activation_int8(),
            &[0.1, 0.2],
            &[0.0, 0.0],
        )
        .unwrap_err(),
    );
    assert!(
        m.contains("exactly one of each per tensor") && m.contains("2 scales"),
        "{m}"
    );
    for ctx in contexts() {
        // Dispatch limits below the minimum say so, with the allowed range.
        let limits = ctx.dispatch_limits();
        let m = message(
            ctx.with_dispatch_limits(DispatchLimits {
                max_binding_bytes: 1000,
                ..limits
            })
            .unwrap_err(),
        );
        assert!(
            m.contains("max_binding_bytes 1000 must lie in [262144,"),
            "{m}"
        );
        let m = message(
            ctx.with_dispatch_limits(DispatchLimits {
                max_workgroups: 0,
                ..limits
            })
            .unwrap_err(),
        );
        assert!(m.contains("max_workgroups 0 must lie in [1,"), "{m}");
        // Straight-through errors name dy and dx.
        let dy = ctx.create_tensor(64, DType::F32).unwrap();
        let dx = ctx.create_tensor(64, DType::F16).unwrap();
        let mask = ctx.create_mask(64).unwrap();
        let mut encoder = ctx.create_encoder("messages");
        let m = message(
            ctx.record_ste_backward(
                &mut encoder,
                dy.binding(),
                mask.binding(),
                TensorBinding::new(dx.buffer(), 0).with_dtype(DType::F16),
                64,
            )
            .unwrap_err(),
        );
        assert!(m.contains("`dx`"), "{m}");
        let short = ctx.create_tensor(8, DType::F32).unwrap();
        let m = message(
            ctx.record_ste_backward(
                &mut encoder,
                short.binding(),
                mask.binding(),
                dy.binding(),
                64,
            )
            .unwrap_err(),
        );
        assert!(m.contains("`dy`"), "{m}");
        // Reading an f32 tensor as f16: the tensor's type is the input's, the requested the other.
        let m = message(ctx.read_tensor::<half::f16>(&dy).unwrap_err());
        assert!(
            m.contains("element type F16 differs from the input's F32"),
            "{m}"
        );
    }
}
