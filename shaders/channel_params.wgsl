// The per-channel parameters of the fake-quant kernel, shared by the kernels that read them
// (fake_quant.wgsl) and those that derive them on the device (observer.wgsl). Prepended after
// exact_f32.wgsl.

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
