//! The element formats and scale rules of `float_quant` against independent implementations in
//! f64 (nearest representable value by search, ties to the even code; scale exponents from
//! `log2` in f64 with exact corrections): every representable value, every midpoint between
//! neighbours and its +-1 and +-2 f32 ulp neighbours, signed zeros, subnormals, the saturation
//! edges, NaN and infinities, and all 65536 f16 and bf16 patterns; and the device's MX and NVFP4
//! kernel against the reference on every output (`y`, mask, codes, scales).

use fakequant::reference::float_quant::{fake_quant_float, mx_scale_byte};
use fakequant::{Element, ElementFormat, FloatQuantConfig, FloatScales, MxScaleRule};
use half::{bf16, f16};

const FORMATS: [ElementFormat; 5] = [
    ElementFormat::Fp8E4M3,
    ElementFormat::Fp8E5M2,
    ElementFormat::Fp6E2M3,
    ElementFormat::Fp6E3M2,
    ElementFormat::Fp4E2M1,
];

/// The finite non-negative values of `format` with their codes, ascending, by the definition
/// (sign 0, exponent field e, mantissa m: `m * 2^(1 - bias - mbits)` for e = 0, else
/// `(2^mbits + m) * 2^(e - bias - mbits)`), without the NaN and infinity codes.
fn grid(format: ElementFormat) -> Vec<(f64, u32)> {
    let (ebits, mbits, bias) = (
        format.exponent_bits(),
        format.mantissa_bits(),
        format.bias(),
    );
    let mut out = Vec::new();
    for code in 0..1u32 << (ebits + mbits) {
        let (e, m) = ((code >> mbits) as i32, (code & ((1 << mbits) - 1)) as f64);
        let value = if e == 0 {
            m * 2f64.powi(1 - bias - mbits as i32)
        } else {
            (m + (1u32 << mbits) as f64) * 2f64.powi(e - bias - mbits as i32)
        };
        let special = match format {
            ElementFormat::Fp8E4M3 => code == 0x7f,
            ElementFormat::Fp8E5M2 => code >= 0x7c,
            _ => false,
        };
        if !special {
            out.push((value, code));
        }
    }
    out
}

/// The code of `v` by search: the nearest grid value, a tie to the even code, saturating.
fn independent_encode(format: ElementFormat, v: f32) -> u32 {
    let sign = (v.is_sign_negative() as u32) << (format.bits() - 1);
    if v.is_nan() {
        return sign | format.nan_code().unwrap_or(format.max_code());
    }
    let a = (v as f64).abs();
    let grid = grid(format);
    if a >= format.max() as f64 {
        return sign | format.max_code(); // saturation (infinities included)
    }
    let mut best = grid[0];
    for &(value, code) in &grid {
        let (d, db) = ((value - a).abs(), (best.0 - a).abs());
        if d < db || (d == db && code % 2 == 0) {
            best = (value, code);
        }
    }
    sign | best.1
}

#[test]
fn maxima_are_the_documented_ones() {
    let expected = [(448.0, 8), (57344.0, 15), (7.5, 2), (28.0, 4), (6.0, 2)];
    for (format, (max, max_pow2)) in FORMATS.iter().zip(expected) {
        assert_eq!(format.max(), max, "{format:?}");
        assert_eq!(format.max_pow2(), max_pow2, "{format:?}");
        assert_eq!(grid(*format).last().unwrap().0, max as f64, "{format:?}");
    }
}

#[test]
fn every_code_decodes_to_its_value_and_back() {
    for format in FORMATS {
        for (value, code) in grid(format) {
            for sign in [0, 1u32 << (format.bits() - 1)] {
                let v = format.decode(sign | code);
                assert_eq!(v.abs() as f64, value, "{format:?} {code:#x}");
                assert_eq!(v.is_sign_negative(), sign != 0, "{format:?} {code:#x}");
                assert_eq!(format.encode(v), sign | code, "{format:?} {v:e}");
            }
        }
        if let Some(nan) = format.nan_code() {
            assert!(format.decode(nan).is_nan());
        }
    }
    assert_eq!(ElementFormat::Fp8E5M2.decode(0x7c), f32::INFINITY);
    assert_eq!(ElementFormat::Fp8E5M2.decode(0xfc), f32::NEG_INFINITY);
}

