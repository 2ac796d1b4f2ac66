//! The GPU kernels equal the CPU reference bit for bit, on every adapter present.

use crate::common::*;
use fakequant::{
    reference, DispatchLimits, FakeQuant, QuantParams, QuantRange, Rounding, TensorBinding,
};

const ROUNDINGS: [Rounding; 2] = [Rounding::Reciprocal, Rounding::Quotient];

/// `check_on_gpu` with each rounding of the quotient.
fn check_both_roundings(
    ctx: &fakequant::GpuContext,
    op: FakeQuant,
    x: &[f32],
    shape: &[usize],
    label: &str,
) {
    for rounding in ROUNDINGS {
        let op = op.clone().with_rounding(rounding);
        check_on_gpu(ctx, &op, x, shape, &format!("{label} {rounding:?}"));
    }
}

#[test]
fn random_distributions_and_seeds_per_tensor() {
    for ctx in contexts() {
        for seed in 0..3u64 {
            for distribution in 0..5 {
                let mut rng = Rng::new(seed * 31 + distribution as u64);
                let scale = 2f32.powf(rng.uniform(-12.0, 4.0));
                let range = QuantRange::INT8;
                let zp = rng.below(256) as i32 - 128;
                let n = 5000 + rng.below(3000);
                let x = random_data(&mut rng, n, distribution, scale);
                check_both_roundings(
                    ctx,
                    FakeQuant::new(range, QuantParams::per_tensor(scale, zp)).unwrap(),
                    &x,
                    &[x.len()],
                    &format!("seed {seed} dist {distribution}"),
                );
            }
        }
    }
}

/// Every scale of the sweep, zero points at both range edges and in the middle, every range, both
/// roundings, on the adversarial corpus: batched as one per-channel call per range and rounding
/// (channel c has its own scale and zero point and its own corpus), plus per-tensor calls on the
/// same corpus for one zero point.
#[test]
fn adversarial_corpus_every_scale_zero_point_and_width() {
    for ctx in contexts() {
        for range in ranges() {
            let mut params = Vec::new();
            for &scale in &scale_sweep() {
                for zp in [
                    range.qmin(),
                    range.qmax(),
                    (range.qmin() + range.qmax()) / 2,
                ] {
                    params.push((scale, zp));
                }
            }
            let corpora: Vec<Vec<f32>> = params
                .iter()
                .map(|&(s, zp)| adversarial(s, zp, range))
                .collect();
            let width = corpora.iter().map(Vec::len).max().unwrap();
            // Pad each channel's corpus with its own values so every channel has `width` inputs.
            let x: Vec<f32> = corpora
                .iter()
                .flat_map(|c| c.iter().cycle().take(width).copied())
                .collect();
            let shape = [params.len(), width];
            let scales: Vec<f32> = params.iter().map(|p| p.0).collect();
            let zps: Vec<i32> = params.iter().map(|p| p.1).collect();
            check_both_roundings(
                ctx,
                FakeQuant::new(
                    range,
                    QuantParams::per_channel(0, scales.clone(), zps.clone()),
                )
                .unwrap(),
                &x,
                &shape,
                &format!("adversarial {range:?} per-channel"),
            );
            let (scale, zp) = params[params.len() / 2];
            let corpus = adversarial(scale, zp, range);
            check_both_roundings(
                ctx,
                FakeQuant::new(range, QuantParams::per_tensor(scale, zp)).unwrap(),
                &corpus,
                &[corpus.len()],
                &format!("adversarial {range:?} per-tensor"),
            );
        }
    }
}

/// Every f32 bit pattern class through a random sample of 2^20 patterns at a few scales.
#[test]
fn random_bit_patterns() {
    for ctx in contexts() {
        let mut rng = Rng::new(99);
        let x: Vec<f32> = (0..1 << 20).map(|_| rng.any_bits()).collect();
        for scale in [2f32.powi(-126), 1e-30, 0.01, 3.0, 1e30] {
            check_both_roundings(
                ctx,
                FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(scale, 3)).unwrap(),
                &x,
                &[x.len()],
                &format!("bit patterns scale {scale:e}"),
            );
        }
    }
}

