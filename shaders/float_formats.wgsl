// requires: exact_f32
// provides: mantissa_bits, element_bias, max_code, max_value_bits, encode_format, decode_format, pow2_bits, ceil_log2_bits, round_to_element
// The element formats of src/float_quant.rs (FP8 E4M3 and E5M2, FP6 E2M3 and E3M2, FP4 E2M1),
// converted to and from f32 bit patterns with integer arithmetic only: exact on every device, with
// no float-to-float cast, `log2`, `exp2` or `ldexp` (inexact on subnormals on some devices, or
// flushed). Bit for bit `ElementFormat::encode` / `decode` of the reference.

// The elements' format: 0 FP8 E4M3, 1 FP8 E5M2, 2 FP6 E2M3, 3 FP6 E3M2, 4 FP4 E2M1. The functions
// below take the format as an argument (NVFP4's block scales are E4M3 whatever the elements are);
// every call passes a constant, which the compiler folds.
override FORMAT: u32 = 0u;
const E4M3: u32 = 0u;

fn format_mantissa_bits(f: u32) -> u32 {
    if (f == 4u) {
        return 1u;
    }
    return select(2u, 3u, f == 0u || f == 2u);
}

fn format_exponent_bits(f: u32) -> u32 {
    if (f == 0u) {
        return 4u;
    }
    if (f == 1u) {
        return 5u;
    }
    return select(2u, 3u, f == 3u);
}

fn format_code_bits(f: u32) -> u32 {
    return 1u + format_exponent_bits(f) + format_mantissa_bits(f);
}

fn format_bias(f: u32) -> i32 {
    return (1 << (format_exponent_bits(f) - 1u)) - 1;
}

// The largest finite magnitude's code.
fn format_max_code(f: u32) -> u32 {
    if (f == 0u) {
        return 0x7eu;
    }
    if (f == 1u) {
        return 0x7bu;
    }
    return select(0x1fu, 0x7u, f == 4u);
}

// The NaN code (FP8), or the largest magnitude for the formats without NaN.
fn format_nan_code(f: u32) -> u32 {
    return select(format_max_code(f), 0x7fu, f <= 1u);
}

fn mantissa_bits() -> u32 {
    return format_mantissa_bits(FORMAT);
}

fn element_bias() -> i32 {
    return format_bias(FORMAT);
}

fn max_code() -> u32 {
    return format_max_code(FORMAT);
}

// The largest finite element's f32 bits: 448, 57344, 7.5, 28, 6.
fn max_value_bits() -> u32 {
    return decode_format(max_code(), FORMAT);
}

// f32 bits of 2^k for k in [-149, 127] (subnormal powers included).
fn pow2_bits(k: i32) -> u32 {
    if (k >= -126) {
        return u32(k + 127) << 23u;
    }
    return 1u << u32(k + 149);
}

// The code of f32 `bits`: nearest on the format's grid, ties to even, saturating at the largest
// finite magnitude (infinities too); a NaN gives the NaN code with its sign. The significand is
// shifted to the quantum of the value's binade (or of the subnormals) and rounded with integer
// compares; the code is the count of quanta plus the binade's offset, so a rounding carry into the
// next binade, or from the subnormals into the normals, needs no case of its own.
fn encode_format(bits: u32, f: u32) -> u32 {
    let sign = (bits >> 31u) << (format_code_bits(f) - 1u);
    let magnitude = bits & ABS_MASK;
    if (magnitude > EXP_MASK) {
        return sign | format_nan_code(f);
    }
    if (magnitude == EXP_MASK) {
        return sign | format_max_code(f);
    }
    if (magnitude == 0u) {
        return sign;
    }
    let mbits = format_mantissa_bits(f);
    let field = i32(magnitude >> 23u);
    var e = -126;
    var m = magnitude;
    if (field != 0) {
        e = field - 127;
        m = (magnitude & 0x007fffffu) | 0x00800000u;
    }
    let emin = 1 - format_bias(f);
    let shift = 23 + max(e, emin) - i32(mbits) - e;
    var n = 0u;
    if (shift < 26) {
        // m < 2^24: with a shift of 26 or more the value is below a quarter quantum.
        let s = u32(shift);
        let kept = m >> s;
        let rest = m & ((1u << s) - 1u);
        let half = 1u << (s - 1u);
        n = kept + select(0u, 1u, rest > half || (rest == half && (kept & 1u) == 1u));
    }
    var code = n;
    if (e >= emin) {
        code = (u32(e - emin + 1) << mbits) + n - (1u << mbits);
    }
    return sign | min(code, format_max_code(f));
}

