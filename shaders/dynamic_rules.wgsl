// requires: exact_f32, half
// provides: GroupQparams, group_qparams
// The dynamic qparams rules of src/dynamic.rs (reference: src/reference/dynamic.rs) for one group
// from its min and max, shared by the two-pass kernel (dynamic.wgsl) and the one-pass one
// (dynamic_groups.wgsl). The configuration is in `override` constants: a pipeline per rule set.
//
// Exact on every device by design: every float operation is one of exact_f32.wgsl's integer
// routines (one correctly rounded IEEE operation each: nothing to fuse, approximate or flush); the
// rounding to the input's type (torchao computes the qparams in it) is half.wgsl's integer
// narrowing; maxima, minima and caps of non-negative values compare their bits, which order like
// the values.

// The scheme and the input type specialize the pipeline (`override`: the per-element branches
// fold away; measured twice as fast on llvmpipe as reading them from the buffer). The rest of the
// rule set is read from a buffer written once per dynamic quantizer and input type, so that
// ranges, eps and qparams precisions need no pipeline of their own.

// 0 symmetric, 1 asymmetric (integer zero point), 2 float zero point (one-pass kernel only).
override SCHEME: u32 = 0u;
// The type the qparams are computed in (the input's): 0 f32, 1 f16, 2 bf16.
override QPARAMS_DTYPE: u32 = 0u;

struct DynamicRules {
    qmin: i32,
    qmax: i32,
    // f32 bits of the smallest scale, of (qmax - qmin), of (qmax - qmin) / 2 and of
    // mid = (qmin + qmax + 1) / 2.
    eps: u32,
    levels: u32,
    half_levels: u32,
    mid: u32,
    // Float zero point: the qparams kept in bf16 (else f32); its arithmetic on x in bf16 (x and
    // the qparams bf16, else f32).
    qparams_bf16: u32,
    arithmetic_bf16: u32,
}

@group(0) @binding(6) var<storage, read> rules: DynamicRules;

// 2^126: the largest scale whose reciprocal is a normal f32.
const MAX_SCALE_BITS: u32 = 0x7e800000u;
const POS_INF_BITS: u32 = 0x7f800000u;

struct GroupQparams {
    scale: u32,
    // The integer zero point (SCHEME 0, 1).
    zero_point: i32,
    // The zero point's f32 bits (every scheme).
    zero_bits: u32,
}

// Rounds f32 bits to the float-domain qparams' precision.
fn rq(bits: u32) -> u32 {
    if (rules.qparams_bf16 != 0u) {
        return bf16_to_f32_bits(f32_to_bf16_bits(bits));
    }
    return bits;
}

// Rounds f32 bits to the qparams' type and back (identity for f32).
fn rd(bits: u32) -> u32 {
    if (QPARAMS_DTYPE == 1u) {
        return f16_to_f32_bits(f32_to_f16_bits(bits));
    }
    if (QPARAMS_DTYPE == 2u) {
        return bf16_to_f32_bits(f32_to_bf16_bits(bits));
    }
    return bits;
}

// The largest finite value of the float-domain qparams' precision, as f32 bits.
fn max_finite_q_bits() -> u32 {
    return select(0x7f7fffffu, 0x7f7f0000u, rules.qparams_bf16 != 0u);
}

// Rounds a finite result to the input's type (`rd`) or to the qparams' precision (`rq`),
// saturating: a value that overflows the type becomes its largest finite value, sign kept, so
// that the float domain's qparams stay finite.
fn sat_rd(bits: u32) -> u32 {
    let r = rd(bits);
    return select((r & SIGN_BIT) | max_finite_bits(), r, is_finite_bits(r));
}

fn sat_rq(bits: u32) -> u32 {
    let r = rq(bits);
    return select((r & SIGN_BIT) | max_finite_q_bits(), r, is_finite_bits(r));
}

// The largest finite value of the qparams' type, as f32 bits.
fn max_finite_bits() -> u32 {
    if (QPARAMS_DTYPE == 1u) {
        return 0x477fe000u; // 65504
    }
    if (QPARAMS_DTYPE == 2u) {
        return 0x7f7f0000u;
    }
    return 0x7f7fffffu;
}

// `a / b` for a non-negative `a` that may be +inf (the range of a group that overflows) and a
// positive normal `b`.
fn div_or_inf(a: u32, b: u32) -> u32 {
    return select(POS_INF_BITS, div_rn_bits(a, b), is_finite_bits(a));
}

// max(s, eps), then min(s, 2^126): both non-negative, so their bits order like their values.
fn bounded_scale(s: u32) -> u32 {
    return min(max(s, rules.eps), MAX_SCALE_BITS);
}

// The qparams of a group whose finite values have the minimum `lo` and the maximum `hi` (f32
// bits; either non-finite means the group had no finite value and counts as all zeros).
fn group_qparams(lo_bits: u32, hi_bits: u32) -> GroupQparams {
    var lo = lo_bits;
    var hi = hi_bits;
    if (!is_finite_bits(lo) || !is_finite_bits(hi)) {
        lo = 0u;
        hi = 0u;
    }
    if (SCHEME == 2u) {
        // The group's own range, zero not included: s = rd(max(rd(w / levels), eps)), w = rd(hi - lo),
        // zp = rd(lo + rd(s * mid)), both then kept in the qparams' precision.
        // A range that overflows the input type is taken as its largest finite value, so that
        // the scale, the zero point and `zp - s * mid` stay finite.
        var width = rd(sub_rn_bits(hi, lo));
        if (!is_finite_bits(width)) {
            width = max_finite_bits();
        }
        let scale = rd(max(rd(div_rn_bits(width, rules.levels)), rules.eps));
        let zero = sat_rd(add_rn_bits(lo, sat_rd(mul_rn_bits(scale, rules.mid))));
        return GroupQparams(sat_rq(scale), 0, sat_rq(zero));
    }
    // mn = min(lo, 0) and mx = max(hi, 0), a zero as +0.0.
    let mn = select(0u, lo, (lo & SIGN_BIT) != 0u && (lo & ABS_MASK) != 0u);
    let mx = select(0u, hi, (hi & SIGN_BIT) == 0u);
    if (SCHEME == 0u) {
        let magnitude = max(mn & ABS_MASK, mx);
        return GroupQparams(bounded_scale(rd(div_rn_bits(magnitude, rules.half_levels))), 0, 0u);
    }
    let width = rd(sub_rn_bits(mx, mn));
    let scale = bounded_scale(rd(div_or_inf(width, rules.levels)));
    let q = rd(div_rn_bits(mn, scale));
    let r = round_half_even_clamp_i32(q, -16777216, 16777216);
    let zero_point = clamp(rules.qmin - r, rules.qmin, rules.qmax);
    return GroupQparams(scale, zero_point, bitcast<u32>(f32(zero_point)));
}
