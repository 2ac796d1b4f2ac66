// requires: exact_f32, half, quantize, dynamic_rules
// provides: DynamicDispatch, dynamic_qparams
// Dynamic qparams, the second pass of the two-pass plan (groups that the one-pass kernel of
// dynamic_groups.wgsl does not take): each group's qparams (dynamic_rules.wgsl) from its min and
// max, reduced first by the observers' exact integer-keyed kernels (observer.wgsl), then its
// fake-quant parameters for the elementwise kernels (the integer schemes; the float zero-point
// domain's last pass, `dynamic_float_apply` in dynamic_groups.wgsl, reads the qparams instead).

struct DynamicDispatch {
    groups: u32,
    // Where the chunk's first maximum sits in `stats_hi` (the maxima follow all the minima in the
    // statistics buffer, so their window starts aligned down). The tables are bound a window per
    // chunk of groups, each from the chunk's first group.
    hi_shift: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> d: DynamicDispatch;
// The groups' minima, and their maxima (f32 bits; an empty group is (+inf, -inf)).
@group(0) @binding(1) var<storage, read> stats: array<u32>;
@group(0) @binding(5) var<storage, read> stats_hi: array<u32>;
@group(0) @binding(2) var<storage, read_write> params: array<ChannelParams>;
// The chosen scales and zero points (f32 bits), for export.
@group(0) @binding(3) var<storage, read_write> scales: array<u32>;
@group(0) @binding(4) var<storage, read_write> zero_points: array<u32>;

// One invocation per group.
@compute @workgroup_size(256)
fn dynamic_qparams(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    for (var g = wg.x * 256u + lid; g < d.groups; g = g + num_wg.x * 256u) {
        let q = group_qparams(stats[g], stats_hi[d.hi_shift + g]);
        params[g] = channel_params(q.scale, q.zero_point, rules.qmin, rules.qmax);
        scales[g] = q.scale;
        // The integer zero point as f32, or the float domain's own zero point.
        zero_points[g] = q.zero_bits;
    }
}
