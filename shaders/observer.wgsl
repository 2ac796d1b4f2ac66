// requires: exact_f32, half, quantize
// provides: ObserverChannel, minmax_rows, minmax_cols, finalize_batch, finalize_batch_narrow, merge_batch, update
// Observers: per-channel min/max reduction, the merge of replicas' statistics, and the update of
// the running state, qparams and fake-quant parameters, all on the device. Prepended with
// exact_f32.wgsl and quantize.wgsl.
//
// Exactness on every device follows from the design:
// - Min and max never touch float arithmetic. Each finite input is mapped to an order-preserving
//   integer key (its bits with the sign folded), and the reduction is integer min/max, which is
//   exact, associative and commutative, so neither NaN rules, signed-zero ties, flushed subnormals
//   nor the reduction order can change a bit. The tree is fixed anyway: each thread reduces a
//   fixed strided set, then a workgroup halves 256 -> 1, then a second pass reduces the partials.
// - The moving average, the qparams and the reciprocal are computed with the integer routines of
//   exact_f32.wgsl (sub_rn_bits, mul_rn_bits, add_rn_bits, div_rn_bits,
//   round_half_even_clamp_i32): each is one correctly rounded IEEE operation by construction, so a
//   compiler has no multiply and add to fuse, no division to approximate, no subnormal to flush.

struct ObserveDispatch {
    // Reduction: elements in the tensor, and where this dispatch's binding starts: the global
    // element `window_base` is element `shift` of the binding (bindings start aligned).
    total: u32,
    shift: u32,
    window_base: u32,
    channels: u32,
    inner: u32,
    // First piece (minmax_rows) or row block (minmax_cols) of this dispatch.
    first_unit: u32,
    pieces_per_row: u32,
    // Partial results per channel.
    slots: u32,
    // minmax_cols: the tensor seen as `rows` rows of `width` columns (a multiple of
    // channels * inner, so a column stays in one channel), reduced in blocks of `block_rows` rows;
    // each block leaves `col_slots` partials per channel.
    width: u32,
    block_rows: u32,
    rows: u32,
    col_slots: u32,
    // update: 0 running min/max, 1 moving average with constant `average_constant` (f32 bits).
    averaging: u32,
    average_constant: u32,
    // 0 symmetric, 1 affine.
    scheme: u32,
    eps: u32,
    power_of_two: u32,
    qmin: i32,
    qmax: i32,
    symmetric_zero_point: i32,
    // (qmax - qmin) and (qmax - qmin) / 2 as f32 bits.
    range_bits: u32,
    half_range_bits: u32,
    // Where channel 0's maximum sits in the `batch_hi` window (and in `src_hi` for merge_batch):
    // the maxima follow all the minima in a statistics buffer, so their window starts aligned
    // down. The per-channel tables are bound a window per chunk of channels (each window starts
    // at the chunk's first channel; chunks start aligned), so an observer's tables need not fit
    // one binding.
    hi_shift: u32,
    src_hi_shift: u32,
}

// One channel of an observer's state: f32 bits of the running range (empty: +inf, -inf), the
// scale's bits and the zero point.
struct ObserverChannel {
    min: u32,
    max: u32,
    scale: u32,
    zero_point: i32,
}

@group(0) @binding(0) var<uniform> d: ObserveDispatch;
// The tensor (reductions) or the other replica's statistics (merge).
@group(0) @binding(1) var<storage, read> src: array<u32>;
// Pairs (min key, max key), `slots` consecutive pairs per channel.
@group(0) @binding(2) var<storage, read_write> partials: array<u32>;
// A batch's statistics as f32 bits: `channels` minima, then `channels` maxima, bound as two
// windows of the same buffer: the minima (`batch`) and the maxima (`batch_hi`, from `hi_shift`).
@group(0) @binding(3) var<storage, read_write> batch: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<ObserverChannel>;
@group(0) @binding(5) var<storage, read_write> params: array<ChannelParams>;
@group(0) @binding(6) var<storage, read_write> batch_hi: array<u32>;
// The other replica's maxima (merge_batch; its minima are `src`).
@group(0) @binding(7) var<storage, read> src_hi: array<u32>;

