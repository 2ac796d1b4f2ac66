//! What one call may touch (issue 13, findings 1 and 3): objects of another context are refused
//! by name, a caller's buffer of another device is a wgpu error and never a panic, ranges of one
//! buffer are compared rather than buffers (disjoint ranges work, overlapping ones are refused),
//! and errors in the caller's own submissions come back as errors.

use crate::common::{assert_bits_eq, assert_mask_eq, contexts, Rng};
use fakequant::{
    reference, DType, Error, FakeQuant, GpuContext, Granularity, LsqConfig, ObserverConfig,
    PackedMask, QuantParams, QuantRange, TensorBinding,
};
use half::f16;

/// A new context (its own device) on the adapter of `ctx`: what a second `GpuContext::new()`
/// gives. Tests that provoke errors outside the library's calls use their own, so that the
/// contexts shared by the parallel tests never see them.
fn fresh_context(ctx: &GpuContext) -> GpuContext {
    let info = ctx
        .adapter_info()
        .expect("test contexts come from adapters");
    let adapter = GpuContext::adapters()
        .unwrap()
        .into_iter()
        .find(|a| a.get_info().name == info.name && a.get_info().backend == info.backend)
        .expect("the adapter is listed again");
    GpuContext::from_adapter(&adapter).unwrap()
}

/// A caller's buffer of `bytes` bytes, as a framework's memory pool would hand out.
fn pool(ctx: &GpuContext, bytes: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller pool"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn aligned(ctx: &GpuContext, bytes: u64) -> u64 {
    bytes.next_multiple_of(ctx.device_limits().min_storage_buffer_offset_alignment as u64)
}

fn per_channel_op() -> FakeQuant {
    FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_channel(0, vec![0.05, 0.1, 0.2, 0.4], vec![0, 3, -7, 0]),
    )
    .unwrap()
}

