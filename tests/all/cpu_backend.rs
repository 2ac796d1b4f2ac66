//! The CPU backend (`fakequant::Cpu`) against the reference, with `to_bits()`: the element
//! functions on the adversarial corpus for every range and scale, then every op through the
//! backend on random and adversarial tensors, f32/f16/bf16, every granularity and axis, sizes
//! around every chunk, task and block boundary, with one and with several threads, each run
//! twice (determinism).

use fakequant::cpu::elementwise::{self, ChannelConsts};
use fakequant::cpu::InstructionSet;
use fakequant::{
    reference, Averaging, Backend, CalibrationMethod, Cpu, DynamicConfig, DynamicOps,
    DynamicScheme, Element, ElementFormat, FakeQuant, FloatQuantConfig, FloatQuantOps, GradScale,
    Granularity, HistogramConfig, HistogramDomain, HistogramOps, LsqConfig, LsqOps, Mode,
    MxScaleRule, ObserverConfig, ObserverOps, QScheme, QuantParams, QuantRange, Reference,
    Rounding,
};
use half::{bf16, f16};

use crate::common::{adversarial, assert_dynamic_eq, random_data, ranges, scale_sweep, Rng};

/// The backends the comparisons run on: one thread (everything inline) with the baseline
/// instruction set, and three threads (more than this machine's cores, and a task split that is
/// not a power of two) with the widest set the processor has (AVX2 on CI's x86-64).
fn backends() -> Vec<Cpu> {
    vec![
        Cpu::with_threads(1)
            .unwrap()
            .with_instruction_set(InstructionSet::Baseline)
            .unwrap(),
        Cpu::with_threads(3).unwrap(),
    ]
}

fn bits<T: Element>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits_u32()).collect()
}

fn assert_same(context: &str, expected: &[u32], actual: &[u32]) {
    assert_eq!(expected.len(), actual.len(), "{context}: length");
    if let Some(i) = expected.iter().zip(actual).position(|(a, b)| a != b) {
        let count = expected.iter().zip(actual).filter(|(a, b)| a != b).count();
        panic!(
            "{context}: {count} mismatches, first at {i}: {:#010x}, the reference's {:#010x}",
            actual[i], expected[i]
        );
    }
}

#[test]
fn round_half_even_equals_round_ties_even() {
    let mut values: Vec<f32> = (0..=u32::MAX / 7919)
        .map(|k| f32::from_bits(k * 7919))
        .collect();
    // Every tie k + 0.5 and its neighbours, up to where f32 has no fraction left.
    for k in (0u32..1 << 23).step_by(997).chain((1 << 23) - 16..1 << 23) {
        let tie = k as f32 + 0.5;
        for d in -2i32..=2 {
            let v = f32::from_bits(tie.to_bits().wrapping_add_signed(d));
            values.extend([v, -v]);
        }
    }
    for e in 22..=25 {
        let p = 2f32.powi(e);
        for d in -3i32..=3 {
            let v = f32::from_bits(p.to_bits().wrapping_add_signed(d));
            values.extend([v, -v]);
        }
    }
    for v in values {
        assert_eq!(
            elementwise::round_half_even(v).to_bits(),
            v.round_ties_even().to_bits(),
            "{v:e} ({:#010x})",
            v.to_bits()
        );
    }
}

#[test]
fn element_functions_equal_the_reference_on_the_adversarial_corpus() {
    let mut rng = Rng::new(0xc0de);
    let dys = [1.0f32, -0.75, 0.0, -0.0, f32::INFINITY, f32::NAN, 3.0e-39];
    for range in ranges() {
        for scale in scale_sweep() {
            for zp in [
                range.qmin(),
                0.clamp(range.qmin(), range.qmax()),
                range.qmax(),
            ] {
                let consts = ChannelConsts {
                    inv: 1.0 / scale,
                    scale,
                    lo: (range.qmin() - zp) as f32,
                    hi: (range.qmax() - zp) as f32,
                };
                let mut xs = adversarial(scale, zp, range);
                xs.extend((0..64).map(|_| rng.any_bits()));
                for &x in &xs {
                    let context = || format!("x={x:e} s={scale:e} zp={zp} {range:?}");
                    for (rounding, got) in [
                        (
                            Rounding::Reciprocal,
                            elementwise::fake_quant_value::<false>(x, consts),
                        ),
                        (
                            Rounding::Quotient,
                            elementwise::fake_quant_value::<true>(x, consts),
                        ),
                    ] {
                        let want = reference::fake_quant_value(x, scale, zp, range, rounding);
                        assert_eq!(
                            (got.0.to_bits(), got.1),
                            (want.0.to_bits(), want.1),
                            "{} {rounding:?}",
                            context()
                        );
                    }
                    for &dy in &dys {
                        let got = elementwise::lsq_element_grads(x, dy, consts);
                        let want = reference::lsq::element_grads(x, dy, scale, zp, range);
                        assert_eq!(
                            [got.0.to_bits(), got.1.to_bits(), got.2.to_bits()],
                            [want.0.to_bits(), want.1.to_bits(), want.2.to_bits()],
                            "LSQ {} dy={dy:e}",
                            context()
                        );
                        for in_range in [false, true] {
                            assert_eq!(
                                elementwise::ste_grad_value(dy, in_range).to_bits(),
                                reference::ste_grad_value(dy, in_range).to_bits()
                            );
                        }
                    }
                }
            }
        }
    }
    // Every NaN payload class and sign through the straight-through gradient.
    for bits in [
        0x7f80_0001u32,
        0xff80_0001,
        0x7fbf_ffff,
        0x7fc0_0000,
        0xffc1_2345,
    ] {
        for in_range in [false, true] {
            let dy = f32::from_bits(bits);
            assert_eq!(
                elementwise::ste_grad_value(dy, in_range).to_bits(),
                reference::ste_grad_value(dy, in_range).to_bits()
            );
        }
    }
}