/// Per-channel on every axis of ranks 1 to 4, with 1 to 1000 channels.
#[test]
fn per_channel_every_axis_ranks_1_to_4() {
    let shapes: &[&[usize]] = &[
        &[1],
        &[7],
        &[1000],
        &[1000, 3],
        &[3, 1000],
        &[1, 5],
        &[4, 17, 9],
        &[1, 1000, 1],
        &[2, 3, 5, 7],
        &[16, 8, 3, 3],
        &[2, 1, 1000, 2],
    ];
    for ctx in contexts() {
        let mut rng = Rng::new(7);
        for shape in shapes {
            let n: usize = shape.iter().product();
            for axis in 0..shape.len() {
                let channels = shape[axis];
                let range = if axis % 2 == 0 {
                    QuantRange::INT8
                } else {
                    QuantRange::UINT4
                };
                let scales: Vec<f32> = (0..channels)
                    .map(|_| 2f32.powf(rng.uniform(-10.0, 2.0)))
                    .collect();
                let zps: Vec<i32> = (0..channels)
                    .map(|_| {
                        range.qmin() + rng.below((range.qmax() - range.qmin() + 1) as usize) as i32
                    })
                    .collect();
                let distribution = rng.below(5);
                let x = random_data(&mut rng, n, distribution, 0.05);
                check_both_roundings(
                    ctx,
                    FakeQuant::new(
                        range,
                        QuantParams::per_channel(axis, scales.clone(), zps.clone()),
                    )
                    .unwrap(),
                    &x,
                    shape,
                    &format!("shape {shape:?} axis {axis}"),
                );
            }
        }
    }
}

/// Sizes around the mask word (32), the workgroup (256), the tile (1024) and the chunk granule.
#[test]
fn sizes_around_every_boundary() {
    let mut sizes = vec![0usize, 1, 2, 3, 4, 5];
    // Mask words, tiles of the scalar (1024) and wide (1024 vec4s: 4096 f32) kernels, chunk granule.
    for b in [32usize, 64, 256, 1024, 4096, 8192, 16384, 65536] {
        sizes.extend([b - 1, b, b + 1]);
    }
    for ctx in contexts() {
        let mut rng = Rng::new(11);
        for &n in &sizes {
            let x = random_data(&mut rng, n, 0, 0.1);
            let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.1, -1)).unwrap();
            check_on_gpu(ctx, &op, &x, &[n], &format!("size {n}"));
            if n > 0 {
                let op = FakeQuant::new(
                    QuantRange::UINT8,
                    QuantParams::per_channel(0, vec![0.05; n], vec![7; n]),
                )
                .unwrap();
                check_on_gpu(ctx, &op, &x, &[n], &format!("size {n} per-channel"));
            }
        }
    }
}

/// Small dispatch limits force several bindings per tensor (a chunk boundary inside a channel) and
/// more tiles than workgroups (the grid-stride loop); the results must not change.
#[test]
fn multiple_bindings_and_grid_stride_loop() {
    for ctx in contexts() {
        let small = ctx
            .with_dispatch_limits(DispatchLimits {
                max_binding_bytes: 1 << 18,
                max_workgroups: 3,
            })
            .unwrap();
        let mut rng = Rng::new(5);
        let x = random_data(&mut rng, 200_000, 1, 0.02);
        let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.02, 5)).unwrap();
        check_on_gpu(&small, &op, &x, &[x.len()], "small limits per-tensor");
        let layouts: [(&[usize], usize); 5] = [
            (&[8, 25_000], 0),
            (&[25_000, 8], 1),
            (&[40, 5000], 0),
            (&[5000, 40], 1),
            (&[2, 5000, 20], 2),
        ];
        for (shape, axis) in layouts {
            let c = shape[axis];
            let scales: Vec<f32> = (0..c).map(|i| 0.01 + i as f32 * 1e-4).collect();
            let op = FakeQuant::new(
                QuantRange::INT8,
                QuantParams::per_channel(axis, scales, vec![0; c]),
            )
            .unwrap();
            check_on_gpu(
                &small,
                &op,
                &x,
                shape,
                &format!("small limits shape {shape:?} axis {axis}"),
            );
        }
    }
}