const WG_SIZE: u32 = 256u;
// Elements one workgroup of minmax_rows reduces.
const PIECE: u32 = 16384u;
const POS_INF: u32 = 0x7f800000u;
const NEG_INF: u32 = 0xff800000u;
const MAX_FINITE: u32 = 0x7f7fffffu;
// Keys of +inf and -inf: the identities of min and max over finite keys.
const EMPTY_MIN_KEY: u32 = 0xff800000u;
const EMPTY_MAX_KEY: u32 = 0x007fffffu;

// -0.0 becomes +0.0: observers count both zeros as +0.0.
fn plus_zero(bits: u32) -> u32 {
    return select(bits, 0u, bits == SIGN_BIT);
}

// (min key, max key) of one input: its key twice when finite, the identities otherwise.
fn observe_keys(bits: u32) -> vec2<u32> {
    let key = order_key(plus_zero(bits));
    return select(vec2<u32>(EMPTY_MIN_KEY, EMPTY_MAX_KEY), vec2<u32>(key, key), is_finite_bits(bits));
}

var<workgroup> wg_min: array<u32, 256>;
var<workgroup> wg_max: array<u32, 256>;

// Fixed halving tree over the workgroup; the result is valid in invocation 0.
fn reduce_workgroup(lid: u32, lo: u32, hi: u32) -> vec2<u32> {
    wg_min[lid] = lo;
    wg_max[lid] = hi;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            wg_min[lid] = min(wg_min[lid], wg_min[lid + s]);
            wg_max[lid] = max(wg_max[lid], wg_max[lid + s]);
        }
        workgroupBarrier();
    }
    return vec2<u32>(wg_min[0], wg_max[0]);
}

// 0: f32 elements, 1: f16, 2: bf16 (two per word, widened exactly by half.wgsl).
override DTYPE: u32 = 0u;

fn load_keys(global: u32) -> vec2<u32> {
    let at = global - d.window_base + d.shift;
    if (DTYPE == 0u) {
        return observe_keys(src[at]);
    }
    let half = (src[at >> 1u] >> ((at & 1u) * 16u)) & 0xffffu;
    return observe_keys(select(bf16_to_f32_bits(half), f16_to_f32_bits(half), DTYPE == 1u));
}

// Channel axis not innermost, rows of at least 256 elements: one workgroup per piece of PIECE
// contiguous elements of one (outer, channel) row.
@compute @workgroup_size(256)
fn minmax_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let piece = d.first_unit + wg.x;
    let row = piece / d.pieces_per_row;
    let p = piece % d.pieces_per_row;
    let row_start = row * d.inner;
    let start = row_start + p * PIECE;
    let end = min(start + PIECE, row_start + d.inner);
    var lo = EMPTY_MIN_KEY;
    var hi = EMPTY_MAX_KEY;
    // Four independent loads per step: with one, a GPU's invocations keep too few loads in flight
    // to cover memory latency (measured: 1.3 TB/s on an H200). Min and max of integer keys do not
    // depend on the order they are taken in, so the result is the same bits.
    var g = start + lid;
    for (; g + 3u * WG_SIZE < end; g = g + 4u * WG_SIZE) {
        let k0 = load_keys(g);
        let k1 = load_keys(g + WG_SIZE);
        let k2 = load_keys(g + 2u * WG_SIZE);
        let k3 = load_keys(g + 3u * WG_SIZE);
        lo = min(lo, min(min(k0.x, k1.x), min(k2.x, k3.x)));
        hi = max(hi, max(max(k0.y, k1.y), max(k2.y, k3.y)));
    }
    for (; g < end; g = g + WG_SIZE) {
        let k = load_keys(g);
        lo = min(lo, k.x);
        hi = max(hi, k.y);
    }
    let r = reduce_workgroup(lid, lo, hi);
    if (lid == 0u) {
        let c = row % d.channels;
        let o = row / d.channels;
        let at = 2u * (c * d.slots + o * d.pieces_per_row + p);
        partials[at] = r.x;
        partials[at + 1u] = r.y;
    }
}

