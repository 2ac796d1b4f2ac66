// requires: exact_f32, half, elementwise_dispatch, fake_quant | fake_quant_half
// provides: histogram_grow, histogram_count, histogram_count_private
// Histogram calibration on the device (src/histogram.rs; reference src/reference/histogram.rs),
// after the observers' exact min/max reduction of the batch: `histogram_grow` raises each
// channel's range R = 2^exponent to hold the batch (merging neighbouring bins pairwise per
// doubling, one invocation per channel), `histogram_count` adds every finite element to its bin.
//
// One histogram (per tensor) is counted privately per workgroup (`histogram_count_private`: in
// workgroup memory, then added to the global counts once per workgroup): the lanes of different
// cores no longer contend for the same cache lines, which made the global atomics several times
// slower than the per-channel case on llvmpipe.
//
// Exact on every device and run by construction: the bin is computed from the f32 bits with
// integer shifts (R and the bin count are powers of two, so the bin is the significand shifted,
// floored or, for negative values of the signed histogram, ceiled); the counts are integer atomic
// adds, which commute, in two words per bin (a carry into the high word when the low one wraps).

// 0: |x| over [0, R); 1: x over [-R, R).
override SIGNED: u32 = 0u;
// log2 of the bin count (7 to 12).
override LOG2_BINS: u32 = 11u;

const INITIAL_EXPONENT: i32 = -126;

// Per channel: the exponent of R (the whole table).
@group(0) @binding(5) var<storage, read_write> exponents: array<i32>;
// Per channel and bin (channel-major): the count's low and high words, a window of the table:
// channels dispatch.count_first .. + count_channels, so that the counts need not fit one binding
// (a channel's counts are 1 to 32 KiB, so every window starts aligned).
@group(0) @binding(6) var<storage, read_write> counts: array<atomic<u32>>;
// histogram_grow: the batch's minima per channel, then the maxima from `dispatch.table_shift`
// (f32 bits; an empty channel +inf, -inf).
@group(0) @binding(8) var<storage, read> stats: array<u32>;

fn bins() -> u32 {
    return 1u << LOG2_BINS;
}

// The exponent of the smallest power of two above |v| (finite bits), as Histogram::exponent_above.
fn exponent_above_bits(bits: u32) -> i32 {
    let magnitude = bits & ABS_MASK;
    if (magnitude < 0x00800000u) {
        return INITIAL_EXPONENT;
    }
    return i32(magnitude >> 23u) - 127 + 1;
}

fn add_count(index: u32, amount_lo: u32, amount_hi: u32) {
    let old = atomicAdd(&counts[2u * index], amount_lo);
    // A wrap of the low word (old + amount >= 2^32) carries into the high word.
    let carry = select(0u, 1u, old > 0xffffffffu - amount_lo);
    if (amount_hi + carry != 0u) {
        atomicAdd(&counts[2u * index + 1u], amount_hi + carry);
    }
}

// One merge of a channel's bins (R doubles), in place: the target of source bins 2k and 2k + 1 is
// k (magnitude) or bins/4 + k (signed); the orders below never overwrite a bin not yet read.
fn merge_once(base: u32) {
    let b = bins();
    if (SIGNED == 0u) {
        for (var k = 0u; k < b / 2u; k = k + 1u) {
            move_pair(base, k, 2u * k);
        }
        for (var k = b / 2u; k < b; k = k + 1u) {
            clear_bin(base + k);
        }
        return;
    }
    // Targets b/4 + k: below their sources for k >= b/4 (ascending), above them for k < b/4
    // (descending).
    for (var k = b / 4u; k > 0u; k = k - 1u) {
        move_pair(base, b / 4u + k - 1u, 2u * (k - 1u));
    }
    for (var k = b / 4u; k < b / 2u; k = k + 1u) {
        move_pair(base, b / 4u + k, 2u * k);
    }
    for (var k = 0u; k < b / 4u; k = k + 1u) {
        clear_bin(base + k);
        clear_bin(base + 3u * b / 4u + k);
    }
}

// Bin `dst` (the target) of the channel at `base` becomes the sum of bins `source` and `source + 1`.
fn move_pair(base: u32, dst: u32, source: u32) {
    let a_lo = atomicLoad(&counts[2u * (base + source)]);
    let a_hi = atomicLoad(&counts[2u * (base + source) + 1u]);
    let b_lo = atomicLoad(&counts[2u * (base + source + 1u)]);
    let b_hi = atomicLoad(&counts[2u * (base + source + 1u) + 1u]);
    let lo = a_lo + b_lo;
    let hi = a_hi + b_hi + select(0u, 1u, lo < a_lo);
    atomicStore(&counts[2u * (base + dst)], lo);
    atomicStore(&counts[2u * (base + dst) + 1u], hi);
}