#[test]
fn midpoints_neighbours_and_specials_round_as_the_independent_search() {
    for format in FORMATS {
        let grid = grid(format);
        let mut inputs = vec![
            0.0f32,
            f32::from_bits(1),
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
            format.max() * 1.0001,
            format.max() * 2.0,
        ];
        for pair in grid.windows(2) {
            // Both values and their midpoint are exact in f32 (at most 5 significant bits).
            for v in [pair[0].0, pair[1].0, (pair[0].0 + pair[1].0) / 2.0] {
                let v = v as f32;
                let mut u = v;
                let mut d = v;
                inputs.push(v);
                for _ in 0..2 {
                    u = u.next_up();
                    d = d.next_down();
                    inputs.extend([u, d]);
                }
            }
        }
        // Half the smallest subnormal and its neighbours (a tie to zero).
        let tiny = (grid[1].0 / 2.0) as f32;
        inputs.extend([tiny, tiny.next_up(), tiny.next_down()]);
        for v in inputs {
            for v in [v, -v] {
                assert_eq!(
                    format.encode(v),
                    independent_encode(format, v),
                    "{format:?} {v:e} ({:#010x})",
                    v.to_bits()
                );
            }
        }
    }
}

#[test]
fn every_f16_and_bf16_pattern_rounds_as_the_independent_search() {
    for format in FORMATS {
        for bits in 0..=u16::MAX {
            for v in [
                f16::from_bits(bits).to_f32(),
                bf16::from_bits(bits).to_f32(),
            ] {
                assert_eq!(
                    format.encode(v),
                    independent_encode(format, v),
                    "{format:?} {v:e} ({:#010x})",
                    v.to_bits()
                );
            }
        }
    }
}

/// The E8M0 byte by the rules' definitions, in f64: FLOOR `floor(log2(amax))` (the exponent field
/// for subnormals: -127), CEIL the same plus one off powers of two, RCEIL `ceil(log2(amax / max))`
/// with the quotient rounded to f32 first, each minus `max_pow2` where the rule says, clamped.
fn independent_byte(format: ElementFormat, rule: MxScaleRule, amax: f32) -> u32 {
    if amax.is_nan() {
        return 255;
    }
    let exponent_field = |v: f32| {
        if v.is_subnormal() || v == 0.0 {
            -127
        } else {
            (v as f64).log2().floor() as i32
        }
    };
    let power_of_two = |v: f32| v.to_bits() & 0x7f_ffff == 0;
    match rule {
        MxScaleRule::Floor | MxScaleRule::Ceil => {
            let mut e = if amax.is_infinite() {
                128
            } else {
                exponent_field(amax)
            };
            if rule == MxScaleRule::Ceil && !power_of_two(amax) {
                e += 1;
            }
            ((e - format.max_pow2()).clamp(-127, 128) + 127) as u32
        }
        MxScaleRule::Rceil => {
            let d = amax / format.max();
            if d.is_infinite() {
                return 254;
            }
            if d == 0.0 {
                return 0;
            }
            // log2 of an f32 in f64 is within 1e-15 relative: exact at powers of two.
            let l = (d as f64).log2();
            let exact = if d.is_subnormal() {
                d.to_bits().is_power_of_two()
            } else {
                power_of_two(d)
            };
            let c = if exact {
                l.round() as i32
            } else {
                l.ceil() as i32
            };
            (c.clamp(-127, 127) + 127) as u32
        }
        MxScaleRule::Even => unreachable!("checked against torchao's vectors"),
    }
}

#[test]
fn mx_scale_bytes_follow_the_rules() {
    let mut amaxes = vec![0.0f32, f32::MAX, f32::INFINITY, f32::NAN, f32::from_bits(1)];
    for k in -149..=127 {
        let p = 2f32.powi(k.max(-126)) * if k < -126 { 2f32.powi(k + 126) } else { 1.0 };
        let mut u = p;
        let mut d = p;
        amaxes.push(p);
        for _ in 0..3 {
            u = u.next_up();
            d = d.next_down();
            amaxes.extend([u, d]);
        }
        amaxes.push(p * 1.5);
    }
    for format in FORMATS {
        for &amax in &amaxes {
            for rule in [MxScaleRule::Floor, MxScaleRule::Ceil, MxScaleRule::Rceil] {
                assert_eq!(
                    mx_scale_byte(format, rule, amax),
                    independent_byte(format, rule, amax),
                    "{format:?} {rule:?} {amax:e}"
                );
            }
        }
    }
}

