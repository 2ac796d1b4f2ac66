// requires: exact_f32, half, elementwise_dispatch, fake_quant | fake_quant_half, float_formats
// provides: float_blocks, float_blocks_masked
// Block-scaled floating-point fake-quant in one pass over x (src/float_quant.rs; reference:
// src/reference/float_quant.rs): MX (blocks of 32, an E8M0 scale each) and NVFP4 (blocks of 16,
// an E4M3 scale each, optionally under an f32 tensor scale). Each invocation owns 32 consecutive
// elements, one mask word: one MX block or two NVFP4 blocks. It reads them for the block's amax,
// derives the scale, then converts each element (a second read, from cache) and writes y, the
// element codes (four to a word), the scales (one word per block, the byte in its low 8 bits)
// and, in the masked entry point, its mask word; no atomics and no barrier.
//
// Exact on every device by construction: amax is an integer max of the magnitudes' bits (which
// order like the values; a NaN's bits exceed every other); the scale exponents come from the bits
// (float_formats.wgsl's ceil_log2_bits, never a device log2); the power-of-two scalings, the
// divisions and products are exact_f32.wgsl's correctly rounded routines (subnormal results
// included); the conversions are float_formats.wgsl's integer ones (round_to_element: the
// element's value and code in one step), and the rounding to a 16-bit input type half.wgsl's.

// 0 MX, 1 NVFP4 (torchao), 2 NVFP4 (Model Optimizer's conventions).
override SCALING: u32 = 0u;
// MX's scale rule: 0 FLOOR, 1 CEIL, 2 EVEN, 3 RCEIL.
override RULE: u32 = 3u;
// The input's type, which the dequantized products are rounded to as torchao computes them:
// 0 f32, 1 f16, 2 bf16.
override INPUT_DTYPE: u32 = 0u;

struct FloatRules {
    // NVFP4: 1 for two-level scaling with the f32 tensor scale g (bits), and f32(1 / g) (bits,
    // correctly rounded on the host).
    two_level: u32,
    tensor_scale: u32,
    inv_tensor_scale: u32,
    // f32(6 * g) (Model Optimizer's block scales divide by it).
    six_tensor_scale: u32,
}

// Element codes, four to a word (element 4i + j in byte j of word i), from the dispatch's first
// element; the windows start on whole words.
@group(0) @binding(5) var<storage, read_write> codes: array<u32>;
@group(0) @binding(6) var<storage, read> rules: FloatRules;
// One word per block (the scale byte in its low 8 bits), the dispatch's first block at
// dispatch.channel_start.
@group(0) @binding(7) var<storage, read_write> scales: array<u32>;

const ONE_BITS: u32 = 0x3f800000u;
const SIX_BITS: u32 = 0x40c00000u;
// NVFP4's block scale bounds: 2^-6 (E4M3's smallest normal; 2^-9, its smallest subnormal, for
// Model Optimizer) and 448.
const E4M3_MIN_NORMAL_BITS: u32 = 0x3c800000u;
const E4M3_MIN_SUBNORMAL_BITS: u32 = 0x3b000000u;
const E4M3_MAX_BITS: u32 = 0x43e00000u;

fn block_len() -> u32 {
    return select(32u, 16u, SCALING >= 1u);
}

// Rounds f32 bits to the input's type and back (identity for f32).
fn rd_input(bits: u32) -> u32 {
    if (INPUT_DTYPE == 1u) {
        return f16_to_f32_bits(f32_to_f16_bits(bits));
    }
    if (INPUT_DTYPE == 2u) {
        return bf16_to_f32_bits(f32_to_bf16_bits(bits));
    }
    return bits;
}

// A block's scale, as its elements use it.
struct BlockScale {
    // The f32 bits the elements are divided by (`divide`) or multiplied by: NaN for a NaN block
    // under RCEIL and NVFP4, +inf (a division) for one under the other MX rules.
    factor: u32,
    divide: bool,
    // The f32 bits the element values are multiplied by.
    dequant: u32,
    // MX: the factor and the dequantization are powers of two, 2^factor_k and 2^dequant_k.
    factor_k: i32,
    dequant_k: i32,
    // The block's amax is NaN: every y of the block is NaN.
    nan: bool,
    // The exported scale byte.
    byte: u32,
}

