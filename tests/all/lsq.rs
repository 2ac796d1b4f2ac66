//! LSQ on the GPU against the CPU reference, bit for bit: forward, dx, dscale, dzero_point and the
//! initialization, per-tensor and per-channel on every axis of ranks 1 to 4, with and without
//! gradient scaling, random and adversarial data, sizes over the binding limits; determinism; the
//! per-element gradients against the LSQ paper's formula; the reduced gradients against a float64
//! sum within the bound of f32 summation.

use crate::common::{
    adversarial, assert_bits_eq, assert_mask_eq, contexts, gradients, random_data, Rng,
};
use fakequant::reference::lsq as reference;
use fakequant::{
    DispatchLimits, GpuContext, GradScale, LsqConfig, LsqGrads, Mode, ObserverConfig, QuantRange,
};
use proptest::prelude::{prop, proptest, ProptestConfig, Strategy};

fn assert_grads_eq(context: &str, x: &[f32], expected: &LsqGrads, actual: &LsqGrads) {
    assert_bits_eq(&format!("{context}: dx"), x, &expected.dx, &actual.dx);
    assert_bits_eq(
        &format!("{context}: dscale"),
        &[],
        &expected.dscale,
        &actual.dscale,
    );
    assert_bits_eq(
        &format!("{context}: dzero_point"),
        &[],
        &expected.dzero_point,
        &actual.dzero_point,
    );
}

/// Runs forward (with mask), backward and init on `ctx` and compares everything with the reference.
fn check(
    ctx: &GpuContext,
    config: &LsqConfig,
    x: &[f32],
    dy: &[f32],
    shape: &[usize],
    (scales, zero_points): (&[f32], &[f32]),
    label: &str,
) {
    let context = format!("{label} on {}", ctx.adapter_name());
    let lsq = ctx.create_lsq(config, scales, zero_points).unwrap();
    let expected = reference::forward(config, x, shape, scales, zero_points).unwrap();
    let got = lsq.forward(x, shape).unwrap();
    assert_bits_eq(&format!("{context}: y"), x, &expected.y, &got.y);
    assert_mask_eq(&format!("{context}: mask"), &expected.mask, &got.mask);
    let expected = reference::backward(config, x, dy, shape, scales, zero_points).unwrap();
    let got = lsq.backward(x, dy, shape).unwrap();
    assert_grads_eq(&context, x, &expected, &got);
    let expected = reference::init_scales(config, x, shape).unwrap();
    let got = lsq.init_from_data(x, shape).unwrap();
    assert_bits_eq(&format!("{context}: init"), &[], &expected, &got);
}

#[test]
fn per_tensor_random_with_and_without_gradient_scaling() {
    let mut rng = Rng::new(1);
    for ctx in contexts() {
        for (k, n) in [1usize, 5, 1000, 4095, 4096, 4097, 70_001, 1_100_000]
            .into_iter()
            .enumerate()
        {
            for grad_scale in [GradScale::Lsq, GradScale::Off, GradScale::Custom(0.37)] {
                let config = LsqConfig::activation_int8()
                    .with_grad_scale(grad_scale)
                    .unwrap();
                let x = random_data(&mut rng, n, k, 0.05);
                let dy = gradients(&mut rng, n);
                check(
                    ctx,
                    &config,
                    &x,
                    &dy,
                    &[n],
                    (&[0.05], &[3.4]),
                    &format!("n={n} {grad_scale:?}"),
                );
            }
        }
    }
}

#[test]
fn per_channel_every_axis_ranks_1_to_4() {
    let mut rng = Rng::new(2);
    let shapes: Vec<Vec<usize>> = vec![
        vec![7],
        vec![3, 2000],
        vec![500, 3],
        vec![4, 5, 300],
        vec![2, 3, 4, 5],
        vec![16, 3, 3, 40],
        vec![3, 1500, 1, 2],
    ];
    for ctx in contexts() {
        for shape in &shapes {
            let n: usize = shape.iter().product();
            for axis in 0..shape.len() {
                let config =
                    LsqConfig::new(QuantRange::UINT8, fakequant::Granularity::per_channel(axis))
                        .unwrap();
                let channels = shape[axis];
                let scales: Vec<f32> = (0..channels).map(|c| 0.01 + 0.003 * c as f32).collect();
                let zps: Vec<f32> = (0..channels).map(|c| (c * 37 % 256) as f32 + 0.5).collect();
                let x = random_data(&mut rng, n, axis, 0.02);
                let dy = gradients(&mut rng, n);
                check(
                    ctx,
                    &config,
                    &x,
                    &dy,
                    shape,
                    (&scales, &zps),
                    &format!("{shape:?} axis {axis}"),
                );
            }
        }
    }
}

