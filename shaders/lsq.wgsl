// requires: exact_f32, half, quantize
// provides: lsq_params, lsq_backward, lsq_init_terms, lsq_sum, lsq_finish, lsq_init_finish, lsq_from_observer
// LSQ / LSQ+: effective parameters from the learnable scale and zero point, the one-pass backward
// (dx, and dscale / dzero_point reduced in a fixed order), the initialization from data or from an
// observer. Prepended with exact_f32.wgsl and quantize.wgsl; the forward is fake_quant.wgsl's,
// reading the parameters `lsq_params` derives.
//
// Exactness on every device follows from the design:
// - The per-element gradient terms and every addition of the reductions are integer soft-float
//   operations (sub_rn_bits, mul_rn_bits, mul_ieee_bits, add_ieee_bits): each is one correctly
//   rounded IEEE operation, so there is no float multiply and add a compiler could fuse, and no
//   subnormal it could flush. The only float operations are the fake-quant's own (quantize.wgsl).
// - The order of every sum is the reference's `tree_sum`: blocks of 4096 terms of one channel in
//   flat order; lane t of 256 adds terms t, t + 256, .., t + 15 * 256 to +0; 16 groups of 16 lanes
//   add their lanes; the block adds its 16 groups (each step sequential from +0: two workgroup
//   barriers per block, which matters on CPU-emulated GPUs where a barrier switches every
//   invocation); the blocks' sums go through the same steps (lsq_sum) until one is left. The order
//   depends on the shape only, never on the adapter, the binding size or the grid.