/// Data for block-scaled formats: random blocks of many magnitudes, and blocks that are all zero,
/// constant, dominated by one outlier, subnormal, at the f32 extremes (E8M0's range ends), or hold
/// a NaN or an infinity.
fn block_data(rng: &mut crate::common::Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let (block, j) = (i / 32, i % 32);
            let scale = 2f32.powf(rng.uniform(-30.0, 30.0));
            match block % 11 {
                0 => 0.0,
                1 => -0.75,
                2 if j == 5 => 1e4 * scale,
                3 => f32::from_bits(1 + rng.below(1 << 22) as u32),
                4 => [3.4e38, -1.7e38, 1e38][j % 3],
                5 => f32::from_bits(1 + rng.below(8) as u32) * [1.0, -1.0][j % 2],
                6 if j == 3 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][block % 3],
                _ => rng.normal() * scale,
            }
        })
        .collect()
}

fn block_configs() -> Vec<FloatQuantConfig> {
    let mut configs = Vec::new();
    for format in FORMATS {
        for rule in [
            MxScaleRule::Floor,
            MxScaleRule::Ceil,
            MxScaleRule::Even,
            MxScaleRule::Rceil,
        ] {
            configs.push(FloatQuantConfig::mx(format, rule).unwrap());
        }
    }
    for g in [
        None,
        Some(1.0 / 2688.0),
        Some(3.5e-3),
        Some(2f32.powi(-119)),
        Some(2f32.powi(119)),
    ] {
        configs.push(FloatQuantConfig::nvfp4(g).unwrap());
        if let Some(g) = g {
            configs.push(FloatQuantConfig::nvfp4_modelopt(g).unwrap());
        }
    }
    configs
}

fn check_float_on_gpu<T: Element>(
    ctx: &fakequant::GpuContext,
    config: &FloatQuantConfig,
    x: &[f32],
    shape: &[usize],
    label: &str,
) {
    let x: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let expected = fake_quant_float(config, &x, shape).unwrap();
    let got = ctx
        .create_float_quant(config, shape)
        .unwrap()
        .forward(&x, shape)
        .unwrap();
    let label = format!(
        "{label} {config:?} {:?} on {}",
        T::DTYPE,
        ctx.adapter_name()
    );
    let bits = |v: &[T]| v.iter().map(|e| e.to_bits_u32()).collect::<Vec<_>>();
    let (e, g) = (bits(&expected.y), bits(&got.y));
    if let Some(i) = (0..e.len()).find(|&i| e[i] != g[i]) {
        panic!(
            "{label}: y[{i}] {:#x} vs reference {:#x} (x {:e})",
            g[i],
            e[i],
            x[i].to_f32()
        );
    }
    // (Compared by index: a failing assert_eq! of whole vectors would print megabytes.)
    let first_diff = |a: &[u8], b: &[u8]| (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i));
    if let Some(i) = first_diff(&got.codes, &expected.codes) {
        panic!(
            "{label}: codes[{i}] {:?} vs reference {:?}",
            got.codes.get(i),
            expected.codes.get(i)
        );
    }
    let scale_bytes = |s: &FloatScales| match s {
        FloatScales::F32(v) => v.iter().flat_map(|f| f.to_le_bytes()).collect(),
        FloatScales::E8M0(b) | FloatScales::E4M3 { blocks: b, .. } => b.clone(),
    };
    let (gs, es) = (scale_bytes(&got.scales), scale_bytes(&expected.scales));
    if let Some(i) = first_diff(&gs, &es) {
        panic!(
            "{label}: scale byte {i}: {:?} vs reference {:?}",
            gs.get(i),
            es.get(i)
        );
    }
    assert!(
        std::mem::discriminant(&got.scales) == std::mem::discriminant(&expected.scales),
        "{label}: scale kinds"
    );
    if got.mask != expected.mask {
        panic!("{label}: masks differ");
    }
    // The entry point without the mask: the same y and codes.
    let gpu = ctx.create_float_quant(config, shape).unwrap();
    let x_dev = ctx.upload(&x).unwrap();
    let y_dev = ctx.create_tensor(x.len(), T::DTYPE).unwrap();
    gpu.forward_device(&x_dev, shape, &y_dev, None).unwrap();
    let unmasked: Vec<T> = ctx.read_tensor(&y_dev).unwrap();
    if let Some(i) = (0..e.len()).find(|&i| unmasked[i].to_bits_u32() != e[i]) {
        panic!("{label}: without the mask, y[{i}] differs");
    }
    if let Some(i) = first_diff(&gpu.read_codes().unwrap(), &expected.codes) {
        panic!("{label}: without the mask, codes[{i}] differ");
    }
}