/// Fake-quantizes `x` per tensor on `cpu` and on the reference; asserts `y` and the mask equal.
fn check_per_tensor<T: Element>(cpu: &Cpu, op: &FakeQuant, x: &[T], context: &dyn Fn() -> String) {
    let want = reference::fake_quant(op, x, &[x.len()]).unwrap();
    let got = cpu.fake_quant(op, x, &[x.len()]).unwrap();
    let context = format!("{} {:?} {}", cpu.name(), T::DTYPE, context());
    assert_same(&format!("{context} y"), &bits(&want.y), &bits(&got.y));
    assert_same(
        &format!("{context} mask"),
        want.mask.words(),
        got.mask.words(),
    );
}

/// The fused per-channel-block kernel (`src/cpu/avx2.rs`, which every whole mask word of a
/// per-tensor op goes through on a processor with AVX2 and F16C) on whole tensors of the
/// adversarial corpus, padded to whole words, for every range, scale, zero point and rounding;
/// and on every f16 and every bf16 pattern for a spread of them. The baseline build (the
/// portable loops) is checked the same way.
#[test]
fn per_tensor_kernels_equal_the_reference_on_every_corpus() {
    let cpus = [
        Cpu::with_threads(1).unwrap(),
        Cpu::with_threads(1)
            .unwrap()
            .with_instruction_set(InstructionSet::Baseline)
            .unwrap(),
    ];
    let mut rng = Rng::new(0xf05e);
    for range in ranges() {
        for scale in scale_sweep() {
            for zp in [
                range.qmin(),
                0.clamp(range.qmin(), range.qmax()),
                range.qmax(),
            ] {
                let mut x = adversarial(scale, zp, range);
                x.extend((0..64).map(|_| rng.any_bits()));
                let whole = x.len().next_multiple_of(32);
                x.extend_from_within(..whole - x.len());
                for rounding in [Rounding::Reciprocal, Rounding::Quotient] {
                    let op = FakeQuant::new(range, QuantParams::per_tensor(scale, zp))
                        .unwrap()
                        .with_rounding(rounding);
                    for cpu in &cpus {
                        check_per_tensor(cpu, &op, &x, &|| {
                            format!("s={scale:e} zp={zp} {range:?} {rounding:?}")
                        });
                    }
                }
            }
        }
    }
    let halves: Vec<u16> = (0..=u16::MAX).collect();
    let f16s: Vec<f16> = halves.iter().map(|&h| f16::from_bits(h)).collect();
    let bf16s: Vec<bf16> = halves.iter().map(|&h| bf16::from_bits(h)).collect();
    // The straight-through backward of every pattern, in range and out of range (the 16-bit
    // types' kernel works on the bits).
    for flags in [
        |_: usize| true,
        |_: usize| false,
        |i: usize| (i / 3).is_multiple_of(2),
    ] {
        let mask =
            fakequant::PackedMask::from_bools(&(0..halves.len()).map(flags).collect::<Vec<_>>());
        for cpu in &cpus {
            assert_same(
                &format!("{} f16 ste", cpu.name()),
                &bits(&reference::ste_backward(&f16s, &mask).unwrap()),
                &bits(&cpu.ste_backward(&f16s, &mask).unwrap()),
            );
            assert_same(
                &format!("{} bf16 ste", cpu.name()),
                &bits(&reference::ste_backward(&bf16s, &mask).unwrap()),
                &bits(&cpu.ste_backward(&bf16s, &mask).unwrap()),
            );
        }
    }
    for range in [
        QuantRange::INT8,
        QuantRange::UINT4,
        QuantRange::INT16,
        QuantRange::signed(2).unwrap(),
        QuantRange::new(-5, 300).unwrap(),
    ] {
        // The last two put `y = k * s` on ties of bf16 and of f16 (1 + 2^-8 + 2^-9 and
        // 1 + 2^-10 + 2^-11: the dropped bits exactly half an ulp, the kept ones odd).
        for scale in [
            2f32.powi(-20),
            2f32.powi(-10),
            0.1,
            1.0 / 3.0,
            123.456,
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_3000),
        ] {
            for zp in [
                range.qmin(),
                0.clamp(range.qmin(), range.qmax()),
                range.qmax(),
            ] {
                for rounding in [Rounding::Reciprocal, Rounding::Quotient] {
                    let op = FakeQuant::new(range, QuantParams::per_tensor(scale, zp))
                        .unwrap()
                        .with_rounding(rounding);
                    let context = || format!("s={scale:e} zp={zp} {range:?} {rounding:?}");
                    for cpu in &cpus {
                        check_per_tensor(cpu, &op, &f16s, &context);
                        check_per_tensor(cpu, &op, &bf16s, &context);
                    }
                }
            }
        }
    }
}

