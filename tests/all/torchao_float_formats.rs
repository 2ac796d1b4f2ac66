//! The reference floating-point fake-quantization (FP8, MX, NVFP4) against torchao 0.18
//! (`tests/data/torchao_float_formats.txt`, see its converter): `y`, the element codes and the
//! scales bit for bit where torchao's arithmetic is well defined, the backward's pass-through, and
//! every departure counted by its cause and asserted to be that cause (the README lists them).

use std::collections::BTreeMap;

use crate::common::vectors::{data_lines, key_value, values};
use fakequant::reference::float_quant::fake_quant_float;
use fakequant::{
    Element, ElementFormat, FloatQuantConfig, FloatScales, FloatScaling, Granularity, MxScaleRule,
};
use half::bf16;

const DATA: &str = include_str!("../data/torchao_float_formats.txt");

struct Case {
    name: &'static str,
    header: BTreeMap<&'static str, &'static str>,
    rows: BTreeMap<&'static str, Option<Vec<u32>>>,
}

impl Case {
    fn get(&self, key: &str) -> &'static str {
        self.header
            .get(key)
            .unwrap_or_else(|| panic!("{}: no {key}=", self.name))
    }

    fn row(&self, role: &str) -> &[u32] {
        self.rows[role]
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no {role}", self.name))
    }

    fn format(&self) -> ElementFormat {
        match self.get("format") {
            "e4m3" => ElementFormat::Fp8E4M3,
            "e5m2" => ElementFormat::Fp8E5M2,
            "e2m3" => ElementFormat::Fp6E2M3,
            "e3m2" => ElementFormat::Fp6E3M2,
            "e2m1" => ElementFormat::Fp4E2M1,
            other => panic!("{}: format {other}", self.name),
        }
    }

    fn f32_field(&self, key: &str) -> Option<f32> {
        let v = self.get(key);
        (v != "none").then(|| f32::from_bits(u32::from_str_radix(v, 16).unwrap()))
    }

    fn shape(&self) -> Vec<usize> {
        self.get("shape")
            .split('x')
            .map(|d| d.parse().unwrap())
            .collect()
    }

    fn config(&self) -> fakequant::Result<FloatQuantConfig> {
        let format = self.format();
        match self.get("family") {
            "float8" => FloatQuantConfig::new(
                format,
                FloatScaling::Amax {
                    granularity: match self.get("granularity") {
                        "row" => Granularity::per_channel(0),
                        _ => Granularity::PerTensor,
                    },
                    lower: self.f32_field("lb"),
                    upper: self.f32_field("ub"),
                },
            ),
            "mx" => FloatQuantConfig::mx(
                format,
                match self.get("rule") {
                    "FLOOR" => MxScaleRule::Floor,
                    "CEIL" => MxScaleRule::Ceil,
                    "EVEN" => MxScaleRule::Even,
                    _ => MxScaleRule::Rceil,
                },
            ),
            _ => FloatQuantConfig::nvfp4(self.f32_field("tensor_scale")),
        }
    }
}

fn cases() -> Vec<Case> {
    let mut lines = data_lines(DATA);
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        let mut fields = line.split(' ');
        assert_eq!(fields.next(), Some("case"));
        let name = fields.next().unwrap();
        let _tags = fields.next().unwrap();
        let header = fields
            .map(|f| {
                let key = f.split('=').next().unwrap();
                (key, key_value(name, Some(f), key))
            })
            .collect();
        let mut rows = BTreeMap::new();
        for role in ["x", "y", "codes", "scales", "dy", "dx"] {
            let v = values(name, role, lines.next());
            let parsed = (v != ["none"]).then(|| {
                v.iter()
                    .map(|s| u32::from_str_radix(s, 16).unwrap())
                    .collect()
            });
            rows.insert(role, parsed);
        }
        assert_eq!(lines.next(), Some("end"), "{name}");
        out.push(Case { name, header, rows });
    }
    out
}