#[test]
fn block_formats_on_the_device_match_the_reference() {
    let mut rng = crate::common::Rng::new(0xf10a7);
    let shape = [12, 352];
    let x = block_data(&mut rng, 12 * 352);
    for ctx in crate::common::contexts() {
        for config in block_configs() {
            check_float_on_gpu::<f32>(ctx, &config, &x, &shape, "blocks");
            check_float_on_gpu::<bf16>(ctx, &config, &x, &shape, "blocks");
            check_float_on_gpu::<f16>(ctx, &config, &x, &shape, "blocks");
        }
    }
}

#[test]
fn every_f16_and_bf16_pattern_through_the_device() {
    // All 65536 patterns of each type, in blocks of 32 neighbouring patterns.
    let shape = [2048, 32];
    let f16s: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let bf16s: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    for ctx in crate::common::contexts() {
        for config in [
            FloatQuantConfig::mx(ElementFormat::Fp8E4M3, MxScaleRule::Rceil).unwrap(),
            FloatQuantConfig::mx(ElementFormat::Fp4E2M1, MxScaleRule::Floor).unwrap(),
            FloatQuantConfig::mx(ElementFormat::Fp6E3M2, MxScaleRule::Even).unwrap(),
            FloatQuantConfig::nvfp4(Some(0.02)).unwrap(),
        ] {
            let gpu = ctx.create_float_quant(&config, &shape).unwrap();
            let label = format!("{config:?} on {}", ctx.adapter_name());
            let _ = gpu;
            let x: Vec<f32> = f16s.iter().map(|v| v.to_f32()).collect();
            check_float_on_gpu::<f16>(ctx, &config, &x, &shape, &format!("{label} f16"));
            let x: Vec<f32> = bf16s.iter().map(|v| v.to_f32()).collect();
            check_float_on_gpu::<bf16>(ctx, &config, &x, &shape, &format!("{label} bf16"));
        }
    }
}

#[test]
fn block_formats_over_several_bindings() {
    let mut rng = crate::common::Rng::new(0xb10c);
    // 3 chunks of 2^16 elements and a ragged tail, on 2 workgroups.
    let shape = [7, 32768];
    let x = block_data(&mut rng, 7 * 32768);
    for base in crate::common::contexts() {
        let ctx = base
            .with_dispatch_limits(fakequant::DispatchLimits {
                max_binding_bytes: 256 << 10,
                max_workgroups: 2,
            })
            .unwrap();
        for config in [
            FloatQuantConfig::mx(ElementFormat::Fp8E5M2, MxScaleRule::Floor).unwrap(),
            FloatQuantConfig::nvfp4(None).unwrap(),
        ] {
            check_float_on_gpu::<f32>(&ctx, &config, &x, &shape, "lowered limits");
            check_float_on_gpu::<bf16>(&ctx, &config, &x, &shape, "lowered limits");
        }
    }
}

