// requires: half, quantize, elementwise_dispatch, elementwise | dynamic_groups | float_blocks | float_amax | histogram
// provides: load_x, store_y, copy_x_to_y
// The 16-bit element family (f16, bf16) of the elementwise kernels: two elements per u32 word,
// widened to f32 exactly and rounded back to nearest even with half.wgsl's integer conversions
// (exact on every device, with or without SHADER_F16). The entry points are elementwise.wgsl's.
// Prepended with exact_f32.wgsl, half.wgsl and quantize.wgsl.
//
// Two neighbouring elements share a word, and neighbouring invocations (or, at odd offsets, two
// workgroups or two dispatches) own them. Each element is therefore stored with an atomicAnd that
// clears its 16 bits and an atomicOr that sets them: the two halves' operations touch disjoint bits,
// so whatever the interleaving the word ends with both halves right, and the neighbour of a tensor
// that starts or ends mid-word is left untouched.

@group(0) @binding(0) var<uniform> dispatch: Dispatch;
@group(0) @binding(1) var<storage, read> params: array<ChannelParams>;
// `read_write` though only read: a caller's input may share a buffer with the output (disjoint
// ranges), and wgpu refuses one buffer bound read-only and read-write in one dispatch.
@group(0) @binding(2) var<storage, read_write> x: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> mask: array<u32>;

// 1: f16, 2: bf16.
override DTYPE: u32 = 1u;

fn load_half_x(i: u32) -> u32 {
    let h = i + dispatch.x_shift;
    return (x[h >> 1u] >> ((h & 1u) * 16u)) & 0xffffu;
}

fn store_half_y(i: u32, half: u32) {
    let h = i + dispatch.y_shift;
    let shift = (h & 1u) * 16u;
    atomicAnd(&y[h >> 1u], ~(0xffffu << shift));
    atomicOr(&y[h >> 1u], half << shift);
}

fn load_x(i: u32) -> u32 {
    let half = load_half_x(i);
    return select(bf16_to_f32_bits(half), f16_to_f32_bits(half), DTYPE == 1u);
}

fn store_y(i: u32, bits: u32) {
    store_half_y(i, select(f32_to_bf16_bits(bits), f32_to_f16_bits(bits), DTYPE == 1u));
}

fn copy_x_to_y(i: u32) {
    store_half_y(i, load_half_x(i));
}