/// Why an output may differ from torchao's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// A NaN out of a NaN element (ours: the same NaN, quieted; torchao's went through a float8
    /// NaN code) or of a block whose scale is NaN: both NaN, with other payloads or signs.
    NanPayload,
    /// A NaN has no FP6/FP4 code: ours exports the largest magnitude with the NaN's sign, torchao
    /// whatever its bit arithmetic makes of the NaN (a NaN element, or every element of a block
    /// whose scale is NaN).
    NanCode,
    /// FP8 amax scaling over a block holding +-inf or NaN: torchao's amax is infinite or NaN (every
    /// output of the block NaN or zero); ours is over the finite values, so the block quantizes
    /// normally and infinities saturate.
    NonFiniteBlock,
    /// FP8 amax scaling of an all-zero block: torchao's scale is 0 and its outputs 0 / 0 = NaN;
    /// ours are the zeros with their signs.
    ZeroScale,
    /// MX `RCEIL`: torchao takes `ceil` of `log2f(d)` rounded to f32, which for `d` a few ulps
    /// above a power of two `2^k` (|k| large) is exactly `k`; ours is the exact `ceil(log2(d))`,
    /// `k + 1` (the hardware rule), so the block's scale is twice torchao's.
    RceilLog2Rounding,
    /// A two-level NVFP4 tensor scale that is not finite (torchao's QAT forward computes it from a
    /// tensor holding NaN): refused by `FloatQuantConfig::nvfp4`.
    NonFiniteTensorScale,
    /// torchao's Float8 backward casts the gradient to float8 (its `_RoundToFloat8` receives a
    /// float8 gradient) and adds a path through the scale; ours is the straight-through `dy`.
    Float8Gradient,
    /// The raw cast probe (no clamp before the cast): torch's E5M2 cast overflows to infinity at
    /// and above 61440, ours saturates at 57344 (our scaled paths clamp first, as torchao's do).
    RawCastOverflow,
}

fn elem_bits(dtype: &str, v: &[u32]) -> Vec<u32> {
    match dtype {
        "bf16" => v.iter().map(|&b| b << 16).collect(),
        _ => v.to_vec(),
    }
}

