//! f16 and bf16 tensors through the elementwise ops (fake-quant forward with mask, straight-through
//! backward), GPU vs the CPU reference bit for bit: every one of the 65536 bit patterns of each type
//! as input, odd lengths, per-channel with odd inner sizes, tensors that start and end mid-word
//! (their neighbours left untouched), several bindings.

use crate::common;

use crate::common::{assert_mask_eq, contexts, Rng};
use fakequant::{
    reference, DType, DispatchLimits, Element, FakeQuant, GpuContext, PackedMask, QuantParams,
    QuantRange, TensorBinding,
};
use half::{bf16, f16};

fn assert_elems_eq<T: Element>(context: &str, x: &[T], expected: &[T], actual: &[T]) {
    assert_eq!(expected.len(), actual.len(), "{context}: length");
    let bad: Vec<usize> = (0..expected.len())
        .filter(|&i| expected[i].to_bits_u32() != actual[i].to_bits_u32())
        .collect();
    if !bad.is_empty() {
        let details: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                format!(
                    "  [{i}] x={:#06x} expected {:#06x} got {:#06x}",
                    x.get(i).map_or(0, |v| v.to_bits_u32()),
                    expected[i].to_bits_u32(),
                    actual[i].to_bits_u32()
                )
            })
            .collect();
        panic!(
            "{context}: {} of {} values differ:\n{}",
            bad.len(),
            expected.len(),
            details.join("\n")
        );
    }
}

/// Forward (with and without mask) and backward on `ctx` against the reference.
fn check<T: Element>(ctx: &GpuContext, op: &FakeQuant, x: &[T], shape: &[usize], label: &str) {
    let context = format!("{label} {:?} on {}", T::DTYPE, ctx.adapter_name());
    let fakequant::FakeQuantOutput {
        y: expected,
        mask: expected_mask,
    } = reference::fake_quant(op, x, shape).unwrap();
    let fakequant::FakeQuantOutput {
        y: got,
        mask: got_mask,
    } = ctx.fake_quant(op, x, shape).unwrap();
    assert_elems_eq(&format!("{context}: y"), x, &expected, &got);
    assert_mask_eq(&format!("{context}: mask"), &expected_mask, &got_mask);
    // Without a mask: the device level, whose kernels skip the mask.
    let got = crate::common::forward_without_mask(ctx, op, x, shape);
    assert_elems_eq(&format!("{context}: y without mask"), x, &expected, &got);
    // The backward on the same patterns as gradients.
    let expected_dx = reference::ste_backward(x, &expected_mask).unwrap();
    let got_dx = ctx.ste_backward(x, &expected_mask).unwrap();
    assert_elems_eq(&format!("{context}: dx"), x, &expected_dx, &got_dx);
}

fn all_f16() -> Vec<f16> {
    (0..=u16::MAX).map(f16::from_bits).collect()
}

fn all_bf16() -> Vec<bf16> {
    (0..=u16::MAX).map(bf16::from_bits).collect()
}

fn ops() -> Vec<FakeQuant> {
    let mut ops = Vec::new();
    for (range, scale, zp) in [
        (QuantRange::INT8, 0.05f32, 0),
        (QuantRange::UINT8, 1.0 / 3.0, 128),
        (QuantRange::INT4, 2f32.powi(-20), -8),
        (QuantRange::INT16, 2f32.powi(-24), 0),
        (QuantRange::INT8, 1000.0, 127),
        (QuantRange::INT8, 2f32.powi(-126), 0),
    ] {
        ops.push(FakeQuant::new(range, QuantParams::per_tensor(scale, zp)).unwrap());
    }
    ops
}

