// requires: none
// provides: is_nan_bits, order_key, from_key, is_finite_bits, div_rn_bits, round_pack_rn_bits, add_rn_bits, sub_rn_bits, mul_rn_bits, round_half_even_clamp_i32, add_ieee_bits, mul_ieee_bits, u32_to_f32_rn_bits
// Exact f32 helpers shared by the kernels (prepended to each kernel family's source).
//
// WGSL lets an implementation fuse a multiply and an add, flush subnormals, assume that NaN and
// infinities never occur, and return a quotient within 2.5 ULP. Nothing here relies on any of it:
// the helpers work on the bit patterns with integer arithmetic, which is exact on every device.

const SIGN_BIT: u32 = 0x80000000u;
const ABS_MASK: u32 = 0x7fffffffu;
const EXP_MASK: u32 = 0x7f800000u;
const QUIET_BIT: u32 = 0x00400000u;
const DEFAULT_NAN: u32 = 0x7fc00000u;

// A NaN test on the bits: naga lowers `x != x` to an ordered compare on Vulkan, which is never true.
fn is_nan_bits(bits: u32) -> bool {
    return (bits & ABS_MASK) > EXP_MASK;
}

// Maps f32 bits to a u32 that orders like the float (-0 just below +0).
fn order_key(bits: u32) -> u32 {
    return select(bits ^ SIGN_BIT, ~bits, (bits & SIGN_BIT) != 0u);
}

fn from_key(key: u32) -> u32 {
    return select(~key, key ^ SIGN_BIT, (key & SIGN_BIT) != 0u);
}

fn is_finite_bits(bits: u32) -> bool {
    return (bits & EXP_MASK) != EXP_MASK;
}

// Correctly rounded (to nearest, ties to even) f32 division `a / b` on bit patterns, for finite `a`
// (zero and subnormals included) and positive finite `b` (subnormals included). Device division is only
// required to be within 2.5 ULP and `1/x` is no better, so exact paths divide here, in integers:
// a restoring long division of the 24-bit significands yields 26 quotient bits plus a sticky bit,
// then one rounding step handles normal, subnormal and overflowing results alike.
fn div_rn_bits(a: u32, b: u32) -> u32 {
    let sign = a & SIGN_BIT;
    var ea = i32((a >> 23u) & 0xffu);
    var ma = a & 0x007fffffu;
    if (ea == 0) {
        if (ma == 0u) {
            return sign;
        }
        // Subnormal dividend: normalize so that bit 23 is set.
        let shift = countLeadingZeros(ma) - 8u;
        ma = ma << shift;
        ea = 1 - i32(shift);
    } else {
        ma = ma | 0x00800000u;
    }
    var eb = i32((b >> 23u) & 0xffu);
    var mb = (b & 0x007fffffu) | 0x00800000u;
    if (eb == 0) {
        // Subnormal divisor (an FP8 scale that underflowed): normalized as the dividend.
        let shift = countLeadingZeros(b & 0x007fffffu) - 8u;
        mb = (b & 0x007fffffu) << shift;
        eb = 1 - i32(shift);
    }

    // Biased exponent of the quotient once its significand is in [1, 2).
    var e = ea - eb + 127;
    var rem = ma;
    if (ma < mb) {
        rem = ma << 1u;
        e = e - 1;
    }
    // rem / mb is in [1, 2): the leading quotient bit is 1.
    var q = 1u;
    rem = rem - mb;
    for (var i = 0u; i < 25u; i = i + 1u) {
        rem = rem << 1u;
        q = q << 1u;
        if (rem >= mb) {
            rem = rem - mb;
            q = q | 1u;
        }
    }
    // q in [2^25, 2^26): the quotient is q * 2^-25 * 2^(e - 127), plus a sticky remainder.
    let sticky = rem != 0u;
    // Bits to drop: 2 for a normal result; more when it falls into the subnormal range, where the
    // significand is the quotient in units of 2^-149.
    var drop = 2u;
    if (e <= 0) {
        if (3 - e > 26) {
            return sign; // below half the smallest subnormal
        }
        drop = u32(3 - e);
    }
    var m = q >> drop;
    let low = q & ((1u << drop) - 1u);
    let half = 1u << (drop - 1u);
    if (low > half || (low == half && (sticky || (m & 1u) == 1u))) {
        m = m + 1u;
    }
    if (e <= 0) {
        // A subnormal significand; rounding up to 2^23 yields the smallest normal, same encoding.
        return sign | m;
    }
    if (m == 0x01000000u) {
        m = 0x00800000u;
        e = e + 1;
    }
    if (e >= 255) {
        return sign | EXP_MASK;
    }
    return sign | (u32(e) << 23u) | (m & 0x007fffffu);
}