#[test]
fn adversarial_inputs_scales_and_zero_points() {
    // Learnable parameters anywhere: NaN, negative, zero, subnormal, huge, infinite scales; zero
    // points at and past the range edges, ties, NaN and infinities.
    let scales = [
        0.1f32,
        f32::NAN,
        -1.0,
        0.0,
        1e-40,
        f32::INFINITY,
        2f32.powi(127),
        f32::EPSILON,
        3.0e-3,
        0.7,
    ];
    let zero_points = [
        0.0f32,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        127.5,
        -128.5,
        -300.0,
        2.5,
        -0.0,
        126.9,
    ];
    let mut rng = Rng::new(3);
    for ctx in contexts() {
        for (k, (&s, &z)) in scales.iter().zip(&zero_points).enumerate() {
            let config = LsqConfig::activation_int8();
            let eff_s = reference::effective_scale(&config, s);
            let eff_z = reference::effective_zero_point(&config, z);
            // Ties, +-ulp neighbours and clamp edges of the effective parameters.
            let x = adversarial(eff_s, eff_z, QuantRange::INT8);
            let dy = gradients(&mut rng, x.len());
            check(
                ctx,
                &config,
                &x,
                &dy,
                &[x.len()],
                (&[s], &[z]),
                &format!("scale {s:e} zp {z}"),
            );
            // The same per channel: ten channels with these parameters along the last axis.
            let per =
                LsqConfig::new(QuantRange::INT8, fakequant::Granularity::per_channel(1)).unwrap();
            let rows = x.len() / 10;
            let xs = &x[..rows * 10];
            let dys = &dy[..rows * 10];
            let mut ss = scales.to_vec();
            ss.rotate_left(k);
            let mut zs = zero_points.to_vec();
            zs.rotate_left(k);
            check(
                ctx,
                &per,
                xs,
                dys,
                &[rows, 10],
                (&ss, &zs),
                &format!("per-channel rotation {k}"),
            );
        }
    }
}

#[test]
fn over_binding_and_workgroup_limits() {
    let mut rng = Rng::new(4);
    for base in contexts() {
        for limits in [
            DispatchLimits {
                max_binding_bytes: 1 << 18,
                max_workgroups: 5,
            },
            DispatchLimits {
                max_binding_bytes: (1 << 18) + 256,
                max_workgroups: 1,
            },
        ] {
            let ctx = base.with_dispatch_limits(limits).unwrap();
            for (shape, axis) in [
                (vec![300_001], None),
                (vec![3, 100_003], Some(0)),
                (vec![1000, 13], Some(1)),
                (vec![7, 5, 1030], Some(1)),
                (vec![1031, 5], Some(1)),
            ] {
                let n: usize = shape.iter().product();
                let config =
                    LsqConfig::new(QuantRange::INT8, crate::common::granularity_of(axis)).unwrap();
                let channels = config.channels_for(&shape).unwrap();
                let scales: Vec<f32> = (0..channels).map(|c| 0.02 + c as f32 * 1e-4).collect();
                let zps = vec![1.0; channels];
                let x = random_data(&mut rng, n, n, 0.02);
                let dy = gradients(&mut rng, n);
                check(
                    &ctx,
                    &config,
                    &x,
                    &dy,
                    &shape,
                    (&scales, &zps),
                    &format!("{shape:?} {limits:?}"),
                );
            }
        }
    }
}

#[test]
fn tensor_larger_than_128_mib() {
    let n = (1usize << 25) + 1000;
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let config = LsqConfig::activation_int8();
    let expected = reference::backward(&config, &x, &dy, &[n], &[0.03], &[0.0]).unwrap();
    for ctx in contexts() {
        let lsq = ctx.create_lsq(&config, &[0.03], &[0.0]).unwrap();
        let got = lsq.backward(&x, &dy, &[n]).unwrap();
        assert_grads_eq("128 MiB+", &x, &expected, &got);
    }
}

