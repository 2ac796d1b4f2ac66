// requires: half, quantize, elementwise_dispatch
// provides: forward, forward_masked, ste_backward
// The wide elementwise kernels: the fused forward (optional bit-packed mask), the pass-through and
// the straight-through backward with one vec4<u32> load and store per group, a group being 4 f32
// or 8 packed 16-bit elements. Prepended with exact_f32.wgsl, half.wgsl, quantize.wgsl and
// elementwise_dispatch.wgsl (the uniform, lengths and shifts counted in groups here); the
// per-element arithmetic (and why it is exact on every device) is quantize.wgsl's, the same calls
// as the scalar kernels in elementwise.wgsl, so both give the same bits.
//
// The host sends a chunk's body here: a whole number of 32-element mask words, with x and y
// 16-byte aligned (f32 tensors always are; 16-bit ones at 16-byte offsets). An invocation owns
// whole words of y, so 16-bit outputs need no atomics. The rest (under 32 elements at the end, or
// 16-bit tensors at other offsets) goes to the scalar kernels.

@group(0) @binding(0) var<uniform> dispatch: Dispatch;
@group(0) @binding(1) var<storage, read> params: array<ChannelParams>;
// `read_write` though only read: a caller's input may share a buffer with the output (disjoint
// ranges), and wgpu refuses one buffer bound read-only and read-write in one dispatch.
@group(0) @binding(2) var<storage, read_write> x: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> mask: array<u32>;

// 0: f32, 1: f16, 2: bf16.
override DTYPE: u32 = 0u;
override PER_CHANNEL: bool = false;
override WITH_MASK: bool = false;
// y = x and every mask bit set: an observer's calibration mode.
override IDENTITY: bool = false;

const WG_SIZE: u32 = 256u;
// Groups per thread per tile: thread t takes t, t + 256, ... so that the vec4 accesses of a warp
// (or of llvmpipe's SIMD lanes) are contiguous. The host sets 1 on GPUs (more workgroups, more
// loads in flight) and 4 on CPU adapters (fewer workgroup launches); at most MAX_PER_THREAD.
override PER_THREAD: u32 = 1u;
const MAX_PER_THREAD: u32 = 4u;

// Each group's mask bits (4 or 8), gathered into words after a barrier: plain stores and loads,
// no atomics (llvmpipe runs workgroup atomics one lane at a time).
var<workgroup> tile_bits: array<u32, WG_SIZE * MAX_PER_THREAD>;

// Elements per group.
fn group_len() -> u32 {
    return select(8u, 4u, DTYPE == 0u);
}

fn widen(h: u32) -> u32 {
    if (DTYPE == 1u) {
        return f16_to_f32_bits(h);
    }
    return bf16_to_f32_bits(h);
}

fn narrow(f: u32) -> u32 {
    if (DTYPE == 1u) {
        return f32_to_f16_bits(f);
    }
    return f32_to_bf16_bits(f);
}

// The channel of a group's first element and its position in the channel's inner run; the
// elements after it step along without another division.
struct ChannelCursor {
    channel: u32,
    offset: u32,
}

fn cursor_at(first: u32) -> ChannelCursor {
    if (!PER_CHANNEL) {
        return ChannelCursor(0u, 0u);
    }
    let position = dispatch.inner_start + first;
    let run = position / dispatch.inner;
    return ChannelCursor((dispatch.channel_start + run) % dispatch.channels, position - run * dispatch.inner);
}

fn advance(c: ChannelCursor) -> ChannelCursor {
    var next = ChannelCursor(c.channel, c.offset + 1u);
    if (next.offset == dispatch.inner) {
        next.offset = 0u;
        next.channel = select(next.channel + 1u, 0u, next.channel + 1u == dispatch.channels);
    }
    return next;
}

// The walk through one group: where it is in the channels, that channel's parameters, and the
// mask bits so far.
struct GroupWalk {
    cursor: ChannelCursor,
    p: ChannelParams,
    bits: u32,
}

fn start_walk(first: u32) -> GroupWalk {
    let cursor = cursor_at(first);
    return GroupWalk(cursor, params[cursor.channel], 0u);
}

// Fake-quantizes element j of the group (f32 bits) and records its mask bit. Every call site
// passes a constant j, and no function-local array is indexed: GPU compilers keep the whole group
// in registers (dynamically indexed arrays went to local memory on NVIDIA).
fn quantize_next(e: u32, j: u32, walk: ptr<function, GroupWalk>) -> u32 {
    let q = fake_quant_bits(e, (*walk).p);
    (*walk).bits = (*walk).bits | (u32(q.in_range) << j);
    if (PER_CHANNEL) {
        (*walk).cursor = advance((*walk).cursor);
        // A group rarely crosses into the next channel: reload only then.
        if ((*walk).cursor.offset == 0u) {
            (*walk).p = params[(*walk).cursor.channel];
        }
    }
    return q.bits;
}