#[test]
fn every_f16_and_bf16_pattern_through_fake_quant_and_backward() {
    let (h, b) = (all_f16(), all_bf16());
    for ctx in contexts() {
        for (k, op) in ops().iter().enumerate() {
            check(ctx, op, &h, &[h.len()], &format!("all f16, op {k}"));
            check(ctx, op, &b, &[b.len()], &format!("all bf16, op {k}"));
        }
        // Per channel: 65536 patterns as [16, 4096] along axis 0 and [4096, 16] along axis 1.
        let scales: Vec<f32> = (0..16).map(|c| 0.01 * (c + 1) as f32).collect();
        let zps: Vec<i32> = (0..16).map(|c| c * 7 - 50).collect();
        for (axis, shape) in [(0usize, [16usize, 4096]), (1, [4096, 16])] {
            let op = FakeQuant::new(
                QuantRange::INT8,
                QuantParams::per_channel(axis, scales.clone(), zps.clone()),
            )
            .unwrap();
            check(
                ctx,
                &op,
                &h,
                &shape,
                &format!("all f16 per-channel axis {axis}"),
            );
            check(
                ctx,
                &op,
                &b,
                &shape,
                &format!("all bf16 per-channel axis {axis}"),
            );
        }
    }
}

#[test]
fn odd_lengths_and_odd_inner_sizes() {
    let mut rng = Rng::new(1);
    for ctx in contexts() {
        for n in [1usize, 2, 3, 5, 31, 33, 1023, 1025, 4097] {
            let x: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
            let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let op = &ops()[0];
            check(ctx, op, &h, &[n], &format!("n={n}"));
            check(ctx, op, &b, &[n], &format!("n={n}"));
        }
        for shape in [[3usize, 5, 7], [1, 3, 1], [7, 1, 9], [2, 9, 33]] {
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
            let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let op = FakeQuant::new(
                QuantRange::INT8,
                QuantParams::per_channel(1, vec![0.02; shape[1]], vec![3; shape[1]]),
            )
            .unwrap();
            check(ctx, &op, &h, &shape, &format!("{shape:?} axis 1"));
            check(ctx, &op, &b, &shape, &format!("{shape:?} axis 1"));
        }
    }
}

/// A 16-bit tensor of `n` elements at element offset `at` (any, odd included) of a buffer filled
/// with a sentinel: the op must write exactly its elements.
fn check_at_offsets<T: Element>(ctx: &GpuContext, x: &[T], x_at: u64, y_at: u64) {
    let n = x.len();
    let op = &ops()[0];
    let fakequant::FakeQuantOutput {
        y: expected,
        mask: expected_mask,
    } = reference::fake_quant(op, x, &[n]).unwrap();
    let sentinel = 0xdead_beefu32;
    let words = (n as u64 + x_at.max(y_at) + 4).div_ceil(2) as usize;
    let mut x_words = vec![sentinel; words];
    let x_halves: &mut [u16] = bytemuck::cast_slice_mut(&mut x_words);
    for (i, v) in x.iter().enumerate() {
        x_halves[x_at as usize + i] = v.to_bits_u32() as u16;
    }
    // Raw words through f32 tensors (bit patterns are copied, never interpreted).
    let as_f32 = |w: &[u32]| -> Vec<f32> { w.iter().map(|&v| f32::from_bits(v)).collect() };
    let x_buf = ctx.upload(&as_f32(&x_words)).unwrap();
    let y_buf = ctx.upload(&as_f32(&vec![sentinel; words])).unwrap();
    let mask = ctx.create_mask(n).unwrap();
    let prepared = ctx.prepare(op).unwrap();
    let mut encoder = ctx.create_encoder("offsets");
    prepared
        .record_forward(
            &mut encoder,
            TensorBinding::new(x_buf.buffer(), x_at * 2).with_dtype(T::DTYPE),
            &[n],
            TensorBinding::new(y_buf.buffer(), y_at * 2).with_dtype(T::DTYPE),
            Some(mask.binding()),
        )
        .unwrap();
    ctx.submit_and_wait(encoder).unwrap();
    let out: Vec<u32> = ctx
        .read_tensor::<f32>(&y_buf)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let halves: &[u16] = bytemuck::cast_slice(&out);
    let sentinel_halves: &[u16] = bytemuck::cast_slice(std::slice::from_ref(&sentinel));
    for (i, &h) in halves.iter().enumerate() {
        let context = format!("{:?} x at {x_at}, y at {y_at}, n {n}, half {i}", T::DTYPE);
        if i >= y_at as usize && i < y_at as usize + n {
            assert_eq!(
                h as u32,
                expected[i - y_at as usize].to_bits_u32(),
                "{context}"
            );
        } else {
            assert_eq!(
                h,
                sentinel_halves[i % 2],
                "{context}: a neighbour was overwritten"
            );
        }
    }
    assert_mask_eq(
        "offsets mask",
        &expected_mask,
        &ctx.read_mask(&mask).unwrap(),
    );
}

