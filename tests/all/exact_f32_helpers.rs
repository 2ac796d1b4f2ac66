//! The integer-only f32 helpers of `shaders/exact_f32.wgsl` (`add_rn_bits`, `sub_rn_bits`,
//! `mul_rn_bits`, `div_rn_bits`, `round_half_even_clamp_i32`) equal IEEE-754 binary32 arithmetic
//! (Rust's, on the host) bit for bit, on every adapter present: random operands of every
//! magnitude, operands close enough to cancel, and a corpus of overflow, underflow, tie and signed
//! zero cases. Without an adapter the GPU part is skipped unless `FAKEQUANT_REQUIRE_GPU=1`.

use crate::common::*;
use fakequant::GpuContext;

const HELPERS: &str = include_str!("../../shaders/exact_f32.wgsl");
/// Runs `expr` (WGSL over `a`, `b`, `c`: the words of item `i`, `stride` words per item) for every
/// item of `input` in a test kernel built on the helpers, and returns one u32 per item.
fn run_kernel(ctx: &GpuContext, expr: &str, stride: usize, input: &[u32]) -> Vec<u32> {
    assert!((1..=3).contains(&stride) && input.len().is_multiple_of(stride));
    let load = |k: usize| {
        if k < stride {
            format!("input[{stride}u * i + {k}u]")
        } else {
            "0u".to_string()
        }
    };
    let prelude = format!(
        "let a = {}; let b = {}; let c = {};",
        load(0),
        load(1),
        load(2)
    );
    run_test_kernel(ctx, HELPERS, &prelude, expr, input, input.len() / stride)
}

fn show(bits: u32) -> String {
    format!("{bits:#010x} ({:e})", f32::from_bits(bits))
}