#[test]
fn same_inputs_twice_give_identical_bits() {
    let mut rng = Rng::new(6);
    let n = 300_000;
    let x = random_data(&mut rng, n, 0, 0.05);
    let dy = gradients(&mut rng, n);
    for ctx in contexts() {
        let config =
            LsqConfig::new(QuantRange::INT8, fakequant::Granularity::per_channel(0)).unwrap();
        let lsq = ctx.create_lsq(&config, &[0.05; 3], &[0.0; 3]).unwrap();
        let first = lsq.backward(&x, &dy, &[3, n / 3]).unwrap();
        let second = lsq.backward(&x, &dy, &[3, n / 3]).unwrap();
        assert_grads_eq("run twice", &x, &first, &second);
    }
}

#[test]
fn per_element_gradients_follow_the_lsq_paper() {
    // d y / d s = round(x/s) - x/s inside the range, -Q_N below it, Q_P above it (Esser et al.,
    // eq. 3); d y / d zp = -s outside the range, 0 inside (LSQ+). Checked with dy = 1, int8, zp 0.
    let r = QuantRange::INT8;
    let (dx, ds, dz) = reference::element_grads(0.3, 1.0, 0.5, 0, r);
    // x/s = 0.6 rounds to 1: 1 - 0.6 = 0.4.
    assert_eq!(dx, 1.0);
    assert!((ds - 0.4).abs() < 1e-6, "{ds}");
    assert_eq!(dz.to_bits(), 0);
    let (dx, ds, dz) = reference::element_grads(-100.0, 1.0, 0.5, 0, r);
    assert_eq!((dx.to_bits(), ds, dz), (0, -128.0, -0.5));
    let (dx, ds, dz) = reference::element_grads(100.0, 2.0, 0.5, 0, r);
    assert_eq!((dx, ds, dz), (0.0, 254.0, -1.0));
    // With a zero point the edges move: qmin - zp and qmax - zp.
    let (_, ds, _) = reference::element_grads(-100.0, 1.0, 0.5, 10, r);
    assert_eq!(ds, -138.0);
    // A tie inside the range (x/s = 2.5 rounds to 2): 2 - 2.5 = -0.5.
    let (_, ds, _) = reference::element_grads(1.25, 1.0, 0.5, 0, r);
    assert_eq!(ds, -0.5);
    // NaN x: NaN terms; dx clipped like the core.
    let (dx, ds, dz) = reference::element_grads(f32::NAN, 1.0, 0.5, 0, r);
    assert_eq!(
        (dx.to_bits(), ds.to_bits(), dz.to_bits()),
        (0, 0x7fc0_0000, 0x7fc0_0000)
    );
}

#[test]
fn reduced_gradients_agree_with_a_float64_sum_within_the_f32_bound() {
    let mut rng = Rng::new(7);
    for n in [10usize, 1024, 5000, 1_500_000] {
        let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        check_reduced_gradients_within_the_f32_bound(&x, &dy);
    }
}