fn clear_bin(index: u32) {
    atomicStore(&counts[2u * index], 0u);
    atomicStore(&counts[2u * index + 1u], 0u);
}

// One invocation per channel of the window (dispatch.count_channels of them).
@compute @workgroup_size(256)
fn histogram_grow(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var k = wg.x * 256u + lid; k < dispatch.count_channels; k = k + num_wg.x * 256u) {
        let c = dispatch.count_first + k;
        let lo = stats[c];
        let hi = stats[dispatch.table_shift + c];
        if (!is_finite_bits(lo) || !is_finite_bits(hi)) {
            continue; // nothing finite in this batch's channel
        }
        let top = max(exponent_above_bits(lo), exponent_above_bits(hi));
        let old = exponents[c];
        if (top <= old) {
            continue;
        }
        // After LOG2_BINS + 1 merges the bins are at their fixed point: more change nothing.
        let merges = min(u32(top - old), LOG2_BINS + 1u);
        for (var m = 0u; m < merges; m = m + 1u) {
            merge_once(k * bins());
        }
        exponents[c] = top;
    }
}

// The bin of finite bits `v` in a histogram with R = 2^e (|v| < R).
fn bin_of(v: u32, e: i32) -> u32 {
    let magnitude = v & ABS_MASK;
    let field = i32(magnitude >> 23u);
    var m = magnitude;
    var exponent = -126;
    if (field != 0) {
        m = (magnitude & 0x007fffffu) | 0x00800000u;
        exponent = field - 127;
    }
    // |v| * bins / R = m * 2^(exponent - 23 + LOG2_BINS - e): m shifted right by s (>= 0 as
    // |v| < R), one more for the signed histogram's 2R.
    let s = 23 + e - i32(LOG2_BINS) - exponent + i32(SIGNED);
    var floor_q = 0u;
    var ceil_q = 0u;
    if (s < 32) {
        let shift = u32(s);
        floor_q = m >> shift;
        ceil_q = floor_q + select(0u, 1u, (m & ((1u << shift) - 1u)) != 0u);
    } else {
        ceil_q = select(0u, 1u, m != 0u);
    }
    if (SIGNED == 0u) {
        return floor_q;
    }
    if ((v & SIGN_BIT) == 0u) {
        return bins() / 2u + floor_q;
    }
    // floor(-a) = -ceil(a).
    return bins() / 2u - ceil_q;
}

@compute @workgroup_size(256)
fn histogram_count(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        for (var k = 0u; k < 32u; k = k + 1u) {
            let i = first + k;
            if (i >= dispatch.len) {
                break;
            }
            let v = load_x(i);
            // The channel's index in the table of exponents, and in the window of counts (a
            // channel outside the window wraps to a large index and is left to another pass).
            let c = dispatch.table_shift + dispatch_channel(i);
            let k = c - dispatch.count_first;
            if (is_finite_bits(v) && k < dispatch.count_channels) {
                add_count(k * bins() + bin_of(v, exponents[c]), 1u, 0u);
            }
        }
    }
}

// A workgroup's private counts (at most 4096 bins: 16 KiB, the smallest workgroup storage limit).
var<workgroup> private_counts: array<atomic<u32>, 4096>;

// One histogram: each workgroup counts its tiles into workgroup memory, then adds its non-zero
// bins to the global counts. Integer adds commute: the same counts as histogram_count. A
// workgroup counts fewer than 2^32 elements (a dispatch holds at most 2^30), so its u32 counts
// cannot wrap.
@compute @workgroup_size(256)
fn histogram_count_private(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var b = lid; b < bins(); b = b + 256u) {
        atomicStore(&private_counts[b], 0u);
    }
    workgroupBarrier();
    let e = exponents[0];
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let first = (tile * 256u + lid) * 32u;
        for (var k = 0u; k < 32u; k = k + 1u) {
            let i = first + k;
            if (i >= dispatch.len) {
                break;
            }
            let v = load_x(i);
            if (is_finite_bits(v)) {
                atomicAdd(&private_counts[bin_of(v, e)], 1u);
            }
        }
    }
    workgroupBarrier();
    for (var b = lid; b < bins(); b = b + 256u) {
        let c = atomicLoad(&private_counts[b]);
        if (c != 0u) {
            add_count(b, c, 0u);
        }
    }
}
