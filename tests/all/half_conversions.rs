//! The integer-only 16-bit conversions of `shaders/half.wgsl` (`f16_to_f32_bits`,
//! `f32_to_f16_bits`, `bf16_to_f32_bits`, `f32_to_bf16_bits`) equal the `half` crate's
//! `f16::{to_f32, from_f32}` and `bf16::{to_f32, from_f32}` bit for bit, on every adapter present:
//! every 16-bit pattern widened, every rounding tie narrowed (and its neighbours), the overflow
//! and underflow boundaries, subnormals, infinities, NaNs of every payload, and random f32
//! patterns. Without an adapter the GPU part is skipped unless `FAKEQUANT_REQUIRE_GPU=1`.
//!
//! The reference is the crate's run-time output. On x86 with `std` (as here) `half` detects F16C
//! at run time and converts f16 in hardware when the CPU has it; `host_f16_paths_agree` checks
//! that this equals its software path (the `*_const` functions) on every input used here, NaN
//! payloads included, so the shader matches whichever path a host takes.

use crate::common::*;
use fakequant::GpuContext;
use half::{bf16, f16};
use proptest::prelude::{any, prop, proptest, ProptestConfig};

const HELPERS: &str = concat!(
    include_str!("../../shaders/exact_f32.wgsl"),
    include_str!("../../shaders/half.wgsl")
);
/// Runs `expr` (WGSL over `a`, the input word of item `i`) for every input word in a test kernel
/// built on the helpers, and returns one u32 per word.
fn run_kernel(ctx: &GpuContext, expr: &str, input: &[u32]) -> Vec<u32> {
    run_test_kernel(ctx, HELPERS, "let a = input[i];", expr, input, input.len())
}

fn show32(bits: u32) -> String {
    format!("{bits:#010x} ({:e})", f32::from_bits(bits))
}

fn show16(bits: u32) -> String {
    format!("{bits:#06x}")
}