#[test]
fn tensors_starting_and_ending_mid_word_leave_their_neighbours_alone() {
    let mut rng = Rng::new(2);
    for ctx in contexts() {
        for n in [1usize, 2, 3, 31, 32, 33, 1024, 1025, 5000] {
            let x: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
            let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            // Multiples of 8 elements (16 bytes) take the wide kernels for the body; the others the
            // scalar ones throughout.
            for (x_at, y_at) in [
                (0u64, 0u64),
                (1, 0),
                (0, 1),
                (1, 1),
                (3, 130),
                (129, 2),
                (8, 136),
                (24, 8),
                (8, 1),
            ] {
                check_at_offsets(ctx, &h, x_at, y_at);
                check_at_offsets(ctx, &b, x_at, y_at);
            }
        }
    }
}

#[test]
fn several_bindings_and_the_grid_stride_loop() {
    let mut rng = Rng::new(3);
    for base in contexts() {
        let ctx = base
            .with_dispatch_limits(DispatchLimits {
                max_binding_bytes: 1 << 18,
                max_workgroups: 3,
            })
            .unwrap();
        let n = 600_001;
        let x: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
        let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        check(&ctx, &ops()[1], &h, &[n], "600001 f16 over small bindings");
        check(&ctx, &ops()[1], &b, &[n], "600001 bf16 over small bindings");
        check_at_offsets(&ctx, &h[..300_001], 1, 3);
    }
}

#[test]
fn mixed_element_types_and_misaligned_offsets_are_rejected() {
    for ctx in contexts() {
        let op = &ops()[0];
        let prepared = ctx.prepare(op).unwrap();
        let x = ctx.upload(&[f16::ONE; 8]).unwrap();
        let y = ctx.create_tensor(8, fakequant::DType::F32).unwrap();
        let mut encoder = ctx.create_encoder("errors");
        assert!(prepared
            .record_forward(&mut encoder, x.binding(), &[8], y.binding(), None)
            .is_err());
        let odd = TensorBinding::new(x.buffer(), 1).with_dtype(DType::F16);
        let y16 = ctx.create_tensor(8, DType::F16).unwrap();
        assert!(prepared
            .record_forward(&mut encoder, odd, &[8], y16.binding(), None)
            .is_err());
        // Past the end of the buffer.
        let late = TensorBinding::new(x.buffer(), 4).with_dtype(DType::F16);
        assert!(prepared
            .record_forward(&mut encoder, late, &[8], y16.binding(), None)
            .is_err());
        assert!(ctx.read_tensor::<f32>(&x).is_err());
        let mask = PackedMask::from_bools(&[true; 8]);
        assert!(ctx.ste_backward(&[bf16::ONE; 7], &mask).is_err());
        ctx.submit_and_wait(encoder).unwrap();
    }
}