// Rounds `m * 2^q` (m != 0) to the nearest binary32, ties to even, and gives it the sign `sign`:
// normal, subnormal, overflowing (to inf) and underflowing (to zero) results alike. The lowest bit
// of `m` may be a sticky bit (the exact value rounded to odd at that bit): rounding to odd and then
// to nearest with at least 2 more bits dropped equals rounding to nearest once, and every caller
// jams only where this drops at least 5 bits.
fn round_pack_rn_bits(sign: u32, m: u32, q: i32) -> u32 {
    let lead = 31 - i32(countLeadingZeros(m));
    // Bits to drop: down to 24 significant bits, but never below the 2^-149 unit of subnormals.
    let drop = max(lead - 23, -149 - q);
    // Biased exponent of the result when its significand `mant` lies in [2^23, 2^24).
    let e = q + drop + 150;
    if (e > 254) {
        return sign | EXP_MASK;
    }
    var mant: u32;
    if (drop <= 0) {
        mant = m << u32(-drop); // exact
    } else {
        if (drop > 32) {
            return sign; // m * 2^q < 2^(q + 32), below half the result's unit
        }
        let t = m >> u32(drop - 1); // kept bits and the round bit
        let sticky = (m & ((1u << u32(drop - 1)) - 1u)) != 0u;
        mant = t >> 1u;
        if ((t & 1u) == 1u && (sticky || (mant & 1u) == 1u)) {
            mant = mant + 1u;
        }
    }
    // `mant` carries the implicit bit, hence e - 1: a rounding carry to 2^24 steps the exponent, a
    // subnormal (e == 1, mant < 2^23) encodes as itself, and one rounded up to 2^23 becomes the
    // smallest normal. Anything at or past the infinity encoding overflowed.
    return sign | min((u32(e - 1) << 23u) + mant, EXP_MASK);
}

// Correctly rounded (to nearest, ties to even) f32 addition `a + b` on bit patterns, for finite `a`
// and `b` (zeros and subnormals included). The significands, 6 guard bits below them, are aligned
// in a u32 (the sum stays below 2^31) with the bits shifted out of the smaller one jammed into a
// sticky bit; that only happens when the exponents differ by 7 or more, where no cancellation can
// reach the sticky bit, so the sum is the exact one rounded to odd and one rounding step finishes.
fn add_rn_bits(a: u32, b: u32) -> u32 {
    // x: the operand of larger magnitude, y: the other.
    let swap = (b & ABS_MASK) > (a & ABS_MASK);
    let x = select(a, b, swap);
    let y = select(b, a, swap);
    // Subnormals share the exponent 1 of the smallest normals, without the implicit bit.
    let ex = max(i32((x >> 23u) & 0xffu), 1);
    let ey = max(i32((y >> 23u) & 0xffu), 1);
    let mx = ((x & 0x007fffffu) | select(0u, 0x00800000u, (x & EXP_MASK) != 0u)) << 6u;
    var my = ((y & 0x007fffffu) | select(0u, 0x00800000u, (y & EXP_MASK) != 0u)) << 6u;
    let s = u32(min(ex - ey, 31)); // my < 2^30: a shift of 31 leaves only the sticky bit
    my = (my >> s) | select(0u, 1u, (my & ((1u << s) - 1u)) != 0u);
    var m = mx + my;
    if (((x ^ y) & SIGN_BIT) != 0u) {
        m = mx - my; // |x| >= |y|: no borrow
    }
    if (m == 0u) {
        // An exact zero is +0 in round-to-nearest, except (-0) + (-0).
        return x & y & SIGN_BIT;
    }
    return round_pack_rn_bits(x & SIGN_BIT, m, ex - 156);
}

// Correctly rounded f32 subtraction `a - b`, for finite `a` and `b`: `a + (-b)`, exactly as IEEE
// defines it (the sign of a zero result included).
fn sub_rn_bits(a: u32, b: u32) -> u32 {
    return add_rn_bits(a, b ^ SIGN_BIT);
}