#[test]
fn tensors_in_disjoint_ranges_of_one_buffer_work() {
    let op = per_channel_op();
    let mut rng = Rng::new(0x5eed_0013);
    for ctx in contexts() {
        let prepared = ctx.prepare(&op).unwrap();
        // f32: x, y and the mask one after another in one buffer.
        let shape = [4, 250];
        let x: Vec<f32> = (0..1000).map(|_| rng.normal() * 10.0).collect();
        let (y_at, mask_at) = (aligned(ctx, 4000), aligned(ctx, 8000));
        let buffer = pool(ctx, mask_at + 128);
        ctx.queue()
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&x));
        let mut encoder = ctx.create_encoder("disjoint f32");
        prepared
            .record_forward(
                &mut encoder,
                TensorBinding::new(&buffer, 0),
                &shape,
                TensorBinding::new(&buffer, y_at),
                Some(TensorBinding::new(&buffer, mask_at)),
            )
            .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        let expected = reference::fake_quant(&op, &x, &shape).unwrap();
        let y: Vec<f32> =
            bytemuck::pod_collect_to_vec(&ctx.read_buffer(&buffer, y_at, 4000).unwrap());
        let x_after: Vec<f32> =
            bytemuck::pod_collect_to_vec(&ctx.read_buffer(&buffer, 0, 4000).unwrap());
        let words = ctx.read_buffer(&buffer, mask_at, 128).unwrap();
        let mask = PackedMask::from_words(bytemuck::pod_collect_to_vec(&words), 1000).unwrap();
        let label = format!("{}: f32 x, y, mask in one buffer", ctx.adapter_name());
        assert_bits_eq(&label, &x, &expected.y, &y);
        assert_bits_eq(&format!("{label} (x untouched)"), &x, &x, &x_after);
        assert_mask_eq(&label, &expected.mask, &mask);

        // f16: y starts in the word that holds x's last element (bytes 12..14 x, 14..16 y).
        let x16: Vec<f16> = (0..8)
            .map(|i| f16::from_f32(rng.normal() * 10.0 + i as f32))
            .collect();
        let x16 = &x16[..7];
        let buffer = pool(ctx, 64);
        let mut bytes = bytemuck::cast_slice::<f16, u8>(x16).to_vec();
        bytes.resize(64, 0);
        ctx.queue().write_buffer(&buffer, 0, &bytes);
        let per_tensor =
            FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.25, 1)).unwrap();
        let mut encoder = ctx.create_encoder("adjacent f16");
        ctx.prepare(&per_tensor)
            .unwrap()
            .record_forward(
                &mut encoder,
                TensorBinding::new(&buffer, 0).with_dtype(DType::F16),
                &[7],
                TensorBinding::new(&buffer, 14).with_dtype(DType::F16),
                None,
            )
            .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        let back = ctx.read_buffer(&buffer, 0, 28).unwrap();
        let all: Vec<f16> = bytemuck::pod_collect_to_vec(&back);
        let expected = reference::fake_quant(&per_tensor, x16, &[7]).unwrap();
        let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&all[..7]),
            bits(x16),
            "{}: f16 x untouched",
            ctx.adapter_name()
        );
        assert_eq!(
            bits(&all[7..14]),
            bits(&expected.y),
            "{}: f16 y",
            ctx.adapter_name()
        );

        // The straight-through backward reads its mask from the buffer it writes dx to.
        let dy: Vec<f32> = (0..1000).map(|_| rng.normal()).collect();
        let buffer = pool(ctx, mask_at + 128);
        ctx.queue()
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&dy));
        let forward_mask = reference::fake_quant(&op, &x, &shape).unwrap().mask;
        ctx.queue()
            .write_buffer(&buffer, mask_at, bytemuck::cast_slice(forward_mask.words()));
        let mut encoder = ctx.create_encoder("ste in one buffer");
        ctx.record_ste_backward(
            &mut encoder,
            TensorBinding::new(&buffer, 0),
            TensorBinding::new(&buffer, mask_at),
            TensorBinding::new(&buffer, y_at),
            1000,
        )
        .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        let dx: Vec<f32> =
            bytemuck::pod_collect_to_vec(&ctx.read_buffer(&buffer, y_at, 4000).unwrap());
        let expected = reference::ste_backward(&dy, &forward_mask).unwrap();
        assert_bits_eq(
            &format!("{}: straight-through in one buffer", ctx.adapter_name()),
            &dy,
            &expected,
            &dx,
        );

        // LSQ backward: x, dy and dx in one buffer.
        let config = LsqConfig::new(QuantRange::INT8, Granularity::per_channel(0)).unwrap();
        let (scales, zero_points) = (vec![0.05, 0.1, 0.2, 0.4], vec![0.0, 2.5, -3.0, 0.0]);
        let lsq = ctx.create_lsq(&config, &scales, &zero_points).unwrap();
        let (dy_at, dx_at) = (aligned(ctx, 4000), aligned(ctx, 8000));
        let buffer = pool(ctx, dx_at + 4000);
        ctx.queue()
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&x));
        ctx.queue()
            .write_buffer(&buffer, dy_at, bytemuck::cast_slice(&dy));
        let grads = lsq.create_grads().unwrap();
        let mut encoder = ctx.create_encoder("lsq in one buffer");
        lsq.record_backward(
            &mut encoder,
            TensorBinding::new(&buffer, 0),
            TensorBinding::new(&buffer, dy_at),
            &shape,
            TensorBinding::new(&buffer, dx_at),
            &grads,
        )
        .unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        let dx: Vec<f32> =
            bytemuck::pod_collect_to_vec(&ctx.read_buffer(&buffer, dx_at, 4000).unwrap());
        let (dscale, dzero_point) = ctx.read_lsq_grads(&grads).unwrap();
        let expected = reference::Lsq::new(config, &scales, &zero_points)
            .unwrap()
            .backward(&x, &dy, &shape)
            .unwrap();
        let label = format!("{}: LSQ x, dy, dx in one buffer", ctx.adapter_name());
        assert_bits_eq(&label, &x, &expected.dx, &dx);
        assert_bits_eq(&label, &scales, &expected.dscale, &dscale);
        assert_bits_eq(&label, &zero_points, &expected.dzero_point, &dzero_point);
    }
}