/// Runs `expr` on every input on every adapter and asserts that the results equal `expected`
/// (the `half` crate's) bit for bit.
fn check(
    label: &str,
    expr: &str,
    inputs: &[u32],
    expected: impl Fn(u32) -> u32,
    show_in: fn(u32) -> String,
    show_out: fn(u32) -> String,
) {
    let want: Vec<u32> = inputs.iter().map(|&x| expected(x)).collect();
    for ctx in contexts() {
        let got = run_kernel(ctx, expr, inputs);
        let bad: Vec<String> = inputs
            .iter()
            .zip(got.iter().zip(&want))
            .filter(|(_, (g, w))| g != w)
            .map(|(&x, (&g, &w))| {
                format!(
                    "  {expr} with a = {}: {}, expected {}",
                    show_in(x),
                    show_out(g),
                    show_out(w)
                )
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{label} on {}: {} of {} results differ:\n{}",
            ctx.adapter_name(),
            bad.len(),
            inputs.len(),
            bad[..bad.len().min(12)].join("\n")
        );
    }
}

fn half_f16_to_f32(h: u32) -> u32 {
    f16::from_bits(h as u16).to_f32().to_bits()
}

fn half_f32_to_f16(f: u32) -> u32 {
    u32::from(f16::from_f32(f32::from_bits(f)).to_bits())
}

fn half_bf16_to_f32(b: u32) -> u32 {
    bf16::from_bits(b as u16).to_f32().to_bits()
}

fn half_f32_to_bf16(f: u32) -> u32 {
    u32::from(bf16::from_f32(f32::from_bits(f)).to_bits())
}

fn all_16_bit_patterns() -> Vec<u32> {
    (0..=0xffff).collect()
}

fn is_nan32(bits: u32) -> bool {
    bits & 0x7fff_ffff > 0x7f80_0000
}

/// NaNs of both signs: every single payload bit, quiet and signalling, payloads that only have
/// bits below the f16 (13) and bf16 (16) truncation points (signalling NaNs whose kept payload is
/// zero), all ones, and random payloads.
fn nan_inputs(rng: &mut Rng) -> Vec<u32> {
    let mut payloads: Vec<u32> = (0..23).map(|k| 1u32 << k).collect();
    payloads.extend([
        0x7f_ffff, 0x3f_ffff, 0x40_0000, 0x40_0001, 0x00_1fff, 0x00_2000, 0x00_ffff, 0x01_0000,
        0x00_0001, 0x40_1fff, 0x40_e000, 0x3f_e000, 0x00_e000, 0x00_0fff, 0x00_8000,
    ]);
    for _ in 0..256 {
        let p = rng.next_u32() & 0x7f_ffff;
        payloads.extend([p, p & 0x1fff, p & 0xffff, p | 0x40_0000, p & 0x3f_ffff]);
    }
    let mut v = Vec::new();
    for p in payloads.into_iter().filter(|&p| p != 0) {
        v.extend([0x7f80_0000 | p, 0xff80_0000 | p]);
    }
    v
}

/// The f16 narrowing corpus: for each of the 65536 f16 patterns (both signs) that is not a NaN, its
/// exact f32 value and the f32 midpoint to the next f16 up in magnitude (the tie; above 65504 that
/// is 65520, the overflow boundary, and above +-0 it is 2^-25, the underflow boundary), each with
/// its neighbours up to 2 ulps away; the overflow boundary; a dense underflow and subnormal range;
/// f32 subnormals; infinities and zeros; NaNs of every payload.
fn f16_narrowing_corpus() -> Vec<u32> {
    let mut v: Vec<u32> = Vec::new();
    let near = |bits: u32, v: &mut Vec<u32>| {
        for d in 0..=2u32 {
            for x in [bits.wrapping_add(d), bits.wrapping_sub(d)] {
                v.extend([x & 0x7fff_ffff, x | 0x8000_0000]);
            }
        }
    };
    for h in 0..0x7c00u16 {
        let lo = f16::from_bits(h).to_f32();
        // The next f16 up; 0x7c00 (infinity) stands for 2^16 here, where rounding switches to it.
        let hi = if h == 0x7bff {
            65536.0
        } else {
            f16::from_bits(h + 1).to_f32()
        };
        near(lo.to_bits(), &mut v);
        // f16 values have 11 significant bits, so the midpoint (12 bits) is exact in f32.
        let mid = ((f64::from(lo) + f64::from(hi)) / 2.0) as f32;
        assert_eq!(f64::from(mid), (f64::from(lo) + f64::from(hi)) / 2.0);
        near(mid.to_bits(), &mut v);
    }
    // The overflow boundary: 65504 (largest f16), 65519.996, 65520 (the tie to infinity), 65536,
    // and the largest f32s, with wide neighbourhoods.
    for b in [
        0x477f_e000u32,
        0x477f_efff,
        0x477f_f000,
        0x4780_0000,
        0x7f7f_ffff,
    ] {
        for d in 0..=64u32 {
            for x in [b + d, b - d] {
                if x < 0x7f80_0000 {
                    v.extend([x, x | 0x8000_0000]);
                }
            }
        }
    }
    // Underflow and subnormal results: every f32 exponent from 2^-40 up to the smallest normal f16
    // (2^-14) with structured and random significands.
    let mut rng = Rng::new(11);
    for e in 87..=113u32 {
        let mut mantissas = vec![
            0u32, 1, 2, 0x40_0000, 0x40_0001, 0x3f_ffff, 0x7f_ffff, 0x7f_fffe,
        ];
        for k in 0..23 {
            mantissas.extend([1 << k, (1 << k) - 1, 0x7f_ffff ^ ((1 << k) - 1)]);
        }
        for _ in 0..2048 {
            mantissas.push(rng.next_u32() & 0x7f_ffff);
        }
        for m in mantissas {
            let x = (e << 23) | (m & 0x7f_ffff);
            v.extend([x, x | 0x8000_0000]);
        }
    }
    // f32 subnormals and zeros, infinities.
    for _ in 0..4096 {
        let x = rng.next_u32() & 0x007f_ffff;
        v.extend([x, x | 0x8000_0000]);
    }
    v.extend([
        0x0000_0000,
        0x8000_0000,
        0x0000_0001,
        0x8000_0001,
        0x007f_ffff,
        0x807f_ffff,
        0x7f80_0000,
        0xff80_0000,
    ]);
    v.extend(nan_inputs(&mut rng));
    v
}

#[test]
fn f16_widening_matches_half_for_every_pattern() {
    check(
        "f16 -> f32, all 65536 patterns",
        "f16_to_f32_bits(a)",
        &all_16_bit_patterns(),
        half_f16_to_f32,
        show16,
        show32,
    );
}

#[test]
fn f16_widening_ignores_the_upper_half_of_the_word() {
    let mut rng = Rng::new(12);
    let inputs: Vec<u32> = (0..=0xffffu32)
        .map(|h| h | (rng.next_u32() << 16))
        .collect();
    check(
        "f16 -> f32, garbage in bits 16..32",
        "f16_to_f32_bits(a)",
        &inputs,
        |w| half_f16_to_f32(w & 0xffff),
        show32,
        show32,
    );
}

#[test]
fn bf16_widening_matches_half_for_every_pattern() {
    check(
        "bf16 -> f32, all 65536 patterns",
        "bf16_to_f32_bits(a)",
        &all_16_bit_patterns(),
        half_bf16_to_f32,
        show16,
        show32,
    );
    let mut rng = Rng::new(13);
    let inputs: Vec<u32> = (0..=0xffffu32)
        .map(|h| h | (rng.next_u32() << 16))
        .collect();
    check(
        "bf16 -> f32, garbage in bits 16..32",
        "bf16_to_f32_bits(a)",
        &inputs,
        |w| half_bf16_to_f32(w & 0xffff),
        show32,
        show32,
    );
}

/// Every upper half (all signs, exponents, significands, infinities and NaNs) with lower halves
/// that round down, tie (0x8000: to even, both parities of the upper half), round up, and random.
#[test]
fn bf16_narrowing_matches_half_at_every_tie() {
    let mut rng = Rng::new(14);
    let mut lows: Vec<u32> = vec![0, 1, 0x7fff, 0x8000, 0x8001, 0xffff];
    lows.extend((0..4).map(|_| rng.next_u32() & 0xffff));
    let inputs: Vec<u32> = (0..=0xffffu32)
        .flat_map(|hi| lows.iter().map(move |&lo| (hi << 16) | lo))
        .collect();
    check(
        "f32 -> bf16, every upper half",
        "f32_to_bf16_bits(a)",
        &inputs,
        half_f32_to_bf16,
        show32,
        show16,
    );
}

#[test]
fn bf16_narrowing_matches_half_on_random_patterns() {
    let mut rng = Rng::new(15);
    let inputs: Vec<u32> = (0..1 << 20).map(|_| rng.next_u32()).collect();
    check(
        "f32 -> bf16, 2^20 random patterns",
        "f32_to_bf16_bits(a)",
        &inputs,
        half_f32_to_bf16,
        show32,
        show16,
    );
}

#[test]
fn f16_narrowing_matches_half_at_ties_and_boundaries() {
    let inputs = f16_narrowing_corpus();
    check(
        "f32 -> f16, ties, boundaries, subnormals, NaNs",
        "f32_to_f16_bits(a)",
        &inputs,
        half_f32_to_f16,
        show32,
        show16,
    );
}

#[test]
fn f16_narrowing_matches_half_on_random_patterns() {
    let mut rng = Rng::new(16);
    let inputs: Vec<u32> = (0..1 << 20).map(|_| rng.next_u32()).collect();
    check(
        "f32 -> f16, 2^20 random patterns",
        "f32_to_f16_bits(a)",
        &inputs,
        half_f32_to_f16,
        show32,
        show16,
    );
}

/// narrow(widen(x)) == x for every non-NaN pattern of both types; NaNs come back quiet, as
/// `half` brings them back.
#[test]
fn round_trips_are_identities_for_every_non_nan_pattern() {
    let f16_round_trip = |h: u32| half_f32_to_f16(half_f16_to_f32(h));
    let bf16_round_trip = |b: u32| half_f32_to_bf16(half_bf16_to_f32(b));
    for h in 0..=0xffffu32 {
        if h & 0x7fff <= 0x7c00 {
            assert_eq!(f16_round_trip(h), h, "half f16 round trip of {h:#06x}");
        }
        if h & 0x7fff <= 0x7f80 {
            assert_eq!(bf16_round_trip(h), h, "half bf16 round trip of {h:#06x}");
        }
    }
    check(
        "f16 -> f32 -> f16",
        "f32_to_f16_bits(f16_to_f32_bits(a))",
        &all_16_bit_patterns(),
        f16_round_trip,
        show16,
        show16,
    );
    check(
        "bf16 -> f32 -> bf16",
        "f32_to_bf16_bits(bf16_to_f32_bits(a))",
        &all_16_bit_patterns(),
        bf16_round_trip,
        show16,
        show16,
    );
}

/// The NaN rules documented in `shaders/half.wgsl`, as the `half` crate applies them: a canary
/// for a `half` release that changes them (the GPU tests would then fail too, less legibly).
#[test]
fn half_crate_nan_rules_are_as_documented() {
    let f16_widen = |h: u16| half_f16_to_f32(u32::from(h));
    let f16_narrow = |f: u32| half_f32_to_f16(f) as u16;
    let bf16_widen = |b: u16| half_bf16_to_f32(u32::from(b));
    let bf16_narrow = |f: u32| half_f32_to_bf16(f) as u16;
    // f16 -> f32: sign kept, payload << 13, quiet bit set (signalling becomes quiet).
    assert_eq!(f16_widen(0x7c01), 0x7fc0_2000);
    assert_eq!(f16_widen(0xfc01), 0xffc0_2000);
    assert_eq!(f16_widen(0x7e00), 0x7fc0_0000);
    assert_eq!(f16_widen(0x7dff), 0x7fff_e000);
    assert_eq!(f16_widen(0x7c00), 0x7f80_0000);
    // f32 -> f16: sign kept, payload >> 13 (truncated), quiet bit set, so a signalling NaN whose
    // kept payload is zero stays a NaN.
    assert_eq!(f16_narrow(0x7f80_0001), 0x7e00);
    assert_eq!(f16_narrow(0xff80_1fff), 0xfe00);
    assert_eq!(f16_narrow(0x7f80_2000), 0x7e01);
    assert_eq!(f16_narrow(0x7fc0_0000), 0x7e00);
    assert_eq!(f16_narrow(0x7fff_ffff), 0x7fff);
    assert_eq!(f16_narrow(0x7f80_0000), 0x7c00);
    // Rounding: the tie at 65520 goes to infinity, the one at 2^-25 to zero.
    assert_eq!(f16_narrow(0x477f_efff), 0x7bff);
    assert_eq!(f16_narrow(0x477f_f000), 0x7c00);
    assert_eq!(f16_narrow(0x3300_0000), 0x0000);
    assert_eq!(f16_narrow(0x3300_0001), 0x0001);
    assert_eq!(f16_narrow(0xb300_0000), 0x8000);
    // bf16 -> f32: b << 16, quiet bit set on NaNs.
    assert_eq!(bf16_widen(0x7f81), 0x7fc1_0000);
    assert_eq!(bf16_widen(0xffc0), 0xffc0_0000);
    assert_eq!(bf16_widen(0x7f80), 0x7f80_0000);
    // f32 -> bf16: sign kept, payload >> 16 (truncated), quiet bit set.
    assert_eq!(bf16_narrow(0x7f80_0001), 0x7fc0);
    assert_eq!(bf16_narrow(0xff80_ffff), 0xffc0);
    assert_eq!(bf16_narrow(0x7f81_0000), 0x7fc1);
    assert_eq!(bf16_narrow(0x7f7f_ffff), 0x7f80);
    assert_eq!(bf16_narrow(0x3f80_8000), 0x3f80);
    assert_eq!(bf16_narrow(0x3f81_8000), 0x3f82);
}

/// `half` converts f16 with F16C instructions when the CPU has them (run-time detection) and in
/// software otherwise (`*_const`, always software); both must give the same bits, NaN payloads
/// included, for the GPU tests' reference to be the same on every host. bf16 is software only.
/// Here on the narrowing corpus and every f16 pattern; `host_f16_paths_agree_on_random_patterns`
/// on random f32 patterns.
#[test]
fn host_f16_paths_agree() {
    let inputs = f16_narrowing_corpus();
    for &f in &inputs {
        assert_f16_paths_agree(f);
    }
    for h in 0..=0xffffu16 {
        let x = f16::from_bits(h);
        assert_eq!(
            x.to_f32().to_bits(),
            x.to_f32_const().to_bits(),
            "f16::to_f32 run-time and software paths differ on {h:#06x}"
        );
    }
    assert!(inputs.iter().any(|&f| is_nan32(f)));
}

fn assert_f16_paths_agree(f: u32) {
    let x = f32::from_bits(f);
    assert_eq!(
        f16::from_f32(x).to_bits(),
        f16::from_f32_const(x).to_bits(),
        "f16::from_f32 run-time and software paths differ on {}",
        show32(f)
    );
}

proptest! {
    // 2^20 patterns a run, as many as the seeded loop this replaces drew.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `host_f16_paths_agree` on random f32 patterns (4096 a case).
    #[test]
    fn host_f16_paths_agree_on_random_patterns(
        patterns in prop::collection::vec(any::<u32>(), 4096)
    ) {
        for f in patterns {
            assert_f16_paths_agree(f);
        }
    }
}
