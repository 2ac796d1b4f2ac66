// requires: quantize, elementwise_dispatch, fake_quant | fake_quant_half, dynamic_rules
// provides: dynamic_groups, dynamic_groups_masked, dynamic_float_apply, dynamic_float_apply_masked
// Dynamic fake-quant in one pass over x, for groups of a power-of-two size from 32 to 4096 (runs
// of GROUP consecutive elements): each invocation reads its run of x, reduces the min and max of
// its group (alone, or with the group's other runs in workgroup memory), derives the group's
// qparams (dynamic_rules.wgsl) and fake-quant parameters, then fake-quantizes its run (a second
// read, from cache) and writes y, whole mask words without atomics, and the qparams for export.
// The element access and bindings are the elementwise families' (fake_quant.wgsl, f32;
// fake_quant_half.wgsl, f16 and bf16), the per-element arithmetic quantize.wgsl's.
//
// Exact on every device: the min and max are integer min / max (atomicMin / atomicMax across runs)
// of order keys of the finite values (both zeros as +0.0), exact and independent of the order the
// elements and the invocations arrive in; the qparams and the element arithmetic are exact as
// their files explain.

// The chosen scales and zero points (f32 bits): windows of the tables, this dispatch's first group
// at index `dispatch.channel_start`.
@group(0) @binding(5) var<storage, read_write> scales: array<u32>;
@group(0) @binding(7) var<storage, read_write> zero_points: array<u32>;

// The group size (the dispatch's per-channel inner size) and the run of consecutive elements each
// invocation owns, `override` constants so that the divisions by them are shifts: the kernel is
// three to four times slower on llvmpipe with the group read from the uniform. RUN is a power of
// two from 32 to GROUP (so a run is whole mask words inside one group); a workgroup's tile is 256
// runs. Chosen by the host (`GpuContext::with_dynamic_run`): whole groups on CPU adapters, where
// a workgroup barrier costs more than the reduction; 32 on GPUs, where a group's runs meet in
// workgroup memory and every invocation has work.
override GROUP: u32 = 32u;
override RUN: u32 = 32u;

// Per group of the tile (at most 256, one per run), the min and max keys of its runs (GROUP >
// RUN), in three sets used in turn, so that one barrier a tile suffices: tile t folds and reads set
// t % 3 around its barrier, then resets the set of tile t - 1 (read before this barrier) for tile
// t + 2 (folded after the next one).
var<workgroup> group_lo: array<array<atomic<u32>, 256>, 3>;
var<workgroup> group_hi: array<array<atomic<u32>, 256>, 3>;