// Correctly rounded (to nearest, ties to even) f32 multiplication `a * b` on bit patterns, for
// finite `a` and `b` (zeros and subnormals included). Both significands are normalized to 24 bits,
// their exact 48-bit product is formed from 16-bit partial products in two u32 words, and its top
// 32 bits, with the rest jammed into a sticky bit, are rounded once (at least 7 bits dropped).
fn mul_rn_bits(a: u32, b: u32) -> u32 {
    let sign = (a ^ b) & SIGN_BIT;
    if ((a & ABS_MASK) == 0u || (b & ABS_MASK) == 0u) {
        return sign;
    }
    // Significand with bit 23 set, and the matching biased exponent (below 1 for subnormals).
    var ma = (a & 0x007fffffu) | select(0u, 0x00800000u, (a & EXP_MASK) != 0u);
    var mb = (b & 0x007fffffu) | select(0u, 0x00800000u, (b & EXP_MASK) != 0u);
    let sa = countLeadingZeros(ma) - 8u;
    let sb = countLeadingZeros(mb) - 8u;
    ma = ma << sa;
    mb = mb << sb;
    let ea = max(i32((a >> 23u) & 0xffu), 1) - i32(sa);
    let eb = max(i32((b >> 23u) & 0xffu), 1) - i32(sb);
    // ma * mb = hi * 2^32 + lo, in [2^46, 2^48).
    let mid = (ma >> 16u) * (mb & 0xffffu) + (ma & 0xffffu) * (mb >> 16u); // < 2^25
    let lo0 = (ma & 0xffffu) * (mb & 0xffffu);
    let lo = lo0 + (mid << 16u);
    let hi = (ma >> 16u) * (mb >> 16u) + (mid >> 16u) + select(0u, 1u, lo < lo0);
    // The product's top 32 bits (>= 2^30), the lower 16 jammed; value = m * 2^(ea + eb - 284).
    let m = (hi << 16u) | (lo >> 16u) | select(0u, 1u, (lo & 0xffffu) != 0u);
    return round_pack_rn_bits(sign, m, ea + eb - 284);
}

// clamp(round_ties_even(a), lo, hi) for a finite f32 `a` given as bits, where lo <= hi and
// |lo|, |hi| <= 2^24. Exact: the integer part and the rounding bits come from shifting the
// significand, and magnitudes of 2^24 and more (already integers) saturate at 2^24 before the
// conversion to i32, which the clamp then maps to lo or hi as it would the true value.
fn round_half_even_clamp_i32(a: u32, lo: i32, hi: i32) -> i32 {
    let e = i32((a >> 23u) & 0xffu);
    var n = 0u; // |round(a)|; 0 for |a| < 0.5 (subnormals and zeros included)
    if (e > 150) {
        n = 0x01000000u;
    } else if (e >= 126) {
        // 2|a| = m2 * 2^-s, s in [0, 24].
        let m2 = ((a & 0x007fffffu) | 0x00800000u) << 1u;
        let s = u32(150 - e);
        let t = m2 >> s; // floor(2|a|): the integer part, then the half bit
        n = t >> 1u;
        if ((t & 1u) == 1u && ((m2 & ((1u << s) - 1u)) != 0u || (n & 1u) == 1u)) {
            n = n + 1u;
        }
    }
    return clamp(select(i32(n), -i32(n), (a & SIGN_BIT) != 0u), lo, hi);
}

// IEEE addition for any operands: specials handled here, finite ones by add_rn_bits. Every NaN
// result is the canonical DEFAULT_NAN, so results do not depend on NaN propagation rules.
fn add_ieee_bits(a: u32, b: u32) -> u32 {
    if (is_nan_bits(a) || is_nan_bits(b)) {
        return DEFAULT_NAN;
    }
    let a_inf = (a & ABS_MASK) == EXP_MASK;
    let b_inf = (b & ABS_MASK) == EXP_MASK;
    if (a_inf && b_inf) {
        return select(DEFAULT_NAN, a, a == b);
    }
    if (a_inf) {
        return a;
    }
    if (b_inf) {
        return b;
    }
    return add_rn_bits(a, b);
}

// IEEE multiplication for any operands (canonical NaN, 0 * inf is NaN).
fn mul_ieee_bits(a: u32, b: u32) -> u32 {
    if (is_nan_bits(a) || is_nan_bits(b)) {
        return DEFAULT_NAN;
    }
    let a_inf = (a & ABS_MASK) == EXP_MASK;
    let b_inf = (b & ABS_MASK) == EXP_MASK;
    if (a_inf || b_inf) {
        if ((a & ABS_MASK) == 0u || (b & ABS_MASK) == 0u) {
            return DEFAULT_NAN;
        }
        return ((a ^ b) & SIGN_BIT) | EXP_MASK;
    }
    return mul_rn_bits(a, b);
}

// u32 -> f32 rounded to nearest even. WGSL lets a conversion pick either neighbour.
fn u32_to_f32_rn_bits(n: u32) -> u32 {
    if (n == 0u) {
        return 0u;
    }
    let lz = countLeadingZeros(n);
    // Bit 31 - lz is the leading one: value = n * 2^0, exponent 31 - lz.
    let exponent = 31u - lz;
    if (exponent <= 23u) {
        return ((exponent + 127u) << 23u) | ((n << (23u - exponent)) & 0x007fffffu);
    }
    let drop = exponent - 23u;
    var m = n >> drop;
    let low = n & ((1u << drop) - 1u);
    let half = 1u << (drop - 1u);
    if (low > half || (low == half && (m & 1u) == 1u)) {
        m = m + 1u;
    }
    // A carry to 2^24 moves to the next exponent, same encoding arithmetic.
    return ((exponent + 127u) << 23u) + (m - 0x00800000u);
}