#[test]
fn block_sum_equals_the_reference_for_every_length() {
    let mut rng = Rng::new(77);
    for len in (0..=600).chain([1000, 2047, 4095, 4096]) {
        for distribution in 0..5 {
            let mut terms = random_data(&mut rng, len, distribution, 1.0);
            // Signed zeros (a -0 sum turns +0 when a +0 lane is added) and NaN payloads.
            if distribution == 4 {
                terms.iter_mut().step_by(3).for_each(|t| *t = -0.0);
            }
            for isa in [InstructionSet::Baseline, InstructionSet::detect()] {
                assert_eq!(
                    fakequant::cpu::reduce::block_sum(isa, &terms).to_bits(),
                    reference::lsq::block_sum(&terms).to_bits(),
                    "{len} terms, distribution {distribution}, {isa:?}"
                );
            }
        }
    }
    for len in [1, 5, 17, 256, 257] {
        let terms = vec![-0.0f32; len];
        assert_eq!(
            fakequant::cpu::reduce::block_sum(InstructionSet::detect(), &terms).to_bits(),
            reference::lsq::block_sum(&terms).to_bits(),
            "{len} negative zeros"
        );
    }
}

/// Sizes around the mask words, the 4096-element chunks and LSQ blocks, the parallel threshold
/// and the task boundaries of three threads.
const SIZES: [usize; 12] = [
    0, 1, 31, 33, 4095, 4097, 65535, 65536, 65537, 98_304, 200_003, 262_145,
];

/// Shapes of `n` elements with the channel axis (given) at every place of ranks 1 to 4.
fn shapes(n: usize) -> Vec<(Vec<usize>, Granularity)> {
    let mut out = vec![(vec![n], Granularity::PerTensor)];
    if n == 0 {
        return out;
    }
    out.push((vec![n], Granularity::per_channel(0)));
    for channels in [3usize, 5] {
        if n.is_multiple_of(channels) {
            let rest = n / channels;
            out.push((vec![channels, rest], Granularity::per_channel(0)));
            out.push((vec![rest, channels], Granularity::per_channel(1)));
        }
    }
    if n.is_multiple_of(12) {
        let rest = n / 12;
        out.push((vec![2, 3, 2, rest], Granularity::per_channel(1)));
        out.push((vec![rest, 2, 3, 2], Granularity::per_channel(2)));
        out.push((vec![2, rest, 3, 2], Granularity::per_channel(3)));
    }
    for size in [1usize, 3, 32, 4096] {
        if n.is_multiple_of(size) {
            out.push((vec![n / size, size], Granularity::per_group(1, size)));
        }
    }
    if n.is_multiple_of(4) {
        out.push((vec![4, n / 4], Granularity::PerToken));
    }
    out
}

fn op_for(
    granularity: Granularity,
    shape: &[usize],
    rng: &mut Rng,
    range: QuantRange,
) -> FakeQuant {
    let channels = granularity.channels(shape).unwrap();
    let scales = (0..channels)
        .map(|_| 0.01 * 2f32.powi(rng.below(8) as i32) * (1.0 + rng.uniform(0.0, 1.0)))
        .collect();
    let zps = (0..channels)
        .map(|_| range.qmin() + rng.below((range.qmax() - range.qmin()) as usize + 1) as i32)
        .collect();
    FakeQuant::new(range, QuantParams::new(granularity, scales, zps)).unwrap()
}

