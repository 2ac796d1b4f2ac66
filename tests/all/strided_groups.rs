//! Groups along an axis followed by longer axes ("strided groups", e.g. groups of 16 down the
//! columns of a `[rows, cols]` weight): the reference's definition against a model written out
//! here, then every op family on the CPU backend and on the device against the reference, bit
//! for bit, in f32, f16 and bf16, and with the device's bindings lowered so that the
//! permutation into the groups-last view and back splits into many windows.

use fakequant::reference::dynamic::fake_quant_dynamic;
use fakequant::{
    reference, Backend, Cpu, DispatchLimits, DynamicConfig, DynamicOps, DynamicScheme, Element,
    ElementFormat, FakeQuant, FloatQuantConfig, FloatQuantOps, GradScale, Granularity, LsqConfig,
    LsqOps, Mode, ObserverConfig, ObserverOps, ParamLayout, QScheme, QuantParams, QuantRange,
    Reference,
};
use half::{bf16, f16};

use crate::common::{adversarial, contexts, random_data, Rng};

/// Shapes, group axes and sizes whose groups are strided: ranks 2 to 4, every axis but the last,
/// groups of 1, 2, 3, 8, 16, 32 and a group as long as its axis, trailing dimensions of 1.
fn cases() -> Vec<(Vec<usize>, usize, usize)> {
    vec![
        (vec![6, 64, 3], 1, 16),
        (vec![64, 5], 0, 8),
        (vec![2, 4, 8, 5], 1, 2),
        (vec![3, 9, 2, 1], 1, 3),
        (vec![4, 6, 2, 2], 0, 4),
        (vec![2, 96, 7], 1, 32),
        (vec![1, 33, 4], 1, 1),
        (vec![5, 12, 3], 1, 12),
        (vec![3, 128, 5], 1, 64),
        (vec![2, 3, 8, 5], 2, 4),
        (vec![8, 3, 2], 0, 4),
    ]
}

/// The group of flat index `i`, from the definition: the multi-index `(o, l, b)` around the
/// axis, the group `(o, l / size, b)` numbered in row-major order of `[outer, len / size, inner]`.
fn model_group(shape: &[usize], axis: usize, size: usize, i: usize) -> usize {
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    let (o, l, b) = (i / (len * inner), (i / inner) % len, i % inner);
    (o * (len / size) + l / size) * inner + b
}

#[test]
fn the_reference_defines_strided_groups() {
    for (shape, axis, size) in cases() {
        let n: usize = shape.iter().product();
        let granularity = Granularity::per_group(axis, size);
        let layout = granularity.param_layout(&shape, n).unwrap();
        let ParamLayout::StridedGroups(groups) = layout else {
            panic!("{shape:?} along {axis}: {layout:?}");
        };
        let count = n / size;
        assert_eq!(layout.channels(), count, "{shape:?}");
        assert_eq!(granularity.channels(&shape).unwrap(), count);
        for i in 0..n {
            assert_eq!(
                layout.channel_of(i),
                model_group(&shape, axis, size, i),
                "{shape:?} along {axis} in groups of {size}: element {i}"
            );
        }
        // The groups-last view: group g is the run g * size .. (g + 1) * size, its elements in
        // the tensor's flat order; the move there and back is the identity.
        for j in 0..n {
            let i = groups.source_of(j);
            assert_eq!(
                layout.channel_of(i),
                j / size,
                "{shape:?}: view element {j}"
            );
            if j % size != 0 {
                assert!(
                    i > groups.source_of(j - 1),
                    "{shape:?}: order within a group"
                );
            }
        }
        let x: Vec<u32> = (0..n as u32).collect();
        assert_eq!(groups.from_groups_last(&groups.to_groups_last(&x)), x);
        // Only strided groups are strided: the same axis with nothing longer after it is not.
        let mut last = shape[..=axis].to_vec();
        last.extend(std::iter::repeat_n(1, shape.len() - axis - 1));
        let contiguous = granularity.param_layout(&last, last.iter().product());
        assert!(
            matches!(contiguous, Ok(ParamLayout::Channels(_))),
            "{last:?}: {contiguous:?}"
        );
        // A channel layout, which the per-channel kernels would take as is, is refused.
        assert!(granularity.layout(&shape, n).is_err());
    }
    // Each element of a static per-group fake-quant uses its own group's parameters.
    let (shape, axis, size) = (vec![6, 64, 3], 1, 16);
    let groups = 6 * 4 * 3;
    let scales: Vec<f32> = (0..groups).map(|g| 0.01 * (g + 1) as f32).collect();
    let op = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_group(axis, size, scales.clone(), vec![0; groups]),
    )
    .unwrap();
    let x = vec![1.0f32; 6 * 64 * 3];
    let y = reference::fake_quant(&op, &x, &shape).unwrap().y;
    for (i, &yi) in y.iter().enumerate() {
        let s = scales[model_group(&shape, axis, size, i)];
        assert_eq!(yi.to_bits(), ((1.0 / s).round_ties_even() * s).to_bits());
    }
}