#[test]
fn fp8_amax_scaling_on_the_device_matches_the_reference() {
    use fakequant::{FloatScaling, Granularity};
    let mut rng = crate::common::Rng::new(0xf8);
    let shape = [6, 5, 64];
    let n = 6 * 5 * 64;
    let mut x = block_data(&mut rng, n);
    // A channel of axis 0 all zero and one of subnormals (its scale underflows to a subnormal or
    // to zero).
    x[..320].fill(0.0);
    for (i, v) in x[320..640].iter_mut().enumerate() {
        *v = f32::from_bits(1 + (i as u32 % 7)) * if i % 3 == 0 { -1.0 } else { 1.0 };
    }
    let granularities = [
        Granularity::PerTensor,
        Granularity::per_channel(0),
        Granularity::per_channel(1),
        Granularity::per_channel(2),
        Granularity::per_group(2, 32),
        Granularity::per_group(2, 64),
        Granularity::per_group(2, 16),
    ];
    // Both plans wherever blocks are runs of 32 to 4096 elements: one pass where an invocation
    // takes a whole block (the default on CPU adapters), three passes with runs of 32.
    let _turn = crate::common::gpu_turn();
    for ctx in one_and_three_pass_contexts() {
        let ctx = &ctx;
        for format in [ElementFormat::Fp8E4M3, ElementFormat::Fp8E5M2] {
            for granularity in granularities {
                for (lower, upper) in [(None, None), (Some(1e-12), None), (None, Some(0.5))] {
                    let config = FloatQuantConfig::new(
                        format,
                        FloatScaling::Amax {
                            granularity,
                            lower,
                            upper,
                        },
                    )
                    .unwrap();
                    check_float_on_gpu::<f32>(ctx, &config, &x, &shape, "fp8");
                    check_float_on_gpu::<bf16>(ctx, &config, &x, &shape, "fp8");
                    check_float_on_gpu::<f16>(ctx, &config, &x, &shape, "fp8");
                }
            }
        }
        // Several bindings, few workgroups, a length off the tile.
        let small = ctx
            .with_dispatch_limits(fakequant::DispatchLimits {
                max_binding_bytes: 256 << 10,
                max_workgroups: 3,
            })
            .unwrap();
        let big = block_data(&mut rng, (3 * 2048 + 3) * 32);
        for granularity in [Granularity::PerTensor, Granularity::per_channel(0)] {
            let config = FloatQuantConfig::fp8(ElementFormat::Fp8E4M3, granularity).unwrap();
            check_float_on_gpu::<f32>(&small, &config, &big, &[3 * 2048 + 3, 32], "fp8 lowered");
        }
        // Rows of 128 over several bindings (the one-pass plan's chunks of whole rows).
        let rows = block_data(&mut rng, 1601 * 128);
        let config =
            FloatQuantConfig::fp8(ElementFormat::Fp8E5M2, Granularity::per_channel(0)).unwrap();
        check_float_on_gpu::<f32>(&small, &config, &rows, &[1601, 128], "fp8 lowered rows");
        check_float_on_gpu::<bf16>(&small, &config, &rows, &[1601, 128], "fp8 lowered rows");
    }
}

/// Model Optimizer's NVFP4 conventions: a zero block's scale is 1 (not the 2^-6 floor), scales
/// down to 2^-9 (E4M3 subnormals), `x / (s8 * g)`, and `-0` coded as `+0`.
#[test]
fn nvfp4_modelopt_conventions() {
    let g = 1.0 / 2688.0;
    let config = FloatQuantConfig::nvfp4_modelopt(g).unwrap();
    let mut x = vec![0.0f32; 48];
    x[16..32].fill(-0.0); // an all-zero block (negative zeros): scale 1
    for (i, v) in x[32..].iter_mut().enumerate() {
        *v = 1e-6 * (i as f32 - 8.0); // a tiny block: a subnormal E4M3 scale
    }
    x[33] = -1e-9; // rounds to zero: +0 code
    let out = fake_quant_float(&config, &x, &[48]).unwrap();
    let FloatScales::E4M3 { blocks, tensor } = &out.scales else {
        panic!("E4M3 scales");
    };
    assert_eq!(*tensor, Some(g));
    assert_eq!(ElementFormat::Fp8E4M3.decode(u32::from(blocks[0])), 1.0);
    assert_eq!(ElementFormat::Fp8E4M3.decode(u32::from(blocks[1])), 1.0);
    assert!(blocks[2] < 8, "a subnormal E4M3 scale: {:#x}", blocks[2]);
    assert_eq!(&out.codes[16..18], &[0, 0], "-0 coded as +0");
    assert_eq!(out.codes[33], 0, "-0 coded as +0");
    assert_eq!(out.y[16].to_bits(), 0);
    assert_eq!(out.y[33].to_bits(), 0);
    // The torchao convention floors the tiny block's scale at 2^-6 and keeps -0's code.
    let torchao = fake_quant_float(&FloatQuantConfig::nvfp4(Some(g)).unwrap(), &x, &[48]).unwrap();
    let FloatScales::E4M3 { blocks: t, .. } = &torchao.scales else {
        panic!("E4M3 scales");
    };
    assert_eq!(
        ElementFormat::Fp8E4M3.decode(u32::from(t[2])),
        2f32.powi(-6)
    );
    assert_eq!(torchao.codes[16], 0x8);
    assert_eq!(torchao.codes[33], 0x8);
    for ctx in crate::common::contexts() {
        check_float_on_gpu::<f32>(ctx, &config, &x, &[48], "modelopt");
    }
}

