// requires: exact_f32, half, quantize
// provides: DynamicDispatch, dynamic_qparams
// Dynamic qparams: each group's scale and integer zero point from its own min and max (reduced by
// the observers' exact min/max kernels), then its fake-quant parameters for the elementwise
// kernels; the rules are those of src/dynamic.rs, whose reference is src/reference/dynamic.rs.
//
// Exactness on every device follows from the design: the min and max are integer-keyed (see
// observer.wgsl); every float operation here is one of exact_f32.wgsl's integer routines (one
// correctly rounded IEEE operation each: nothing to fuse, approximate or flush); the rounding to
// the input's type (torchao computes the qparams in it) is half.wgsl's integer narrowing; maxima,
// minima and caps of non-negative values compare their bits, which order like the values.

struct DynamicDispatch {
    groups: u32,
    // 0 symmetric, 1 asymmetric (integer zero point).
    scheme: u32,
    qmin: i32,
    qmax: i32,
    // f32 bits: the smallest scale, (qmax - qmin) and (qmax - qmin) / 2.
    eps: u32,
    levels: u32,
    half_levels: u32,
    // The input's type: 0 f32, 1 f16, 2 bf16.
    dtype: u32,
}

@group(0) @binding(0) var<uniform> d: DynamicDispatch;
// The groups' minima, then their maxima (f32 bits; an empty group is (+inf, -inf)).
@group(0) @binding(1) var<storage, read> stats: array<u32>;
@group(0) @binding(2) var<storage, read_write> params: array<ChannelParams>;
// The chosen scales, then the zero points (f32 bits), for export.
@group(0) @binding(3) var<storage, read_write> qparams: array<u32>;

// 2^126: the largest scale whose reciprocal is a normal f32.
const MAX_SCALE: u32 = 0x7e800000u;

// Rounds f32 bits to the input's type and back (identity for f32).
fn rd(bits: u32) -> u32 {
    if (d.dtype == 1u) {
        return f16_to_f32_bits(f32_to_f16_bits(bits));
    }
    if (d.dtype == 2u) {
        return bf16_to_f32_bits(f32_to_bf16_bits(bits));
    }
    return bits;
}

// `a / b` for a non-negative `a` that may be +inf (the range of a group that overflows) and a
// positive normal `b`.
fn div_or_inf(a: u32, b: u32) -> u32 {
    return select(POS_INF_BITS, div_rn_bits(a, b), is_finite_bits(a));
}

const POS_INF_BITS: u32 = 0x7f800000u;

// max(s, eps), then min(s, 2^126): both non-negative, so their bits order like their values.
fn bounded_scale(s: u32) -> u32 {
    return min(max(s, d.eps), MAX_SCALE);
}

// One invocation per group.
@compute @workgroup_size(256)
fn dynamic_qparams(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var g = wg.x * 256u + lid; g < d.groups; g = g + num_wg.x * 256u) {
        var lo = stats[g];
        var hi = stats[d.groups + g];
        // A group without a finite value counts as all zeros.
        if (!is_finite_bits(lo) || !is_finite_bits(hi)) {
            lo = 0u;
            hi = 0u;
        }
        // mn = min(lo, 0) and mx = max(hi, 0) as non-signed-zero bits: a zero is +0.0.
        let mn = select(0u, lo, (lo & SIGN_BIT) != 0u && (lo & ABS_MASK) != 0u);
        let mx = select(0u, hi, (hi & SIGN_BIT) == 0u);
        var scale = 0u;
        var zero_point = 0;
        if (d.scheme == 0u) {
            let magnitude = max(mn & ABS_MASK, mx);
            scale = bounded_scale(rd(div_rn_bits(magnitude, d.half_levels)));
        } else {
            let width = rd(sub_rn_bits(mx, mn));
            scale = bounded_scale(rd(div_or_inf(width, d.levels)));
            let q = rd(div_rn_bits(mn, scale));
            let r = round_half_even_clamp_i32(q, -16777216, 16777216);
            zero_point = clamp(d.qmin - r, d.qmin, d.qmax);
        }
        params[g] = channel_params(scale, zero_point, d.qmin, d.qmax);
        qparams[g] = scale;
        qparams[d.groups + g] = bitcast<u32>(f32(zero_point));
    }
}