/// The reduced dscale and dzero_point of the reference on `x`, `dy` (per-tensor, INT8, s = 0.02,
/// zp = 3) against a float64 sum of the per-element terms, within the bound of f32 summation.
fn check_reduced_gradients_within_the_f32_bound(x: &[f32], dy: &[f32]) {
    let n = x.len();
    let config = LsqConfig::activation_int8();
    let (s, zp) = (0.02f32, 3);
    let grads = reference::backward(&config, x, dy, &[n], &[s], &[zp as f32]).unwrap();
    let g = config.grad_factor(n) as f64;
    let terms: Vec<(f32, f32)> = x
        .iter()
        .zip(dy)
        .map(|(&xi, &gi)| {
            let (_, ts, tz) = reference::element_grads(xi, gi, s, zp, QuantRange::INT8);
            (ts, tz)
        })
        .collect();
    // Each term carries at most 3 roundings; each level of the tree adds at most 16 + 16 + 16
    // sequential roundings (lane, group, block); the factor one more.
    let levels = (n as f64).log(4096.0).ceil().max(1.0);
    let u = 2f64.powi(-24);
    let depth = 48.0 * levels + 4.0;
    for (which, got) in [(0, grads.dscale[0]), (1, grads.dzero_point[0])] {
        let pick = |t: &(f32, f32)| if which == 0 { t.0 } else { t.1 } as f64;
        let exact: f64 = terms.iter().map(pick).sum::<f64>() * g;
        let magnitude: f64 = terms.iter().map(|t| pick(t).abs()).sum::<f64>() * g;
        let bound = depth * u * magnitude * 1.01 + f64::from(f32::MIN_POSITIVE);
        assert!(
            (got as f64 - exact).abs() <= bound,
            "n={n} {which}: {got} vs {exact} (bound {bound})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// `reduced_gradients_agree_with_a_float64_sum_within_the_f32_bound` on any finite inputs of
    /// up to 20000 elements (several tree levels' worth of lanes), inside and outside the range.
    #[test]
    fn reduced_gradients_within_the_f32_bound_on_any_finite_inputs(
        (x, dy) in (1usize..20_000).prop_flat_map(|n| (
            prop::collection::vec(-10.0f32..10.0, n),
            prop::collection::vec(-1e3f32..1e3, n),
        ))
    ) {
        check_reduced_gradients_within_the_f32_bound(&x, &dy);
    }
}

#[test]
fn initialization_from_an_observer_and_from_data() {
    let mut rng = Rng::new(8);
    for ctx in contexts() {
        let observer_config = ObserverConfig::qat_weight_int8();
        let observer = ctx
            .create_observer(
                &observer_config,
                &crate::common::channel_shape(&observer_config, 8),
            )
            .unwrap();
        let w: Vec<f32> = (0..8 * 300).map(|_| rng.normal() * 0.1).collect();
        observer.step(&w, &[8, 300], Mode::Calibrate).unwrap();
        let calibrated = observer.read_state().unwrap();
        let lsq = ctx
            .create_lsq(&LsqConfig::weight_int8(), &[1.0; 8], &[5.0; 8])
            .unwrap();
        let mut encoder = ctx.create_encoder("init");
        lsq.record_init_from_observer(&mut encoder, &observer)
            .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        let (scales, zps) = lsq.read_params().unwrap();
        assert_bits_eq("scales from the observer", &[], &calibrated.scales, &scales);
        let expected: Vec<f32> = calibrated.zero_points.iter().map(|&z| z as f32).collect();
        assert_bits_eq("zero points from the observer", &[], &expected, &zps);
        // The forward with the loaded parameters equals the observer's frozen fake-quant.
        let frozen = observer.step(&w, &[8, 300], Mode::Frozen).unwrap();
        let lsq_y = lsq.forward(&w, &[8, 300]).unwrap();
        assert_bits_eq("observer-initialized LSQ forward", &w, &frozen.y, &lsq_y.y);

        // From data, with empty, all-NaN and all-zero channels.
        let mut x = random_data(&mut rng, 4 * 2000, 2, 0.1);
        x[2000..4000].fill(f32::NAN);
        x[4000..6000].fill(0.0);
        let config =
            LsqConfig::new(QuantRange::INT4, fakequant::Granularity::per_channel(0)).unwrap();
        let lsq = ctx.create_lsq(&config, &[1.0; 4], &[0.0; 4]).unwrap();
        let got = lsq.init_from_data(&x, &[4, 2000]).unwrap();
        let expected = reference::init_scales(&config, &x, &[4, 2000]).unwrap();
        assert_bits_eq("init from data", &[], &expected, &got);
        assert_eq!(expected[1], 1.0);
        assert_eq!(expected[2], 0.0);
        let empty = ctx.create_lsq(&config, &[1.0; 4], &[0.0; 4]).unwrap();
        assert_eq!(
            empty.init_from_data::<f32>(&[], &[4, 0]).unwrap(),
            vec![1.0; 4]
        );
    }
}

#[test]
fn empty_tensor_backward_gives_zero_gradients() {
    for ctx in contexts() {
        let config = LsqConfig::weight_int8();
        let lsq = ctx.create_lsq(&config, &[0.1; 3], &[0.0; 3]).unwrap();
        let got = lsq.backward(&[], &[], &[3, 0]).unwrap();
        let expected =
            reference::backward(&config, &[], &[], &[3, 0], &[0.1; 3], &[0.0; 3]).unwrap();
        assert_grads_eq("empty", &[], &expected, &got);
        assert_eq!(got.dscale, vec![0.0; 3]);
    }
}
