// requires: exact_f32
// provides: f16_to_f32_bits, f32_to_f16_bits, bf16_to_f32_bits, f32_to_bf16_bits
// Exact conversions between f32 and the 16-bit storage types (f16, bf16), on bit patterns with
// integer arithmetic. Prepended after exact_f32.wgsl.
//
// Kernels read and write packed u32 words (two 16-bit values each) and convert here: the GL
// backend has no SHADER_F16, bf16 has no WGSL type, `unpack2x16float`/`pack2x16float` give
// backend-dependent NaN payloads, and real GPUs may flush f16 subnormals. Every function below
// uses only integer shifts, masks, compares and adds, which are exact on every device, and each is
// bit-exact with the `half` crate (2.x) on every input, NaNs included:
//
// - f16 -> f32 (`half::f16::to_f32`): exact. A NaN keeps its sign, its 10-bit payload moves to the
//   top of the f32 significand (<< 13) and the quiet bit (0x00400000) is set, so a signalling f16
//   NaN becomes a quiet f32 NaN.
// - f32 -> f16 (`half::f16::from_f32`): round to nearest, ties to even; overflow (|x| >= 65520)
//   to infinity; results below 2^-14 rounded to f16 subnormals; |x| <= 2^-25 to a signed zero. A
//   NaN keeps its sign and the top 10 bits of its payload (the low 13 are truncated) and gets the
//   quiet bit 0x0200, so it stays a NaN even when the kept payload bits are all zero (0x7f800001
//   -> 0x7e00).
// - bf16 -> f32 (`half::bf16::to_f32`): `b << 16`, except that a NaN also gets the quiet bit.
// - f32 -> bf16 (`half::bf16::from_f32`): round to nearest, ties to even (f32::MAX rounds to
//   infinity, subnormals round like any other value); a NaN keeps its sign and the top 7 payload
//   bits and gets the quiet bit 0x0040.
//
// The `half` crate converts f16 with F16C instructions when the CPU has them (detected at run time
// when its `std` feature is on, as here), else in software; both paths give the results above
// (tests/half_conversions.rs checks that they agree). Its bf16 conversions are software only.

const F16_SIGN: u32 = 0x8000u;
const F16_EXP: u32 = 0x7c00u;
const F16_MANT: u32 = 0x03ffu;
const F16_QUIET_BIT: u32 = 0x0200u;
const BF16_QUIET_BIT: u32 = 0x0040u;

// f16 (its low 16 bits; the upper 16 are ignored) widened to f32 bits. Exact: every f16 is an
// f32, and each case only moves bit fields (the exponent rebias is an integer add).
fn f16_to_f32_bits(h: u32) -> u32 {
    let sign = (h & F16_SIGN) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & F16_MANT;
    if (e == 0x1fu) {
        // Infinity, or a NaN: payload to the top of the f32 significand, quiet bit set.
        return sign | EXP_MASK | select(0u, QUIET_BIT | (m << 13u), m != 0u);
    }
    if (e == 0u) {
        if (m == 0u) {
            return sign; // signed zero
        }
        // Subnormal: m * 2^-24 with the leading one at bit p (0..9), so the value is
        // 2^(p - 24) * (m / 2^p): biased f32 exponent p - 24 + 127, and the bits below the
        // leading one moved to the top of the significand. No bits are lost (p <= 9 < 23).
        let p = 31u - countLeadingZeros(m);
        return sign | ((p + 103u) << 23u) | ((m << (23u - p)) & 0x007fffffu);
    }
    // Normal: rebias the exponent (15 -> 127), widen the significand.
    return sign | ((e + 112u) << 23u) | (m << 13u);
}

// f32 bits narrowed to f16 (in the low 16 bits), rounded to nearest, ties to even. Exact: the
// result is the f32 significand shifted right with the dropped bits compared to exactly half a unit
// (integer compares), and the f16 encoding is monotonic, so adding the round-up carry to the
// packed exponent|significand steps to the next f16, across binades, from the largest subnormal
// to the smallest normal and from the largest finite value (65504) to infinity alike.
fn f32_to_f16_bits(f: u32) -> u32 {
    let sign = (f >> 16u) & F16_SIGN;
    let a = f & ABS_MASK;
    if (a >= EXP_MASK) {
        if (a == EXP_MASK) {
            return sign | F16_EXP; // infinity
        }
        // NaN: the top 10 payload bits, and the quiet bit so that it stays a NaN.
        return sign | F16_EXP | F16_QUIET_BIT | ((a >> 13u) & F16_MANT);
    }
    if (a >= 0x47800000u) {
        return sign | F16_EXP; // |f| >= 2^16: beyond the largest finite f16 even before rounding
    }
    if (a >= 0x38800000u) {
        // |f| >= 2^-14: a normal f16, or 65504 rounded up to infinity (|f| >= 65520). Rebiasing
        // the exponent (127 -> 15) by subtracting 112 << 23 leaves the f16 encoding above 13
        // guard bits.
        let r = a - 0x38000000u;
        let t = r >> 13u;
        let rest = r & 0x1fffu;
        let up = rest > 0x1000u || (rest == 0x1000u && (t & 1u) == 1u);
        return sign | (t + select(0u, 1u, up));
    }
    // |f| < 2^-14: an f16 subnormal, counted in units of 2^-24. A normal f32 with biased exponent
    // e is (m | 2^23) * 2^(e - 150) = ((m | 2^23) >> (126 - e)) units plus a remainder.
    let e = a >> 23u;
    if (e < 102u) {
        // |f| < 2^-25, half the smallest subnormal (f32 subnormals included): a signed zero.
        return sign;
    }
    let m = (a & 0x007fffffu) | 0x00800000u;
    let shift = 126u - e; // 14..24
    let t = m >> shift;
    let rest = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    // Rounding 0x3ff up gives 0x400, the smallest normal's encoding.
    let up = rest > half || (rest == half && (t & 1u) == 1u);
    return sign | (t + select(0u, 1u, up));
}

// bf16 (its low 16 bits; the upper 16 are ignored) widened to f32 bits. Exact: a bf16 is the upper
// half of an f32; a NaN also gets the f32 quiet bit, as `half::bf16::to_f32` does.
fn bf16_to_f32_bits(b: u32) -> u32 {
    let f = (b & 0xffffu) << 16u;
    return select(f, f | QUIET_BIT, is_nan_bits(f));
}

// f32 bits narrowed to bf16 (in the low 16 bits), rounded to nearest, ties to even. Exact: the
// upper half plus a carry decided by integer compares of the lower half against 0x8000. A carry
// steps to the next bf16 across binades and from the largest finite value to infinity; it cannot
// leave 16 bits, since the upper half of a non-NaN is at most 0xff80 (-infinity, lower half 0).
fn f32_to_bf16_bits(f: u32) -> u32 {
    if (is_nan_bits(f)) {
        // The top 7 payload bits, and the quiet bit so that it stays a NaN.
        return (f >> 16u) | BF16_QUIET_BIT;
    }
    let t = f >> 16u;
    let rest = f & 0xffffu;
    let up = rest > 0x8000u || (rest == 0x8000u && (t & 1u) == 1u);
    return t + select(0u, 1u, up);
}