struct LsqDispatch {
    // The tensor seen as [outer, channels, inner]; element j of channel c (in flat order) is at
    // flat index ((j / inner) * channels + c) * inner + j % inner. Global flat index
    // `window_base` is element `x_shift` of this dispatch's binding of x (`dy_shift`, `dx_shift`
    // of dy and dx).
    total: u32,
    x_shift: u32,
    window_base: u32,
    channels: u32,
    inner: u32,
    // Elements per channel (outer * inner).
    per_channel: u32,
    // Blocks per channel produced by this dispatch (backward, init, lsq_sum).
    blocks: u32,
    // Contiguous channels (outer == 1): unit = first_unit + workgroup x is (c, b) = (unit / blocks,
    // unit % blocks). Otherwise workgroup x is block first_unit + x and channels loop along y.
    contiguous: u32,
    first_unit: u32,
    // lsq_sum / finish: partials per channel in the source level.
    src_blocks: u32,
    qmin: i32,
    qmax: i32,
    eps: u32,
    grad_factor: u32,
    sqrt_qmax: u32,
    // Where the window's first element sits in the dy and dx bindings (x: x_shift).
    dy_shift: u32,
    dx_shift: u32,
    // lsq_finish: where the first dzero_point sits in `grads_hi` (they follow all the dscales, so
    // their window starts aligned down). Every per-channel table is bound a window per chunk of
    // channels, from the chunk's first channel, so the tables need not fit one binding.
    hi_shift: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> d: LsqDispatch;
// `read_write` though only read: a caller's input may share a buffer with the output (disjoint
// ranges), and wgpu refuses one buffer bound read-only and read-write in one dispatch.
@group(0) @binding(1) var<storage, read_write> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> dy: array<u32>;
// Atomic so that 16-bit elements, two to a word, can be stored by different invocations (see
// store_dx); f32 elements are plain atomicStores.
@group(0) @binding(3) var<storage, read_write> dx: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> params: array<ChannelParams>;
// Pairs per (channel, block): (dscale, dzero_point) sums, or (sum |x|, finite count) for init.
@group(0) @binding(5) var<storage, read_write> partials: array<u32>;
// The learnable parameters, f32 bits per channel.
@group(0) @binding(6) var<storage, read_write> scale: array<u32>;
@group(0) @binding(7) var<storage, read_write> zero_point: array<u32>;
// Reduced gradients: `channels` dscale (here), then `channels` dzero_point (`grads_hi`).
@group(0) @binding(8) var<storage, read_write> grads: array<u32>;
// The previous level of the tree of partial sums (lsq_sum, lsq_finish, lsq_init_finish).
@group(0) @binding(9) var<storage, read> level: array<u32>;
// An observer's state, 4 words per channel: min, max, scale, zero point (lsq_from_observer).
@group(0) @binding(10) var<storage, read> observer_state: array<u32>;
// The reduced dzero_points (the second half of the gradients), from `hi_shift`.
@group(0) @binding(11) var<storage, read_write> grads_hi: array<u32>;

// 0: f32 tensors, 1: f16, 2: bf16 (two per word; widened and rounded by half.wgsl, exactly).
override DTYPE: u32 = 0u;

fn widen(half: u32) -> u32 {
    return select(bf16_to_f32_bits(half), f16_to_f32_bits(half), DTYPE == 1u);
}

fn load_x(at: u32) -> u32 {
    let i = at + d.x_shift;
    if (DTYPE == 0u) {
        return x[i];
    }
    return widen((x[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu);
}

fn load_dy(at: u32) -> u32 {
    let i = at + d.dy_shift;
    if (DTYPE == 0u) {
        return dy[i];
    }
    return widen((dy[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu);
}

// A 16-bit element is cleared and set with two atomics on its own 16 bits, so the neighbour in
// the same word (another invocation's, or another tensor's) is never disturbed.
fn store_dx(at: u32, bits: u32) {
    let i = at + d.dx_shift;
    if (DTYPE == 0u) {
        atomicStore(&dx[i], bits);
        return;
    }
    let half = select(f32_to_bf16_bits(bits), f32_to_f16_bits(bits), DTYPE == 1u);
    let shift = (i & 1u) * 16u;
    atomicAnd(&dx[i >> 1u], ~(0xffffu << shift));
    atomicOr(&dx[i >> 1u], half << shift);
}

const WG_SIZE: u32 = 256u;
const BLOCK: u32 = 4096u;
const GROUP: u32 = 16u;
const MAX_SCALE: u32 = 0x7e800000u;

fn effective_scale_bits(s: u32) -> u32 {
    if (is_nan_bits(s) || order_key(s) < order_key(d.eps)) {
        return d.eps;
    }
    return select(s, MAX_SCALE, order_key(s) > order_key(MAX_SCALE));
}

fn effective_zero_point(z: u32) -> i32 {
    if (is_nan_bits(z)) {
        return clamp(0, d.qmin, d.qmax);
    }
    if ((z & ABS_MASK) == EXP_MASK) {
        return select(d.qmax, d.qmin, (z & SIGN_BIT) != 0u);
    }
    return round_half_even_clamp_i32(z, d.qmin, d.qmax);
}

// The fake-quant parameters of the learnable ones, one invocation per channel.
@compute @workgroup_size(256)
fn lsq_params(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * WG_SIZE + lid; c < d.channels; c = c + num_wg.x * WG_SIZE) {
        let s = effective_scale_bits(scale[c]);
        params[c] = channel_params(s, effective_zero_point(zero_point[c]), d.qmin, d.qmax);
    }
}

var<workgroup> lane_a: array<u32, 256>;
var<workgroup> lane_b: array<u32, 256>;

var<workgroup> group_a: array<u32, 16>;
var<workgroup> group_b: array<u32, 16>;

// The reference's second and third steps over the 256 lanes: 16 groups of 16 lanes, then the 16
// groups, each summed in order from +0. The result is valid in invocation 0.
fn block_tree(lid: u32, a: u32, b: u32, counts: bool) -> vec2<u32> {
    lane_a[lid] = a;
    lane_b[lid] = b;
    workgroupBarrier();
    if (lid < GROUP) {
        var ga = 0u;
        var gb = 0u;
        for (var i = 0u; i < GROUP; i = i + 1u) {
            ga = add_ieee_bits(ga, lane_a[lid * GROUP + i]);
            if (counts) {
                gb = gb + lane_b[lid * GROUP + i];
            } else {
                gb = add_ieee_bits(gb, lane_b[lid * GROUP + i]);
            }
        }
        group_a[lid] = ga;
        group_b[lid] = gb;
    }
    workgroupBarrier();
    var ra = 0u;
    var rb = 0u;
    if (lid == 0u) {
        for (var i = 0u; i < GROUP; i = i + 1u) {
            ra = add_ieee_bits(ra, group_a[i]);
            if (counts) {
                rb = rb + group_b[i];
            } else {
                rb = add_ieee_bits(rb, group_b[i]);
            }
        }
    }
    return vec2<u32>(ra, rb);
}

fn flat_index(c: u32, j: u32) -> u32 {
    // Per-tensor, or one run per channel (channel axis first): no integer division, which GPUs
    // and llvmpipe spend dozens of instructions on.
    if (d.channels == 1u) {
        return j;
    }
    if (d.inner == d.per_channel) {
        return c * d.inner + j;
    }
    return ((j / d.inner) * d.channels + c) * d.inner + j % d.inner;
}

// Adding +0 leaves any sum unchanged here (a lane starts at +0 and never becomes -0), so zero
// terms are skipped: a branch, not a select, so that a warp whose terms are all zero (the zero
// point's, for elements in range) skips the soft-float addition.
fn accumulate(acc: u32, term: u32) -> u32 {
    if (term == 0u) {
        return acc;
    }
    return add_ieee_bits(acc, term);
}

// The block's two sums through the fixed tree, stored as the pair of block b of channel c.
fn store_block(c: u32, b: u32, lid: u32, sum_a: u32, sum_b: u32, counts: bool) {
    let r = block_tree(lid, sum_a, sum_b, counts);
    if (lid == 0u) {
        let out = 2u * (c * d.blocks + b);
        partials[out] = r.x;
        partials[out + 1u] = r.y;
    }
}

// Block b of channel c of the backward: per element dx and the gradient terms, then the block's
// sums.
fn backward_block(c: u32, b: u32, lid: u32) {
    let p = params[c];
    let inv = bitcast<u32>(p.inv);
    var sum_a = 0u;
    var sum_b = 0u;
    for (var k = 0u; k < BLOCK / WG_SIZE; k = k + 1u) {
        let j = b * BLOCK + k * WG_SIZE + lid;
        if (j < d.per_channel) {
            let at = flat_index(c, j) - d.window_base;
            let xb = load_x(at);
            let g = load_dy(at);
            let q = fake_quant_bits(xb, p);
            store_dx(at, ste_grad_bits(g, q.in_range));
            var ts = DEFAULT_NAN;
            var tz = DEFAULT_NAN;
            if (!is_nan_bits(xb)) {
                // The scale's term is g times a factor in both cases, so one multiplication
                // serves a warp that mixes elements in and out of range.
                var factor = bitcast<u32>(select(p.hi, p.lo, q.below));
                tz = 0u;
                if (q.in_range) {
                    factor = mul_rn_bits(sub_rn_bits(q.bits, xb), inv);
                } else {
                    tz = mul_ieee_bits(g ^ SIGN_BIT, bitcast<u32>(p.scale));
                }
                ts = mul_ieee_bits(g, factor);
            }
            sum_a = accumulate(sum_a, ts);
            sum_b = accumulate(sum_b, tz);
        }
    }
    store_block(c, b, lid, sum_a, sum_b, false);
}

// Block b of channel c of the initialization: |x| and the finite count, then the block's sums.
// (Its own function, so that lsq_init_terms uses neither dy, dx nor the parameters.)
fn init_block(c: u32, b: u32, lid: u32) {
    var sum_a = 0u;
    var sum_b = 0u;
    for (var k = 0u; k < BLOCK / WG_SIZE; k = k + 1u) {
        let j = b * BLOCK + k * WG_SIZE + lid;
        if (j < d.per_channel) {
            let xb = load_x(flat_index(c, j) - d.window_base);
            let finite = is_finite_bits(xb);
            sum_a = accumulate(sum_a, select(0u, xb & ABS_MASK, finite));
            sum_b = sum_b + select(0u, 1u, finite);
        }
    }
    store_block(c, b, lid, sum_a, sum_b, true);
}

// The blocks of a dispatch: contiguous channels (outer == 1) take unit = first_unit + workgroup
// x as (channel, block); otherwise workgroup x is a block and the channels loop along y.
@compute @workgroup_size(256)
fn lsq_backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (d.contiguous != 0u) {
        let unit = d.first_unit + wg.x;
        backward_block(unit / d.blocks, unit % d.blocks, lid);
    } else {
        for (var c = wg.y; c < d.channels; c = c + num_wg.y) {
            backward_block(c, d.first_unit + wg.x, lid);
            // The lanes and groups are reused by the next block.
            workgroupBarrier();
        }
    }
}

// The same walk as lsq_backward, over init_block.
@compute @workgroup_size(256)
fn lsq_init_terms(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (d.contiguous != 0u) {
        let unit = d.first_unit + wg.x;
        init_block(unit / d.blocks, unit % d.blocks, lid);
    } else {
        for (var c = wg.y; c < d.channels; c = c + num_wg.y) {
            init_block(c, d.first_unit + wg.x, lid);
            // The lanes and groups are reused by the next block.
            workgroupBarrier();
        }
    }
}

// The second word of each pair is a count (init) instead of a float sum.
override COUNTS: bool = false;

// One level of the tree over the blocks' sums: source pairs in `level`, src_blocks per channel;
// `blocks` pairs per channel out.
@compute @workgroup_size(256)
fn lsq_sum(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var unit = wg.x; unit < d.channels * d.blocks; unit = unit + num_wg.x) {
        let c = unit / d.blocks;
        let b = unit % d.blocks;
        var sum_a = 0u;
        var sum_b = 0u;
        for (var k = 0u; k < BLOCK / WG_SIZE; k = k + 1u) {
            let j = b * BLOCK + k * WG_SIZE + lid;
            if (j < d.src_blocks) {
                let at = 2u * (c * d.src_blocks + j);
                // Block sums are added even when zero, exactly as the reference adds them.
                sum_a = add_ieee_bits(sum_a, level[at]);
                if (COUNTS) {
                    sum_b = sum_b + level[at + 1u];
                } else {
                    sum_b = add_ieee_bits(sum_b, level[at + 1u]);
                }
            }
        }
        let r = block_tree(lid, sum_a, sum_b, COUNTS);
        if (lid == 0u) {
            partials[2u * unit] = r.x;
            partials[2u * unit + 1u] = r.y;
        }
        // The lanes and groups are reused by the next block.
        workgroupBarrier();
    }
}

// The last level (one pair per channel, or none for an empty tensor) times grad_factor.
@compute @workgroup_size(256)
fn lsq_finish(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * WG_SIZE + lid; c < d.channels; c = c + num_wg.x * WG_SIZE) {
        var sums = vec2<u32>(0u, 0u);
        if (d.src_blocks != 0u) {
            sums = vec2<u32>(level[2u * c], level[2u * c + 1u]);
        }
        grads[c] = mul_ieee_bits(sums.x, d.grad_factor);
        grads_hi[d.hi_shift + c] = mul_ieee_bits(sums.y, d.grad_factor);
    }
}

// s = (2 * (sum / count)) / sqrt(qmax) per channel; 1 without a finite element.
@compute @workgroup_size(256)
fn lsq_init_finish(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * WG_SIZE + lid; c < d.channels; c = c + num_wg.x * WG_SIZE) {
        var s = 0x3f800000u;
        if (d.src_blocks != 0u && level[2u * c + 1u] != 0u) {
            let sum = level[2u * c];
            var mean = POS_INF_BITS;
            if (is_finite_bits(sum)) {
                mean = div_rn_bits(sum, u32_to_f32_rn_bits(level[2u * c + 1u]));
            }
            let twice = mul_ieee_bits(0x40000000u, mean);
            s = POS_INF_BITS;
            if (is_finite_bits(twice)) {
                s = div_rn_bits(twice, d.sqrt_qmax);
            }
        }
        scale[c] = s;
    }
}

const POS_INF_BITS: u32 = 0x7f800000u;

// The learnable parameters from an observer's calibrated state (4 words per channel: min, max,
// scale, zero point).
@compute @workgroup_size(256)
fn lsq_from_observer(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * WG_SIZE + lid; c < d.channels; c = c + num_wg.x * WG_SIZE) {
        scale[c] = observer_state[4u * c + 2u];
        // An integer of at most 16 bits: exact in f32 on every device.
        zero_point[c] = bitcast<u32>(f32(bitcast<i32>(observer_state[4u * c + 3u])));
    }
}