#[test]
fn observers_on_16_bit_tensors() {
    use fakequant::reference::observer::{batch_min_max, Observer};
    use fakequant::{Averaging, Mode, ObserverConfig, QScheme};
    let (h, b) = (all_f16(), all_bf16());
    for ctx in contexts() {
        for axis in [None, Some(0), Some(1)] {
            let config = ObserverConfig::new(
                QuantRange::INT8,
                QScheme::Affine,
                Averaging::default(),
                crate::common::granularity_of(axis),
            )
            .unwrap();
            let shape = [256usize, 256];
            let gpu = ctx.create_observer(&config, &shape).unwrap();
            for (name, got, expected) in [
                (
                    "f16",
                    gpu.batch_min_max(&h, &shape).unwrap(),
                    batch_min_max(&config, &h, &shape).unwrap(),
                ),
                (
                    "bf16",
                    gpu.batch_min_max(&b, &shape).unwrap(),
                    batch_min_max(&config, &b, &shape).unwrap(),
                ),
            ] {
                let context = format!("{name} batch axis {axis:?}");
                common::assert_bits_eq(&context, &[], &expected.min, &got.min);
                common::assert_bits_eq(&context, &[], &expected.max, &got.max);
            }
            // A sequence of fused steps on realistic data, in both types.
            let mut rng = Rng::new(4);
            let gpu16 = ctx.create_observer(&config, &shape).unwrap();
            let gpub = ctx.create_observer(&config, &shape).unwrap();
            let mut cpu16 = Observer::new(config.clone(), &shape).unwrap();
            let mut cpub = Observer::new(config.clone(), &shape).unwrap();
            for (step, mode) in [Mode::Calibrate, Mode::Qat, Mode::Frozen, Mode::Qat]
                .into_iter()
                .enumerate()
            {
                let x: Vec<f32> = (0..65536)
                    .map(|_| rng.normal() * (step + 1) as f32)
                    .collect();
                let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                let fakequant::FakeQuantOutput { y: ey, mask: em } =
                    cpu16.step(&xh, &shape, mode).unwrap();
                let fakequant::FakeQuantOutput { y: gy, mask: gm } =
                    gpu16.step(&xh, &shape, mode).unwrap();
                assert_elems_eq(&format!("f16 step {step} {mode:?}"), &xh, &ey, &gy);
                assert_mask_eq("f16 step mask", &em, &gm);
                assert_eq!(cpu16.state(), &gpu16.read_state().unwrap());
                let fakequant::FakeQuantOutput { y: ey, mask: em } =
                    cpub.step(&xb, &shape, mode).unwrap();
                let fakequant::FakeQuantOutput { y: gy, mask: gm } =
                    gpub.step(&xb, &shape, mode).unwrap();
                assert_elems_eq(&format!("bf16 step {step} {mode:?}"), &xb, &ey, &gy);
                assert_mask_eq("bf16 step mask", &em, &gm);
                assert_eq!(cpub.state(), &gpub.read_state().unwrap());
            }
        }
    }
}

#[test]
fn lsq_on_16_bit_tensors() {
    use fakequant::reference::lsq as lsq_ref;
    use fakequant::LsqConfig;
    let (h, b) = (all_f16(), all_bf16());
    let mut rng = Rng::new(5);
    for ctx in contexts() {
        for (axis, shape) in [
            (None, [256usize, 256]),
            (Some(1), [4096, 16]),
            (Some(0), [16, 4096]),
        ] {
            let config =
                LsqConfig::new(QuantRange::INT8, crate::common::granularity_of(axis)).unwrap();
            let channels = config.channels_for(&shape).unwrap();
            let scales: Vec<f32> = (0..channels).map(|c| 0.01 + c as f32 * 0.002).collect();
            let zps: Vec<f32> = (0..channels).map(|c| c as f32 - 3.5).collect();
            let lsq = ctx.create_lsq(&config, &scales, &zps).unwrap();
            let dy: Vec<f32> = (0..65536).map(|_| rng.normal()).collect();
            // Every pattern as x, realistic gradients; then every pattern as dy.
            macro_rules! check_type {
                ($x:expr, $ty:ty) => {{
                    let x = $x;
                    let dy: Vec<$ty> = dy.iter().map(|&v| <$ty>::from_f32(v)).collect();
                    let label = format!("{} axis {axis:?}", stringify!($ty));
                    let fakequant::FakeQuantOutput { y: ey, mask: em } =
                        lsq_ref::forward(&config, &x, &shape, &scales, &zps).unwrap();
                    let fakequant::FakeQuantOutput { y: gy, mask: gm } =
                        lsq.forward(&x, &shape).unwrap();
                    assert_elems_eq(&format!("{label}: y"), &x, &ey, &gy);
                    assert_mask_eq(&format!("{label}: mask"), &em, &gm);
                    for (xs, dys) in [(&x, &dy), (&dy, &x)] {
                        let fakequant::LsqGrads {
                            dx: edx,
                            dscale: eds,
                            dzero_point: edz,
                        } = lsq_ref::backward(&config, xs, dys, &shape, &scales, &zps).unwrap();
                        let fakequant::LsqGrads {
                            dx: gdx,
                            dscale: gds,
                            dzero_point: gdz,
                        } = lsq.backward(xs, dys, &shape).unwrap();
                        assert_elems_eq(&format!("{label}: dx"), xs, &edx, &gdx);
                        common::assert_bits_eq(&format!("{label}: dscale"), &[], &eds, &gds);
                        common::assert_bits_eq(&format!("{label}: dzero_point"), &[], &edz, &gdz);
                    }
                    let expected = lsq_ref::init_scales(&config, &x, &shape).unwrap();
                    let init = ctx.create_lsq(&config, &scales, &zps).unwrap();
                    let got = init.init_from_data(&x, &shape).unwrap();
                    common::assert_bits_eq(&format!("{label}: init"), &[], &expected, &got);
                }};
            }
            check_type!(h.clone(), f16);
            check_type!(b.clone(), bf16);
        }
    }
}

