//! Prerecorded work ([`GpuContext::prerecord`], [`fakequant::Prerecorded`]) replays bit for bit what
//! fresh `record_*` calls record: fake-quant forwards and straight-through backwards against the CPU
//! reference, observer QAT steps and LSQ forward/backward against fresh records on twin objects.
//! Replays read buffer contents when they run (new tensor data, evolving observer state, LSQ
//! parameters loaded in between); a failed or panicking prerecord leaves the thread recording
//! normally; nested prerecords keep only their own work; the pass and dispatch counts.

use crate::common::{
    adversarial, assert_bits_eq, assert_mask_eq, assert_state_eq, contexts, gradients, random_data,
    Rng,
};
use fakequant::reference::lsq as lsq_reference;
use fakequant::reference::observer::Observer;
use fakequant::{
    reference, Averaging, DispatchLimits, Error, FakeQuant, GpuContext, GpuFakeQuant, GpuMask,
    GpuTensor, LsqConfig, Mode, ObserverConfig, PackedMask, Prerecording, QScheme, QuantParams,
    QuantRange, Recorder, Rounding,
};

/// Writes `data` into the start of `buffer` (takes effect before the next submission).
fn write_f32(ctx: &GpuContext, buffer: &wgpu::Buffer, data: &[f32]) {
    ctx.queue()
        .write_buffer(buffer, 0, bytemuck::cast_slice(data));
}

/// Fills an output tensor with a NaN pattern no kernel produces, so that a dispatch that did not
/// run (or ran on stale inputs of equal result) cannot pass for one that did.
fn poison_tensor(ctx: &GpuContext, t: &GpuTensor) {
    let words = vec![0x7fa5_a5a5u32; t.len().max(1)];
    ctx.queue()
        .write_buffer(t.buffer(), 0, bytemuck::cast_slice(&words));
}

fn poison_mask(ctx: &GpuContext, m: &GpuMask) {
    let words = vec![0xa5a5_a5a5u32; PackedMask::words_for(m.len()).max(1)];
    ctx.queue()
        .write_buffer(m.buffer(), 0, bytemuck::cast_slice(&words));
}

fn assert_poisoned(context: &str, ctx: &GpuContext, t: &GpuTensor) {
    let got = ctx.read_tensor::<f32>(t).unwrap();
    assert!(
        got.iter().all(|v| v.to_bits() == 0x7fa5_a5a5),
        "{context}: the output was written"
    );
}

/// One tensor of the forward test: a per-tensor op (with and without mask) and a per-channel op
/// (with mask, followed by the straight-through backward through that mask).
struct Layer {
    n: usize,
    channel_shape: Vec<usize>,
    per_tensor: GpuFakeQuant,
    per_channel: GpuFakeQuant,
    x: GpuTensor,
    dy: GpuTensor,
    y_tensor: GpuTensor,
    mask_tensor: GpuMask,
    y_unmasked: GpuTensor,
    y_channel: GpuTensor,
    mask_channel: GpuMask,
    dx: GpuTensor,
}

impl Layer {
    fn new(
        ctx: &GpuContext,
        rng: &mut Rng,
        n: usize,
        channel_shape: Vec<usize>,
        axis: usize,
    ) -> Self {
        let range = QuantRange::INT8;
        let scale = 2f32.powf(rng.uniform(-12.0, 4.0));
        let zp = rng.below(256) as i32 - 128;
        let per_tensor = FakeQuant::new(range, QuantParams::per_tensor(scale, zp)).unwrap();
        let channels = channel_shape[axis];
        let scales: Vec<f32> = (0..channels)
            .map(|_| 2f32.powf(rng.uniform(-12.0, 4.0)))
            .collect();
        let zps: Vec<i32> = (0..channels).map(|_| rng.below(256) as i32 - 128).collect();
        // Both roundings of the quotient, one per layer parity.
        let rounding = if n.is_multiple_of(2) {
            Rounding::Reciprocal
        } else {
            Rounding::Quotient
        };
        let per_channel = FakeQuant::new(range, QuantParams::per_channel(axis, scales, zps))
            .unwrap()
            .with_rounding(rounding);
        Self {
            n,
            channel_shape,
            per_tensor: ctx.prepare(&per_tensor).unwrap(),
            per_channel: ctx.prepare(&per_channel).unwrap(),
            x: ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
            dy: ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
            y_tensor: ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
            mask_tensor: ctx.create_mask(n).unwrap(),
            y_unmasked: ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
            y_channel: ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
            mask_channel: ctx.create_mask(n).unwrap(),
            dx: ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
        }
    }