// The f32 bits of `code` (its low code_bits() bits), exactly: every value has at most 4
// significant bits and lies well inside f32's normal range. NaN codes give the canonical NaN with
// the code's sign, E5M2's infinity code infinity.
fn decode_format(code: u32, f: u32) -> u32 {
    let width = format_code_bits(f);
    let sign = ((code >> (width - 1u)) & 1u) << 31u;
    let magnitude = code & ((1u << (width - 1u)) - 1u);
    if ((f == 0u && magnitude == 0x7fu) || (f == 1u && magnitude > 0x7cu)) {
        return sign | DEFAULT_NAN;
    }
    if (f == 1u && magnitude == 0x7cu) {
        return sign | EXP_MASK;
    }
    let mbits = format_mantissa_bits(f);
    let field = i32(magnitude >> mbits);
    let mantissa = magnitude & ((1u << mbits) - 1u);
    if (field == 0) {
        if (mantissa == 0u) {
            return sign;
        }
        // mantissa * 2^(emin - mbits), normalized: its leading one at bit p.
        let p = 31u - countLeadingZeros(mantissa);
        let exponent = 1 - format_bias(f) - i32(mbits) + i32(p);
        return sign | (u32(exponent + 127) << 23u) | ((mantissa << (23u - p)) & 0x007fffffu);
    }
    return sign | (u32(field - format_bias(f) + 127) << 23u) | (mantissa << (23u - mbits));
}

// ceil(log2(d)) for positive finite f32 bits `d`, exactly: the exponent, plus one off powers of two.
fn ceil_log2_bits(d: u32) -> i32 {
    let field = i32(d >> 23u);
    if (field == 0) {
        let floor = 31 - i32(countLeadingZeros(d)) - 149;
        return floor + select(1, 0, (d & (d - 1u)) == 0u);
    }
    return field - 127 + select(0, 1, (d & 0x007fffffu) != 0u);
}

// The element nearest to f32 `bits` (infinities saturate), ties to even, as its value's f32 bits
// with the sign (x) and its code (y): decode_format(encode_format(bits, FORMAT), FORMAT) and
// encode_format(bits, FORMAT) in one step, without branches; a NaN gives the NaN code (and no
// value). The significand is rounded on the f32 bits at the element's quantum (the rounding carry
// moves into the exponent field by itself), which is below the implicit bit for every value but
// those under half the smallest element's binade: a quantum one binade up (shift 24) leaves 0 or
// the next power of two, a coarser one 0. The code is the rounded value's exponent and kept bits
// rebased to the element's bias, or for an element subnormal its count of quanta.
fn round_to_element(bits: u32) -> vec2<u32> {
    let sign = bits & SIGN_BIT;
    let magnitude = bits & ABS_MASK;
    let mbits = mantissa_bits();
    let emin = 1 - element_bias();
    let field = i32(magnitude >> 23u);
    // f32 subnormals count as exponent -127: they lie far below every element's quantum.
    let shift = u32(clamp(emin - (field - 127), 0, 9)) + 23u - mbits;
    let low = (1u << min(shift, 23u)) - 1u;
    // The kept part's lowest bit, for ties to even; at shift 23 only the implicit bit is kept (1,
    // odd), and the bit above the fraction is the exponent field's.
    let odd = select((magnitude >> min(shift, 23u)) & 1u, 1u, shift == 23u);
    let rounded = (magnitude + (low >> 1u) + odd) & ~low;
    let up_one_binade = select(0u, u32(field + 1) << 23u, magnitude > (u32(field) << 23u));
    var r = select(select(0u, up_one_binade, shift == 24u), rounded, shift <= 23u);
    r = min(r, max_value_bits());
    let field_r = i32(r >> 23u);
    let normal_code = (r >> (23u - mbits)) - (u32(127 - element_bias()) << mbits);
    let subnormal_shift = u32(clamp(23 + emin - i32(mbits) - (field_r - 127), 0, 31));
    let subnormal_code = select(0u, ((r & 0x007fffffu) | 0x00800000u) >> subnormal_shift, r != 0u);
    let code = select(subnormal_code, normal_code, field_r - 127 >= emin);
    let width = 1u + format_exponent_bits(FORMAT) + mbits;
    let magnitude_code = select(code, format_nan_code(FORMAT), magnitude > EXP_MASK);
    return vec2<u32>(sign | r, (sign >> (32u - width)) | magnitude_code);
}