#[test]
fn float_formats_match_torchao() {
    let cases = cases();
    assert_eq!(
        cases.len(),
        58,
        "10 float8 (one a raw cast probe), 40 MX, 8 NVFP4 cases"
    );
    let mut counts: BTreeMap<(&str, &str, Cause), usize> = BTreeMap::new();
    let mut compared = 0usize;
    for case in &cases {
        let mut count = |what: &'static str, cause: Cause| {
            *counts.entry((case.name, what, cause)).or_default() += 1;
        };
        if case.get("family") == "probe" {
            for (i, &x) in case.row("x").iter().enumerate() {
                let v = f32::from_bits(x);
                for (format, role) in [
                    (ElementFormat::Fp8E4M3, "codes"),
                    (ElementFormat::Fp8E5M2, "y"),
                ] {
                    compared += 1;
                    let (ours, theirs) = (format.encode(v), case.row(role)[i]);
                    if ours != theirs {
                        assert!(
                            format == ElementFormat::Fp8E5M2
                                && v.abs() >= 61440.0
                                && ours & 0x7f == 0x7b
                                && theirs & 0x7f == 0x7c,
                            "{}: {v:e} to {format:?}: {ours:02x} vs torch {theirs:02x}",
                            case.name
                        );
                        count("codes", Cause::RawCastOverflow);
                    }
                }
            }
            continue;
        }
        let config = match case.config() {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    case.f32_field("tensor_scale")
                        .is_some_and(|g| !g.is_finite()),
                    "{}: {e}",
                    case.name
                );
                count("case", Cause::NonFiniteTensorScale);
                continue;
            }
        };
        let shape = case.shape();
        let dtype = case.get("dtype");
        let x32 = elem_bits(dtype, case.row("x"));
        let (y, codes, scales) = match dtype {
            "bf16" => {
                let x: Vec<bf16> = case
                    .row("x")
                    .iter()
                    .map(|&b| bf16::from_bits(b as u16))
                    .collect();
                let out = fake_quant_float(&config, &x, &shape).unwrap();
                (
                    out.y
                        .iter()
                        .map(|v| v.to_bits_u32() << 16)
                        .collect::<Vec<_>>(),
                    out.codes,
                    out.scales,
                )
            }
            _ => {
                let x: Vec<f32> = x32.iter().map(|&b| f32::from_bits(b)).collect();
                let out = fake_quant_float(&config, &x, &shape).unwrap();
                (
                    out.y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    out.codes,
                    out.scales,
                )
            }
        };
        let block = x32.len()
            / match &scales {
                FloatScales::F32(s) => s.len(),
                FloatScales::E8M0(b) => b.len(),
                FloatScales::E4M3 { blocks, .. } => blocks.len(),
            };
        let xs: Vec<f32> = x32.iter().map(|&b| f32::from_bits(b)).collect();
        let block_of = |i: usize| {
            if case.get("granularity") == "tensor" {
                0
            } else {
                i / block
            }
        };
        let block_values = |b: usize| -> &[f32] {
            if case.get("granularity") == "tensor" {
                &xs
            } else {
                &xs[b * block..(b + 1) * block]
            }
        };
        let nonfinite_block = |b: usize| block_values(b).iter().any(|v| !v.is_finite());
        let zero_block = |b: usize| block_values(b).iter().all(|&v| v == 0.0);
        // The scales, and the blocks whose scale differs by a documented cause.
        let mut odd_blocks = std::collections::BTreeSet::new();
        match &scales {
            FloatScales::F32(ours) => {
                for (b, (&o, &t)) in ours.iter().zip(case.row("scales")).enumerate() {
                    compared += 1;
                    if t == 0 {
                        // Equal scales of 0: torchao's elements are x / 0 (zeros: NaN).
                        assert_eq!(o, 0.0, "{}: scale[{b}]", case.name);
                        odd_blocks.insert(b);
                    } else if o.to_bits() != t {
                        let cause = if nonfinite_block(b) {
                            Cause::NonFiniteBlock
                        } else {
                            assert!(
                                zero_block(b) || t == 0,
                                "{}: scale[{b}] {o:e} vs torchao {:e}",
                                case.name,
                                f32::from_bits(t)
                            );
                            Cause::ZeroScale
                        };
                        count("scales", cause);
                        odd_blocks.insert(b);
                    }
                }
            }
            FloatScales::E8M0(ours) | FloatScales::E4M3 { blocks: ours, .. } => {
                for (b, (&o, &t)) in ours.iter().zip(case.row("scales")).enumerate() {
                    compared += 1;
                    if o as u32 != t {
                        // RCEIL's descale d: its f32 log2 rounds to the integer below, though d
                        // is above that power of two.
                        let amax = block_values(b).iter().fold(0.0f32, |a, v| a.max(v.abs()));
                        let d = amax / config.format().max();
                        let log2f = (d as f64).log2() as f32;
                        assert!(
                            case.get("rule") == "RCEIL"
                                && o as u32 == t + 1
                                && log2f == log2f.floor()
                                && d.to_bits() & 0x7f_ffff != 0,
                            "{}: scale byte[{b}] {o:02x} vs torchao {t:02x}",
                            case.name
                        );
                        count("scales", Cause::RceilLog2Rounding);
                        odd_blocks.insert(b);
                    }
                }
            }
        }
        // The elements.
        for i in 0..x32.len() {
            let b = block_of(i);
            let x = xs[i];
            compared += 2;
            let (oy, ty) = (y[i], elem_bits(dtype, &[case.row("y")[i]])[0]);
            if oy != ty {
                let cause = if odd_blocks.contains(&b) {
                    if case.get("family") == "float8" && !nonfinite_block(b) {
                        Cause::ZeroScale
                    } else if nonfinite_block(b) {
                        Cause::NonFiniteBlock
                    } else {
                        Cause::RceilLog2Rounding
                    }
                } else {
                    let nan_scaled = x.is_nan() || block_values(b).iter().any(|v| v.is_nan());
                    assert!(
                        f32::from_bits(oy).is_nan() && f32::from_bits(ty).is_nan() && nan_scaled,
                        "{}: y[{i}] {:e} vs torchao {:e} (x {x:e})",
                        case.name,
                        f32::from_bits(oy),
                        f32::from_bits(ty)
                    );
                    Cause::NanPayload
                };
                count("y", cause);
            }
            let (oc, tc) = (codes[i] as u32, case.row("codes")[i]);
            if oc != tc {
                let cause = if odd_blocks.contains(&b) {
                    if case.get("family") == "float8" && !nonfinite_block(b) {
                        Cause::ZeroScale
                    } else if nonfinite_block(b) {
                        Cause::NonFiniteBlock
                    } else {
                        Cause::RceilLog2Rounding
                    }
                } else {
                    // The scaled value is NaN: a NaN element, or any element of a block whose
                    // scale is NaN (its amax is).
                    let nan_scaled = x.is_nan() || block_values(b).iter().any(|v| v.is_nan());
                    assert!(
                        nan_scaled && config.format().nan_code().is_none(),
                        "{}: code[{i}] {oc:02x} vs torchao {tc:02x} (x {x:e})",
                        case.name
                    );
                    Cause::NanCode
                };
                count("codes", cause);
            }
        }
        // The backward: pass-through, dx = dy.
        if let (Some(dy), Some(dx)) = (&case.rows["dy"], &case.rows["dx"]) {
            for (i, (&g, &t)) in dy.iter().zip(dx).enumerate() {
                compared += 1;
                if g != t {
                    assert!(
                        case.get("family") == "float8",
                        "{}: dx[{i}] differs from dy",
                        case.name
                    );
                    count("dx", Cause::Float8Gradient);
                }
            }
        }
    }
    println!("torchao float formats: {compared} outputs compared; departures by cause:");
    for ((case, what, cause), n) in &counts {
        println!("  {case} {what}: {n} ({cause:?})");
    }
}