    fn record(&self, ctx: &GpuContext, encoder: &mut dyn Recorder) -> fakequant::Result<()> {
        let n = self.n;
        self.per_tensor.record_forward(
            encoder,
            self.x.binding(),
            &[n],
            self.y_tensor.binding(),
            Some(self.mask_tensor.binding()),
        )?;
        self.per_tensor.record_forward(
            encoder,
            self.x.binding(),
            &[n],
            self.y_unmasked.binding(),
            None,
        )?;
        self.per_channel.record_forward(
            encoder,
            self.x.binding(),
            &self.channel_shape,
            self.y_channel.binding(),
            Some(self.mask_channel.binding()),
        )?;
        ctx.record_ste_backward(
            encoder,
            self.dy.binding(),
            self.mask_channel.binding(),
            self.dx.binding(),
            n,
        )
    }

    /// New random contents for x (starting with the per-tensor op's adversarial corpus) and dy.
    fn contents(&self, rng: &mut Rng, round: usize) -> (Vec<f32>, Vec<f32>) {
        let op = self.per_tensor.op();
        let (scale, zp) = (op.params().scales()[0], op.params().zero_points()[0]);
        let mut x = adversarial(scale, zp, op.range());
        let shift = round * 7 % x.len();
        x.rotate_left(shift);
        x.truncate(self.n / 2);
        x.extend(random_data(rng, self.n - x.len(), round + self.n, scale));
        (x, gradients(rng, self.n))
    }

    fn poison_outputs(&self, ctx: &GpuContext) {
        for t in [&self.y_tensor, &self.y_unmasked, &self.y_channel, &self.dx] {
            poison_tensor(ctx, t);
        }
        poison_mask(ctx, &self.mask_tensor);
        poison_mask(ctx, &self.mask_channel);
    }

    fn check(&self, ctx: &GpuContext, x: &[f32], dy: &[f32], label: &str) {
        let n = self.n;
        let context = format!("{label} n={n} on {}", ctx.adapter_name());
        let t = reference::fake_quant(self.per_tensor.op(), x, &[n]).unwrap();
        assert_bits_eq(
            &format!("{context}: per-tensor y"),
            x,
            &t.y,
            &ctx.read_tensor(&self.y_tensor).unwrap(),
        );
        assert_mask_eq(
            &format!("{context}: per-tensor mask"),
            &t.mask,
            &ctx.read_mask(&self.mask_tensor).unwrap(),
        );
        assert_bits_eq(
            &format!("{context}: per-tensor y without mask"),
            x,
            &t.y,
            &ctx.read_tensor(&self.y_unmasked).unwrap(),
        );
        let c = reference::fake_quant(self.per_channel.op(), x, &self.channel_shape).unwrap();
        assert_bits_eq(
            &format!("{context}: per-channel y"),
            x,
            &c.y,
            &ctx.read_tensor(&self.y_channel).unwrap(),
        );
        let mask = c.mask;
        assert_mask_eq(
            &format!("{context}: per-channel mask"),
            &mask,
            &ctx.read_mask(&self.mask_channel).unwrap(),
        );
        assert_bits_eq(
            &format!("{context}: dx"),
            dy,
            &reference::ste_backward(dy, &mask).unwrap(),
            &ctx.read_tensor(&self.dx).unwrap(),
        );
    }
}

fn layers(ctx: &GpuContext, rng: &mut Rng) -> Vec<Layer> {
    vec![
        Layer::new(ctx, rng, 1, vec![1], 0),
        Layer::new(ctx, rng, 31, vec![31], 0),
        Layer::new(ctx, rng, 33, vec![3, 11], 1),
        Layer::new(ctx, rng, 4097, vec![17, 241], 0),
        Layer::new(ctx, rng, 70_001, vec![1, 70_001, 1], 1),
        Layer::new(ctx, rng, 70_000, vec![7, 100, 100], 1),
    ]
}