/// A tensor over 128 MiB (the storage binding limit of the software GPUs).
#[test]
fn tensor_larger_than_128_mib() {
    let n = (1usize << 25) + 4099;
    assert!(n * 4 > 128 << 20);
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..n)
        .map(|i| {
            if i % 1000 == 0 {
                rng.any_bits()
            } else {
                rng.normal() * 3.0
            }
        })
        .collect();
    let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(3.0 / 127.5, 0)).unwrap();
    let expected = reference::fake_quant(&op, &x, &[n]).unwrap();
    for ctx in contexts() {
        let got = ctx.fake_quant(&op, &x, &[n]).unwrap();
        assert_bits_eq(
            &format!("128 MiB+ on {}", ctx.adapter_name()),
            &x,
            &expected.y,
            &got.y,
        );
        assert_mask_eq("128 MiB+ mask", &expected.mask, &got.mask);
        let dx = ctx.ste_backward(&x, &expected.mask).unwrap();
        let expected_dx = reference::ste_backward(&x, &expected.mask).unwrap();
        assert_bits_eq("128 MiB+ dx", &x, &expected_dx, &dx);
    }
}

/// The recording level: several layers' fake-quant and a backward on caller-owned buffers (one
/// suballocated at an offset) recorded into one encoder and submitted once.
#[test]
fn recording_many_ops_into_one_submission() {
    for ctx in contexts() {
        let device = ctx.device();
        let mut rng = Rng::new(21);
        let n = 3000usize;
        let align = ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        let offset = align.max(256) * 2;
        let layers: Vec<(FakeQuant, Vec<f32>)> = (0..3)
            .map(|i| {
                let op = FakeQuant::new(
                    QuantRange::INT8,
                    QuantParams::per_tensor(0.01 * (i + 1) as f32, i - 1),
                )
                .unwrap();
                (op, random_data(&mut rng, n, i as usize, 0.01))
            })
            .collect();
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let make = |bytes: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        // One big input buffer holding the three layers' inputs at aligned offsets.
        let stride = (n as u64 * 4).next_multiple_of(align.max(256));
        let inputs = make(offset + stride * 3);
        for (i, (_, x)) in layers.iter().enumerate() {
            ctx.queue()
                .write_buffer(&inputs, offset + stride * i as u64, bytemuck::cast_slice(x));
        }
        let outputs: Vec<wgpu::Buffer> = (0..3).map(|_| make(n as u64 * 4)).collect();
        let mask = make(n.div_ceil(32) as u64 * 4);
        let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let dy_buf = make(n as u64 * 4);
        ctx.queue()
            .write_buffer(&dy_buf, 0, bytemuck::cast_slice(&dy));
        let dx_buf = make(n as u64 * 4);

        let prepared: Vec<_> = layers
            .iter()
            .map(|(op, _)| ctx.prepare(op).unwrap())
            .collect();
        let mut encoder = ctx.create_encoder("test");
        for (i, p) in prepared.iter().enumerate() {
            let x = TensorBinding::new(&inputs, offset + stride * i as u64);
            let m = (i == 2).then(|| TensorBinding::from(&mask));
            p.record_forward(&mut encoder, x, &[n], TensorBinding::from(&outputs[i]), m)
                .unwrap();
        }
        ctx.record_ste_backward(
            &mut encoder,
            (&dy_buf).into(),
            (&mask).into(),
            (&dx_buf).into(),
            n,
        )
        .unwrap();
        ctx.submit_and_wait(encoder).unwrap();

        for (i, (op, x)) in layers.iter().enumerate() {
            let expected = reference::fake_quant(op, x, &[n]).unwrap();
            let got: Vec<f32> = bytemuck::pod_collect_to_vec(
                &ctx.read_buffer(&outputs[i], 0, n as u64 * 4).unwrap(),
            );
            assert_bits_eq(&format!("recorded layer {i}"), x, &expected.y, &got);
            if i == 2 {
                let expected_dx = reference::ste_backward(&dy, &expected.mask).unwrap();
                let dx: Vec<f32> = bytemuck::pod_collect_to_vec(
                    &ctx.read_buffer(&dx_buf, 0, n as u64 * 4).unwrap(),
                );
                assert_bits_eq("recorded backward", &dy, &expected_dx, &dx);
            }
        }
    }
}