#[test]
fn overlapping_ranges_are_refused_by_role() {
    let op = per_channel_op();
    for ctx in contexts() {
        let prepared = ctx.prepare(&op).unwrap();
        let align = aligned(ctx, 1);
        let buffer = pool(ctx, aligned(ctx, 8000) + 4096);
        let at = |offset: u64| TensorBinding::new(&buffer, offset);
        let mut encoder = ctx.create_encoder("overlaps");
        let shape = [4, 250];
        // y over the second half of x (and in place: the same range).
        for y_at in [0, aligned(ctx, 2000)] {
            let r = prepared.record_forward(&mut encoder, at(0), &shape, at(y_at), None);
            assert!(
                matches!(r, Err(Error::InvalidBuffer { what: "y", .. })),
                "{}: y at {y_at}: {r:?}",
                ctx.adapter_name()
            );
        }
        // The mask inside x, inside y, or x inside the mask.
        let y_at = aligned(ctx, 4000);
        for mask_at in [aligned(ctx, 1000).min(4000 - align), y_at + align] {
            let r =
                prepared.record_forward(&mut encoder, at(0), &shape, at(y_at), Some(at(mask_at)));
            assert!(
                matches!(
                    r,
                    Err(Error::InvalidBuffer {
                        what: "mask" | "y",
                        ..
                    })
                ),
                "{}: mask at {mask_at}: {r:?}",
                ctx.adapter_name()
            );
        }
        // The straight-through backward writes dx: over dy, or over the mask it reads.
        let r = ctx.record_ste_backward(&mut encoder, at(0), at(y_at), at(0), 1000);
        assert!(
            matches!(r, Err(Error::InvalidBuffer { what: "dx", .. })),
            "{r:?}"
        );
        let r = ctx.record_ste_backward(&mut encoder, at(0), at(y_at), at(y_at), 1000);
        assert!(
            matches!(r, Err(Error::InvalidBuffer { what: "dx", .. })),
            "{r:?}"
        );
        // Two 16-bit outputs may not share a word; an f16 y sharing one with x's last element
        // is fine (see the test above).
        let half = |offset: u64| at(offset).with_dtype(DType::F16);
        let r = ctx
            .prepare(&FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(1.0, 0)).unwrap())
            .unwrap()
            .record_forward(&mut encoder, half(0), &[3], half(4), None);
        assert!(
            matches!(r, Err(Error::InvalidBuffer { what: "y", .. })),
            "{r:?}"
        );
        // LSQ: dx over x or over dy.
        let lsq = ctx.create_lsq(&LsqConfig::weight_int8(), &[0.1; 4], &[0.0; 4]);
        let lsq = lsq.unwrap();
        let grads = lsq.create_grads().unwrap();
        let dy_at = aligned(ctx, 4000);
        for dx_at in [0, dy_at] {
            let r = lsq.record_backward(&mut encoder, at(0), at(dy_at), &shape, at(dx_at), &grads);
            assert!(
                matches!(r, Err(Error::InvalidBuffer { what: "dx", .. })),
                "dx at {dx_at}: {r:?}"
            );
        }
        // Nothing was recorded, so the encoder is still good.
        ctx.submit_and_wait(encoder).unwrap();
    }
}

#[test]
fn objects_of_another_context_are_refused_by_name() {
    for shared in contexts() {
        let (a, b) = (fresh_context(shared), fresh_context(shared));
        let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.1, 0)).unwrap();
        let prepared_a = a.prepare(&op).unwrap();
        // Created in the same order on both: the same wgpu ids in two separate instances would
        // have named A's own tensors.
        let (x_a, y_a) = (
            a.upload(&[1.0f32; 16]).unwrap(),
            a.create_tensor(16, DType::F32).unwrap(),
        );
        let (x_b, y_b) = (
            b.upload(&[1.0f32; 16]).unwrap(),
            b.create_tensor(16, DType::F32).unwrap(),
        );
        let mask_b = b.create_mask(16).unwrap();
        let foreign = |r: fakequant::Result<()>, what: &str| {
            assert!(
                matches!(&r, Err(Error::ForeignObject { what: w, .. }) if *w == what),
                "{}: {what}: {r:?}",
                shared.adapter_name()
            );
        };
        foreign(prepared_a.forward_device(&x_b, &[16], &y_a, None), "x");
        foreign(prepared_a.forward_device(&x_a, &[16], &y_b, None), "y");
        foreign(a.read_tensor::<f32>(&x_b).map(drop), "tensor");
        foreign(a.read_mask(&mask_b).map(drop), "mask");
        foreign(
            a.ste_backward_device(&x_b, &a.create_mask(16).unwrap(), &y_a),
            "dy",
        );

        let config = ObserverConfig::qat_weight_int8();
        let observer_a = a.create_observer(&config, &[4, 4]).unwrap();
        let observer_b = b.create_observer(&config, &[4, 4]).unwrap();
        let mut encoder = a.create_encoder("foreign");
        foreign(
            observer_a.record_update(&mut encoder, observer_b.batch_stats()),
            "stats",
        );
        foreign(
            a.record_merge_batch_stats(
                &mut encoder,
                observer_a.batch_stats(),
                observer_b.batch_stats(),
            ),
            "from",
        );
        foreign(
            a.read_batch_stats(observer_b.batch_stats()).map(drop),
            "stats",
        );
        let lsq_a = a
            .create_lsq(&LsqConfig::weight_int8(), &[0.1; 4], &[0.0; 4])
            .unwrap();
        foreign(
            lsq_a.record_init_from_observer(&mut encoder, &observer_b),
            "observer",
        );
        foreign(
            a.create_lsq_from_observer(&LsqConfig::weight_int8(), &observer_b)
                .map(drop),
            "observer",
        );
        let lsq_b = b
            .create_lsq(&LsqConfig::weight_int8(), &[0.1; 4], &[0.0; 4])
            .unwrap();
        foreign(
            a.read_lsq_grads(&lsq_b.create_grads().unwrap()).map(drop),
            "grads",
        );
        // A prerecording of B given to A's calls.
        let r = b.prerecord(|recording| {
            prepared_a.record_forward(recording, x_a.binding(), &[16], y_a.binding(), None)
        });
        assert!(
            matches!(&r, Err(Error::ForeignObject { what, .. }) if what.starts_with("recorder")),
            "{r:?}"
        );
        a.submit_and_wait(encoder).unwrap();

        // A caller's own buffer of B: wgpu itself refuses it (both devices come from the one
        // process-wide instance), as an error.
        let raw_b = pool(&b, 64);
        let mut encoder = a.create_encoder("raw foreign buffer");
        let r = prepared_a.record_forward(
            &mut encoder,
            TensorBinding::new(&raw_b, 0),
            &[16],
            y_a.binding(),
            None,
        );
        assert!(matches!(r, Err(Error::Wgpu { .. })), "{r:?}");
        drop(encoder);

        // A's prerecorded work in B's encoder: an error when B submits it, never a panic.
        let replay = a
            .prerecord(|recording| {
                prepared_a.record_forward(recording, x_a.binding(), &[16], y_a.binding(), None)
            })
            .unwrap();
        let mut encoder = b.create_encoder("foreign replay");
        let recorded = replay.record(&mut encoder);
        let submitted = b.submit_and_wait(encoder);
        assert!(
            recorded.is_err() || submitted.is_err(),
            "{}: recorded {recorded:?}, submitted {submitted:?}",
            shared.adapter_name()
        );
        // B still works afterwards, and A was never disturbed.
        b.poll().ok();
        assert_eq!(b.read_tensor::<f32>(&x_b).unwrap(), vec![1.0; 16]);
        prepared_a.forward_device(&x_a, &[16], &y_a, None).unwrap();
        assert_eq!(a.read_tensor::<f32>(&y_a).unwrap(), vec![1.0; 16]);
    }
}