#[test]
fn prerecorded_forward_and_backward_replays_match_reference_and_read_new_buffer_contents() {
    let mut rng = Rng::new(0x9e_c0);
    for ctx in contexts() {
        let layers = layers(ctx, &mut rng);
        let work = ctx
            .prerecord(|encoder| {
                for layer in &layers {
                    layer.record(ctx, encoder)?;
                }
                Ok(())
            })
            .unwrap();
        assert!(
            work.passes() >= 4 * layers.len(),
            "{} passes",
            work.passes()
        );
        assert!(work.dispatches() >= work.passes());

        // Round 0: contents written with the queue, replayed by `run`.
        // Round 1: new contents into the same buffers, replayed into a caller's encoder.
        // Round 2: new contents copied into x and dy earlier in the same encoder as the replay.
        for round in 0..3 {
            let contents: Vec<(Vec<f32>, Vec<f32>)> =
                layers.iter().map(|l| l.contents(&mut rng, round)).collect();
            for layer in &layers {
                layer.poison_outputs(ctx);
            }
            match round {
                0 | 1 => {
                    for (layer, (x, dy)) in layers.iter().zip(&contents) {
                        write_f32(ctx, layer.x.buffer(), x);
                        write_f32(ctx, layer.dy.buffer(), dy);
                    }
                    if round == 0 {
                        work.run().unwrap();
                    } else {
                        let mut encoder = ctx.create_encoder("replay");
                        work.record(&mut encoder).unwrap();
                        ctx.submit_and_wait(encoder).unwrap();
                    }
                }
                _ => {
                    let sources: Vec<(GpuTensor, GpuTensor)> = contents
                        .iter()
                        .map(|(x, dy)| (ctx.upload(x).unwrap(), ctx.upload(dy).unwrap()))
                        .collect();
                    let mut encoder = ctx.create_encoder("copy then replay");
                    for (layer, (x, dy)) in layers.iter().zip(&sources) {
                        let bytes = layer.n as u64 * 4;
                        encoder.copy_buffer_to_buffer(x.buffer(), 0, layer.x.buffer(), 0, bytes);
                        encoder.copy_buffer_to_buffer(dy.buffer(), 0, layer.dy.buffer(), 0, bytes);
                    }
                    work.record(&mut encoder).unwrap();
                    ctx.submit_and_wait(encoder).unwrap();
                }
            }
            for (layer, (x, dy)) in layers.iter().zip(&contents) {
                layer.check(ctx, x, dy, &format!("replay round {round}"));
            }
        }
    }
}

#[test]
fn prerecorded_forward_over_small_bindings_and_workgroup_limits_matches_reference() {
    // Lowered limits split a tensor into several bindings and make the kernels loop over tiles:
    // several dispatches per pass, all kept and replayed.
    let mut rng = Rng::new(0x11_4175);
    for base in contexts() {
        let ctx = &base
            .with_dispatch_limits(DispatchLimits {
                max_binding_bytes: 1 << 18,
                max_workgroups: 3,
            })
            .unwrap();
        let layer = Layer::new(ctx, &mut rng, 200_001, vec![3, 66_667], 0);
        let work = ctx.prerecord(|encoder| layer.record(ctx, encoder)).unwrap();
        assert!(
            work.dispatches() > work.passes(),
            "{} dispatches in {} passes",
            work.dispatches(),
            work.passes()
        );
        for round in 0..2 {
            let (x, dy) = layer.contents(&mut rng, round);
            layer.poison_outputs(ctx);
            write_f32(ctx, layer.x.buffer(), &x);
            write_f32(ctx, layer.dy.buffer(), &dy);
            work.run().unwrap();
            layer.check(ctx, &x, &dy, &format!("small limits round {round}"));
        }
    }
}

