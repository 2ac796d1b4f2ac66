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

// Correctly rounded (to nearest, ties to even) f32 division `a / b` on bit patterns, for finite `a`
// (zero and subnormals included) and positive, normal, finite `b`. Device division is only
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
    let eb = i32((b >> 23u) & 0xffu);
    let mb = (b & 0x007fffffu) | 0x00800000u;

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
