//! The QAT ops on burn tensors against fakequant's CPU reference, bit for bit, on every adapter
//! present (FAKEQUANT_BACKEND / FAKEQUANT_ADAPTER choose; FAKEQUANT_REQUIRE_GPU=1 makes a
//! missing adapter a failure).

#[path = "../../tests/all/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use burn::tensor::{s, Tensor, TensorData};
use common::Rng;
use fakequant::{reference, FakeQuant, GpuContext, QuantParams, QuantRange};
use fakequant_burn::{FakeQuantizer, QatDevice};

fn devices() -> &'static [QatDevice] {
    static DEVICES: OnceLock<Vec<QatDevice>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let devices: Vec<QatDevice> = GpuContext::adapters()
            .expect("adapter enumeration failed")
            .iter()
            .map(|a| QatDevice::from_adapter(a).expect("shared device creation failed"))
            .collect();
        if devices.is_empty() {
            if std::env::var("FAKEQUANT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("FAKEQUANT_REQUIRE_GPU=1 but no compute-capable adapter was found");
            }
            eprintln!("note: no GPU adapter present; the burn tests are skipped");
        }
        for d in &devices {
            eprintln!("testing burn on: {}", d.context().adapter_name());
        }
        devices
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn mismatches(got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

#[test]
fn fake_quant_forward_and_straight_through_backward_equal_the_reference() {
    let mut rng = Rng::new(17);
    for qat in devices() {
        let device = qat.autodiff();
        for (shape, op) in [
            (
                vec![3usize, 1000],
                FakeQuant::new(
                    QuantRange::signed(8).unwrap(),
                    QuantParams::per_tensor(0.05, 3),
                )
                .unwrap(),
            ),
            (
                vec![4, 5, 33],
                FakeQuant::new(
                    QuantRange::unsigned(4).unwrap(),
                    QuantParams::per_channel(
                        1,
                        vec![0.1, 0.25, 1.0, 3e-3, 7.5],
                        vec![0, 3, 7, 15, 8],
                    ),
                )
                .unwrap(),
            ),
            // int4 per group: groups of 8 along the last axis (4 * 5 * 4 groups).
            (
                vec![4, 5, 32],
                FakeQuant::new(
                    QuantRange::signed(4).unwrap(),
                    QuantParams::per_group(
                        2,
                        8,
                        (0..80).map(|g| 0.01 * (1 + g % 7) as f32).collect(),
                        (0..80).map(|g| (g % 5) - 2).collect(),
                    ),
                )
                .unwrap(),
            ),
        ] {
            let fq = FakeQuantizer::new(qat, &op).unwrap();
            let n: usize = shape.iter().product();
            let kind = rng.below(5);
            let mut x = common::random_data(&mut rng, n, kind, 0.05);
            let adversarial = common::adversarial(0.05, 3, QuantRange::signed(8).unwrap());
            for (slot, v) in x.iter_mut().zip(adversarial) {
                *slot = v;
            }
            let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let want = reference::fake_quant(&op, &x, &shape).unwrap();
            let want_dx = reference::ste_backward(&dy, &want.mask).unwrap();

            let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), pad3(&shape)), &device)
                .require_grad();
            let y = fq.forward(xt.clone()).unwrap();
            let dyt = Tensor::<3>::from_data(TensorData::new(dy.clone(), pad3(&shape)), &device);
            let grads = (y.clone() * dyt).sum().backward();
            let got_y = y.into_data().try_to_vec::<f32>().unwrap();
            let got_dx = xt
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(mismatches(&got_y, &want.y), 0, "y on {shape:?}");
            assert_eq!(bits(&got_dx), bits(&want_dx), "dx on {shape:?}");
        }
    }
}

fn pad3(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; 3 - shape.len()];
    s.extend_from_slice(shape);
    s
}