#[test]
fn prerecorded_observer_qat_steps_equal_fresh_record_step_calls() {
    const STEPS: usize = 3;
    let mut rng = Rng::new(0x0b5e);
    // Per-channel weights (moving average), per-tensor affine activations (min/max) with a mask.
    let weight_config = ObserverConfig::qat_weight_int8();
    let act_config = ObserverConfig::new(
        QuantRange::UINT8,
        QScheme::Affine,
        Averaging::MinMax,
        fakequant::Granularity::PerTensor,
    )
    .unwrap();
    let (w_shape, a_shape) = ([16usize, 8, 3, 3], [8usize, 16, 5, 5]);
    let (w_len, a_len) = (16 * 72, 8 * 16 * 25);
    for ctx in contexts() {
        let replayed = (
            ctx.create_observer(&weight_config, &[16]).unwrap(),
            ctx.create_observer(&act_config, &[]).unwrap(),
        );
        let fresh = (
            ctx.create_observer(&weight_config, &[16]).unwrap(),
            ctx.create_observer(&act_config, &[]).unwrap(),
        );
        let mut cpu = (
            Observer::new(weight_config.clone(), &[16]).unwrap(),
            Observer::new(act_config.clone(), &[]).unwrap(),
        );
        let (w, a) = (
            ctx.create_tensor(w_len, fakequant::DType::F32).unwrap(),
            ctx.create_tensor(a_len, fakequant::DType::F32).unwrap(),
        );
        // Outputs of the replayed and of the fresh observers.
        let outputs: Vec<(GpuTensor, GpuTensor, GpuMask)> = (0..2)
            .map(|_| {
                (
                    ctx.create_tensor(w_len, fakequant::DType::F32).unwrap(),
                    ctx.create_tensor(a_len, fakequant::DType::F32).unwrap(),
                    ctx.create_mask(a_len).unwrap(),
                )
            })
            .collect();
        let record = |encoder: &mut dyn Recorder,
                      observers: &(fakequant::GpuObserver, fakequant::GpuObserver),
                      (wq, aq, mask): &(GpuTensor, GpuTensor, GpuMask)|
         -> fakequant::Result<()> {
            observers.0.record_step(
                encoder,
                w.binding(),
                &w_shape,
                wq.binding(),
                None,
                Mode::Qat,
            )?;
            observers.1.record_step(
                encoder,
                a.binding(),
                &a_shape,
                aq.binding(),
                Some(mask.binding()),
                Mode::Qat,
            )
        };
        let work = ctx
            .prerecord(|encoder| record(encoder, &replayed, &outputs[0]))
            .unwrap();
        assert!(work.passes() > 0 && work.dispatches() >= work.passes());

        let mut scales_seen = Vec::new();
        for step in 0..STEPS {
            // New batches each step, activations growing so the min/max range widens.
            let wx: Vec<f32> = (0..w_len).map(|_| rng.normal() * 0.1).collect();
            let ax: Vec<f32> = (0..a_len)
                .map(|i| {
                    // Non-finite values, which the observer skips.
                    if i % 211 == 0 {
                        [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3]
                    } else {
                        rng.normal().max(0.0) * (step + 1) as f32 - 0.25
                    }
                })
                .collect();
            write_f32(ctx, w.buffer(), &wx);
            write_f32(ctx, a.buffer(), &ax);
            for (wq, aq, mask) in &outputs {
                poison_tensor(ctx, wq);
                poison_tensor(ctx, aq);
                poison_mask(ctx, mask);
            }
            work.run().unwrap();
            let mut encoder = ctx.create_encoder("fresh step");
            record(&mut encoder, &fresh, &outputs[1]).unwrap();
            ctx.submit_and_wait(encoder).unwrap();

            let ew = cpu.0.step(&wx, &w_shape, Mode::Qat).unwrap();
            let ea = cpu.1.step(&ax, &a_shape, Mode::Qat).unwrap();
            let context = format!("step {step} on {}", ctx.adapter_name());
            let states = [
                (&replayed.0, &fresh.0, cpu.0.state(), "weights"),
                (&replayed.1, &fresh.1, cpu.1.state(), "activations"),
            ];
            for (r, f, c, what) in states {
                let got = r.read_state().unwrap();
                assert_state_eq(
                    &format!("{context}: {what} replayed vs fresh"),
                    &f.read_state().unwrap(),
                    &got,
                );
                assert_state_eq(&format!("{context}: {what} replayed vs reference"), c, &got);
            }
            scales_seen.push((
                replayed.0.read_state().unwrap().scales,
                replayed.1.read_state().unwrap().scales,
            ));
            let (rw, ra, rm) = &outputs[0];
            let (fw, fa, fm) = &outputs[1];
            let fresh_w = ctx.read_tensor(fw).unwrap();
            let fresh_a = ctx.read_tensor(fa).unwrap();
            let fresh_m = ctx.read_mask(fm).unwrap();
            assert_bits_eq(
                &format!("{context}: fresh weights vs reference"),
                &wx,
                &ew.y,
                &fresh_w,
            );
            assert_bits_eq(
                &format!("{context}: weights y"),
                &wx,
                &fresh_w,
                &ctx.read_tensor(rw).unwrap(),
            );
            assert_bits_eq(
                &format!("{context}: fresh acts vs reference"),
                &ax,
                &ea.y,
                &fresh_a,
            );
            assert_bits_eq(
                &format!("{context}: acts y"),
                &ax,
                &fresh_a,
                &ctx.read_tensor(ra).unwrap(),
            );
            assert_mask_eq(&format!("{context}: fresh acts mask"), &ea.mask, &fresh_m);
            assert_mask_eq(
                &format!("{context}: acts mask"),
                &fresh_m,
                &ctx.read_mask(rm).unwrap(),
            );
        }
        // The state evolved across replays (it is read from the buffers, not baked in).
        let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for k in 1..STEPS {
            assert_ne!(
                bits(&scales_seen[k - 1].0),
                bits(&scales_seen[k].0),
                "weights step {k}"
            );
            assert_ne!(
                bits(&scales_seen[k - 1].1),
                bits(&scales_seen[k].1),
                "acts step {k}"
            );
        }
    }
}

