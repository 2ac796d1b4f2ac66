// Fused fake-quantization (forward, with an optional bit-packed mask) and its straight-through
// backward. Prepended with exact_f32.wgsl and channel_params.wgsl.
//
// Exactness on every device follows from the design, not from the device's float behaviour:
// - Only three float operations touch data, each correctly rounded and none followed by an add a
//   compiler could fuse it with: `x * inv` (or the integer division `div_rn_bits`), `round`, and
//   `f32(k) * scale` with `k` an exact integer. Comparisons and clamps are on integer-valued floats.
// - Non-finite inputs never reach float arithmetic: the input is clamped on its bits to +-`clip`
//   (so `x * inv` cannot overflow); infinities are detected on the bits and sent past the range
//   edge, NaN is detected on the bits and its output selected on the bits at the end.
// - Subnormal inputs are not left to the device (which may flush them): their significand is
//   converted to float exactly and multiplied by `inv * 2^-149`, a normal number whenever the
//   product can reach 0.5 (see `ChannelParams`).
// - A zero result is +0.0, as in PyTorch, selected on the integer `k` (not left to a conversion).

struct Dispatch {
    // Elements in this chunk (one binding each of x and y).
    len: u32,
    // Tiles of TILE elements in this chunk; the grid strides over them.
    num_tiles: u32,
    // Per-channel layout: the channel of chunk-local index i is
    // (channel_start + (inner_start + i) / inner) % channels.
    channels: u32,
    inner: u32,
    channel_start: u32,
    inner_start: u32,
    // Mask words in this chunk.
    mask_words: u32,
    _pad: u32,
}

// 0: multiply by the reciprocal (PyTorch), 1: correctly rounded quotient.
override ROUNDING: u32 = 0u;
override PER_CHANNEL: bool = false;
override WITH_MASK: bool = false;
// y = x and every mask bit set: an observer's calibration mode, through the same chunking.
override IDENTITY: bool = false;

// Farther from zero than any qmin - zp or qmax - zp (at most 65535 in magnitude).
const BEYOND_RANGE: f32 = 1048576.0;

const WG_SIZE: u32 = 256u;
const PER_THREAD: u32 = 4u;
// A workgroup handles TILE consecutive elements per step; thread t takes t, t + 256, ... so that
// every load and store of a warp (or of llvmpipe's SIMD lanes) is contiguous.
const TILE: u32 = 1024u;
const TILE_WORDS: u32 = 32u;

@group(0) @binding(0) var<uniform> dispatch: Dispatch;
@group(0) @binding(1) var<storage, read> params: array<ChannelParams>;
@group(0) @binding(2) var<storage, read> x: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;
@group(0) @binding(4) var<storage, read_write> mask: array<u32>;

var<workgroup> tile_mask: array<atomic<u32>, 32>;

fn channel_of(i: u32) -> u32 {
    if (!PER_CHANNEL) {
        return 0u;
    }
    return (dispatch.channel_start + (dispatch.inner_start + i) / dispatch.inner) % dispatch.channels;
}

struct Quantized {
    bits: u32,
    in_range: bool,
}

fn fake_quant_bits(x_bits: u32, p: ChannelParams) -> Quantized {
    let sign = x_bits & SIGN_BIT;
    let magnitude = x_bits & ABS_MASK;
    // Clamp on the bits: +-inf and NaN (replaced below) and huge values become +-clip.
    let clamped = select(x_bits, sign | p.clip_bits, magnitude > p.clip_bits);
    var r: f32;
    if (ROUNDING == 0u) {
        let is_subnormal = magnitude != 0u && magnitude < 0x00800000u;
        let significand = f32(magnitude);
        let a = select(bitcast<f32>(clamped), select(significand, -significand, sign != 0u), is_subnormal);
        let b = select(p.inv, p.inv_sub, is_subnormal);
        r = round(a * b);
    } else {
        r = round(bitcast<f32>(div_rn_bits(clamped, bitcast<u32>(p.scale))));
    }
    // Infinities are placed beyond either edge explicitly: when 2^18 * scale overflows, clip is
    // f32::MAX and a clamped infinity would land inside the range.
    r = select(r, select(BEYOND_RANGE, -BEYOND_RANGE, sign != 0u), magnitude == EXP_MASK);
    // r is a finite integer-valued float with |r| <= 2^20.
    let in_range = r >= p.lo && r <= p.hi;
    let k = i32(clamp(r, p.lo, p.hi));
    // A zero must be +0.0 (PyTorch goes through an integer). Compilers fold the float -> int ->
    // float round trip back into `r` (measured on llvmpipe: -0.0 came out), so the zero is
    // chosen on the integer, not left to the conversion.
    let y_bits = select(bitcast<u32>(f32(k) * p.scale), 0u, k == 0);
    let nan = is_nan_bits(x_bits);
    return Quantized(select(y_bits, x_bits | QUIET_BIT, nan), in_range && !nan);
}

@compute @workgroup_size(256)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var tile = wg.x; tile < dispatch.num_tiles; tile = tile + num_wg.x) {
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
                var q = Quantized(x[i], true);
                if (!IDENTITY) {
                    q = fake_quant_bits(q.bits, params[channel_of(i)]);
                }
                y[i] = q.bits;
                if (WITH_MASK && q.in_range) {
                    atomicOr(&tile_mask[offset / 32u], 1u << (offset % 32u));
                }
            }
        }
        if (WITH_MASK) {
            workgroupBarrier();
            let w = tile * TILE_WORDS + lid;
            if (lid < TILE_WORDS && w < dispatch.mask_words) {
                mask[w] = atomicLoad(&tile_mask[lid]);
            }
        }
    }
}

// dx = dy * mask with IEEE semantics, on the bits (see reference::ste_grad_value): a device
// multiply by 0.0 or 1.0 would leave signalling NaNs and the NaN of 0 * inf to the device.
fn ste_grad_bits(dy: u32, in_range: bool) -> u32 {
    let magnitude = dy & ABS_MASK;
    let clipped = select(dy & SIGN_BIT, DEFAULT_NAN, magnitude == EXP_MASK);
    let passed = select(clipped, dy, in_range);
    return select(passed, dy | QUIET_BIT, magnitude > EXP_MASK);
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
                let in_range = ((mask[i / 32u] >> (i % 32u)) & 1u) == 1u;
                y[i] = ste_grad_bits(x[i], in_range);
            }
        }
    }
}