// Both 16-bit halves of a word, low first.
fn quantize_pair(word: u32, j: u32, walk: ptr<function, GroupWalk>) -> u32 {
    let lo = narrow(quantize_next(widen(word & 0xffffu), j, walk));
    let hi = narrow(quantize_next(widen(word >> 16u), j + 1u, walk));
    return lo | (hi << 16u);
}

struct QuantizedGroup {
    v: vec4<u32>,
    bits: u32,
}

// The group starting at dispatch-local element `first`.
fn quantize_group(v: vec4<u32>, first: u32) -> QuantizedGroup {
    var walk = start_walk(first);
    var out: vec4<u32>;
    if (DTYPE == 0u) {
        out.x = quantize_next(v.x, 0u, &walk);
        out.y = quantize_next(v.y, 1u, &walk);
        out.z = quantize_next(v.z, 2u, &walk);
        out.w = quantize_next(v.w, 3u, &walk);
    } else {
        out.x = quantize_pair(v.x, 0u, &walk);
        out.y = quantize_pair(v.y, 2u, &walk);
        out.z = quantize_pair(v.z, 4u, &walk);
        out.w = quantize_pair(v.w, 6u, &walk);
    }
    return QuantizedGroup(out, walk.bits);
}

fn ste_one(e: u32, bits: u32, j: u32) -> u32 {
    return ste_grad_bits(e, ((bits >> j) & 1u) == 1u);
}

fn ste_pair(word: u32, bits: u32, j: u32) -> u32 {
    let lo = narrow(ste_one(widen(word & 0xffffu), bits, j));
    let hi = narrow(ste_one(widen(word >> 16u), bits, j + 1u));
    return lo | (hi << 16u);
}

fn ste_group(v: vec4<u32>, bits: u32) -> vec4<u32> {
    if (DTYPE == 0u) {
        return vec4<u32>(ste_one(v.x, bits, 0u), ste_one(v.y, bits, 1u), ste_one(v.z, bits, 2u), ste_one(v.w, bits, 3u));
    }
    return vec4<u32>(ste_pair(v.x, bits, 0u), ste_pair(v.y, bits, 2u), ste_pair(v.z, bits, 4u), ste_pair(v.w, bits, 6u));
}

// One tile of the forward: y, and each group's mask bits into tile_bits when WITH_MASK. Only
// `forward_masked` writes the mask binding, so `forward` binds no mask at all.
fn forward_tile(tile: u32, lid: u32) {
    let n = group_len();
    let tile_groups = WG_SIZE * PER_THREAD;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let local = k * WG_SIZE + lid;
        let g = tile * tile_groups + local;
        if (g < dispatch.len) {
            let v = x[g + dispatch.x_shift];
            var bits = (1u << n) - 1u;
            if (IDENTITY) {
                y[g + dispatch.y_shift] = v;
            } else {
                let q = quantize_group(v, g * n);
                y[g + dispatch.y_shift] = q.v;
                bits = q.bits;
            }
            if (WITH_MASK) {
                tile_bits[local] = bits;
            }
        }
    }
}

@compute @workgroup_size(256)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        forward_tile(tile, lid);
    }
}

// The forward with the mask (WITH_MASK is set for it): each tile's words, gathered in workgroup
// memory, written once.
@compute @workgroup_size(256)
fn forward_masked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = group_len();
    let groups_per_word = 32u / n;
    let tile_words = WG_SIZE * PER_THREAD / groups_per_word;
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        forward_tile(tile, lid);
        workgroupBarrier();
        let w = tile * tile_words + lid;
        // A word below mask_words covers groups below len, all written above in this tile (the
        // body is whole words), so no entry is read before it is written (the pipelines skip
        // WebGPU's workgroup zeroing).
        if (lid < tile_words && w < dispatch.mask_words) {
            var word = 0u;
            for (var j = 0u; j < groups_per_word; j = j + 1u) {
                word = word | (tile_bits[lid * groups_per_word + j] << (j * n));
            }
            mask[w + dispatch.mask_shift] = word;
        }
        // The next tile overwrites tile_bits.
        workgroupBarrier();
    }
}

// Backward bindings reuse the forward layout: x is dy, y is dx, mask is read.
@compute @workgroup_size(256)
fn ste_backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = group_len();
    let groups_per_word = 32u / n;
    let tile_groups = WG_SIZE * PER_THREAD;
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        for (var k = 0u; k < PER_THREAD; k = k + 1u) {
            let g = tile * tile_groups + k * WG_SIZE + lid;
            if (g < dispatch.len) {
                let bits = mask[g / groups_per_word + dispatch.mask_shift] >> ((g % groups_per_word) * n);
                y[g + dispatch.y_shift] = ste_group(x[g + dispatch.x_shift], bits);
            }
        }
    }
}