/// A configuration, a shape and the initial learnable scales and zero points.
type LsqCase = (LsqConfig, Vec<usize>, Vec<f32>, Vec<f32>);

#[test]
fn prerecorded_lsq_forward_and_backward_equal_a_fresh_record() {
    let mut rng = Rng::new(0x15_9000);
    let cases: Vec<LsqCase> = vec![
        (
            LsqConfig::new(QuantRange::INT8, fakequant::Granularity::per_channel(1)).unwrap(),
            vec![4, 6, 250],
            (0..6).map(|c| 0.01 + 0.004 * c as f32).collect(),
            (0..6).map(|c| c as f32 * 1.5 - 3.0).collect(),
        ),
        (
            LsqConfig::activation_int8(),
            vec![70_001],
            vec![0.05],
            vec![3.4],
        ),
    ];
    for ctx in contexts() {
        for (config, shape, scales0, zps0) in &cases {
            let n: usize = shape.iter().product();
            let replayed = ctx.create_lsq(config, scales0, zps0).unwrap();
            let fresh = ctx.create_lsq(config, scales0, zps0).unwrap();
            let (x, dy) = (
                ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
                ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
            );
            // Per quantizer: y, mask, dx, reduced gradients.
            let outputs: Vec<_> = [&replayed, &fresh]
                .iter()
                .map(|lsq| {
                    (
                        ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
                        ctx.create_mask(n).unwrap(),
                        ctx.create_tensor(n, fakequant::DType::F32).unwrap(),
                        lsq.create_grads().unwrap(),
                    )
                })
                .collect();
            let record =
                |encoder: &mut dyn Recorder,
                 lsq: &fakequant::GpuLsq,
                 (y, mask, dx, grads): &(GpuTensor, GpuMask, GpuTensor, fakequant::GpuLsqGrads)|
                 -> fakequant::Result<()> {
                    lsq.record_forward(
                        encoder,
                        x.binding(),
                        shape,
                        y.binding(),
                        Some(mask.binding()),
                    )?;
                    lsq.record_backward(
                        encoder,
                        x.binding(),
                        dy.binding(),
                        shape,
                        dx.binding(),
                        grads,
                    )
                };
            let work = ctx
                .prerecord(|encoder| record(encoder, &replayed, &outputs[0]))
                .unwrap();
            assert!(work.passes() > 0 && work.dispatches() >= work.passes());

            for step in 0..3 {
                // New data and new learnable parameters (as an optimizer step would) each time.
                let xs = random_data(&mut rng, n, step + 1, scales0[0]);
                let dys = gradients(&mut rng, n);
                let scales: Vec<f32> = scales0
                    .iter()
                    .map(|s| s * (1.0 + 0.3 * step as f32))
                    .collect();
                let zps: Vec<f32> = zps0.iter().map(|z| z + 0.7 * step as f32).collect();
                write_f32(ctx, x.buffer(), &xs);
                write_f32(ctx, dy.buffer(), &dys);
                for lsq in [&replayed, &fresh] {
                    lsq.load_params(&scales, &zps).unwrap();
                }
                for (y, mask, dx, _) in &outputs {
                    poison_tensor(ctx, y);
                    poison_tensor(ctx, dx);
                    poison_mask(ctx, mask);
                }
                work.run().unwrap();
                let mut encoder = ctx.create_encoder("fresh lsq");
                record(&mut encoder, &fresh, &outputs[1]).unwrap();
                ctx.submit_and_wait(encoder).unwrap();

                let context = format!("{shape:?} step {step} on {}", ctx.adapter_name());
                let ef = lsq_reference::forward(config, &xs, shape, &scales, &zps).unwrap();
                let eb = lsq_reference::backward(config, &xs, &dys, shape, &scales, &zps).unwrap();
                let (ry, rm, rdx, rg) = &outputs[0];
                let (fy, fm, fdx, fg) = &outputs[1];
                let fresh_y = ctx.read_tensor(fy).unwrap();
                let fresh_m = ctx.read_mask(fm).unwrap();
                let fresh_dx = ctx.read_tensor(fdx).unwrap();
                let fresh_g = ctx.read_lsq_grads(fg).unwrap();
                // The fresh record is itself the reference's.
                assert_bits_eq(&format!("{context}: fresh y"), &xs, &ef.y, &fresh_y);
                assert_mask_eq(&format!("{context}: fresh mask"), &ef.mask, &fresh_m);
                assert_bits_eq(&format!("{context}: fresh dx"), &dys, &eb.dx, &fresh_dx);
                assert_bits_eq(
                    &format!("{context}: fresh dscale"),
                    &[],
                    &eb.dscale,
                    &fresh_g.0,
                );
                assert_bits_eq(
                    &format!("{context}: fresh dzero_point"),
                    &[],
                    &eb.dzero_point,
                    &fresh_g.1,
                );
                // The replay equals the fresh record.
                let got_g = ctx.read_lsq_grads(rg).unwrap();
                assert_bits_eq(
                    &format!("{context}: y"),
                    &xs,
                    &fresh_y,
                    &ctx.read_tensor(ry).unwrap(),
                );
                assert_mask_eq(
                    &format!("{context}: mask"),
                    &fresh_m,
                    &ctx.read_mask(rm).unwrap(),
                );
                assert_bits_eq(
                    &format!("{context}: dx"),
                    &dys,
                    &fresh_dx,
                    &ctx.read_tensor(rdx).unwrap(),
                );
                assert_bits_eq(&format!("{context}: dscale"), &[], &fresh_g.0, &got_g.0);
                assert_bits_eq(
                    &format!("{context}: dzero_point"),
                    &[],
                    &fresh_g.1,
                    &got_g.1,
                );
            }
        }
    }
}