fn tensor<const D: usize>(
    v: &[f32],
    shape: [usize; D],
    device: &burn::tensor::Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn lsq_forward_and_parameter_gradients_equal_the_reference() {
    use fakequant::{reference::lsq::Lsq, Granularity, LsqConfig};
    use fakequant_burn::LsqQuantizer;
    let mut rng = Rng::new(23);
    for qat in devices() {
        let device = qat.autodiff();
        for (granularity, shape) in [
            (Granularity::PerTensor, [2usize, 3, 700]),
            (Granularity::per_channel(0), [4, 3, 50]),
            (Granularity::per_channel(2), [3, 5, 6]),
        ] {
            let config = LsqConfig::new(QuantRange::signed(8).unwrap(), granularity).unwrap();
            let n: usize = shape.iter().product();
            let channels = config.channels_for(&shape).unwrap();
            let scales: Vec<f32> = (0..channels).map(|_| rng.uniform(0.01, 0.2)).collect();
            let zero_points: Vec<f32> = (0..channels).map(|_| rng.uniform(-3.0, 3.0)).collect();
            let x = common::random_data(&mut rng, n, 0, 0.05);
            let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let reference = Lsq::new(config.clone(), &scales, &zero_points).unwrap();
            let want_y = reference.forward(&x, &shape).unwrap().y;
            let want = reference.backward(&x, &dy, &shape).unwrap();

            let lsq = LsqQuantizer::new(qat, &config, channels).unwrap();
            let xt = tensor(&x, shape, &device).require_grad();
            let st = tensor(&scales, [channels], &device).require_grad();
            let zt = tensor(&zero_points, [channels], &device).require_grad();
            let y = lsq.forward(xt.clone(), st.clone(), zt.clone()).unwrap();
            let grads = (y.clone() * tensor(&dy, shape, &device)).sum().backward();
            assert_eq!(bits(&values(y)), bits(&want_y), "y {granularity:?}");
            let dx = values(xt.grad(&grads).unwrap());
            let ds = values(st.grad(&grads).unwrap());
            let dz = values(zt.grad(&grads).unwrap());
            assert_eq!(bits(&dx), bits(&want.dx), "dx {granularity:?}");
            assert_eq!(bits(&ds), bits(&want.dscale), "dscale {granularity:?}");
            assert_eq!(
                bits(&dz),
                bits(&want.dzero_point),
                "dzero_point {granularity:?}"
            );
        }
    }
}

#[test]
fn observer_steps_equal_the_reference_in_every_mode() {
    use fakequant::{reference::observer::Observer, Mode, ObserverConfig};
    use fakequant_burn::ObserverQuantizer;
    let mut rng = Rng::new(29);
    for qat in devices() {
        let device = qat.autodiff();
        for config in [
            ObserverConfig::qat_weight_int8(),
            ObserverConfig::qat_activation_int8(),
        ] {
            let shape = [6usize, 4, 9];
            let n: usize = shape.iter().product();
            let mut reference = Observer::new(config.clone(), &shape).unwrap();
            let observer = ObserverQuantizer::new(qat, &config, &shape).unwrap();
            // The seed's workflow: calibration, QAT, then frozen.
            let modes = [
                Mode::Calibrate,
                Mode::Calibrate,
                Mode::Qat,
                Mode::Qat,
                Mode::Frozen,
            ];
            for (step, mode) in modes.into_iter().enumerate() {
                let x = common::random_data(&mut rng, n, step, 0.05);
                let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let want = reference.step(&x, &shape, mode).unwrap();
                let want_dx = reference::ste_backward(&dy, &want.mask).unwrap();
                let xt = tensor(&x, shape, &device).require_grad();
                let y = observer.forward(xt.clone(), mode).unwrap();
                let grads = (y.clone() * tensor(&dy, shape, &device)).sum().backward();
                assert_eq!(bits(&values(y)), bits(&want.y), "y, step {step} {mode:?}");
                let dx = values(xt.grad(&grads).unwrap());
                assert_eq!(bits(&dx), bits(&want_dx), "dx, step {step} {mode:?}");
                assert_eq!(
                    &observer.state().unwrap(),
                    reference.state(),
                    "state, step {step}"
                );
            }
        }
    }
}

/// The reference's `dx` of the view, scattered back onto the base tensor's positions by
/// `position(view_index) -> base_index` (zero where the view does not reach).
fn scatter(dx: &[f32], base_len: usize, position: impl Fn(usize) -> usize) -> Vec<f32> {
    let mut out = vec![0.0; base_len];
    for (i, &g) in dx.iter().enumerate() {
        out[position(i)] = g;
    }
    out
}

#[test]
fn views_at_offsets_strided_views_and_pending_burn_work_give_the_reference() {
    let mut rng = Rng::new(31);
    let (rows, cols) = (5usize, 33usize);
    let n = rows * cols;
    let op = FakeQuant::new(
        QuantRange::signed(8).unwrap(),
        QuantParams::per_tensor(0.05, 3),
    )
    .unwrap();
    for qat in devices() {
        let mut at_offset = 0;
        let align = qat
            .context()
            .device_limits()
            .min_storage_buffer_offset_alignment;
        let device = qat.autodiff();
        let fq = FakeQuantizer::new(qat, &op).unwrap();
        let mut base = common::random_data(&mut rng, n, 0, 0.05);
        for (slot, v) in
            base.iter_mut()
                .zip(common::adversarial(0.05, 3, QuantRange::signed(8).unwrap()))
        {
            *slot = v;
        }
        // Each case: a view of the base tensor made by burn, the view's values on the host, and
        // where each of its elements sits in the base tensor.
        type View = Box<dyn Fn(Tensor<2>) -> Tensor<2>>;
        type Position = Box<dyn Fn(usize) -> usize>;
        let cases: Vec<(&str, View, Vec<usize>, Position)> = vec![
            // Rows 1..4: a contiguous view 132 bytes into the base's memory.
            (
                "rows 1..4",
                Box::new(|t: Tensor<2>| t.slice(s![1..4])),
                vec![3, cols],
                Box::new(move |i| cols + i),
            ),
            // Rows 2..5: 264 bytes in.
            (
                "rows 2..5",
                Box::new(|t: Tensor<2>| t.slice(s![2..5])),
                vec![3, cols],
                Box::new(move |i| 2 * cols + i),
            ),
            // The transpose: a strided view, made contiguous before the kernel.
            (
                "transpose",
                Box::new(|t: Tensor<2>| t.swap_dims(0, 1)),
                vec![cols, rows],
                Box::new(move |i| (i % rows) * cols + i / rows),
            ),
            // burn's own pending work on the input: the kernel must see its result.
            (
                "x * 1 + 0",
                Box::new(|t: Tensor<2>| t * 1.0 + 0.0),
                vec![rows, cols],
                Box::new(|i| i),
            ),
        ];
        for (name, view, shape, position) in cases {
            let view_values: Vec<f32> = (0..shape.iter().product())
                .map(|i| base[position(i)])
                .collect();
            let dy: Vec<f32> = (0..view_values.len()).map(|_| rng.normal()).collect();
            let want = reference::fake_quant(&op, &view_values, &shape).unwrap();
            let want_dx = reference::ste_backward(&dy, &want.mask).unwrap();

            let before = fakequant_burn::binding_stats();
            let bt = tensor(&base, [rows, cols], &device).require_grad();
            let y = fq.forward(view(bt.clone())).unwrap();
            // burn's work after the kernel reads y.
            let dyt = Tensor::<2>::from_data(TensorData::new(dy.clone(), shape.clone()), &device);
            let grads = (y.clone() * dyt).sum().backward();
            assert_eq!(bits(&values(y)), bits(&want.y), "y of {name}");
            let got = values(bt.grad(&grads).unwrap());
            assert_eq!(
                bits(&got),
                bits(&scatter(&want_dx, n, &position)),
                "dx of {name}"
            );
            // (Counted after the read-back: with burn's fusion the op runs when burn drains.)
            let after = fakequant_burn::binding_stats();
            let copies = after.copies - before.copies;
            at_offset += after.at_nonzero_offset - before.at_nonzero_offset;
            eprintln!("{name}: {copies} input copies (offset alignment {align})");
            if name == "transpose" {
                assert!(copies >= 1, "a strided view is made contiguous by a copy");
            }
        }
        // burn's pool shares buffers between small tensors: some of these are bound at an offset.
        let before = fakequant_burn::binding_stats();
        let tensors: Vec<Tensor<2>> = (0..64)
            .map(|i| tensor(&base, [rows, cols], &device) * (i as f32))
            .collect();
        for t in tensors {
            let _ = values(fq.forward(t).unwrap());
        }
        let after = fakequant_burn::binding_stats();
        at_offset += after.at_nonzero_offset - before.at_nonzero_offset;
        assert!(at_offset > 0, "no tensor was bound at a non-zero offset");
        eprintln!("{at_offset} bindings at a non-zero offset");
    }
}

#[test]
fn half_precision_tensors_equal_the_reference() {
    use burn::tensor::DType as BurnDType;
    use half::{bf16, f16};
    let mut rng = Rng::new(37);
    let op = FakeQuant::new(
        QuantRange::signed(8).unwrap(),
        QuantParams::per_channel(1, vec![0.05, 0.25, 2.0], vec![0, -3, 9]),
    )
    .unwrap();
    for qat in devices() {
        let device = qat.autodiff();
        let fq = FakeQuantizer::new(qat, &op).unwrap();
        // Every f16 pattern once, in a [.., 3, 1024] tensor whose channel axis is 1.
        let patterns: Vec<u16> = (0..=u16::MAX).collect();
        let shape = [patterns.len() / 3072 + 1, 3, 1024];
        let n: usize = shape.iter().product();
        let bits16: Vec<u16> = (0..n)
            .map(|i| {
                patterns
                    .get(i)
                    .copied()
                    .unwrap_or_else(|| rng.below(65536) as u16)
            })
            .collect();
        let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        for dtype in [BurnDType::F16, BurnDType::BF16] {
            // The reference on the 16-bit slice itself: bits of y, and the mask for dx.
            let (data, want_y, mask, dy_data) = match dtype {
                BurnDType::F16 => {
                    let v: Vec<f16> = bits16.iter().map(|&b| f16::from_bits(b)).collect();
                    let want = reference::fake_quant(&op, &v, &shape).unwrap();
                    let y: Vec<u16> = want.y.iter().map(|h| h.to_bits()).collect();
                    let dy: Vec<f16> = dy.iter().map(|&g| f16::from_f32(g)).collect();
                    (
                        TensorData::new(v, shape),
                        y,
                        want.mask,
                        TensorData::new(dy, shape),
                    )
                }
                _ => {
                    let v: Vec<bf16> = bits16.iter().map(|&b| bf16::from_bits(b)).collect();
                    let want = reference::fake_quant(&op, &v, &shape).unwrap();
                    let y: Vec<u16> = want.y.iter().map(|h| h.to_bits()).collect();
                    let dy: Vec<bf16> = dy.iter().map(|&g| bf16::from_f32(g)).collect();
                    (
                        TensorData::new(v, shape),
                        y,
                        want.mask,
                        TensorData::new(dy, shape),
                    )
                }
            };
            if !device.supports_dtype(dtype) {
                eprintln!(
                    "burn's wgpu backend on {} has no {dtype:?} tensors: not tested there",
                    qat.context().adapter_name()
                );
                continue;
            }
            let xt = Tensor::<3>::from_data(data, (&device, dtype)).require_grad();
            let y = fq.forward(xt.clone()).unwrap();
            assert_eq!(y.dtype(), dtype);
            let dyt = Tensor::<3>::from_data(dy_data.clone(), (&device, dtype));
            let grads = (y.clone() * dyt).sum().backward();
            let got_y = bits16_of(y.into_data(), dtype);
            let got_dx = bits16_of(xt.grad(&grads).unwrap().into_data(), dtype);
            let want_dx: Vec<u16> = match dtype {
                BurnDType::F16 => {
                    let dy: Vec<f16> = dy_data.try_to_vec().unwrap();
                    reference::ste_backward(&dy, &mask)
                        .unwrap()
                        .iter()
                        .map(|h| h.to_bits())
                        .collect()
                }
                _ => {
                    let dy: Vec<bf16> = dy_data.try_to_vec().unwrap();
                    reference::ste_backward(&dy, &mask)
                        .unwrap()
                        .iter()
                        .map(|h| h.to_bits())
                        .collect()
                }
            };
            let wrong = got_y.iter().zip(&want_y).filter(|(a, b)| a != b).count();
            assert_eq!(wrong, 0, "y mismatches in {dtype:?}");
            assert_eq!(got_dx, want_dx, "dx in {dtype:?}");
        }
    }
}

fn bits16_of(data: TensorData, dtype: burn::tensor::DType) -> Vec<u16> {
    match dtype {
        burn::tensor::DType::F16 => data
            .try_to_vec::<half::f16>()
            .unwrap()
            .iter()
            .map(|h| h.to_bits())
            .collect(),
        _ => data
            .try_to_vec::<half::bf16>()
            .unwrap()
            .iter()
            .map(|h| h.to_bits())
            .collect(),
    }
}

/// burn records kernels into its encoder and submits them later: the op must see the results
/// of burn kernels recorded just before it (and not yet submitted), on a device with and
/// without autodiff, for tensors produced by a chain of burn ops.
#[test]
fn burn_kernels_recorded_just_before_the_op_are_seen() {
    let mut rng = Rng::new(47);
    let op = FakeQuant::new(
        QuantRange::signed(8).unwrap(),
        QuantParams::per_tensor(0.05, 0),
    )
    .unwrap();
    for qat in devices() {
        let fq = FakeQuantizer::new(qat, &op).unwrap();
        for device in [qat.device(), qat.autodiff()] {
            for round in 0..4 {
                let n = 4096 + 33 * round;
                let x0 = common::random_data(&mut rng, n, 0, 0.05);
                // -x0, exactly: scaling by powers of two and negation round nowhere.
                let want_x: Vec<f32> = x0.iter().map(|v| -v).collect();
                let want = reference::fake_quant(&op, &want_x, &[n]).unwrap();
                let t = tensor(&x0, [n], &device);
                let x1 = ((t * 2.0).neg() * 0.25) * 2.0;
                let y = fq.forward(x1).unwrap();
                assert_eq!(bits(&values(y)), bits(&want.y), "round {round}");
            }
        }
    }
}

/// torchao's recipes on burn tensors: dynamic per-group int4 weights (one pass), per-token int8
/// activations and strided groups, and the floating-point formats (FP8 per row, MXFP4, NVFP4), forward and
/// backward against the reference bit for bit; the qparams, codes and scales for export too.
#[test]
fn dynamic_and_float_formats_equal_the_reference() {
    use fakequant::reference::dynamic::fake_quant_dynamic;
    use fakequant::reference::float_quant::fake_quant_float;
    use fakequant::{DynamicConfig, ElementFormat, FloatQuantConfig, Granularity, MxScaleRule};
    use fakequant_burn::{DynamicQuantizer, FloatQuantizer};
    let mut rng = Rng::new(0xd7);
    let shape = [8usize, 4, 256];
    let n: usize = shape.iter().product();
    let mut x = common::random_data(&mut rng, n, 2, 0.5);
    let adversarial = common::adversarial(0.05, 3, QuantRange::signed(8).unwrap());
    for (slot, v) in x.iter_mut().zip(adversarial) {
        *slot = v;
    }
    let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    for qat in devices() {
        let device = qat.autodiff();
        // (x's gradient, y) from a forward on a tracked tensor and a weighted sum's backward.
        let run = |forward: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let xt = tensor(&x, shape, &device).require_grad();
            let y = forward(xt.clone());
            let grads = (y.clone() * tensor(&dy, shape, &device)).sum().backward();
            (values(y), values(xt.grad(&grads).unwrap()))
        };
        // int4 weights in groups of 32 along the last axis (one pass), per-token int8, and
        // groups of 2 down axis 1 (strided: through their groups-last view).
        let symmetric = fakequant::DynamicScheme::Symmetric;
        let asymmetric = fakequant::DynamicScheme::Asymmetric;
        for config in [
            DynamicConfig::new(QuantRange::INT4, symmetric, Granularity::per_group(2, 32)).unwrap(),
            DynamicConfig::int8_per_token(),
            DynamicConfig::new(QuantRange::INT8, asymmetric, Granularity::per_group(1, 2)).unwrap(),
        ] {
            let dynamic = DynamicQuantizer::new(qat, &config, &shape).unwrap();
            let want = fake_quant_dynamic(&config, &x, &shape).unwrap();
            let (y, dx) = run(&|x| dynamic.forward(x).unwrap());
            assert_eq!(bits(&y), bits(&want.y), "dynamic y, {config:?}");
            let want_dx = reference::ste_backward(&dy, &want.mask).unwrap();
            assert_eq!(bits(&dx), bits(&want_dx), "dynamic dx, {config:?}");
            let (scales, zero_points) = dynamic.qparams().unwrap();
            assert_eq!(bits(&scales), bits(&want.scales));
            assert_eq!(bits(&zero_points), bits(&want.zero_points));
        }
        for config in [
            FloatQuantConfig::fp8(ElementFormat::Fp8E4M3, Granularity::per_channel(1)).unwrap(),
            FloatQuantConfig::mx(ElementFormat::Fp4E2M1, MxScaleRule::Rceil).unwrap(),
            FloatQuantConfig::nvfp4(None).unwrap(),
        ] {
            let want = fake_quant_float(&config, &x, &shape).unwrap();
            let pass = FloatQuantizer::new(qat, &config, &shape).unwrap();
            let (y, dx) = run(&|x| pass.forward(x).unwrap());
            assert_eq!(bits(&y), bits(&want.y), "float y, {config:?}");
            // torchao's pass-through backward: dx = dy.
            assert_eq!(bits(&dx), bits(&dy), "float pass-through dx, {config:?}");
            let (codes, scales) = pass.codes_and_scales().unwrap();
            assert_eq!(codes, want.codes, "codes, {config:?}");
            assert_eq!(scales, want.scales, "scales, {config:?}");
            let masked = FloatQuantizer::new(qat, &config, &shape)
                .unwrap()
                .with_clip_mask();
            let (_, dx) = run(&|x| masked.forward(x).unwrap());
            let want_dx = reference::ste_backward(&dy, &want.mask).unwrap();
            assert_eq!(bits(&dx), bits(&want_dx), "float masked dx, {config:?}");
        }
        // The shape a quantizer was made for, and no other.
        let dynamic = DynamicQuantizer::new(qat, &DynamicConfig::int8_per_token(), &shape).unwrap();
        let other = tensor(&x[..n / 2], [4, 4, 256], &device);
        assert!(dynamic.forward(other).is_err());
    }
}