/// Random data mixed with the adversarial corpus of `op`'s first channel.
fn data(rng: &mut Rng, n: usize, op: &FakeQuant) -> Vec<f32> {
    let p = op.params();
    let corpus = adversarial(p.scales()[0], p.zero_points()[0], op.range());
    let distribution = rng.below(5);
    let mut x = random_data(rng, n, distribution, p.scales()[0]);
    for (i, v) in x.iter_mut().enumerate() {
        if i % 3 == 0 {
            *v = corpus[(i / 3) % corpus.len()];
        }
    }
    x
}

fn check_fake_quant<T: Element>(cpu: &Cpu, op: &FakeQuant, x: &[f32], shape: &[usize], dy: &[f32]) {
    let x: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let dy: Vec<T> = dy.iter().map(|&v| T::from_f32(v)).collect();
    let context = format!(
        "{} {:?} {shape:?} {:?}",
        cpu.name(),
        T::DTYPE,
        op.params().granularity()
    );
    let want = reference::fake_quant(op, &x, shape).unwrap();
    for run in 0..2 {
        let got = cpu.fake_quant(op, &x, shape).unwrap();
        assert_same(
            &format!("{context} y (run {run})"),
            &bits(&want.y),
            &bits(&got.y),
        );
        assert_same(
            &format!("{context} mask"),
            want.mask.words(),
            got.mask.words(),
        );
        let want_dx = reference::ste_backward(&dy, &want.mask).unwrap();
        let got_dx = cpu.ste_backward(&dy, &got.mask).unwrap();
        assert_same(
            &format!("{context} ste dx"),
            &bits(&want_dx),
            &bits(&got_dx),
        );
    }
}

#[test]
fn fake_quant_and_ste_equal_the_reference() {
    let mut rng = Rng::new(0xfa57);
    for cpu in backends() {
        for n in SIZES {
            for (shape, granularity) in shapes(n) {
                let range = [QuantRange::INT8, QuantRange::UINT4, QuantRange::INT16][rng.below(3)];
                let rounding = [Rounding::Reciprocal, Rounding::Quotient][rng.below(2)];
                let op = op_for(granularity, &shape, &mut rng, range).with_rounding(rounding);
                let x = data(&mut rng, n, &op);
                let dy = random_data(&mut rng, n, 4, 1.0);
                check_fake_quant::<f32>(&cpu, &op, &x, &shape, &dy);
                if n <= 65537 {
                    check_fake_quant::<f16>(&cpu, &op, &x, &shape, &dy);
                    check_fake_quant::<bf16>(&cpu, &op, &x, &shape, &dy);
                }
            }
        }
    }
}

#[test]
fn observers_equal_the_reference() {
    let mut rng = Rng::new(0x0b5e);
    let configs = [
        ObserverConfig::qat_activation_int8(),
        ObserverConfig::qat_weight_int8(),
        ObserverConfig::new(
            QuantRange::UINT8,
            QScheme::Affine,
            Averaging::MinMax,
            Granularity::per_channel(1),
        )
        .unwrap(),
    ];
    for cpu in backends() {
        for config in &configs {
            for n in [36usize, 4100, 98_304, 200_004] {
                let shape = match config.granularity() {
                    Granularity::PerTensor => vec![n],
                    Granularity::PerChannel { axis: 0 } => vec![4, n / 4],
                    _ => vec![n / 4, 4],
                };
                let mut want = Reference.create_observer(config, &shape).unwrap();
                let mut got = cpu.create_observer(config, &shape).unwrap();
                let context = format!("{} {:?} n={n}", cpu.name(), config.granularity());
                for (step, mode) in [Mode::Calibrate, Mode::Qat, Mode::Qat, Mode::Frozen]
                    .into_iter()
                    .enumerate()
                {
                    let scale = 2f32.powi(step as i32 - 1);
                    let x = {
                        let op = op_for(Granularity::PerTensor, &[n], &mut rng, QuantRange::INT8);
                        let mut x = data(&mut rng, n, &op);
                        x.iter_mut().for_each(|v| *v *= scale);
                        x
                    };
                    if step == 0 {
                        ObserverOps::observe(&mut want, &x, &shape).unwrap();
                        ObserverOps::observe(&mut got, &x, &shape).unwrap();
                    }
                    let w = ObserverOps::step(&mut want, &x, &shape, mode).unwrap();
                    let g = ObserverOps::step(&mut got, &x, &shape, mode).unwrap();
                    assert_same(&format!("{context} {mode:?} y"), &bits(&w.y), &bits(&g.y));
                    assert_same(
                        &format!("{context} {mode:?} mask"),
                        w.mask.words(),
                        g.mask.words(),
                    );
                    assert_eq!(
                        want.read_state().unwrap(),
                        got.read_state().unwrap(),
                        "{context} {mode:?}"
                    );
                    let xh: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                    let w = ObserverOps::step(&mut want, &xh, &shape, Mode::Frozen).unwrap();
                    let g = ObserverOps::step(&mut got, &xh, &shape, Mode::Frozen).unwrap();
                    assert_same(
                        &format!("{context} bf16 frozen y"),
                        &bits(&w.y),
                        &bits(&g.y),
                    );
                }
            }
        }
    }
}