/// Everything a family produces on strided groups, as bits, labelled.
type Transcript = Vec<(String, Vec<u32>)>;

fn bits<T: Element>(v: &[T]) -> Vec<u32> {
    v.iter().map(|e| e.to_bits_u32()).collect()
}

/// Every op family on `shape` grouped along `axis` in groups of `size`, in `T`.
fn recipe<B: Backend, T: Element>(
    backend: &B,
    shape: &[usize],
    axis: usize,
    size: usize,
) -> fakequant::Result<Transcript> {
    let mut out: Transcript = Vec::new();
    let n: usize = shape.iter().product();
    let granularity = Granularity::per_group(axis, size);
    let groups = granularity.channels(shape)?;
    let mut rng = Rng::new(0x57d + n as u64);
    let scales: Vec<f32> = (0..groups)
        .map(|_| 2f32.powf(rng.uniform(-6.0, 2.0)))
        .collect();
    let zero_points: Vec<i32> = (0..groups).map(|_| rng.below(16) as i32 - 8).collect();
    // Adversarial values of the first group's parameters (ties, neighbours, clamp edges,
    // specials), then groups of different magnitudes, an outlier, a constant and a zero group.
    let mut x = adversarial(scales[0], zero_points[0], QuantRange::INT4);
    x.truncate(n / 2);
    let magnitudes = random_data(&mut rng, n, 2, 3.0);
    while x.len() < n {
        x.push(magnitudes[x.len()] * (1 + x.len() % 7) as f32);
    }
    let view = granularity
        .param_layout(shape, n)?
        .strided()
        .expect("strided groups");
    for j in 0..n {
        // Element j of the view is element j % size of group j / size.
        let i = view.source_of(j);
        match (j / size) % 11 {
            3 => x[i] = 0.0,
            5 => x[i] = 1.5,
            7 if j % size == 0 => x[i] = 3.0e4,
            _ => {}
        }
    }
    let x: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let dy: Vec<T> = random_data(&mut rng, n, 0, 1.0)
        .iter()
        .map(|&v| T::from_f32(v))
        .collect();

    for range in [QuantRange::INT4, QuantRange::UINT4] {
        let zp: Vec<i32> = zero_points
            .iter()
            .map(|&z| z.clamp(range.qmin(), range.qmax()))
            .collect();
        let op = FakeQuant::new(
            range,
            QuantParams::per_group(axis, size, scales.clone(), zp),
        )?;
        let fq = backend.fake_quant(&op, &x, shape)?;
        out.push((format!("fake_quant {range:?} y"), bits(&fq.y)));
        out.push((
            format!("fake_quant {range:?} mask"),
            fq.mask.words().to_vec(),
        ));
    }

    for scheme in [QScheme::Symmetric, QScheme::Affine] {
        let config = ObserverConfig::new(
            QuantRange::INT4,
            scheme,
            fakequant::Averaging::MovingAverage(0.25),
            granularity,
        )?;
        let mut observer = backend.create_observer(&config, shape)?;
        observer.observe(&x, shape)?;
        for mode in [Mode::Calibrate, Mode::Qat, Mode::Frozen] {
            let step = observer.step(&x, shape, mode)?;
            out.push((format!("observer {scheme:?} {mode:?} y"), bits(&step.y)));
            out.push((
                format!("observer {scheme:?} {mode:?} mask"),
                step.mask.words().to_vec(),
            ));
        }
        let state = observer.read_state()?;
        out.push((format!("observer {scheme:?} scales"), bits(&state.scales)));
        out.push((format!("observer {scheme:?} min"), bits(&state.running.min)));
    }

    let lsq_config =
        LsqConfig::new(QuantRange::INT4, granularity)?.with_grad_scale(GradScale::Off)?;
    let lsq_zero_points: Vec<f32> = zero_points.iter().map(|&z| z as f32 + 0.25).collect();
    let mut lsq = backend.create_lsq(&lsq_config, &scales, &lsq_zero_points)?;
    let forward = lsq.forward(&x, shape)?;
    out.push(("lsq y".into(), bits(&forward.y)));
    out.push(("lsq mask".into(), forward.mask.words().to_vec()));
    let grads = lsq.backward(&x, &dy, shape)?;
    out.push(("lsq dx".into(), bits(&grads.dx)));
    out.push(("lsq dscale".into(), bits(&grads.dscale)));
    out.push(("lsq dzero_point".into(), bits(&grads.dzero_point)));
    out.push(("lsq init".into(), bits(&lsq.init_from_data(&x, shape)?)));

    for (scheme, range) in [
        (DynamicScheme::Symmetric, QuantRange::INT4),
        (DynamicScheme::Asymmetric, QuantRange::INT8),
        (DynamicScheme::AsymmetricFloat, QuantRange::UINT4),
    ] {
        let config = DynamicConfig::new(range, scheme, granularity)?;
        let mut dynamic = backend.create_dynamic(&config, shape)?;
        let got = dynamic.forward(&x, shape)?;
        out.push((format!("dynamic {scheme:?} y"), bits(&got.y)));
        out.push((
            format!("dynamic {scheme:?} mask"),
            got.mask.words().to_vec(),
        ));
        out.push((format!("dynamic {scheme:?} scales"), bits(&got.scales)));
        out.push((
            format!("dynamic {scheme:?} zero points"),
            bits(&got.zero_points),
        ));
    }

    let fp8 = FloatQuantConfig::fp8(ElementFormat::Fp8E4M3, granularity)?;
    let mut float = backend.create_float_quant(&fp8, shape)?;
    let got = float.forward(&x, shape)?;
    out.push(("fp8 per block y".into(), bits(&got.y)));
    out.push(("fp8 per block mask".into(), got.mask.words().to_vec()));
    out.push((
        "fp8 per block codes".into(),
        got.codes.iter().map(|&c| u32::from(c)).collect(),
    ));
    Ok(out)
}