fn tile_len() -> u32 {
    return 256u * RUN;
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

// The fake-quant parameters of one run's group.
struct RunParams {
    // The integer zero-point schemes (SCHEME 0, 1).
    fixed: ChannelParams,
    // The float zero-point domain (SCHEME 2): scale, zero point and `mv = zp - s * mid`.
    float_domain: vec3<u32>,
}

fn reset_keys(keys: u32, lid: u32) {
    if (lid < tile_len() / GROUP) {
        atomicStore(&group_lo[keys][lid], 0xffffffffu);
        atomicStore(&group_hi[keys][lid], 0u);
    }
}

// Before a workgroup's first tile: the sets of its first two tiles reset.
fn reset_first_keys(lid: u32) {
    if (GROUP > RUN) {
        reset_keys(0u, lid);
        reset_keys(1u, lid);
        workgroupBarrier();
    }
}

// The run of `first` (dispatch-local, `run_len` elements, possibly none): its group's min and max,
// its qparams (exported by the group's first run) and the fake-quant parameters. Every run of a
// group derives the same qparams from the same keys: cheaper than another barrier.
fn run_params(first: u32, run_len: u32, turn: u32, lid: u32) -> RunParams {
    var lo_key = 0xffffffffu;
    var hi_key = 0u;
    for (var k = 0u; k < run_len; k = k + 1u) {
        let v = load_x(first + k);
        if (is_finite_bits(v)) {
            let key = order_key(select(v, 0u, v == SIGN_BIT));
            lo_key = min(lo_key, key);
            hi_key = max(hi_key, key);
        }
    }
    // GROUP and RUN are constants: the barrier is in uniform control flow.
    if (GROUP > RUN) {
        let keys = turn % 3u;
        let group = lid * RUN / GROUP;
        if (lo_key != 0xffffffffu) {
            atomicMin(&group_lo[keys][group], lo_key);
            atomicMax(&group_hi[keys][group], hi_key);
        }
        workgroupBarrier();
        lo_key = atomicLoad(&group_lo[keys][group]);
        hi_key = atomicLoad(&group_hi[keys][group]);
        reset_keys((turn + 2u) % 3u, lid);
    }
    var p: RunParams;
    if (run_len == 0u) {
        return p;
    }
    // No finite value: (+inf, -inf), which group_qparams counts as all zeros.
    var lo = 0x7f800000u;
    var hi = 0xff800000u;
    if (lo_key != 0xffffffffu) {
        lo = from_key(lo_key);
        hi = from_key(hi_key);
    }
    let q = group_qparams(lo, hi);
    if (first % GROUP == 0u) {
        let g = dispatch.channel_start + first / GROUP;
        scales[g] = q.scale;
        zero_points[g] = q.zero_bits;
    }
    if (SCHEME == 2u) {
        let mv = sat_rq(sub_rn_bits(q.zero_bits, sat_rq(mul_rn_bits(q.scale, rules.mid))));
        p.float_domain = vec3<u32>(q.scale, q.zero_bits, mv);
    } else {
        p.fixed = channel_params(q.scale, q.zero_point, rules.qmin, rules.qmax);
    }
    return p;
}

// Fake-quantizes up to 32 elements from `first` (dispatch-local, `len` of them) into y; returns
// their mask word.
fn quantize_word(first: u32, len: u32, p: RunParams) -> u32 {
    var word = 0u;
    for (var k = 0u; k < len; k = k + 1u) {
        var q: Quantized;
        if (SCHEME == 2u) {
            q = float_domain_bits(load_x(first + k), p.float_domain);
        } else {
            q = fake_quant_bits(load_x(first + k), p.fixed);
        }
        store_y(first + k, q.bits);
        word = word | (u32(q.in_range) << k);
    }
    return word;
}

// The elements of the run from `first` still in the dispatch.
fn run_len(first: u32) -> u32 {
    return min(RUN, max(dispatch.len, first) - first);
}

@compute @workgroup_size(256)
fn dynamic_groups(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    reset_first_keys(lid);
    var turn = 0u;
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = tile * tile_len() + lid * RUN;
        let len = run_len(first);
        let p = run_params(first, len, turn, lid);
        for (var w = 0u; w * 32u < len; w = w + 1u) {
            _ = quantize_word(first + w * 32u, min(32u, len - w * 32u), p);
        }
        turn = turn + 1u;
    }
}

// The same, writing the mask words (one binding only this entry point uses).
@compute @workgroup_size(256)
fn dynamic_groups_masked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    reset_first_keys(lid);
    var turn = 0u;
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = tile * tile_len() + lid * RUN;
        let len = run_len(first);
        let p = run_params(first, len, turn, lid);
        for (var w = 0u; w * 32u < len; w = w + 1u) {
            let word = quantize_word(first + w * 32u, min(32u, len - w * 32u), p);
            mask[(first / 32u) + w + dispatch.mask_shift] = word;
        }
        turn = turn + 1u;
    }
}

// The float zero-point domain for groups the one-pass kernel does not take: the last pass of the
// two-pass plan, after dynamic.wgsl's `dynamic_qparams` wrote each group's scale and zero point
// (windows of the tables, indexed by dispatch_channel). 32 elements (one mask word) per
// invocation; each element's arithmetic is the one-pass kernel's (`float_domain_bits`), with
// `mv` derived from the group's qparams as run_params derives it.
fn float_apply_word(first: u32, len: u32) -> u32 {
    var word = 0u;
    for (var k = 0u; k < len; k = k + 1u) {
        let g = dispatch_channel(first + k);
        let scale = scales[g];
        let zero = zero_points[g];
        let mv = sat_rq(sub_rn_bits(zero, sat_rq(mul_rn_bits(scale, rules.mid))));
        let q = float_domain_bits(load_x(first + k), vec3<u32>(scale, zero, mv));
        store_y(first + k, q.bits);
        word = word | (u32(q.in_range) << k);
    }
    return word;
}

@compute @workgroup_size(256)
fn dynamic_float_apply(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        if (first < dispatch.len) {
            _ = float_apply_word(first, min(32u, dispatch.len - first));
        }
    }
}

// The same, writing the mask words.
@compute @workgroup_size(256)
fn dynamic_float_apply_masked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        if (first < dispatch.len) {
            mask[first / 32u + dispatch.mask_shift] = float_apply_word(first, min(32u, dispatch.len - first));
        }
    }
}