// Per-tensor, or rows shorter than 256 elements: the tensor as rows of `width` columns; thread = column, looping down
// `block_rows` rows, so consecutive threads read consecutive addresses (coalesced) whatever the
// channel axis. Every column stays in one channel.
@compute @workgroup_size(256)
fn minmax_cols(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = d.first_unit + wg.y;
    let r0 = block * d.block_rows;
    let r1 = min(r0 + d.block_rows, d.rows);
    let period = d.channels * d.inner;
    // Column blocks beyond the workgroup limit are looped over (no barrier in this kernel).
    for (var col = wg.x * WG_SIZE + lid; col < d.width; col = col + num_wg.x * WG_SIZE) {
        var lo = EMPTY_MIN_KEY;
        var hi = EMPTY_MAX_KEY;
        // Four rows per step, their loads independent (see minmax_rows); the last row of the
        // tensor may be partial, so rows reaching it take the checked loop.
        let full_rows = min(r1, d.total / d.width);
        var r = r0;
        for (; r + 3u < full_rows; r = r + 4u) {
            let g = r * d.width + col;
            let k0 = load_keys(g);
            let k1 = load_keys(g + d.width);
            let k2 = load_keys(g + 2u * d.width);
            let k3 = load_keys(g + 3u * d.width);
            lo = min(lo, min(min(k0.x, k1.x), min(k2.x, k3.x)));
            hi = max(hi, max(max(k0.y, k1.y), max(k2.y, k3.y)));
        }
        for (; r < r1; r = r + 1u) {
            let g = r * d.width + col;
            if (g < d.total) {
                let k = load_keys(g);
                lo = min(lo, k.x);
                hi = max(hi, k.y);
            }
        }
        let c = (col % period) / d.inner;
        let within = (col / period) * d.inner + col % d.inner;
        let at = 2u * (c * d.slots + block * d.col_slots + within);
        partials[at] = lo;
        partials[at + 1u] = hi;
    }
}

fn store_batch(c: u32, keys: vec2<u32>) {
    batch[c] = from_key(keys.x);
    batch_hi[d.hi_shift + c] = from_key(keys.y);
}

// Partials -> batch statistics, one workgroup per channel (grid-stride over channels).
@compute @workgroup_size(256)
fn finalize_batch(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x; c < d.channels; c = c + num_wg.x) {
        var lo = EMPTY_MIN_KEY;
        var hi = EMPTY_MAX_KEY;
        for (var s = lid; s < d.slots; s = s + WG_SIZE) {
            let at = 2u * (c * d.slots + s);
            lo = min(lo, partials[at]);
            hi = max(hi, partials[at + 1u]);
        }
        let r = reduce_workgroup(lid, lo, hi);
        if (lid == 0u) {
            store_batch(c, r);
        }
        // Invocation 0 reads the tree's result before the lanes are reused.
        workgroupBarrier();
    }
}

// The same for few partials per channel: one invocation per channel.
@compute @workgroup_size(256)
fn finalize_batch_narrow(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * WG_SIZE + lid; c < d.channels; c = c + num_wg.x * WG_SIZE) {
        var lo = EMPTY_MIN_KEY;
        var hi = EMPTY_MAX_KEY;
        for (var s = 0u; s < d.slots; s = s + 1u) {
            let at = 2u * (c * d.slots + s);
            lo = min(lo, partials[at]);
            hi = max(hi, partials[at + 1u]);
        }
        store_batch(c, vec2<u32>(lo, hi));
    }
}

// A channel's range, zeros as +0.0, when it is one: both ends finite and min <= max.
struct Range {
    ok: bool,
    lo: u32,
    hi: u32,
}

fn range_of(lo_bits: u32, hi_bits: u32) -> Range {
    let lo = plus_zero(lo_bits);
    let hi = plus_zero(hi_bits);
    let ok = is_finite_bits(lo) && is_finite_bits(hi) && order_key(lo) <= order_key(hi);
    return Range(ok, lo, hi);
}

fn min_bits(a: u32, b: u32) -> u32 {
    return select(a, b, order_key(b) < order_key(a));
}

fn max_bits(a: u32, b: u32) -> u32 {
    return select(a, b, order_key(b) > order_key(a));
}