/// An ordinary record_forward on this thread: it must be encoded (not kept by a leftover capture)
/// and give the reference's result.
fn assert_ordinary_record_runs(ctx: &GpuContext, fq: &GpuFakeQuant, x: &[f32], label: &str) {
    let x_dev = ctx.upload(x).unwrap();
    let y = ctx.create_tensor(x.len(), fakequant::DType::F32).unwrap();
    let mask = ctx.create_mask(x.len()).unwrap();
    poison_tensor(ctx, &y);
    let mut encoder = ctx.create_encoder("ordinary");
    fq.record_forward(
        &mut encoder,
        x_dev.binding(),
        &[x.len()],
        y.binding(),
        Some(mask.binding()),
    )
    .unwrap();
    ctx.submit_and_wait(encoder).unwrap();
    let expected = reference::fake_quant(fq.op(), x, &[x.len()]).unwrap();
    let context = format!("{label} on {}", ctx.adapter_name());
    assert_bits_eq(
        &format!("{context}: y"),
        x,
        &expected.y,
        &ctx.read_tensor(&y).unwrap(),
    );
    assert_mask_eq(
        &format!("{context}: mask"),
        &expected.mask,
        &ctx.read_mask(&mask).unwrap(),
    );
}

#[test]
fn failed_or_panicking_prerecord_restores_ordinary_recording() {
    let mut rng = Rng::new(0xe4);
    let n = 1000;
    for ctx in contexts() {
        let fq = ctx
            .prepare(&FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.02, 3)).unwrap())
            .unwrap();
        let x = random_data(&mut rng, n, 0, 0.02);
        let x_dev = ctx.upload(&x).unwrap();
        let y = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
        let y_short = ctx.create_tensor(n - 1, fakequant::DType::F32).unwrap();
        let mask_short = ctx.create_mask(n - 40).unwrap();
        let observer = ctx
            .create_observer(&ObserverConfig::qat_weight_int8(), &[4])
            .unwrap();
        poison_tensor(ctx, &y);

        // A valid call, then y too small: the error comes out of prerecord.
        let result = ctx.prerecord(|encoder| {
            fq.record_forward(encoder, x_dev.binding(), &[n], y.binding(), None)?;
            fq.record_forward(encoder, x_dev.binding(), &[n], y_short.binding(), None)
        });
        assert!(
            matches!(result, Err(Error::InvalidBuffer { what: "y", .. })),
            "{result:?}"
        );
        assert_ordinary_record_runs(ctx, &fq, &x, "after y too small");
        // The valid call kept before the failure ran nowhere.
        assert_poisoned("kept work of the failed prerecord", ctx, &y);

        // A mask shorter than the gradient.
        let result = ctx.prerecord(|encoder| {
            ctx.record_ste_backward(
                encoder,
                x_dev.binding(),
                mask_short.binding(),
                y.binding(),
                n,
            )
        });
        assert!(
            matches!(result, Err(Error::InvalidBuffer { what: "mask", .. })),
            "{result:?}"
        );
        assert_ordinary_record_runs(ctx, &fq, &x, "after a short mask");

        // A shape whose channel count differs from the observer's.
        let result = ctx.prerecord(|encoder| {
            observer.record_step(
                encoder,
                x_dev.binding(),
                &[5, 200],
                y.binding(),
                None,
                Mode::Qat,
            )
        });
        assert!(
            matches!(result, Err(Error::ChannelCountMismatch { .. })),
            "{result:?}"
        );
        assert_ordinary_record_runs(ctx, &fq, &x, "after a channel mismatch");

        // A closure that panics after recording.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = ctx.prerecord(|encoder| {
                fq.record_forward(encoder, x_dev.binding(), &[n], y.binding(), None)?;
                panic!("deliberate panic inside prerecord");
            });
        }));
        assert!(panicked.is_err());
        assert_ordinary_record_runs(ctx, &fq, &x, "after a panic");
        assert_poisoned("kept work of the panicking prerecord", ctx, &y);
    }
}