fn check_lsq<T: Element>(
    cpu: &Cpu,
    config: &LsqConfig,
    shape: &[usize],
    x: &[f32],
    dy: &[f32],
    rng: &mut Rng,
) {
    let channels = config.granularity().channels(shape).unwrap();
    let scales: Vec<f32> = (0..channels)
        .map(|_| 0.02 * (1.0 + rng.uniform(0.0, 3.0)))
        .collect();
    let zero_points: Vec<f32> = (0..channels).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let x: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let dy: Vec<T> = dy.iter().map(|&v| T::from_f32(v)).collect();
    let context = format!(
        "{} {:?} {shape:?} {:?}",
        cpu.name(),
        T::DTYPE,
        config.granularity()
    );
    let mut want = Reference.create_lsq(config, &scales, &zero_points).unwrap();
    let mut got = cpu.create_lsq(config, &scales, &zero_points).unwrap();
    for run in 0..2 {
        let w = want.forward(&x, shape).unwrap();
        let g = got.forward(&x, shape).unwrap();
        assert_same(
            &format!("{context} forward y (run {run})"),
            &bits(&w.y),
            &bits(&g.y),
        );
        assert_same(
            &format!("{context} forward mask"),
            w.mask.words(),
            g.mask.words(),
        );
        let w = want.backward(&x, &dy, shape).unwrap();
        let g = got.backward(&x, &dy, shape).unwrap();
        assert_same(&format!("{context} dx"), &bits(&w.dx), &bits(&g.dx));
        assert_same(
            &format!("{context} dscale"),
            &bits(&w.dscale),
            &bits(&g.dscale),
        );
        assert_same(
            &format!("{context} dzero_point"),
            &bits(&w.dzero_point),
            &bits(&g.dzero_point),
        );
    }
    let w = want.init_from_data(&x, shape).unwrap();
    let g = got.init_from_data(&x, shape).unwrap();
    assert_same(&format!("{context} init"), &bits(&w), &bits(&g));
    assert_eq!(
        want.read_params().unwrap(),
        got.read_params().unwrap(),
        "{context}"
    );
}

#[test]
fn lsq_equals_the_reference() {
    let mut rng = Rng::new(0x15c);
    for cpu in backends() {
        for n in [0usize, 1, 33, 4096, 4097, 12_300, 98_304, 200_004] {
            for (shape, granularity) in shapes(n) {
                let config = LsqConfig::new(QuantRange::INT8, granularity)
                    .unwrap()
                    .with_grad_scale(GradScale::Lsq)
                    .unwrap();
                let op = op_for(Granularity::PerTensor, &[n], &mut rng, QuantRange::INT8);
                let x = data(&mut rng, n, &op);
                let distribution = rng.below(5);
                let dy = random_data(&mut rng, n, distribution, 1.0);
                check_lsq::<f32>(&cpu, &config, &shape, &x, &dy, &mut rng);
                if n <= 12_300 {
                    check_lsq::<f16>(&cpu, &config, &shape, &x, &dy, &mut rng);
                    check_lsq::<bf16>(&cpu, &config, &shape, &x, &dy, &mut rng);
                }
            }
        }
    }
}

/// A tensor over 128 MiB (33.6M f32): every task of the pool, per tensor and per channel.
#[test]
fn a_tensor_over_128_mib() {
    let n = (128 << 20) / 4 + 4099;
    let mut rng = Rng::new(0x128);
    let cpu = Cpu::new().unwrap();
    let op = op_for(
        Granularity::per_channel(0),
        &[3, n / 3],
        &mut rng,
        QuantRange::INT8,
    );
    let x = data(&mut rng, n - n % 3, &op);
    let shape = [3, n / 3];
    let want = reference::fake_quant(&op, &x, &shape).unwrap();
    let got = cpu.fake_quant(&op, &x, &shape).unwrap();
    assert_same("128 MiB y", &bits(&want.y), &bits(&got.y));
    assert_same("128 MiB mask", want.mask.words(), got.mask.words());
    let config = LsqConfig::new(QuantRange::INT8, Granularity::PerTensor).unwrap();
    let dy = random_data(&mut rng, x.len(), 0, 1.0);
    let want = Reference
        .create_lsq(&config, &[0.05], &[0.0])
        .unwrap()
        .backward(&x, &dy, &[x.len()])
        .unwrap();
    let got = cpu
        .create_lsq(&config, &[0.05], &[0.0])
        .unwrap()
        .backward(&x, &dy, &[x.len()])
        .unwrap();
    assert_same("128 MiB LSQ dx", &bits(&want.dx), &bits(&got.dx));
    assert_same(
        "128 MiB LSQ dscale",
        &bits(&want.dscale),
        &bits(&got.dscale),
    );
}