fn check(name: &str, expected: &Transcript, got: &Transcript) {
    assert_eq!(got.len(), expected.len(), "{name}");
    for ((label, e), (_, g)) in expected.iter().zip(got) {
        assert_eq!(e.len(), g.len(), "{label} on {name}");
        if let Some(i) = e.iter().zip(g).position(|(a, b)| a != b) {
            panic!(
                "{label} on {name}: value {i} is {:#010x}, the reference's {:#010x}",
                g[i], e[i]
            );
        }
    }
}

fn every_backend<T: Element>() {
    for (shape, axis, size) in cases() {
        let label = |backend: String| format!("{shape:?} along {axis} in {size}s, {backend}");
        let expected = recipe::<_, T>(&Reference, &shape, axis, size).unwrap();
        assert!(expected.len() > 30);
        for threads in [1, 2] {
            let cpu = Cpu::with_threads(threads).unwrap();
            let got = recipe::<_, T>(&cpu, &shape, axis, size).unwrap();
            check(&label(cpu.name()), &expected, &got);
        }
        for ctx in contexts() {
            let got = recipe::<_, T>(ctx, &shape, axis, size).unwrap();
            check(&label(ctx.name()), &expected, &got);
        }
    }
}

#[test]
fn strided_groups_on_every_backend_match_the_reference_f32() {
    every_backend::<f32>();
}

#[test]
fn strided_groups_on_every_backend_match_the_reference_f16_bf16() {
    every_backend::<f16>();
    every_backend::<bf16>();
}

/// With 256 KiB bindings the permutation of a 294912-element tensor takes several windows, each
/// starting mid-block (blocks of 384 elements), and the families' own passes on the view (static
/// parameters, the one-pass dynamic kernel's qparams) are windowed as well; with 3 workgroups a
/// dispatch, the permutation's grid takes a second dimension. The results stay the reference's.
#[test]
fn strided_groups_through_lowered_limits() {
    let (shape, axis, size) = (vec![96, 256, 12], 1, 32);
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(0x10);
    let x = random_data(&mut rng, n, 1, 2.0);
    let granularity = Granularity::per_group(axis, size);
    let groups = n / size;
    let scales: Vec<f32> = (0..groups).map(|g| 0.01 + (g % 13) as f32 * 0.03).collect();
    let op = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_group(axis, size, scales, vec![3; groups]),
    )
    .unwrap();
    let expected = reference::fake_quant(&op, &x, &shape).unwrap();
    let config =
        DynamicConfig::new(QuantRange::INT8, DynamicScheme::Asymmetric, granularity).unwrap();
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let expected_dynamic = fake_quant_dynamic(&config, &xb, &shape).unwrap();
    let lowered = [
        DispatchLimits {
            max_binding_bytes: 256 << 10,
            max_workgroups: 65535,
        },
        DispatchLimits {
            max_binding_bytes: 128 << 20,
            max_workgroups: 3,
        },
    ];
    for base in contexts() {
        for limits in lowered {
            let ctx = base.with_dispatch_limits(limits).unwrap();
            let name = format!("{} with {limits:?}", ctx.name());
            let got = ctx.fake_quant(&op, &x, &shape).unwrap();
            assert_eq!(bits(&got.y), bits(&expected.y), "{name}");
            assert_eq!(got.mask, expected.mask, "{name}");
            let got = ctx
                .create_dynamic(&config, &shape)
                .unwrap()
                .forward(&xb, &shape)
                .unwrap();
            assert_eq!(bits(&got.y), bits(&expected_dynamic.y), "{name}");
            assert_eq!(got.mask, expected_dynamic.mask, "{name}");
            assert_eq!(bits(&got.scales), bits(&expected_dynamic.scales), "{name}");
        }
    }
}