#[test]
fn nested_prerecord_keeps_only_its_own_passes() {
    let mut rng = Rng::new(0x4e57);
    for ctx in contexts() {
        let fq = ctx
            .prepare(&FakeQuant::new(QuantRange::INT4, QuantParams::per_tensor(0.25, -1)).unwrap())
            .unwrap();
        let mut layer = |n: usize| {
            let x = random_data(&mut rng, n, n, 0.25);
            let x_dev = ctx.upload(&x).unwrap();
            let y = ctx.create_tensor(n, fakequant::DType::F32).unwrap();
            let mask = ctx.create_mask(n).unwrap();
            (x, x_dev, y, mask)
        };
        let (a, b, c) = (layer(4097), layer(300), layer(33));
        let (y_short, dx_b) = (
            ctx.create_tensor(10, fakequant::DType::F32).unwrap(),
            ctx.create_tensor(300, fakequant::DType::F32).unwrap(),
        );
        let record =
            |encoder: &mut dyn Recorder,
             (x, x_dev, y, mask): &(Vec<f32>, GpuTensor, GpuTensor, GpuMask)| {
                fq.record_forward(
                    encoder,
                    x_dev.binding(),
                    &[x.len()],
                    y.binding(),
                    Some(mask.binding()),
                )
            };
        // The inner work: b's forward, then the backward through b's mask (b's x as the gradient).
        let record_inner = |e: &mut Prerecording| {
            record(e, &b)?;
            ctx.record_ste_backward(e, b.1.binding(), b.3.binding(), dx_b.binding(), 300)
        };
        // Each alone, for the expected counts.
        let alone = [
            ctx.prerecord(|e| record(e, &a)).unwrap(),
            ctx.prerecord(record_inner).unwrap(),
            ctx.prerecord(|e| record(e, &c)).unwrap(),
        ];
        for p in &alone {
            assert!(p.passes() > 0 && p.dispatches() >= p.passes());
        }

        let mut inner = None;
        let outer = ctx
            .prerecord(|encoder| {
                record(encoder, &a)?;
                inner = Some(ctx.prerecord(record_inner)?);
                // A failing and a panicking nested prerecord drop their work and leave the outer
                // one intact.
                let failed = ctx.prerecord(|e| {
                    record(e, &b)?;
                    fq.record_forward(e, b.1.binding(), &[300], y_short.binding(), None)
                });
                assert!(failed.is_err());
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _ = ctx.prerecord(|e| {
                        record(e, &b)?;
                        panic!("deliberate panic inside a nested prerecord");
                    });
                }));
                assert!(panicked.is_err());
                record(encoder, &c)
            })
            .unwrap();
        let inner = inner.unwrap();
        assert_eq!(outer.passes(), alone[0].passes() + alone[2].passes());
        assert_eq!(
            outer.dispatches(),
            alone[0].dispatches() + alone[2].dispatches()
        );
        assert_eq!(inner.passes(), alone[1].passes());
        assert_eq!(inner.dispatches(), alone[1].dispatches());

        for t in [&a.2, &b.2, &c.2, &dx_b] {
            poison_tensor(ctx, t);
        }
        outer.run().unwrap();
        let check = |(x, _, y, mask): &(Vec<f32>, GpuTensor, GpuTensor, GpuMask), label: &str| {
            let expected = reference::fake_quant(fq.op(), x, &[x.len()]).unwrap();
            let context = format!("{label} on {}", ctx.adapter_name());
            assert_bits_eq(
                &format!("{context}: y"),
                x,
                &expected.y,
                &ctx.read_tensor(y).unwrap(),
            );
            assert_mask_eq(
                &format!("{context}: mask"),
                &expected.mask,
                &ctx.read_mask(mask).unwrap(),
            );
        };
        check(&a, "outer a");
        check(&c, "outer c");
        assert_poisoned("inner forward after the outer replay", ctx, &b.2);
        assert_poisoned("inner backward after the outer replay", ctx, &dx_b);
        poison_tensor(ctx, &a.2);
        poison_tensor(ctx, &c.2);
        inner.run().unwrap();
        check(&b, "inner b");
        let mask = reference::fake_quant(fq.op(), &b.0, &[300]).unwrap().mask;
        assert_bits_eq(
            "inner dx",
            &b.0,
            &reference::ste_backward(&b.0, &mask).unwrap(),
            &ctx.read_tensor(&dx_b).unwrap(),
        );
        assert_poisoned("outer a after the inner replay", ctx, &a.2);
        assert_poisoned("outer c after the inner replay", ctx, &c.2);
    }
}