#[test]
fn thread_counts_are_checked() {
    assert!(matches!(
        Cpu::with_threads(0),
        Err(fakequant::Error::InvalidSetting(_))
    ));
    assert!(Cpu::with_threads(Cpu::MAX_THREADS + 1).is_err());
    assert!(Cpu::new().unwrap().threads() >= 1);
    let cpu = Cpu::with_threads(2).unwrap();
    assert_eq!(cpu.instruction_set(), InstructionSet::detect());
    let baseline = cpu.with_instruction_set(InstructionSet::Baseline).unwrap();
    assert_eq!(baseline.instruction_set(), InstructionSet::Baseline);
    if InstructionSet::detect() != InstructionSet::Avx2 {
        assert!(baseline.with_instruction_set(InstructionSet::Avx2).is_err());
    }
}

#[test]
fn sixteen_bit_conversions_equal_half() {
    use fakequant::cpu::convert;
    for h in 0..=u16::MAX {
        assert_eq!(
            convert::f16_to_f32(h).to_bits(),
            f16::from_bits(h).to_f32().to_bits(),
            "f16 {h:#06x}"
        );
        assert_eq!(
            convert::bf16_to_f32(h).to_bits(),
            bf16::from_bits(h).to_f32().to_bits(),
            "bf16 {h:#06x}"
        );
    }
    // Every 1021st f32 pattern, and around every f16 rounding boundary: the midpoints between
    // neighbouring f16 values (ties), +-2 ulp, over the whole f16 range, subnormals included.
    let mut values: Vec<u32> = (0..=u32::MAX / 1021).map(|k| k * 1021).collect();
    for h in 0..0x7c00u16 {
        let lo = f16::from_bits(h).to_f32() as f64;
        let hi = f16::from_bits(h + 1).to_f32() as f64;
        let mid = ((lo + hi) / 2.0) as f32;
        for d in -2i32..=2 {
            let b = mid.to_bits().wrapping_add_signed(d);
            values.extend([b, b | 0x8000_0000]);
        }
        let b = bf16::from_bits(h).to_f32().to_bits() | 0x8000;
        values.extend([b, b - 1, b + 1, b | 0x8000_0000]);
    }
    for &bits in &values {
        let v = f32::from_bits(bits);
        assert_eq!(
            convert::f32_to_f16(v),
            f16::from_f32(v).to_bits(),
            "f16 of {bits:#010x}"
        );
        assert_eq!(
            convert::f32_to_bf16(v),
            bf16::from_f32(v).to_bits(),
            "bf16 of {bits:#010x}"
        );
    }
    // The slice conversions (F16C's instructions with AVX2, loops otherwise), every pattern and
    // value above, over lengths that leave every tail of the 8-wide blocks.
    let halves: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let brains: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let floats: Vec<f32> = values.iter().map(|&b| f32::from_bits(b)).collect();
    for isa in [InstructionSet::Baseline, InstructionSet::detect()] {
        for len in [halves.len(), halves.len() - 1, halves.len() - 7] {
            let mut wide = vec![0f32; len];
            convert::widen_slice(isa, &halves[..len], &mut wide);
            for (h, w) in halves.iter().zip(&wide) {
                assert_eq!(w.to_bits(), h.to_f32().to_bits(), "{isa:?} widen f16 {h:?}");
            }
            convert::widen_slice(isa, &brains[..len], &mut wide);
            for (h, w) in brains.iter().zip(&wide) {
                assert_eq!(
                    w.to_bits(),
                    h.to_f32().to_bits(),
                    "{isa:?} widen bf16 {h:?}"
                );
            }
        }
        for len in [floats.len(), floats.len() - 3] {
            let mut narrow = vec![f16::ZERO; len];
            convert::narrow_slice(isa, &floats[..len], &mut narrow);
            for (v, h) in floats.iter().zip(&narrow) {
                let want = f16::from_f32(*v).to_bits();
                assert_eq!(
                    h.to_bits(),
                    want,
                    "{isa:?} narrow f16 of {:#010x}",
                    v.to_bits()
                );
            }
            let mut narrow = vec![bf16::ZERO; len];
            convert::narrow_slice(isa, &floats[..len], &mut narrow);
            for (v, h) in floats.iter().zip(&narrow) {
                let want = bf16::from_f32(*v).to_bits();
                assert_eq!(
                    h.to_bits(),
                    want,
                    "{isa:?} narrow bf16 of {:#010x}",
                    v.to_bits()
                );
            }
        }
    }
}