// The MX scale of a block with `amax` (f32 bits; above EXP_MASK a NaN), as mx_scale_byte and
// mx_element_factor of the reference.
fn mx_scale(amax: u32) -> BlockScale {
    let max_pow2 = i32(max_code() >> mantissa_bits()) - element_bias();
    var byte = 255u;
    if (amax <= EXP_MASK) {
        if (RULE == 3u) {
            if (amax == EXP_MASK) {
                byte = 254u;
            } else {
                let d = div_rn_bits(amax, max_value_bits());
                byte = select(u32(clamp(ceil_log2_bits(d), -127, 127) + 127), 0u, d == 0u);
            }
        } else {
            var bits = amax;
            if (RULE == 2u) {
                bits = (bits + (1u << (22u - mantissa_bits()))) & 0xff800000u;
            }
            var e = i32((bits >> 23u) & 0xffu) - 127;
            if (RULE == 1u && (bits & 0x007fffffu) != 0u) {
                e = e + 1;
            }
            byte = u32(clamp(e - max_pow2, -127, 128) + 127);
        }
    }
    var s: BlockScale;
    s.byte = byte;
    s.nan = byte == 255u;
    s.dequant_k = i32(byte) - 127;
    s.dequant = pow2_bits(s.dequant_k);
    // Dividing by 2^e is multiplying by 2^-e (both exact operands, the same real result).
    if (RULE == 3u) {
        s.divide = false;
        if (byte == 255u) {
            s.factor = DEFAULT_NAN;
        } else if (byte == 254u) {
            s.factor_k = -127;
        } else if (byte == 0u) {
            s.factor_k = 0;
        } else {
            s.factor_k = 127 - i32(byte);
        }
    } else {
        // Torchao divides by the byte's bits as an f32, at least 2^-126; byte 255 is +inf.
        s.divide = true;
        s.factor = max(byte << 23u, 0x00800000u);
        s.factor_k = -max(i32(byte) - 127, -126);
    }
    return s;
}

// Model Optimizer's NVFP4 scale of a block with `amax`: bs = amax / (6 * g), a zero replaced by
// 1, clamped to [2^-9, 448] and rounded to E4M3 (subnormal scales allowed); the elements are
// divided by s8 * g, the values multiplied by it.
fn nvfp4_modelopt_scale(amax: u32) -> BlockScale {
    var s: BlockScale;
    s.divide = true;
    if (amax > EXP_MASK) {
        s.byte = 0x7fu;
        s.nan = true;
        s.factor = DEFAULT_NAN;
        s.dequant = DEFAULT_NAN;
        return s;
    }
    var bs = EXP_MASK;
    if (amax != EXP_MASK) {
        bs = div_rn_bits(amax, rules.six_tensor_scale);
    }
    if (bs == 0u) {
        bs = ONE_BITS;
    }
    s.byte = encode_format(clamp(bs, E4M3_MIN_SUBNORMAL_BITS, E4M3_MAX_BITS), E4M3);
    s.nan = false;
    // s8 >= 2^-9 and g >= 2^-119: the product is positive and finite (subnormal at worst).
    s.factor = mul_rn_bits(decode_format(s.byte, E4M3), rules.tensor_scale);
    s.dequant = s.factor;
    return s;
}

// The NVFP4 scale of a block with `amax`: bs = amax / 6 (over g when two-level), clamped to
// [2^-6, 448] and rounded to E4M3; the elements are multiplied by 1 / s8 (or (1 / g) / s8), the
// values by s8 (or g * s8).
fn nvfp4_scale(amax: u32) -> BlockScale {
    var s: BlockScale;
    s.divide = false;
    if (amax > EXP_MASK) {
        s.byte = 0x7fu; // E4M3's NaN
        s.nan = true;
        s.factor = DEFAULT_NAN;
        s.dequant = DEFAULT_NAN;
        return s;
    }
    var bs = EXP_MASK;
    if (amax != EXP_MASK) {
        bs = div_rn_bits(amax, SIX_BITS);
        if (rules.two_level != 0u) {
            bs = div_rn_bits(bs, rules.tensor_scale);
        }
    }
    // Non-negative bits order like the values; +inf clamps to 448.
    s.byte = encode_format(clamp(bs, E4M3_MIN_NORMAL_BITS, E4M3_MAX_BITS), E4M3);
    let s8 = decode_format(s.byte, E4M3);
    s.nan = false;
    if (rules.two_level != 0u) {
        s.factor = div_rn_bits(rules.inv_tensor_scale, s8);
        s.dequant = mul_rn_bits(rules.tensor_scale, s8);
    } else {
        s.factor = div_rn_bits(ONE_BITS, s8);
        s.dequant = s8;
    }
    return s;
}

