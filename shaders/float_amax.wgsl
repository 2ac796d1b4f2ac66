// requires: exact_f32, half, elementwise_dispatch, fake_quant | fake_quant_half, float_formats
// provides: fp8_scales, fp8_forward, fp8_forward_masked, fp8_groups, fp8_groups_masked
// FP8 with an f32 scale per tensor, channel or group (src/float_quant.rs's amax scaling;
// reference: src/reference/float_quant.rs), after the observers' exact min/max reduction:
// `fp8_scales` derives each channel's scale from its statistics, `fp8_forward` converts the
// elements, 32 per invocation (one mask word, eight code words), writing y and the codes.
//
// Exact on every device by construction: amax is the larger magnitude of the reduced min and max
// (bits order like non-negative values); the clamp compares bits; the scale is exact_f32.wgsl's
// correctly rounded division, rounded to the input's type with half.wgsl's integer narrowing;
// each element is a correctly rounded division by its scale (a subnormal scale included), the
// integer conversions of float_formats.wgsl, and a correctly rounded product.

// The input's type: 0 f32, 1 f16, 2 bf16.
override INPUT_DTYPE: u32 = 0u;

struct Fp8Rules {
    // f32 bits of amax's bounds (0 and +inf when none).
    lower: u32,
    upper: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(6) var<storage, read> rules: Fp8Rules;
// The channels' scales (f32 bits): written by fp8_scales, a window of them read by fp8_forward
// (the dispatch's first channel at its channel_start).
@group(0) @binding(5) var<storage, read_write> scales: array<u32>;
// fp8_scales: the channels' minima, and their maxima from `dispatch.table_shift` (f32 bits; an
// empty channel +inf, -inf). All three tables are bound a window per chunk of channels.
@group(0) @binding(8) var<storage, read> stats: array<u32>;
@group(0) @binding(9) var<storage, read> stats_hi: array<u32>;
// fp8_forward: element codes, four to a word, from the dispatch's first element.
@group(0) @binding(7) var<storage, read_write> codes: array<u32>;

fn rd_input(bits: u32) -> u32 {
    if (INPUT_DTYPE == 1u) {
        return f16_to_f32_bits(f32_to_f16_bits(bits));
    }
    if (INPUT_DTYPE == 2u) {
        return bf16_to_f32_bits(f32_to_bf16_bits(bits));
    }
    return bits;
}

// A block's scale from its amax (f32 bits, non-negative): s = rd(rd(clamp(amax, lower, upper)) /
// max).
fn scale_of_amax(block_amax: u32) -> u32 {
    // Non-negative bits order like the values.
    let amax = max(min(block_amax, rules.upper), rules.lower);
    // Rounded to the input's type saturating (a bound beyond the type, or f32::MAX rounding up in
    // bf16), so that the scale stays finite.
    var a = rd_input(amax);
    if (!is_finite_bits(a)) {
        a = select(select(0x7f7fffffu, 0x477fe000u, INPUT_DTYPE == 1u), 0x7f7f0000u, INPUT_DTYPE == 2u);
    }
    return rd_input(div_rn_bits(a, max_value_bits()));
}

// One invocation per channel (dispatch.channels of them), from the reduced statistics.
@compute @workgroup_size(256)
fn fp8_scales(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * 256u + lid; c < dispatch.channels; c = c + num_wg.x * 256u) {
        let lo = stats[c];
        let hi = stats_hi[dispatch.table_shift + c];
        var amax = 0u;
        if (is_finite_bits(lo) && is_finite_bits(hi)) {
            amax = max(lo & ABS_MASK, hi & ABS_MASK);
        }
        scales[c] = scale_of_amax(amax);
    }
}

// The 32 elements from `first` (dispatch-local; `len` of them in the dispatch): y and the codes;
// returns their mask word.
fn quantize_run(first: u32, len: u32) -> u32 {
    let max_bits = max_value_bits();
    var word = 0u;
    var packed = 0u;
    for (var k = 0u; k < len; k = k + 1u) {
        let x = load_x(first + k);
        let s = scales[dispatch_channel(first + k)];
        var data = 0u;
        var y = 0u;
        // A flag, not a sentinel value of y: every 32-bit pattern is some input's output (the
        // NaN 0xffffffff passes through as itself).
        var from_code = false;
        if (is_nan_bits(x)) {
            data = x | QUIET_BIT;
            y = data;
        } else if (s == 0u) {
            // A block without a usable scale: zeros with x's sign.
            data = x & SIGN_BIT;
            y = data;
        } else {
            data = select(div_rn_bits(x, s), x, (x & ABS_MASK) == EXP_MASK);
            from_code = true;
        }
        let element = round_to_element(data);
        let code = element.y;
        if (from_code) {
            y = rd_input(mul_rn_bits(element.x, s));
        }
        store_y(first + k, y);
        word = word | (u32((data & ABS_MASK) <= max_bits) << k);
        packed = packed | (code << (8u * (k % 4u)));
        if (k % 4u == 3u || k + 1u == len) {
            codes[(first + k) / 4u] = packed;
            packed = 0u;
        }
    }
    return word;
}

@compute @workgroup_size(256)
fn fp8_forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        if (first < dispatch.len) {
            _ = quantize_run(first, min(32u, dispatch.len - first));
        }
    }
}

// The same, writing the mask words (one binding only this entry point uses).
@compute @workgroup_size(256)
fn fp8_forward_masked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        if (first < dispatch.len) {
            mask[first / 32u + dispatch.mask_shift] = quantize_run(first, min(32u, dispatch.len - first));
        }
    }
}

// The one-pass entry points: each invocation owns one block of GROUP consecutive elements (a
// power of two from 32 to 4096, set for them; a channel or group whose elements are one run of
// the tensor), reduces its amax, writes its scale and converts it 32 elements at a time (a second
// read, from cache; the scale read back from where this invocation wrote it). No min/max pass and
// no scales pass: chosen where an invocation takes a whole group (`GpuContext::dynamic_run`: CPU
// adapters, and groups of 32 everywhere), as the dynamic one-pass kernel is.
override GROUP: u32 = 32u;

// The block from `first`: its scale, written at its channel. Its amax is the largest finite
// magnitude (0 for none), which is the larger magnitude of the observers' finite min and max that
// fp8_scales reads.
fn write_block_scale(first: u32) {
    var amax = 0u;
    for (var k = 0u; k < GROUP; k = k + 1u) {
        let v = load_x(first + k);
        amax = max(amax, select(0u, v & ABS_MASK, is_finite_bits(v)));
    }
    scales[dispatch_channel(first)] = scale_of_amax(amax);
}

@compute @workgroup_size(256)
fn fp8_groups(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * GROUP;
        if (first < dispatch.len) {
            write_block_scale(first);
            for (var r = 0u; r < GROUP; r = r + 32u) {
                _ = quantize_run(first + r, 32u);
            }
        }
    }
}

// The same, writing the mask words.
@compute @workgroup_size(256)
fn fp8_groups_masked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * GROUP;
        if (first < dispatch.len) {
            write_block_scale(first);
            for (var r = 0u; r < GROUP; r = r + 32u) {
                mask[(first + r) / 32u + dispatch.mask_shift] = quantize_run(first + r, 32u);
            }
        }
    }
}
