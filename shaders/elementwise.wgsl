// requires: quantize, elementwise_dispatch, fake_quant | fake_quant_half
// provides: forward, forward_masked, ste_backward
// The elementwise entry points (fused forward with an optional bit-packed mask, straight-through
// backward), shared by the element-type families: fake_quant.wgsl (f32) and fake_quant_half.wgsl
// (f16, bf16) declare the bindings and `load_x`, `store_y`, `copy_x_to_y`; this file is appended
// after them, with elementwise_dispatch.wgsl's `Dispatch`. The per-element arithmetic, and why it is
// exact on every device, is in quantize.wgsl.

override PER_CHANNEL: bool = false;
override WITH_MASK: bool = false;
// y = x and every mask bit set: an observer's calibration mode, through the same chunking.
override IDENTITY: bool = false;

const WG_SIZE: u32 = 256u;
const PER_THREAD: u32 = 4u;
// A workgroup handles TILE consecutive elements per step; thread t takes t, t + 256, ... so that
// every load and store of a warp (or of llvmpipe's SIMD lanes) is contiguous.
const TILE: u32 = 1024u;
const TILE_WORDS: u32 = 32u;

var<workgroup> tile_mask: array<atomic<u32>, 32>;

fn channel_of(i: u32) -> u32 {
    if (!PER_CHANNEL) {
        return 0u;
    }
    return dispatch_channel(i);
}

// One tile of the forward: y, and each element's mask bit into tile_mask when WITH_MASK. Only
// `forward_masked` writes the mask binding, so `forward` binds no mask at all.
fn forward_tile(tile: u32, lid: u32) {
    if (WITH_MASK) {
        if (lid < TILE_WORDS) {
            atomicStore(&tile_mask[lid], 0u);
        }
        workgroupBarrier();
    }
    let base = tile * TILE;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let offset = k * WG_SIZE + lid;
        let i = base + offset;
        if (i < dispatch.len) {
            var in_range = true;
            if (IDENTITY) {
                copy_x_to_y(i);
            } else {
                let q = fake_quant_bits(load_x(i), params[channel_of(i)]);
                store_y(i, q.bits);
                in_range = q.in_range;
            }
            if (WITH_MASK && in_range) {
                atomicOr(&tile_mask[offset / 32u], 1u << (offset % 32u));
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
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        forward_tile(tile, lid);
        workgroupBarrier();
        let w = tile * TILE_WORDS + lid;
        if (lid < TILE_WORDS && w < dispatch.mask_words) {
            mask[w + dispatch.mask_shift] = atomicLoad(&tile_mask[lid]);
        }
    }
}

// Backward bindings reuse the forward layout: x is dy, y is dx, mask is read.
@compute @workgroup_size(256)
fn ste_backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
        let base = tile * TILE;
        for (var k = 0u; k < PER_THREAD; k = k + 1u) {
            let i = base + k * WG_SIZE + lid;
            if (i < dispatch.len) {
                let in_range = ((mask[i / 32u + dispatch.mask_shift] >> (i % 32u)) & 1u) == 1u;
                store_y(i, ste_grad_bits(load_x(i), in_range));
            }
        }
    }
}