#[test]
fn errors_in_the_callers_own_submissions_are_returned() {
    for shared in contexts() {
        let ctx = fresh_context(shared);
        assert_eq!(ctx.poll(), Ok(()));
        let buffer = pool(&ctx, 64);
        let invalid_submission = || {
            // A copy of 3 bytes: wgpu requires multiples of 4 and drops the whole submission.
            let mut encoder = ctx.create_encoder("caller's own work");
            encoder.copy_buffer_to_buffer(&buffer, 0, &buffer, 32, 3);
            ctx.queue().submit([encoder.finish()]);
        };
        invalid_submission();
        let r = ctx.poll();
        assert!(matches!(r, Err(Error::Uncaptured { .. })), "{r:?}");
        assert_eq!(ctx.poll(), Ok(()), "returned once");
        // Or the next call into the device returns it (and does nothing else).
        invalid_submission();
        let r = ctx.upload(&[1.0f32]);
        assert!(matches!(r, Err(Error::Uncaptured { .. })), "{r:?}");
        let x = ctx.upload(&[1.0f32]).unwrap();
        assert_eq!(ctx.read_tensor::<f32>(&x).unwrap(), vec![1.0]);
    }
}

/// Threads sharing one context (on GL also the adapter's one EGL context, behind wgpu's lock that
/// panics after 6 s) run device-level calls of many dispatches each, over lowered limits, while
/// another thread creates and drops buffers on the same device: every result is the reference's.
/// On GL each dispatch is its own submission, so no thread waits for a whole call of another.
#[test]
fn threads_sharing_a_context_get_the_reference_results() {
    for ctx in contexts() {
        let small = ctx
            .with_dispatch_limits(fakequant::DispatchLimits {
                max_binding_bytes: 1 << 18,
                max_workgroups: 4,
            })
            .unwrap();
        std::thread::scope(|scope| {
            for thread in 0..3u64 {
                let ctx = small.clone();
                scope.spawn(move || {
                    let mut rng = Rng::new(900 + thread);
                    for round in 0..3usize {
                        let shape = [40usize, 5000];
                        let x = crate::common::random_data(&mut rng, 200_000, round, 0.01);
                        let scales: Vec<f32> = (0..40).map(|c| 0.005 + c as f32 * 1e-3).collect();
                        let op = FakeQuant::new(
                            QuantRange::INT8,
                            QuantParams::per_channel(0, scales, vec![3; 40]),
                        )
                        .unwrap();
                        let expected = reference::fake_quant(&op, &x, &shape).unwrap();
                        let got = ctx.fake_quant(&op, &x, &shape).unwrap();
                        let what = format!("thread {thread} round {round}");
                        assert_bits_eq(&what, &x, &expected.y, &got.y);
                        assert_mask_eq(&what, &expected.mask, &got.mask);
                    }
                });
            }
            scope.spawn(|| {
                for _ in 0..40 {
                    drop(pool(&small, 1 << 20));
                }
            });
        });
    }
}
