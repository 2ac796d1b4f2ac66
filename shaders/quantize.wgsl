// requires: exact_f32
// provides: ChannelParams, channel_params, Quantized, fake_quant_bits, ste_grad_bits
// The per-element fake-quant arithmetic and its per-channel parameters, shared by every kernel
// family (fake_quant.wgsl, observer.wgsl, lsq.wgsl). Prepended after exact_f32.wgsl.
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

// Everything the kernel needs about one channel, derived exactly on the host
// (`ChannelParams::new` in src/gpu/fake_quant.rs) or on the device by `channel_params` below,
// which follows the same rules bit for bit.
struct ChannelParams {
    scale: f32,
    // 1.0f32 / scale, correctly rounded.
    inv: f32,
    // inv * 2^-149 when that is normal (inv >= 2^23), else 0: the factor for subnormal inputs,
    // whose value is significand * 2^-149. When inv < 2^23 every subnormal input gives |x * inv|
    // < 2^-103, which rounds to 0 either way.
    inv_sub: f32,
    // Bit pattern of min(2^18 * scale, f32::MAX): inputs are clamped to +-clip. Any |x| >= clip has
    // |x / scale| >= 2^18 - 1 > 65535 >= |qmax - zp|, |qmin - zp|, so it clamps to the same side,
    // and the product stays finite.
    clip_bits: u32,
    // qmin - zp and qmax - zp, exact integers in f32.
    lo: f32,
    hi: f32,
    _pad0: u32,
    _pad1: u32,
}

// Derives a channel's parameters on the device, identically to the host: the reciprocal by the
// integer division `div_rn_bits` (device `1.0 / scale` may be off by 2.5 ULP), the power-of-two
// scalings by exponent arithmetic, the bounds by exact small-integer conversions. `scale` is a
// positive normal f32 in [2^-126, 2^126] (its bits); `zero_point` lies in [qmin, qmax].
fn channel_params(scale: u32, zero_point: i32, qmin: i32, qmax: i32) -> ChannelParams {
    let inv = div_rn_bits(0x3f800000u, scale);
    // inv >= 2^23 has a biased exponent >= 150, so subtracting 149 keeps it normal and exact.
    let inv_sub = select(0u, inv - (149u << 23u), inv >= 0x4b000000u);
    // 2^18 * scale: add 18 to the exponent, or f32::MAX when that overflows.
    let exponent = (scale >> 23u) & 0xffu;
    let clip_bits = select(scale + (18u << 23u), 0x7f7fffffu, exponent + 18u >= 255u);
    return ChannelParams(
        bitcast<f32>(scale),
        bitcast<f32>(inv),
        bitcast<f32>(inv_sub),
        clip_bits,
        f32(qmin - zero_point),
        f32(qmax - zero_point),
        0u,
        0u,
    );
}

// 0: multiply by the reciprocal (PyTorch), 1: correctly rounded quotient.
override ROUNDING: u32 = 0u;

// Farther from zero than any qmin - zp or qmax - zp (at most 65535 in magnitude).
const BEYOND_RANGE: f32 = 1048576.0;

struct Quantized {
    bits: u32,
    in_range: bool,
    // Clipped at qmin (the quotient below the range); meaningless for NaN.
    below: bool,
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
    return Quantized(select(y_bits, x_bits | QUIET_BIT, nan), in_range && !nan, r < p.lo);
}

// dx = dy * mask with IEEE semantics, on the bits (see reference::ste_grad_value): a device
// multiply by 0.0 or 1.0 would leave signalling NaNs and the NaN of 0 * inf to the device.
fn ste_grad_bits(dy: u32, in_range: bool) -> u32 {
    let magnitude = dy & ABS_MASK;
    let clipped = select(dy & SIGN_BIT, DEFAULT_NAN, magnitude == EXP_MASK);
    let passed = select(clipped, dy, in_range);
    return select(passed, dy | QUIET_BIT, magnitude > EXP_MASK);
}