// Merges another replica's statistics (src) into batch: min of mins, max of maxes; a channel that
// is not a range on one side takes the other side's.
@compute @workgroup_size(256)
fn merge_batch(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * WG_SIZE + lid; c < d.channels; c = c + num_wg.x * WG_SIZE) {
        let a = range_of(batch[c], batch_hi[d.hi_shift + c]);
        let b = range_of(src[c], src_hi[d.src_hi_shift + c]);
        var lo = POS_INF;
        var hi = NEG_INF;
        if (a.ok && b.ok) {
            lo = min_bits(a.lo, b.lo);
            hi = max_bits(a.hi, b.hi);
        } else if (a.ok) {
            lo = a.lo;
            hi = a.hi;
        } else if (b.ok) {
            lo = b.lo;
            hi = b.hi;
        }
        batch[c] = lo;
        batch_hi[d.hi_shift + c] = hi;
    }
}

// running + c * (batch - running), three correctly rounded operations in integers, saturated to
// the finite range. Only the difference can overflow (c <= 1); then c * inf + running is that
// infinity, which saturates.
fn moving_average_bits(running: u32, observed: u32, c: u32) -> u32 {
    let difference = sub_rn_bits(observed, running);
    var sum = difference;
    if (is_finite_bits(difference)) {
        sum = add_rn_bits(running, mul_rn_bits(c, difference));
    }
    return select(sum, (sum & SIGN_BIT) | MAX_FINITE, !is_finite_bits(sum));
}

struct Qparams {
    scale: u32,
    zero_point: i32,
}

const ONE: u32 = 0x3f800000u;
// 2^126: the largest scale, whose reciprocal is still normal.
const MAX_SCALE: u32 = 0x7e800000u;

fn qparams_of(r: Range) -> Qparams {
    if (!r.ok) {
        return Qparams(ONE, 0);
    }
    // min(min, 0) and max(max, 0); zeros are already +0.0.
    let min_neg = select(0u, r.lo, (r.lo & SIGN_BIT) != 0u);
    let max_pos = select(0u, r.hi, (r.hi & SIGN_BIT) == 0u);
    var raw: u32;
    if (d.scheme == 0u) {
        // Both magnitudes are non-negative floats, whose bits order like their values.
        let amax = max(min_neg & ABS_MASK, max_pos);
        raw = div_rn_bits(amax, d.half_range_bits);
    } else {
        let width = sub_rn_bits(max_pos, min_neg);
        raw = select(POS_INF, div_rn_bits(width, d.range_bits), is_finite_bits(width));
    }
    // raw is +0, positive or +inf: clamp on the bits.
    var scale = min(max(raw, d.eps), MAX_SCALE);
    if (d.power_of_two != 0u && (scale & 0x007fffffu) != 0u) {
        scale = (scale & EXP_MASK) + 0x00800000u;
    }
    var zero_point = d.symmetric_zero_point;
    if (d.scheme != 0u) {
        let q = round_half_even_clamp_i32(div_rn_bits(min_neg, scale), -16777216, 16777216);
        zero_point = clamp(d.qmin - q, d.qmin, d.qmax);
    }
    return Qparams(scale, zero_point);
}

// Folds the batch statistics into each channel's running range, then derives its qparams and
// fake-quant parameters. One invocation per channel.
@compute @workgroup_size(256)
fn update(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var c = wg.x * WG_SIZE + lid; c < d.channels; c = c + num_wg.x * WG_SIZE) {
        var s = state[c];
        let running = range_of(s.min, s.max);
        let observed = range_of(batch[c], batch_hi[d.hi_shift + c]);
        var next = running;
        if (observed.ok) {
            if (!running.ok) {
                next = observed;
            } else if (d.averaging == 0u) {
                next = Range(true, min_bits(running.lo, observed.lo), max_bits(running.hi, observed.hi));
            } else {
                next = Range(
                    true,
                    moving_average_bits(running.lo, observed.lo, d.average_constant),
                    moving_average_bits(running.hi, observed.hi, d.average_constant),
                );
            }
        }
        if (next.ok) {
            s.min = next.lo;
            s.max = next.hi;
        } else {
            s.min = POS_INF;
            s.max = NEG_INF;
        }
        let q = qparams_of(next);
        s.scale = q.scale;
        s.zero_point = q.zero_point;
        state[c] = s;
        params[c] = channel_params(q.scale, q.zero_point, d.qmin, d.qmax);
    }
}