#[test]
fn pass_and_dispatch_counts_and_empty_replays() {
    for ctx in contexts() {
        let empty = ctx.prerecord(|_| Ok(())).unwrap();
        assert_eq!((empty.passes(), empty.dispatches()), (0, 0));
        empty.run().unwrap();
        let mut encoder = ctx.create_encoder("empty replay");
        empty.record(&mut encoder).unwrap();
        empty.record(&mut encoder).unwrap();
        ctx.submit_and_wait(encoder).unwrap();
        assert!(format!("{empty:?}").contains("passes: 0"));

        // Work on an empty tensor records nothing. (A prerecording is not an encoder: encoding
        // into it directly no longer compiles, so nothing can be dropped silently.)
        let fq = ctx
            .prepare(&FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.1, 0)).unwrap())
            .unwrap();
        let (x0, y0) = (
            ctx.create_tensor(0, fakequant::DType::F32).unwrap(),
            ctx.create_tensor(0, fakequant::DType::F32).unwrap(),
        );
        let x = ctx.upload(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        let y = ctx.create_tensor(4, fakequant::DType::F32).unwrap();
        let nothing = ctx
            .prerecord(|encoder| fq.record_forward(encoder, x0.binding(), &[0], y0.binding(), None))
            .unwrap();
        assert_eq!((nothing.passes(), nothing.dispatches()), (0, 0));
        nothing.run().unwrap();

        // Non-empty work counts its passes and dispatches, and replays any number of times.
        let one = ctx
            .prerecord(|encoder| fq.record_forward(encoder, x.binding(), &[4], y.binding(), None))
            .unwrap();
        assert!(one.passes() >= 1 && one.dispatches() >= one.passes());
        assert!(format!("{one:?}").contains(&format!("passes: {}", one.passes())));
        for _ in 0..3 {
            poison_tensor(ctx, &y);
            one.run().unwrap();
            let expected = reference::fake_quant(fq.op(), &[1.0, 2.0, 3.0, 4.0], &[4]).unwrap();
            assert_bits_eq(
                "tiny replay",
                &[],
                &expected.y,
                &ctx.read_tensor(&y).unwrap(),
            );
        }
    }
}