/// The device level: ops chained on device tensors without a read-back in between.
#[test]
fn device_tensors_chain_without_read_back() {
    for ctx in contexts() {
        let mut rng = Rng::new(8);
        let x = random_data(&mut rng, 10_000, 0, 0.02);
        let first = FakeQuant::new(QuantRange::INT16, QuantParams::per_tensor(0.001, 0)).unwrap();
        let second = FakeQuant::new(
            QuantRange::INT4,
            QuantParams::per_channel(0, vec![0.1, 0.2], vec![0, -3]),
        )
        .unwrap();
        let (p1, p2) = (ctx.prepare(&first).unwrap(), ctx.prepare(&second).unwrap());
        let x_dev = ctx.upload(&x).unwrap();
        let mid = ctx.create_tensor(x.len(), fakequant::DType::F32).unwrap();
        let out = ctx.create_tensor(x.len(), fakequant::DType::F32).unwrap();
        let mask = ctx.create_mask(x.len()).unwrap();
        p1.forward_device(&x_dev, &[x.len()], &mid, None).unwrap();
        p2.forward_device(&mid, &[2, 5000], &out, Some(&mask))
            .unwrap();
        let cpu_mid = reference::fake_quant(&first, &x, &[x.len()]).unwrap().y;
        let cpu = reference::fake_quant(&second, &cpu_mid, &[2, 5000]).unwrap();
        assert_bits_eq("chained", &x, &cpu.y, &ctx.read_tensor(&out).unwrap());
        assert_mask_eq("chained mask", &cpu.mask, &ctx.read_mask(&mask).unwrap());
    }
}

/// A framework's own device: the context wraps it without creating another.
#[test]
fn context_on_a_caller_owned_device() {
    for ctx in contexts() {
        let shared =
            fakequant::GpuContext::from_device(ctx.device().clone(), ctx.queue().clone()).unwrap();
        let op = FakeQuant::new(QuantRange::UINT8, QuantParams::per_tensor(0.5, 128)).unwrap();
        let x: Vec<f32> = (-300..300).map(|i| i as f32 * 0.25).collect();
        check_on_gpu(&shared, &op, &x, &[x.len()], "caller-owned device");
    }
}