// bits * 2^k for finite bits and k in [-149, 127], correctly rounded, without branches (llvmpipe
// runs both sides of a branch its lanes disagree on, so a rare fallback costs every element):
// the significand is normalized (subnormal inputs by their leading zeros) and the exponent moved;
// a normal result is the moved exponent over the same fraction (exact), an overflow infinity, a
// subnormal result the significand shifted right by the distance below the normals, rounded to
// nearest even (a carry into the smallest normal encodes itself), 25 places or more nothing.
fn scale_pow2_bits(bits: u32, k: i32) -> u32 {
    let sign = bits & SIGN_BIT;
    let magnitude = bits & ABS_MASK;
    let field = i32(magnitude >> 23u);
    var m = (magnitude & 0x007fffffu) | select(0u, 0x00800000u, field != 0);
    let normalize = countLeadingZeros(max(m, 1u)) - 8u;
    m = m << normalize;
    let e = max(field, 1) - i32(normalize) + k;
    let normal = (u32(clamp(e, 1, 254)) << 23u) | (m & 0x007fffffu);
    let drop = u32(clamp(1 - e, 1, 31));
    let kept = m >> drop;
    let rest = m & ((1u << drop) - 1u);
    let half = 1u << (drop - 1u);
    let subnormal = kept + select(0u, 1u, rest > half || (rest == half && (kept & 1u) == 1u));
    var r = select(subnormal, normal, e >= 1);
    r = select(r, EXP_MASK, e > 254);
    return sign | select(r, 0u, magnitude == 0u);
}

// x scaled by the block's factor, every special case explicit as the reference's scale_element:
// a NaN x stays that NaN, quieted; a NaN factor gives the canonical NaN; a division by +inf gives
// +-0 for a finite x and NaN for an infinite one; an infinite x stays infinite (the factor is
// positive); else one correctly rounded division or product.
fn scale_element(x: u32, s: BlockScale) -> u32 {
    if (is_nan_bits(x)) {
        return x | QUIET_BIT;
    }
    if (is_nan_bits(s.factor)) {
        return DEFAULT_NAN;
    }
    let infinite = (x & ABS_MASK) == EXP_MASK;
    if (s.divide && s.factor == EXP_MASK) {
        return select(x & SIGN_BIT, DEFAULT_NAN, infinite);
    }
    if (infinite) {
        return x;
    }
    if (SCALING == 0u) {
        return scale_pow2_bits(x, s.factor_k);
    }
    if (s.divide) {
        return div_rn_bits(x, s.factor);
    }
    return mul_rn_bits(x, s.factor);
}

// One block: its scale exported, its elements converted into y and codes; returns the block's
// mask bits (from bit 0).
fn quantize_block(first: u32) -> u32 {
    let len = block_len();
    var amax = 0u;
    for (var k = 0u; k < len; k = k + 1u) {
        amax = max(amax, load_x(first + k) & ABS_MASK);
    }
    var s: BlockScale;
    if (SCALING == 2u) {
        s = nvfp4_modelopt_scale(amax);
    } else if (SCALING == 1u) {
        s = nvfp4_scale(amax);
    } else {
        s = mx_scale(amax);
    }
    scales[dispatch.channel_start + first / len] = s.byte;
    let max_bits = max_value_bits();
    var bits = 0u;
    var packed = 0u;
    for (var k = 0u; k < len; k = k + 1u) {
        let x = load_x(first + k);
        let data = scale_element(x, s);
        let element = round_to_element(data);
        var code = element.y;
        var value = element.x;
        if (SCALING == 2u && code == 0x8u) {
            // Model Optimizer codes -0 as +0 (and its value is +0).
            code = 0u;
            value = 0u;
        }
        var y = 0u;
        if (is_nan_bits(x)) {
            y = x | QUIET_BIT;
        } else if (s.nan) {
            y = DEFAULT_NAN;
        } else if (SCALING == 0u) {
            // Exact: a 4-bit significand times 2^-127 or more.
            y = rd_input(scale_pow2_bits(value, s.dequant_k));
        } else {
            y = rd_input(mul_rn_bits(value, s.dequant));
        }
        store_y(first + k, y);
        // NaN's magnitude exceeds every finite one's: out of range.
        bits = bits | (u32((data & ABS_MASK) <= max_bits) << k);
        packed = packed | (code << (8u * (k % 4u)));
        if (k % 4u == 3u) {
            codes[(first + k) / 4u] = packed;
            packed = 0u;
        }
    }
    return bits;
}

// The 32 elements from `first` (dispatch-local; one MX block or two NVFP4 blocks): returns their
// mask word. The dispatch holds whole blocks.
fn quantize_run(first: u32) -> u32 {
    var word = 0u;
    for (var b = 0u; b < 32u; b = b + block_len()) {
        if (first + b < dispatch.len) {
            word = word | (quantize_block(first + b) << b);
        }
    }
    return word;
}

@compute @workgroup_size(256)
fn float_blocks(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        if (first < dispatch.len) {
            _ = quantize_run(first);
        }
    }
}

// The same, writing the mask words (one binding only this entry point uses).
@compute @workgroup_size(256)
fn float_blocks_masked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        if (first < dispatch.len) {
            mask[first / 32u + dispatch.mask_shift] = quantize_run(first);
        }
    }
}