fn check_dynamic<T: Element>(cpu: &Cpu, config: &DynamicConfig, shape: &[usize], x: &[f32]) {
    let x: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let label = format!(
        "{} {:?} {:?} {shape:?} {:?}",
        cpu.name(),
        config.scheme(),
        config.granularity(),
        T::DTYPE
    );
    let want = reference::dynamic::fake_quant_dynamic(config, &x, shape).unwrap();
    let mut dynamic = cpu.create_dynamic(config, shape).unwrap();
    for _ in 0..2 {
        let got = DynamicOps::forward(&mut dynamic, &x, shape).unwrap();
        assert_dynamic_eq(&label, &want, &got);
    }
}

#[test]
fn dynamic_equals_the_reference() {
    let mut rng = Rng::new(0xd1a);
    let float_domain = |size| {
        DynamicConfig::new(
            QuantRange::UINT4,
            DynamicScheme::AsymmetricFloat,
            Granularity::per_group(1, size),
        )
        .unwrap()
    };
    for cpu in backends() {
        for (rows, size) in [
            (1usize, 1usize),
            (7, 2),
            (5, 3),
            (33, 32),
            (600, 128),
            (3, 4096),
            (40, 5000),
        ] {
            let shape = [rows, size];
            let n = rows * size;
            let op = op_for(Granularity::PerTensor, &[n], &mut rng, QuantRange::INT8);
            let mut x = data(&mut rng, n, &op);
            // An all-zero group with both zeros, a constant group and one huge outlier.
            if rows > 3 {
                x[..size].fill(0.0);
                x[..size].iter_mut().step_by(2).for_each(|v| *v = -0.0);
                x[size..2 * size].fill(-1.25);
                x[2 * size] = 3.0e38;
            }
            let configs = [
                DynamicConfig::int4_weight(size),
                DynamicConfig::new(
                    QuantRange::INT8,
                    DynamicScheme::Asymmetric,
                    Granularity::per_group(1, size),
                )
                .unwrap(),
                DynamicConfig::new(
                    QuantRange::INT8,
                    DynamicScheme::Asymmetric,
                    Granularity::PerToken,
                )
                .unwrap(),
                float_domain(size),
                float_domain(size)
                    .with_qparams_dtype(fakequant::DType::Bf16)
                    .unwrap(),
            ];
            for config in &configs {
                check_dynamic::<f32>(&cpu, config, &shape, &x);
                if n <= 20_000 {
                    check_dynamic::<f16>(&cpu, config, &shape, &x);
                    check_dynamic::<bf16>(&cpu, config, &shape, &x);
                }
            }
        }
    }
}

fn check_float<T: Element>(cpu: &Cpu, config: &FloatQuantConfig, shape: &[usize], x: &[f32]) {
    let x: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let label = format!("{} {config:?} {shape:?} {:?}", cpu.name(), T::DTYPE);
    let want = reference::float_quant::fake_quant_float(config, &x, shape).unwrap();
    let mut float = cpu.create_float_quant(config, shape).unwrap();
    for run in 0..2 {
        let got = FloatQuantOps::forward(&mut float, &x, shape).unwrap();
        assert_same(
            &format!("{label} y (run {run})"),
            &bits(&want.y),
            &bits(&got.y),
        );
        assert_same(
            &format!("{label} mask"),
            want.mask.words(),
            got.mask.words(),
        );
        assert_eq!(want.codes, got.codes, "{label} codes");
        assert_eq!(want.scales, got.scales, "{label} scales");
    }
}