/// Property test: random shapes of rank 1 to 4, a random axis or per-tensor, random ranges, scales,
/// zero points and rounding, random data of every distribution.
#[test]
fn random_shapes_and_parameters() {
    let all_ranges = ranges();
    for ctx in contexts() {
        let mut rng = Rng::new(2024);
        for case in 0..40 {
            let rank = 1 + rng.below(4);
            let shape: Vec<usize> = (0..rank)
                .map(|_| 1 + rng.below(if rank > 2 { 12 } else { 300 }))
                .collect();
            let n: usize = shape.iter().product();
            let range = all_ranges[rng.below(all_ranges.len())];
            let span = (range.qmax() - range.qmin() + 1) as usize;
            let mut params = || {
                (
                    2f32.powf(rng.uniform(-20.0, 10.0)),
                    range.qmin() + rng.below(span) as i32,
                )
            };
            let per_channel = case % 3 != 0;
            let quant_params = if per_channel {
                let axis = case % rank;
                let (scales, zps): (Vec<f32>, Vec<i32>) =
                    (0..shape[axis]).map(|_| params()).unzip();
                QuantParams::per_channel(axis, scales, zps)
            } else {
                let (s, zp) = params();
                QuantParams::per_tensor(s, zp)
            };
            let rounding = ROUNDINGS[case % 2];
            let op = FakeQuant::new(range, quant_params)
                .unwrap()
                .with_rounding(rounding);
            let scale = op.params().scales()[0];
            let distribution = rng.below(5);
            let x = random_data(&mut rng, n, distribution, scale);
            check_on_gpu(
                ctx,
                &op,
                &x,
                &shape,
                &format!("random case {case}: shape {shape:?} {op:?}"),
            );
        }
    }
}

/// The wide kernels' groups per thread (1 on GPUs, 4 on CPU adapters by default) change only the
/// grid: every value gives the reference's bits, per-tensor and per-channel (groups crossing
/// channel boundaries), with the mask, backward, and 16-bit elements, around the tile sizes.
#[test]
fn every_wide_groups_per_thread_gives_the_same_bits() {
    for base in contexts() {
        assert!(base.with_wide_groups_per_thread(0).is_err());
        assert!(base.with_wide_groups_per_thread(5).is_err());
        for run in [0, 16, 48, 8192] {
            assert!(matches!(
                base.with_dynamic_run(run),
                Err(fakequant::Error::InvalidSetting(_))
            ));
        }
        for groups in 1..=4 {
            let ctx = base.with_wide_groups_per_thread(groups).unwrap();
            assert_eq!(ctx.wide_groups_per_thread(), groups);
            let mut rng = Rng::new(groups as u64);
            for n in [31usize, 33, 1023, 1025, 4095, 4097, 8191, 8193, 20_000] {
                let x = random_data(&mut rng, n, 0, 0.1);
                let op =
                    FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.1, -1)).unwrap();
                check_on_gpu(
                    &ctx,
                    &op,
                    &x,
                    &[n],
                    &format!("{groups} per thread, size {n}"),
                );
                // Inner size 3: most vec4 groups straddle two channels.
                let channels = n.div_ceil(3).min(50);
                let shape = [n / (channels * 3), channels, 3];
                let numel: usize = shape.iter().product();
                if numel > 0 {
                    let scales = (0..channels).map(|c| 0.02 + c as f32 * 0.003).collect();
                    let zero_points = (0..channels).map(|c| c as i32 % 5 - 2).collect();
                    let op = FakeQuant::new(
                        QuantRange::INT8,
                        QuantParams::per_channel(1, scales, zero_points),
                    )
                    .unwrap();
                    check_on_gpu(
                        &ctx,
                        &op,
                        &x[..numel],
                        &shape,
                        &format!("{groups} per thread, {shape:?} per-channel"),
                    );
                }
                let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v * 50.0)).collect();
                let fakequant::FakeQuantOutput {
                    y: expected,
                    mask: expected_mask,
                } = fakequant::reference::fake_quant(&op_for_half(), &h, &[n]).unwrap();
                let fakequant::FakeQuantOutput {
                    y: got,
                    mask: got_mask,
                } = ctx.fake_quant(&op_for_half(), &h, &[n]).unwrap();
                let bits = |v: &[half::f16]| v.iter().map(|e| e.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&expected),
                    bits(&got),
                    "{groups} per thread, f16 size {n}"
                );
                assert_eq!(
                    expected_mask, got_mask,
                    "{groups} per thread, f16 mask size {n}"
                );
            }
        }
    }
}

fn op_for_half() -> FakeQuant {
    FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.5, 3)).unwrap()
}
