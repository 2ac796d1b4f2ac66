// requires: quantize, elementwise_dispatch, fake_quant | fake_quant_half, dynamic_rules
// provides: dynamic_groups, dynamic_groups_masked
// Dynamic fake-quant in one pass over x, for groups of a power-of-two size from 32 to 4096 (runs
// of GROUP consecutive elements): a workgroup reads a tile of whole groups into
// registers, reduces each group's min and max, derives its qparams (dynamic_rules.wgsl) and fake-quant parameters,
// then fake-quantizes the registers and writes y (and the mask, and the qparams for export). The
// element access and bindings are the elementwise families' (fake_quant.wgsl, f32;
// fake_quant_half.wgsl, f16 and bf16), the per-element arithmetic quantize.wgsl's.
//
// Exact on every device: the min and max are atomicMin / atomicMax of integer order keys of the
// finite values (both zeros as +0.0), exact and independent of the order the threads arrive in;
// the qparams and the element arithmetic are exact as their files explain.

// The chosen scales, then the zero points (f32 bits), one per group of the whole tensor.
@group(0) @binding(5) var<storage, read_write> qparams: array<u32>;

const GROUPS_WG: u32 = 256u;
// A tile is max(group, 1024) elements: at most 32 groups, at most 128 mask words, at most 16
// elements a thread.
var<workgroup> group_lo: array<atomic<u32>, 32>;
var<workgroup> group_hi: array<atomic<u32>, 32>;
var<workgroup> group_params: array<ChannelParams, 32>;
// Float zero-point domain: per group its scale, zero point and `mv = zp - s * mid` (f32 bits).
var<workgroup> group_float: array<vec3<u32>, 32>;
var<workgroup> group_mask: array<atomic<u32>, 128>;

// The group size (the dispatch's per-channel inner size), an `override` constant so that the
// divisions by it are shifts and the loops over a thread's elements have constant bounds: the
// kernel is three to four times slower on llvmpipe with it read from the uniform.
override GROUP: u32 = 32u;

fn group_len() -> u32 {
    return GROUP;
}

fn rp(bits: u32) -> u32 {
    if (rules.arithmetic_bf16 != 0u) {
        return bf16_to_f32_bits(f32_to_bf16_bits(bits));
    }
    return bits;
}

// One element in the float zero-point domain (torchao's tinygemm arithmetic, in its dtypes):
// `pre = (x - mv) / s`, `q = clamp(rne(pre), qmin, qmax)`, `y = rd(rd((q - mid) * s) + zp)`, each
// operation one of exact_f32.wgsl's correctly rounded routines; `q - mid` is an exact small
// integer. A NaN stays the same NaN, quieted; +-inf (or x - mv overflowing) lands on its side.
fn float_domain_bits(x: u32, f: vec3<u32>) -> Quantized {
    if (is_nan_bits(x)) {
        return Quantized(x | QUIET_BIT, false, false);
    }
    let below = rules.qmin - 1;
    let above = rules.qmax + 1;
    var r = 0;
    let d = select(x, rp(sub_rn_bits(x, f.z)), is_finite_bits(x));
    if (!is_finite_bits(d)) {
        r = select(above, below, (d & SIGN_BIT) != 0u);
    } else {
        r = round_half_even_clamp_i32(rp(div_rn_bits(d, f.x)), below, above);
    }
    let q = clamp(r, rules.qmin, rules.qmax);
    let t = rd(rp(mul_rn_bits(bitcast<u32>(f32(q - (rules.qmin + rules.qmax + 1) / 2)), f.x)));
    // `t` may have overflowed to +-inf (a huge scale times q - mid); the zero point is finite.
    return Quantized(rp(add_ieee_bits(t, f.y)), r >= rules.qmin && r <= rules.qmax, r < rules.qmin);
}

fn tile_len() -> u32 {
    return max(group_len(), 1024u);
}

// One tile: y, and the mask bits into group_mask.
fn group_tile(tile: u32, lid: u32) {
    let len = tile_len();
    let groups = len / group_len();
    if (lid < groups) {
        atomicStore(&group_lo[lid], 0xffffffffu);
        atomicStore(&group_hi[lid], 0u);
    }
    for (var w = lid; w < len / 32u; w = w + GROUPS_WG) {
        atomicStore(&group_mask[w], 0u);
    }
    workgroupBarrier();
    let base = tile * len;
    // Each thread takes a run of consecutive elements, all in one group (a run of at most 16
    // divides a group of at least 32), folds their keys, and sends one min and one max.
    let per_thread = len / GROUPS_WG;
    let first = lid * per_thread;
    var values: array<u32, 16>;
    var lo_key = 0xffffffffu;
    var hi_key = 0u;
    for (var k = 0u; k < per_thread; k = k + 1u) {
        let i = base + first + k;
        var v = 0u;
        if (i < dispatch.len) {
            v = load_x(i);
            if (is_finite_bits(v)) {
                let key = order_key(select(v, 0u, v == SIGN_BIT));
                lo_key = min(lo_key, key);
                hi_key = max(hi_key, key);
            }
        }
        values[k] = v;
    }
    if (lo_key != 0xffffffffu) {
        atomicMin(&group_lo[first / group_len()], lo_key);
        atomicMax(&group_hi[first / group_len()], hi_key);
    }
    workgroupBarrier();
    if (lid < groups && base + lid * group_len() < dispatch.len) {
        let lo_key = atomicLoad(&group_lo[lid]);
        let hi_key = atomicLoad(&group_hi[lid]);
        // No finite value: (+inf, -inf), which group_qparams counts as all zeros.
        var lo = 0x7f800000u;
        var hi = 0xff800000u;
        if (lo_key != 0xffffffffu) {
            lo = from_key(lo_key);
            hi = from_key(hi_key);
        }
        let q = group_qparams(lo, hi);
        if (SCHEME == 2u) {
            let mv = sat_rq(sub_rn_bits(q.zero_bits, sat_rq(mul_rn_bits(q.scale, rules.mid))));
            group_float[lid] = vec3<u32>(q.scale, q.zero_bits, mv);
        } else {
            group_params[lid] = channel_params(q.scale, q.zero_point, rules.qmin, rules.qmax);
        }
        let g = dispatch.channel_start + base / group_len() + lid;
        qparams[g] = q.scale;
        qparams[dispatch.channels + g] = q.zero_bits;
    }
    workgroupBarrier();
    for (var k = 0u; k < per_thread; k = k + 1u) {
        let offset = first + k;
        let i = base + offset;
        if (i < dispatch.len) {
            var q: Quantized;
            if (SCHEME == 2u) {
                q = float_domain_bits(values[k], group_float[offset / group_len()]);
            } else {
                q = fake_quant_bits(values[k], group_params[offset / group_len()]);
            }
            store_y(i, q.bits);
            if (q.in_range) {
                atomicOr(&group_mask[offset / 32u], 1u << (offset % 32u));
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn dynamic_groups(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        group_tile(tile, lid);
    }
}

@compute @workgroup_size(256)
fn dynamic_groups_masked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        group_tile(tile, lid);
        let first_word = tile * (tile_len() / 32u);
        for (var w = lid; w < tile_len() / 32u; w = w + GROUPS_WG) {
            if (first_word + w < dispatch.mask_words) {
                mask[first_word + w + dispatch.mask_shift] = atomicLoad(&group_mask[w]);
            }
        }
        workgroupBarrier();
    }
}