/// Every adapter's context twice: as it comes, and with the dynamic run 32, so that FP8 amax
/// scaling takes its three-pass plan for blocks longer than 32 (and its one-pass plan on CPU
/// adapters, whose default run is 4096).
fn one_and_three_pass_contexts() -> Vec<fakequant::GpuContext> {
    crate::common::contexts()
        .iter()
        .flat_map(|ctx| [ctx.clone(), ctx.with_dynamic_run(32).unwrap()])
        .collect()
}

/// A regression: the device's FP8 element loop marked "y still to come from the code" with the
/// value 0xffffffff, which is also the output of the NaN input 0xffffffff (passed through as
/// itself), so that NaN came out as the code's value (-inf). Every NaN passes through, quieted,
/// with its payload and sign, in every block position.
#[test]
fn fp8_passes_every_nan_through_on_the_device() {
    let nans = [
        0xffff_ffffu32,
        0x7fff_ffff,
        0xff80_0001,
        0x7f80_0001,
        0xffc0_0000,
        0x7fc0_0000,
        0xffbf_ffff,
    ];
    let n = 64;
    let mut x: Vec<f32> = (0..n).map(|i| (i as f32 - 31.5) * 0.37).collect();
    for (k, &bits) in nans.iter().enumerate() {
        x[k * 9] = f32::from_bits(bits);
    }
    for config in [
        FloatQuantConfig::fp8(ElementFormat::Fp8E4M3, fakequant::Granularity::PerTensor).unwrap(),
        FloatQuantConfig::fp8(
            ElementFormat::Fp8E5M2,
            fakequant::Granularity::per_group(0, 16),
        )
        .unwrap(),
    ] {
        let expected = fake_quant_float(&config, &x, &[n]).unwrap();
        for (k, &bits) in nans.iter().enumerate() {
            assert_eq!(expected.y[k * 9].to_bits(), bits | 0x0040_0000);
        }
        for ctx in crate::common::contexts() {
            let got = ctx
                .create_float_quant(&config, &[n])
                .unwrap()
                .forward(&x, &[n])
                .unwrap();
            let y: Vec<u32> = got.y.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = expected.y.iter().map(|v| v.to_bits()).collect();
            assert_eq!(y, want, "{config:?} on {}", ctx.adapter_name());
            assert_eq!(
                got.codes,
                expected.codes,
                "{config:?} on {}",
                ctx.adapter_name()
            );
        }
    }
}

/// `x` at every decision point of the conversion of `x / s`, for a row whose scale is `s`: the
/// scaled grid values and midpoints (`rn(v * s)`) and their +-1 and +-2 f32 ulp neighbours, both
/// signs, so that the quotient lands on, just beside and between the midpoints and the largest
/// element (the mask's edge), where a quotient off by one unit, or rounded twice, changes the code.
fn quotient_decision_points(format: ElementFormat, s: f32) -> Vec<f32> {
    let grid = grid(format);
    let mut out = Vec::new();
    for pair in grid.windows(2) {
        for v in [pair[1].0, (pair[0].0 + pair[1].0) / 2.0] {
            let x = (v as f32) * s;
            let (mut u, mut d) = (x, x);
            out.push(x);
            for _ in 0..2 {
                u = u.next_up();
                d = d.next_down();
                out.extend([u, d]);
            }
        }
    }
    let negated: Vec<f32> = out.iter().map(|v| -v).collect();
    out.extend(negated);
    out
}

