//! The `Backend` interface: one generic recipe (fake-quant, straight-through, observers with
//! observe-only calibration and fused steps, LSQ initialized from an observer, forward, backward,
//! parameter updates, floating-point formats) runs on the CPU reference and on every GPU adapter, and every value it
//! produces has the same bits.

use fakequant::{
    Backend, Cpu, ElementFormat, FakeQuant, FloatQuantConfig, FloatQuantOps, GradScale,
    Granularity, LsqConfig, LsqOps, Mode, MxScaleRule, ObserverConfig, ObserverOps, QuantParams,
    QuantRange, Reference,
};
use half::{bf16, f16};

use crate::common::{contexts, random_data, Rng};

/// Everything the recipe produced, as bits, labelled.
type Transcript = Vec<(String, Vec<u32>)>;

fn bits(values: impl IntoIterator<Item = u32>) -> Vec<u32> {
    values.into_iter().collect()
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    bits(v.iter().map(|x| x.to_bits()))
}

fn recipe<B: Backend>(backend: &B) -> fakequant::Result<Transcript> {
    let mut out: Transcript = Vec::new();
    let mut rng = Rng::new(0x5eed);
    let shape = [8, 3, 5, 7];
    let n: usize = shape.iter().product();
    let x = random_data(&mut rng, n, 2, 3.0);
    let dy = random_data(&mut rng, n, 0, 1.0);

    // Fake-quant and straight-through, f32 and bf16.
    let op = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_channel(1, vec![0.02, 0.05, 0.11], vec![0, 3, -7]),
    )?;
    let fq = backend.fake_quant(&op, &x, &shape)?;
    out.push(("fake_quant y".into(), f32_bits(&fq.y)));
    let mask = fq.mask;
    out.push(("fake_quant mask".into(), mask.words().to_vec()));
    out.push((
        "ste dx".into(),
        f32_bits(&backend.ste_backward(&dy, &mask)?),
    ));
    let x16: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let fq16 = backend.fake_quant(&op, &x16, &shape)?;
    out.push((
        "fake_quant bf16 y".into(),
        bits(fq16.y.iter().map(|v| v.to_bits() as u32)),
    ));

    // An observer calibrated by observe-only calls, then QAT steps.
    let config = ObserverConfig::qat_weight_int8();
    let mut observer = backend.create_observer(&config, &shape)?;
    for batch in 0..3 {
        let xb = random_data(&mut rng, n, batch % 3, 2.0);
        observer.observe(&xb, &shape)?;
    }
    let state = observer.read_state()?;
    out.push(("observed scales".into(), f32_bits(&state.scales)));
    let step = observer.step(&x, &shape, Mode::Qat)?;
    out.push(("observer QAT y".into(), f32_bits(&step.y)));
    out.push(("observer QAT mask".into(), step.mask.words().to_vec()));
    let x_half: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let frozen = observer.step(&x_half, &shape, Mode::Frozen)?;
    out.push((
        "observer frozen f16 y".into(),
        bits(frozen.y.iter().map(|v| v.to_bits() as u32)),
    ));
    let state = observer.read_state()?;
    out.push(("observer running min".into(), f32_bits(&state.running.min)));
    out.push((
        "observer zero points".into(),
        bits(state.zero_points.iter().map(|&z| z as u32)),
    ));

    // LSQ from the observer: forward, backward, an SGD step on the scales, forward again.
    let lsq_config = LsqConfig::new(QuantRange::INT8, Granularity::per_channel(0))?
        .with_grad_scale(GradScale::Lsq)?;
    let mut lsq = backend.create_lsq_from_observer(&lsq_config, &observer)?;
    let (scales, zero_points) = lsq.read_params()?;
    out.push(("lsq initial scales".into(), f32_bits(&scales)));
    let forward = lsq.forward(&x, &shape)?;
    out.push(("lsq y".into(), f32_bits(&forward.y)));
    let grads = lsq.backward(&x, &dy, &shape)?;
    out.push(("lsq dx".into(), f32_bits(&grads.dx)));
    out.push(("lsq dscale".into(), f32_bits(&grads.dscale)));
    out.push(("lsq dzero_point".into(), f32_bits(&grads.dzero_point)));
    let stepped: Vec<f32> = scales
        .iter()
        .zip(&grads.dscale)
        .map(|(s, g)| s - 0.01 * g)
        .collect();
    lsq.load_params(&stepped, &zero_points)?;
    out.push((
        "lsq y after a step".into(),
        f32_bits(&lsq.forward(&x, &shape)?.y),
    ));
    let init = lsq.init_from_data(&x, &shape)?;
    out.push(("lsq init from data".into(), f32_bits(&init)));
    // Floating-point formats: MXFP4 on a [26, 32] view (the last axis holds whole blocks), FP8
    // per channel along axis 1.
    for (name, config, view) in [
        (
            "mxfp4",
            FloatQuantConfig::mx(ElementFormat::Fp4E2M1, MxScaleRule::Rceil)?,
            vec![26, 32],
        ),
        (
            "fp8",
            FloatQuantConfig::fp8(ElementFormat::Fp8E5M2, Granularity::per_channel(1))?,
            shape.to_vec(),
        ),
    ] {
        let len: usize = view.iter().product();
        let mut float = backend.create_float_quant(&config, &view)?;
        let got = float.forward(&x[..len], &view)?;
        out.push((format!("{name} y"), f32_bits(&got.y)));
        out.push((format!("{name} mask"), got.mask.words().to_vec()));
        out.push((
            format!("{name} codes"),
            bits(got.codes.iter().map(|&c| u32::from(c))),
        ));
    }
    Ok(out)
}

#[test]
fn every_backend_gives_the_reference_bits() {
    let expected = recipe(&Reference).unwrap();
    assert!(expected.len() > 15);
    let check = |name: String, got: Transcript| {
        assert_eq!(got.len(), expected.len());
        for ((label, e), (_, g)) in expected.iter().zip(&got) {
            assert_eq!(e.len(), g.len(), "{label} on {name}");
            if let Some(i) = e.iter().zip(g).position(|(a, b)| a != b) {
                panic!(
                    "{label} on {name}: element {i} is {:#010x}, the reference's {:#010x}",
                    g[i], e[i]
                );
            }
        }
    };
    for threads in [1, 2] {
        let cpu = Cpu::with_threads(threads).unwrap();
        check(cpu.name(), recipe(&cpu).unwrap());
    }
    for ctx in contexts() {
        check(ctx.name(), recipe(ctx).unwrap());
    }
}

/// Observing equals a calibration step's state change, without writing an output.
#[test]
fn observe_only_matches_a_calibration_step() {
    let config = ObserverConfig::qat_activation_int8();
    let mut rng = Rng::new(7);
    let x = random_data(&mut rng, 4099, 1, 5.0);
    let mut observed = Reference.create_observer(&config, &[4099]).unwrap();
    let mut stepped = Reference.create_observer(&config, &[4099]).unwrap();
    observed.observe(&x, &[4099]).unwrap();
    stepped.step(&x, &[4099], Mode::Calibrate).unwrap();
    assert_eq!(
        observed.read_state().unwrap(),
        stepped.read_state().unwrap()
    );
    for ctx in contexts() {
        let mut gpu = ctx.create_observer(&config, &[4099]).unwrap();
        ObserverOps::observe(&mut gpu, &x, &[4099]).unwrap();
        assert_eq!(
            gpu.read_state().unwrap(),
            observed.read_state().unwrap(),
            "{}",
            ctx.name()
        );
    }
}