#[test]
fn the_device_matches_the_reference_on_torchao_cases() {
    for case in cases() {
        let Ok(config) = case.config() else {
            continue; // the refused non-finite tensor scale
        };
        if case.get("family") == "probe" {
            continue;
        }
        let shape = case.shape();
        for ctx in crate::common::contexts() {
            let gpu = ctx.create_float_quant(&config, &shape).unwrap();
            let label = format!("{} on {}", case.name, ctx.adapter_name());
            let (same_y, same_rest) = if case.get("dtype") == "bf16" {
                let x: Vec<bf16> = case
                    .row("x")
                    .iter()
                    .map(|&b| bf16::from_bits(b as u16))
                    .collect();
                let (e, g) = (
                    fake_quant_float(&config, &x, &shape).unwrap(),
                    gpu.forward(&x, &shape).unwrap(),
                );
                (
                    e.y.iter()
                        .zip(&g.y)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    (e.codes, e.scales, e.mask) == (g.codes, g.scales, g.mask),
                )
            } else {
                let x: Vec<f32> = case.row("x").iter().map(|&b| f32::from_bits(b)).collect();
                let (e, g) = (
                    fake_quant_float(&config, &x, &shape).unwrap(),
                    gpu.forward(&x, &shape).unwrap(),
                );
                (
                    e.y.iter()
                        .zip(&g.y)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    (e.codes, e.scales, e.mask) == (g.codes, g.scales, g.mask),
                )
            };
            assert!(
                same_y && same_rest,
                "{label}: y {same_y}, codes/scales/mask {same_rest}"
            );
        }
    }
}

#[test]
fn float_configs_are_checked() {
    use fakequant::Error;
    let amax = |lower, upper| FloatScaling::Amax {
        granularity: Granularity::PerTensor,
        lower,
        upper,
    };
    for (format, scaling) in [
        (ElementFormat::Fp4E2M1, amax(None, None)),
        (ElementFormat::Fp8E4M3, amax(Some(-1.0), None)),
        (ElementFormat::Fp8E4M3, amax(None, Some(f32::INFINITY))),
        (ElementFormat::Fp8E4M3, amax(Some(2.0), Some(1.0))),
        (ElementFormat::Fp8E4M3, FloatScaling::Nvfp4(None)),
        (ElementFormat::Fp4E2M1, FloatScaling::Nvfp4(Some(0.0))),
        (ElementFormat::Fp4E2M1, FloatScaling::Nvfp4(Some(f32::NAN))),
        (ElementFormat::Fp4E2M1, FloatScaling::Nvfp4(Some(1e-37))),
        (ElementFormat::Fp4E2M1, FloatScaling::Nvfp4(Some(1e37))),
    ] {
        let got = FloatQuantConfig::new(format, scaling);
        assert!(
            matches!(got, Err(Error::InvalidSetting(_) | Error::Unsupported(_))),
            "{format:?} {scaling:?}: {got:?}"
        );
    }
    // Blocks must divide the last axis; the device refuses what the reference refuses.
    let mx = FloatQuantConfig::mx(ElementFormat::Fp8E4M3, MxScaleRule::Rceil).unwrap();
    assert!(matches!(
        fake_quant_float(&mx, &[0.0f32; 48], &[48]),
        Err(Error::InvalidGroup { .. })
    ));
    for ctx in crate::common::contexts() {
        assert!(matches!(
            ctx.create_float_quant(&mx, &[2, 40]),
            Err(Error::InvalidGroup { .. })
        ));
        let fp8 = FloatQuantConfig::fp8_per_row(ElementFormat::Fp8E4M3).unwrap();
        assert!(matches!(
            ctx.create_float_quant(&fp8, &[]),
            Err(Error::AxisOutOfRange { .. })
        ));
        let gpu = ctx.create_float_quant(&mx, &[2, 64]).unwrap();
        assert!(matches!(
            gpu.forward(&[0.0f32; 96], &[3, 32]),
            Err(Error::LengthMismatch { .. })
        ));
    }
}