/// Runs the binary helper `name` on every pair and asserts it equals `op` bit for bit.
fn check_binary(
    ctx: &GpuContext,
    label: &str,
    name: &str,
    pairs: &[(u32, u32)],
    op: fn(f32, f32) -> f32,
) {
    let input: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let got = run_kernel(ctx, &format!("{name}(a, b)"), 2, &input);
    let bad: Vec<String> = pairs
        .iter()
        .zip(&got)
        .filter_map(|(&(a, b), &g)| {
            let expected = op(f32::from_bits(a), f32::from_bits(b)).to_bits();
            (g != expected).then(|| {
                format!(
                    "  {name}({}, {}) = {}, expected {}",
                    show(a),
                    show(b),
                    show(g),
                    show(expected)
                )
            })
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{label}: {name} on {}: {} of {} results differ:\n{}",
        ctx.adapter_name(),
        bad.len(),
        pairs.len(),
        bad[..bad.len().min(12)].join("\n")
    );
}

fn check_add_sub(ctx: &GpuContext, label: &str, pairs: &[(u32, u32)]) {
    check_binary(ctx, label, "add_rn_bits", pairs, |a, b| a + b);
    check_binary(ctx, label, "sub_rn_bits", pairs, |a, b| a - b);
}

fn check_mul(ctx: &GpuContext, label: &str, pairs: &[(u32, u32)]) {
    check_binary(ctx, label, "mul_rn_bits", pairs, |a, b| a * b);
}

const SIGN: u32 = 0x8000_0000;
const MANT: u32 = 0x007f_ffff;

fn with_sign(bits: u32, negative: bool) -> u32 {
    if negative {
        bits | SIGN
    } else {
        bits
    }
}

/// A significand field that is often sparse (only its top or bottom few bits random), so that
/// sums and products land on exact ties much more often than uniform random bits would.
fn mantissa(rng: &mut Rng) -> u32 {
    let r = rng.next_u32() & MANT;
    match rng.below(5) {
        // top bits only
        0 => r & !(MANT >> (1 + rng.below(8))),
        // bottom bits only
        1 => r & ((1 << (1 + rng.below(8))) - 1),
        // both ends
        2 => r & (0x7f_0000 | ((1 << rng.below(6)) - 1)),
        // all zeros, all ones, half, one
        3 => [0, MANT, 0x40_0000, 1][rng.below(4)],
        _ => r,
    }
}

/// A finite f32 with biased exponent `e` (0: subnormal or zero, 1..=254: normal) and a random sign.
fn finite(rng: &mut Rng, e: i32) -> u32 {
    let e = e.clamp(0, 254) as u32;
    with_sign((e << 23) | mantissa(rng), rng.next_u32() & 1 == 1)
}

/// `finite` with a biased exponent uniform in `lo..lo + span`.
fn finite_in(rng: &mut Rng, lo: i32, span: usize) -> u32 {
    let e = lo + rng.below(span) as i32;
    finite(rng, e)
}

/// Any finite bit pattern.
fn any_finite(rng: &mut Rng) -> u32 {
    loop {
        let bits = rng.next_u32();
        if bits & 0x7f80_0000 != 0x7f80_0000 {
            return bits;
        }
    }
}

fn exponent(bits: u32) -> i32 {
    ((bits >> 23) & 0xff) as i32
}

/// 2^20 pairs for addition: random finite patterns, close exponents (cancellation and every
/// alignment shift around the sticky bit), a few ulps apart with opposite signs, and tiny values.
fn random_add_pairs(seed: u64) -> Vec<(u32, u32)> {
    let mut rng = Rng::new(seed);
    (0..1 << 20)
        .map(|i| match i % 6 {
            0 => (any_finite(&mut rng), any_finite(&mut rng)),
            1 => {
                let a = finite_in(&mut rng, 0, 256);
                let d = rng.below(9) as i32 - 4;
                (a, finite(&mut rng, exponent(a) + d))
            }
            2 => {
                let a = finite_in(&mut rng, 0, 256);
                let d = rng.below(40) as i32;
                (a, finite(&mut rng, exponent(a) - d))
            }
            3 => {
                // within a few ulps, mostly of opposite sign: heavy cancellation and x + (-x)
                let a = any_finite(&mut rng);
                let k = rng.below(9) as u32;
                let mut b = if rng.below(2) == 0 {
                    a.wrapping_add(k)
                } else {
                    a.wrapping_sub(k)
                };
                if b & 0x7f80_0000 == 0x7f80_0000 || (b ^ a) & SIGN != 0 {
                    b = a;
                }
                (a, if rng.below(4) == 0 { b } else { b ^ SIGN })
            }
            4 => (finite_in(&mut rng, 0, 4), finite_in(&mut rng, 0, 30)),
            _ => {
                let a = finite_in(&mut rng, 250, 5);
                (a, finite_in(&mut rng, 220, 35))
            }
        })
        .collect()
}

/// 2^20 pairs for multiplication: random finite patterns, products near the subnormal range and
/// below it, near overflow, and subnormal times large.
fn random_mul_pairs(seed: u64) -> Vec<(u32, u32)> {
    let mut rng = Rng::new(seed);
    (0..1 << 20)
        .map(|i| match i % 5 {
            0 => (any_finite(&mut rng), any_finite(&mut rng)),
            1 => {
                // product exponent around the subnormal range: ea + eb - 127 in about [-30, 3]
                let ea = rng.below(128) as i32;
                let target = rng.below(34) as i32 - 30 + 127;
                (finite(&mut rng, ea), finite(&mut rng, target - ea))
            }
            2 => {
                // product exponent around overflow: ea + eb - 127 in about [250, 256]
                let ea = 127 + rng.below(128) as i32;
                let target = 250 + rng.below(7) as i32 + 127;
                (finite(&mut rng, ea), finite(&mut rng, target - ea))
            }
            3 => (finite(&mut rng, 0), finite_in(&mut rng, 0, 255)),
            _ => {
                let a = finite_in(&mut rng, 100, 56);
                (a, finite_in(&mut rng, 100, 56))
            }
        })
        .collect()
}

/// Values that stress the corner cases, of both signs.
fn special_values() -> Vec<u32> {
    let mut v: Vec<u32> = vec![
        0x0000_0000, // zero
        0x0000_0001, // smallest subnormal
        0x0000_0002,
        0x0000_0003,
        0x0000_0005,
        0x0040_0000, // 2^-127
        0x0040_0001,
        0x007f_fffe,
        0x007f_ffff, // largest subnormal
        0x0080_0000, // smallest normal
        0x0080_0001,
        0x0100_0000,
        0x00ff_ffff,
        0x0c00_0000, // 2^-103
        0x1a00_0000, // 2^-75
        0x1a40_0000, // 1.5 * 2^-75
        0x3300_0000, // 2^-25
        0x3380_0000, // 2^-24
        0x3380_0001,
        0x3440_0000, // 3 * 2^-24
        0x3400_0000, // 2^-23
        0x3f00_0000, // 0.5
        0x3f7f_ffff, // 1 - 2^-24
        0x3f80_0000, // 1
        0x3f80_0001, // 1 + 2^-23
        0x3f80_0002,
        0x3fc0_0000, // 1.5
        0x3fff_ffff,
        0x4000_0000, // 2
        0x4b00_0000, // 2^23
        0x4b7f_ffff,
        0x4b80_0000, // 2^24
        0x4b80_0001,
        0x4c00_0000,
        0x7300_0000, // 2^103: half an ulp of f32::MAX
        0x72ff_ffff,
        0x7300_0001,
        0x7e80_0000, // 2^126
        0x7eff_ffff,
        0x7f00_0000, // 2^127
        0x7f00_0001,
        0x7f7f_fffe,
        0x7f7f_ffff, // f32::MAX
        0x1234_5678,
        0x5a5a_5a5a,
    ];
    let negatives: Vec<u32> = v.iter().map(|b| b | SIGN).collect();
    v.extend(negatives);
    v
}

/// Every pair of special values, and named cases: ties to even, overflow exactly at the rounding
/// boundary of f32::MAX, halfway results in the subnormal range, subnormal times large.
fn adversarial_pairs() -> Vec<(u32, u32)> {
    let s = special_values();
    let mut pairs: Vec<(u32, u32)> = s
        .iter()
        .flat_map(|&a| s.iter().map(move |&b| (a, b)))
        .collect();
    let named = [
        (0x3f80_0000, 0x3380_0000), // 1 + 2^-24: tie, stays 1
        (0x3f80_0000, 0x3440_0000), // 1 + 3 * 2^-24: tie, rounds up to 1 + 2^-22
        (0x3f80_0001, 0x3380_0000), // (1 + 2^-23) + 2^-24: tie, rounds up to even
        (0x3f80_0000, 0xb300_0000), // 1 - 2^-25: tie across the binade edge, to 1
        (0x3f80_0000, 0xb380_0000), // 1 - 2^-24: exact
        (0x7f7f_ffff, 0x7300_0000), // f32::MAX + ulp/2: tie to even overflows
        (0x7f7f_ffff, 0x72ff_ffff), // just below the tie: f32::MAX
        (0x7f7f_ffff, 0x7f7f_ffff), // overflow
        (0x7f7f_ffff, 0xff7f_ffff), // x + (-x) = +0
        (0x8000_0000, 0x8000_0000), // (-0) + (-0) = -0
        (0x0000_0000, 0x8000_0000), // (+0) + (-0) = +0
        (0x8000_0000, 0x0000_0000),
        (0x0080_0000, 0x8000_0001), // smallest normal - smallest subnormal: largest subnormal
        (0x0000_0001, 0x3f00_0000), // 2^-149 * 0.5: halfway, ties to zero
        (0x0000_0003, 0x3f00_0000), // 3 * 2^-150: halfway, ties to 2 * 2^-149
        (0x0000_0001, 0x3fc0_0000), // 1.5 * 2^-149: halfway, ties to 2 * 2^-149
        (0x0000_0001, 0x3f40_0000), // 0.75 * 2^-149: rounds to 2^-149
        (0x1a00_0000, 0x1a00_0000), // 2^-150: ties to zero
        (0x1a40_0000, 0x1a00_0000), // 1.5 * 2^-150: rounds up to 2^-149
        (0x1a40_0000, 0x9a40_0000), // 2.25 * 2^-150: rounds to -2^-149
        (0x007f_ffff, 0x3f80_0001), // rounds up to the smallest normal
        (0x0000_0001, 0x7f00_0000), // subnormal * large: 2^-22
        (0x007f_ffff, 0x4b00_0000), // largest subnormal * 2^23: normal
        (0x0000_0001, 0x7f7f_ffff), // smallest subnormal * f32::MAX: normal
        (0x7f7f_ffff, 0x3f80_0001), // f32::MAX * (1 + ulp): overflow
        (0x7f7f_ffff, 0x3f7f_ffff), // f32::MAX * (1 - 2^-24): just past half an ulp down
        (0x7f00_0000, 0x4000_0000), // 2^127 * 2: overflow
        (0x7e80_0000, 0x3fff_ffff), // 2^126 * (2 - 2^-23): exactly f32::MAX
        (0x5f80_0000, 0x5f80_0000), // 2^64 * 2^64: overflow
        (0x1f80_0000, 0x1f80_0000), // 2^-64 * 2^-64: underflow to 0
        (0x9f80_0000, 0x1f80_0000), // to -0
    ];
    pairs.extend(named);
    pairs.extend(named.iter().map(|&(a, b)| (b, a)));
    pairs
}

#[test]
fn add_and_sub_match_ieee_on_random_pairs() {
    for ctx in contexts() {
        check_add_sub(ctx, "random add pairs", &random_add_pairs(1));
    }
}

#[test]
fn add_and_sub_match_ieee_on_adversarial_pairs() {
    for ctx in contexts() {
        check_add_sub(ctx, "adversarial pairs", &adversarial_pairs());
    }
}

#[test]
fn mul_matches_ieee_on_random_pairs() {
    for ctx in contexts() {
        check_mul(ctx, "random mul pairs", &random_mul_pairs(2));
        // The addition operands too: every magnitude and sign combination.
        check_mul(ctx, "random add pairs", &random_add_pairs(3));
    }
}

#[test]
fn mul_matches_ieee_on_adversarial_pairs() {
    for ctx in contexts() {
        check_mul(ctx, "adversarial pairs", &adversarial_pairs());
    }
}

/// `div_rn_bits` for finite dividends and positive finite divisors, subnormal ones included (its
/// documented domain; a quotient by a subnormal overflows to infinity when it should).
#[test]
fn div_matches_ieee_for_positive_finite_divisors() {
    let positive = |b: u32| b & SIGN == 0 && b != 0 && exponent(b) != 255;
    let mut pairs: Vec<(u32, u32)> = adversarial_pairs()
        .into_iter()
        .filter(|&(_, b)| positive(b))
        .collect();
    let mut rng = Rng::new(4);
    for i in 0..1 << 19 {
        let a = if i % 2 == 0 {
            any_finite(&mut rng)
        } else {
            finite_in(&mut rng, 0, 256)
        };
        let b = if i % 16 == 1 {
            (1 + rng.below(0x7f_ffff) as u32) >> rng.below(23)
        } else {
            finite_in(&mut rng, 1, 254) & !SIGN
        };
        pairs.push((a, b.max(1)));
    }
    assert!(pairs.iter().all(|&(_, b)| positive(b)));
    for ctx in contexts() {
        check_binary(ctx, "division", "div_rn_bits", &pairs, |a, b| a / b);
    }
}

/// `round_half_even_clamp_i32` against `round_ties_even` then `clamp`: ties of both signs, values
/// around the 2^23 / 2^24 boundaries, huge values, subnormals, signed zeros, and clamp edges.
#[test]
fn round_half_even_clamp_matches_rust() {
    let max = 1i32 << 24;
    let mut ranges: Vec<(i32, i32)> = vec![
        (-128, 127),
        (-127, 127),
        (0, 255),
        (-8, 7),
        (0, 0),
        (5, 5),
        (-1, 1),
        (-300, -5),
        (3, max),
        (-max, max),
        (-max, -max),
        (max, max),
        (-max, 0),
        (-32768, 32767),
    ];
    let mut values: Vec<f32> = Vec::new();
    for k in (-20..=20).chain([
        126, 127, 128, 255, 256, -127, -128, -129, 32767, 32768, -32768, -32769,
    ]) {
        for frac in [0.0f64, 0.5, -0.5, 0.25, 0.75] {
            values.push((k as f64 + frac) as f32);
        }
    }
    for p in [22, 23, 24, 25, 31, 32, 62, 63, 64, 100, 127] {
        let big = 2f64.powi(p);
        for d in [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0] {
            values.push((big + d) as f32);
        }
    }
    values.extend([
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        1e-40,
        0.0,
        0.499_999_97,
        0.500_000_06,
        1.499_999_9,
        2.500_000_2,
        8_388_607.5,
        16_777_215.0,
        16_777_216.0,
    ]);
    // And their neighbours a few ulps away, of both signs.
    let mut bits: Vec<u32> = Vec::new();
    for v in &values {
        let b = v.to_bits();
        for d in 0..=2u32 {
            for x in [b.wrapping_add(d), b.wrapping_sub(d)] {
                if x & 0x7f80_0000 != 0x7f80_0000 {
                    bits.extend([x & !SIGN, x | SIGN]);
                }
            }
        }
    }
    bits.extend(special_values());
    let mut rng = Rng::new(5);
    let mut triples: Vec<(u32, i32, i32)> = Vec::new();
    for &b in &bits {
        for &(lo, hi) in &ranges {
            triples.push((b, lo, hi));
        }
    }
    for _ in 0..64 {
        let x = rng.below(2 * max as usize + 1) as i32 - max;
        let y = rng.below(2 * max as usize + 1) as i32 - max;
        ranges.push((x.min(y), x.max(y)));
    }
    for i in 0..1 << 18 {
        let a = match i % 3 {
            0 => any_finite(&mut rng),
            1 => with_sign(rng.uniform(0.0, 2f64.powi(26)).to_bits(), rng.below(2) == 0),
            _ => {
                // k + 1/2 exactly, and its neighbours, at every integer magnitude up to 2^23
                let magnitude = 1 << (1 + rng.below(23));
                let k = rng.below(magnitude) as f64;
                let b = ((k + 0.5) as f32).to_bits() + rng.below(3) as u32;
                with_sign(b.wrapping_sub(1), rng.below(2) == 0)
            }
        };
        let (lo, hi) = ranges[rng.below(ranges.len())];
        triples.push((a, lo, hi));
    }
    let input: Vec<u32> = triples
        .iter()
        .flat_map(|&(a, lo, hi)| [a, lo as u32, hi as u32])
        .collect();
    for ctx in contexts() {
        let got = run_kernel(
            ctx,
            "u32(round_half_even_clamp_i32(a, bitcast<i32>(b), bitcast<i32>(c)))",
            3,
            &input,
        );
        let bad: Vec<String> = triples
            .iter()
            .zip(&got)
            .filter_map(|(&(a, lo, hi), &g)| {
                let expected = f32::from_bits(a)
                    .round_ties_even()
                    .clamp(lo as f32, hi as f32) as i32;
                (g as i32 != expected).then(|| {
                    format!(
                        "  round_half_even_clamp_i32({}, {lo}, {hi}) = {}, expected {expected}",
                        show(a),
                        g as i32
                    )
                })
            })
            .collect();
        assert!(
            bad.is_empty(),
            "round_half_even_clamp_i32 on {}: {} of {} results differ:\n{}",
            ctx.adapter_name(),
            bad.len(),
            triples.len(),
            bad[..bad.len().min(12)].join("\n")
        );
    }
}
