// requires: quantize, elementwise_dispatch, elementwise | dynamic_groups | float_blocks | float_amax | histogram
// provides: load_x, store_y, copy_x_to_y
// The f32 element family of the elementwise kernels (forward, straight-through backward): the
// bindings and element access; the entry points are elementwise.wgsl's. Prepended with
// exact_f32.wgsl, half.wgsl and quantize.wgsl.

@group(0) @binding(0) var<uniform> dispatch: Dispatch;
@group(0) @binding(1) var<storage, read> params: array<ChannelParams>;
// `read_write` though only read: a caller's input may share a buffer with the output (disjoint
// ranges), and wgpu refuses one buffer bound read-only and read-write in one dispatch.
@group(0) @binding(2) var<storage, read_write> x: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;
@group(0) @binding(4) var<storage, read_write> mask: array<u32>;

fn load_x(i: u32) -> u32 {
    return x[i + dispatch.x_shift];
}

fn store_y(i: u32, bits: u32) {
    y[i + dispatch.y_shift] = bits;
}

fn copy_x_to_y(i: u32) {
    y[i + dispatch.y_shift] = x[i + dispatch.x_shift];
}