#[test]
fn floating_point_formats_equal_the_reference() {
    let mut rng = Rng::new(0xf8);
    let configs = [
        FloatQuantConfig::mx(ElementFormat::Fp4E2M1, MxScaleRule::Rceil).unwrap(),
        FloatQuantConfig::mx(ElementFormat::Fp8E4M3, MxScaleRule::Floor).unwrap(),
        FloatQuantConfig::mx(ElementFormat::Fp6E3M2, MxScaleRule::Even).unwrap(),
        FloatQuantConfig::mx(ElementFormat::Fp6E2M3, MxScaleRule::Ceil).unwrap(),
        FloatQuantConfig::fp8(ElementFormat::Fp8E4M3, Granularity::PerTensor).unwrap(),
        FloatQuantConfig::fp8(ElementFormat::Fp8E5M2, Granularity::per_channel(1)).unwrap(),
        FloatQuantConfig::fp8(ElementFormat::Fp8E4M3, Granularity::per_channel(0)).unwrap(),
        FloatQuantConfig::fp8(ElementFormat::Fp8E4M3, Granularity::per_group(1, 32)).unwrap(),
        FloatQuantConfig::nvfp4(None).unwrap(),
        FloatQuantConfig::nvfp4(Some(0.75)).unwrap(),
        FloatQuantConfig::nvfp4_modelopt(0.5).unwrap(),
    ];
    for cpu in backends() {
        for rows in [1usize, 3, 70, 1100] {
            let shape = [rows, 96];
            let n = rows * 96;
            let op = op_for(Granularity::PerTensor, &[n], &mut rng, QuantRange::INT8);
            let mut x = data(&mut rng, n, &op);
            if rows > 3 {
                // A zero block, a block with a NaN, one with an infinity, one of subnormals.
                x[..32].fill(0.0);
                x[32] = f32::NAN;
                x[64] = f32::INFINITY;
                x[96..128]
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(0x0000_1234));
            }
            for config in &configs {
                check_float::<f32>(&cpu, config, &shape, &x);
                if n <= 7000 {
                    check_float::<f16>(&cpu, config, &shape, &x);
                    check_float::<bf16>(&cpu, config, &shape, &x);
                }
            }
        }
    }
}

#[test]
fn histograms_equal_the_reference() {
    let mut rng = Rng::new(0x415);
    for cpu in backends() {
        for (bins, domain, granularity, shape) in [
            (
                2048,
                HistogramDomain::Magnitude,
                Granularity::PerTensor,
                vec![300_007],
            ),
            (
                128,
                HistogramDomain::Signed,
                Granularity::PerTensor,
                vec![4099],
            ),
            (
                4096,
                HistogramDomain::Signed,
                Granularity::per_channel(1),
                vec![5000, 7],
            ),
            (
                256,
                HistogramDomain::Magnitude,
                Granularity::per_channel(0),
                vec![3, 70_000],
            ),
        ] {
            let config = HistogramConfig::new(bins, domain, granularity).unwrap();
            let mut want = Reference
                .create_histogram_observer(&config, &shape)
                .unwrap();
            let mut got = cpu.create_histogram_observer(&config, &shape).unwrap();
            let n: usize = shape.iter().product();
            // Batches whose range grows (each one's values larger), with specials mixed in.
            for (batch, scale) in [0.01f32, 1.0, 300.0].into_iter().enumerate() {
                let op = op_for(Granularity::PerTensor, &[n], &mut rng, QuantRange::INT8);
                let mut x = data(&mut rng, n, &op);
                x.iter_mut().for_each(|v| *v *= scale);
                let label = format!(
                    "{} {bins} {domain:?} {granularity:?} batch {batch}",
                    cpu.name()
                );
                HistogramOps::observe(&mut want, &x, &shape).unwrap();
                HistogramOps::observe(&mut got, &x, &shape).unwrap();
                assert_eq!(
                    want.read_histograms().unwrap(),
                    got.read_histograms().unwrap(),
                    "{label}"
                );
                let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                HistogramOps::observe(&mut want, &xb, &shape).unwrap();
                HistogramOps::observe(&mut got, &xb, &shape).unwrap();
                assert_eq!(
                    want.read_histograms().unwrap(),
                    got.read_histograms().unwrap(),
                    "{label} bf16"
                );
            }
            let observer = ObserverConfig::qat_activation_int8();
            let method = CalibrationMethod::Percentile(99.99);
            assert_eq!(
                want.calibrate(&method, &observer).unwrap(),
                got.calibrate(&method, &observer).unwrap()
            );
        }
    }
}

#[test]
fn mask_packing_equals_packed_mask() {
    let mut rng = Rng::new(0x9ac);
    for len in (0..=100).chain([4095, 4096, 4097]) {
        for density in [0, 1, 2, 3] {
            let flags: Vec<bool> = (0..len)
                .map(|_| match density {
                    0 => false,
                    1 => true,
                    _ => rng.below(density) == 0,
                })
                .collect();
            let lanes: Vec<i32> = flags.iter().map(|&f| -i32::from(f)).collect();
            for isa in [InstructionSet::Baseline, InstructionSet::detect()] {
                let mut words = vec![0xdead_beef; fakequant::PackedMask::words_for(len)];
                elementwise::pack_lanes(isa, &lanes, &mut words);
                assert_eq!(
                    words,
                    fakequant::PackedMask::from_bools(&flags).words(),
                    "{len} {isa:?}"
                );
            }
        }
    }
}