/// FP8 amax scaling and Model Optimizer's NVFP4 divide every element by its scale (a correctly
/// rounded quotient, then the conversion). Rows whose scales are 1, 3, a power of two and
/// arbitrary values, each holding its amax first (so that the scale is what the row's data were
/// built for) and then every decision point, bit for bit against the reference.
#[test]
fn quotients_at_every_decision_point_on_the_device() {
    use fakequant::{FloatScaling, Granularity};
    for format in [ElementFormat::Fp8E4M3, ElementFormat::Fp8E5M2] {
        let max = format.max();
        let factors = [1.0f32, 3.0, 2f32.powi(-20), 0.7131, 1234.567, 3e-30];
        let rows: Vec<Vec<f32>> = factors
            .iter()
            .map(|&t| {
                let amax = max * t;
                // The reference's scale for this amax, as the device will derive it.
                let probe = FloatQuantConfig::fp8(format, Granularity::PerTensor).unwrap();
                let out = fake_quant_float(&probe, &[amax], &[1]).unwrap();
                let FloatScales::F32(s) = &out.scales else {
                    panic!("f32 scales");
                };
                let mut row = vec![amax];
                row.extend(quotient_decision_points(format, s[0]));
                row
            })
            .collect();
        // Rows of 4096: FP8's one-pass plan takes them where an invocation takes a whole row.
        let len = 4096;
        assert!(rows.iter().all(|r| r.len() <= len));
        let mut x = Vec::new();
        for row in &rows {
            x.extend(row.iter().copied().chain(std::iter::repeat(0.0)).take(len));
        }
        let shape = [rows.len(), len];
        let config = FloatQuantConfig::new(
            format,
            FloatScaling::Amax {
                granularity: Granularity::per_channel(0),
                lower: None,
                upper: None,
            },
        )
        .unwrap();
        let _turn = crate::common::gpu_turn();
        for ctx in one_and_three_pass_contexts() {
            check_float_on_gpu::<f32>(&ctx, &config, &x, &shape, "fp8 decision points");
        }
    }
    // Model Optimizer's NVFP4: blocks of 16 holding their amax (6 * s8 * g) first, then decision
    // points of x / (s8 * g) for E2M1.
    let g = 1.0 / 2688.0;
    let config = FloatQuantConfig::nvfp4_modelopt(g).unwrap();
    let mut x = Vec::new();
    for s8 in [1.0f32, 0.375, 448.0, 2f32.powi(-9) * 3.0] {
        let factor = s8 * g;
        let points = quotient_decision_points(ElementFormat::Fp4E2M1, factor);
        for chunk in points.chunks(15) {
            x.push(6.0 * factor);
            x.extend(chunk.iter().copied().chain(std::iter::repeat(0.0)).take(15));
        }
    }
    for ctx in crate::common::contexts() {
        check_float_on_gpu::<f32>(ctx, &config, &x, &[x.len()], "modelopt decision points");
    }
}

/// Every element format's decision points through the device's MX kernel, unscaled: blocks of 32
/// holding the format's largest element first (so that the FLOOR scale is 2^0, the largest
/// neighbour of the largest element staying below the next power of two, and the elements are
/// converted as they are) and then every grid value, midpoint and +-1, +-2 f32
/// ulp neighbour of one, both signs; against the reference on y, codes and mask.
#[test]
fn every_element_decision_point_through_the_device() {
    for format in FORMATS {
        let config = FloatQuantConfig::mx(format, MxScaleRule::Floor).unwrap();
        let mut x = Vec::new();
        for chunk in quotient_decision_points(format, 1.0).chunks(31) {
            x.push(format.max());
            x.extend(chunk.iter().copied().chain(std::iter::repeat(0.0)).take(31));
        }
        let out = fake_quant_float(&config, &x, &[x.len()]).unwrap();
        let FloatScales::E8M0(bytes) = &out.scales else {
            panic!("E8M0 scales");
        };
        assert!(bytes.iter().all(|&b| b == 127), "{format:?}: scales 2^0");
        for ctx in crate::common::contexts() {
            check_float_on_gpu::<f32>(ctx, &config, &x, &[x.len()], "element decision points");
        }
    }
}