#[test]
fn observers_and_lsq_read_and_write_16_bit_tensors_at_odd_offsets() {
    use fakequant::reference::{lsq as lsq_ref, observer::batch_min_max};
    use fakequant::{LsqConfig, ObserverConfig};
    let mut rng = Rng::new(6);
    let n = 3000usize;
    let shape = [3usize, 1000];
    let x: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.normal())).collect();
    let dy: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.normal())).collect();
    // Places a tensor at half index `at` of a zero-filled f16 buffer with room around it.
    let place = |ctx: &GpuContext, v: &[f16], at: usize| {
        let mut all = vec![f16::ZERO; n + 300];
        all[at..at + n].copy_from_slice(v);
        ctx.upload(&all).unwrap()
    };
    fn bind(t: &fakequant::GpuTensor, at: usize) -> TensorBinding<'_> {
        TensorBinding::new(t.buffer(), at as u64 * 2).with_dtype(DType::F16)
    }
    for ctx in contexts() {
        let (x_at, dy_at, dx_at) = (1usize, 131, 3);
        let (xb, dyb) = (place(ctx, &x, x_at), place(ctx, &dy, dy_at));
        let dxb = place(ctx, &vec![f16::from_f32(7.0); n], dx_at);

        let config = ObserverConfig::qat_weight_int8();
        let observer = ctx.create_observer(&config, &[3]).unwrap();
        let stats = observer.create_batch_stats().unwrap();
        let lsq_config = LsqConfig::weight_int8();
        let (scales, zps) = ([0.01f32, 0.02, 0.03], [0.0f32, 1.0, -1.0]);
        let lsq = ctx.create_lsq(&lsq_config, &scales, &zps).unwrap();
        let grads = lsq.create_grads().unwrap();
        let mut encoder = ctx.create_encoder("odd offsets");
        observer
            .record_batch_min_max(&mut encoder, bind(&xb, x_at), &shape, &stats)
            .unwrap();
        lsq.record_backward(
            &mut encoder,
            bind(&xb, x_at),
            bind(&dyb, dy_at),
            &shape,
            bind(&dxb, dx_at),
            &grads,
        )
        .unwrap();
        ctx.submit_and_wait(encoder).unwrap();

        let expected = batch_min_max(&config, &x, &shape).unwrap();
        let got = ctx.read_batch_stats(&stats).unwrap();
        common::assert_bits_eq("odd-offset min", &[], &expected.min, &got.min);
        common::assert_bits_eq("odd-offset max", &[], &expected.max, &got.max);
        let fakequant::LsqGrads {
            dx: edx,
            dscale: eds,
            dzero_point: edz,
        } = lsq_ref::backward(&lsq_config, &x, &dy, &shape, &scales, &zps).unwrap();
        let all: Vec<f16> = ctx.read_tensor(&dxb).unwrap();
        assert_elems_eq("odd-offset dx", &x, &edx, &all[dx_at..dx_at + n]);
        assert!(all[..dx_at]
            .iter()
            .chain(&all[dx_at + n..])
            .all(|v| *v == f16::ZERO));
        let (gds, gdz) = ctx.read_lsq_grads(&grads).unwrap();
        common::assert_bits_eq("odd-offset dscale", &[], &eds, &gds);
        common::assert_bits_eq("odd-offset dzero_point", &[], &edz, &gdz);
    }
}
